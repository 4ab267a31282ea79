"""Periodic evaluation during training: what to measure for each kind of dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from usis.config import Config


def _stack(ds, key: str, n: int) -> torch.Tensor:
    return torch.stack([ds[i][key] for i in range(n)])


def make_synthetic_evaluator(cfg: Config, val) -> Callable[[Any], dict[str, float]]:
    """mIoU / ceiling / sFID with the synthetic preset's own segmentation network."""
    from usis.metrics.synthetic_eval import SyntheticEvaluator

    n = min(cfg.eval.num_images or len(val.labels), len(val.labels), len(val.photos))
    labels = _stack(val.labels, "label", n)
    real = _stack(val.photos, "image", n)
    state: dict[str, Any] = {}

    def evaluate(trainer) -> dict[str, float]:
        if "ev" not in state:
            state["ev"] = SyntheticEvaluator.load_or_train(cfg.data.height, cfg.data.width,
                                                           cache_dir=cfg.eval.cache_dir or None,
                                                           device=str(trainer.device))
        fake = trainer.generate(labels, seed=1234, batch_size=cfg.eval.batch_size)
        return {k: float(v) for k, v in state["ev"].evaluate(fake, labels, real).items()}

    return evaluate


def make_evaluator(cfg: Config, val) -> Callable[[Any], dict[str, float]] | None:
    if cfg.data.kind == "synthetic":
        return make_synthetic_evaluator(cfg, val)
    return None
