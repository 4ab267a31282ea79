"""Exponential moving average of the generator, with batch-norm statistics refreshed before use."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int, warmup: bool = True) -> None:
    """``ema = d * ema + (1 - d) * model`` for parameters; buffers (BN stats, spectral-norm vectors) copied.

    With ``warmup`` the decay is ``min(decay, (1 + step) / (10 + step))``, so that short runs (and the
    start of long ones) are not dominated by the random initial weights; without it (the reference) the
    decay is ``decay`` from the first step.
    """
    d = min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay
    # one foreach op for all parameters and one for all buffers (a loop costs two ops per tensor)
    pe, pm = list(ema.parameters()), list(model.parameters())
    be, bm = list(ema.buffers()), list(model.buffers())
    if len(pe) != len(pm) or len(be) != len(bm):
        raise ValueError("the EMA copy and the model have different parameters or buffers")
    if pe:
        torch._foreach_lerp_(pe, pm, 1.0 - d)
    if be:
        torch._foreach_copy_(be, bm)


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, inputs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Recompute BN running statistics of ``model`` as the plain average over ``inputs``.

    ``inputs`` yields the model's positional arguments, e.g. ``(label_onehot, z)`` or
    ``(label_onehot, z, pixel_noise)``. The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        model.eval()
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.eval()  # only BN in training mode: spectral-norm power iterations must not advance here
    for bn in bns:
        bn.train()
    for args in inputs:
        model(*args)
    for bn, m in zip(bns, momenta, strict=True):
        bn.momentum = m
    model.eval()
