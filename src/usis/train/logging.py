"""What a run writes for people to read: ``stats.jsonl`` / ``metrics.jsonl`` records and TensorBoard
scalars and images. Only the main process writes; on the others every call is a no-op."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class RunLog:
    """The run folder's logs. TensorBoard is opened on first use; if it cannot be imported the run goes on
    without it (logging must never end a training run)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out = Path(out_dir)
        self.enabled = enabled
        self._writer: Any = None  # None: not opened yet; False: unavailable

    @property
    def tensorboard(self):
        """The ``SummaryWriter`` of ``out/tb`` (``None`` when disabled or unavailable)."""
        if self._writer is None and self.enabled:
            try:
                from torch.utils.tensorboard import (
                    SummaryWriter,  # lazy: slow to import, optional at run time
                )
            except ImportError:
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer or None

    def record(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line to ``out/name``; NaN / inf (e.g. the IoU of a class absent from prediction and
        labels) become null, so every line is strict JSON."""
        if not self.enabled:
            return
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        with open(self.out / name, "a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/key`` for the finite numbers in ``values``."""
        tb = self.tensorboard
        if tb is None:
            return
        for k, v in values.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                tb.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, chw_uint8: torch.Tensor, step: int) -> None:
        tb = self.tensorboard
        if tb is not None:
            tb.add_image(tag, chw_uint8, step)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()
