"""The learning rates of a run: the base rates, constant until ``train.lr_decay_from`` of the run has passed,
then a linear decay to 0 (1.0, the default: constant rates, as in the paper)."""

from __future__ import annotations

import math

import torch


class LinearDecay:
    """The rates' multiplier at each step, and the decay's window once it has begun.

    The rates stay constant until ``decay_from`` of the run has passed, by steps (of ``total``) or by training
    time (of ``budget`` seconds), whichever comes first. From then on the decay is fixed in steps: linear to 0
    at ``total``, or, when the time budget started it, at the step that the run's speed so far reaches by the
    end of the budget. Only the step and the saved ``window`` enter the multiplier, so a resumed run (the
    window lives in its checkpoint) decays exactly as an uninterrupted one.
    """

    def __init__(self, decay_from: float, rates: list[tuple[torch.optim.Optimizer, float]]):
        self.decay_from = decay_from
        self.rates = rates  # (optimizer, base rate)
        self.window: tuple[float, float] | None = None  # (first step, step of rate 0) once the decay began

    @property
    def decays(self) -> bool:
        return self.decay_from < 1.0

    def factor(self, step: int, seconds: float, total: int, budget: float | None) -> float:
        """The multiplier for step ``step`` after ``seconds`` of training (of a run of ``total`` steps or
        ``budget`` seconds); starts the decay's window when the run reaches ``decay_from``."""
        f = self.decay_from
        if f >= 1.0:
            return 1.0
        if self.window is None:
            if step >= f * total:
                self.window = (f * total, float(total))
            elif budget and seconds >= f * budget:
                rate = step / max(seconds, 1e-9)
                end = step + max(1.0, math.floor(rate * (budget - seconds)))
                self.window = (float(step), float(min(total, end)))
            else:
                return 1.0
        start, end = self.window
        return max(0.0, min(1.0, (end - step) / max(end - start, 1e-9)))

    def ended(self, step: int) -> bool:
        """Whether the rates are 0 from ``step`` on (nothing more to train)."""
        return self.window is not None and step >= self.window[1]

    def set(self, factor: float) -> None:
        """Every optimizer's rate: its base rate times ``factor``."""
        for opt, base in self.rates:
            for group in opt.param_groups:
                group["lr"] = base * factor
