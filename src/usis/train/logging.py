"""What a run writes for people to read: ``stats.jsonl`` / ``metrics.jsonl`` records and TensorBoard
scalars and images. Only the main process writes; on the others every call is a no-op.

A full disk must not end a long run over a log line: a write that fails with ``ENOSPC`` / ``EDQUOT`` is
skipped with one warning per kind of file (:meth:`RunLog.skip_full_disk`, also used for sample grids), and
the next write of that kind tries again. Checkpoints are another matter (``Trainer.save``: the run ends).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from usis.errors import DiskFullWarning, warn
from usis.utils.io import disk_full_cause, disk_full_reason, format_size, free_space


class RunLog:
    """The run folder's logs. TensorBoard is opened on first use; if it cannot be imported the run goes on
    without it (logging must never end a training run)."""

    TB_RETRY_S = 60.0  # after a failed TensorBoard write, wait this long before opening a new event file

    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.out = Path(out_dir)
        self.enabled = enabled
        self._writer: Any = None  # None: not opened yet; False: unavailable
        self._tb_retry_at = 0.0  # monotonic time before which TensorBoard is not reopened after a failure
        self._warned: set[str] = set()  # the kinds of file a full disk was already reported for

    def skip_full_disk(self, exc: BaseException, what: str, folder: str | Path) -> bool:
        """``True`` when ``exc``, a failed write into ``folder``, is a full disk: the write is skipped and, the
        first time for ``what`` (e.g. ``"sample grids"``), one :class:`~usis.errors.DiskFullWarning` says so.
        ``False``: another failure, for the caller to raise."""
        cause = disk_full_cause(exc)
        if cause is None:
            return False
        if what not in self._warned:
            self._warned.add(what)
            warn(f"disk full ({disk_full_reason(cause.errno)}, {format_size(free_space(folder))} free in {folder}): "
                 f"{what} are not written for now; training goes on and tries again each time (said once). Free "
                 f"some space: the next checkpoint needs it too", DiskFullWarning)
        return True

    @property
    def tensorboard(self):
        """The ``SummaryWriter`` of ``out/tb`` (``None`` when disabled or unavailable)."""
        if self._writer is None and self.enabled and time.monotonic() >= self._tb_retry_at:
            try:
                from torch.utils.tensorboard import (
                    SummaryWriter,  # lazy: slow to import, optional at run time
                )
            except ImportError:
                self._writer = False
            else:
                _quiet_tensorboard_thread()
                self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer or None

    def _tensorboard_failed(self, exc: Exception) -> bool:
        """A TensorBoard write failed: on a full disk drop the writer (its thread died; the next write after
        :attr:`TB_RETRY_S` opens a new event file) and return ``True``; else ``False`` (the caller raises)."""
        if not self.skip_full_disk(exc, "TensorBoard events", self.out / "tb"):
            return False
        writer, self._writer = self._writer, None
        self._tb_retry_at = time.monotonic() + self.TB_RETRY_S
        if writer:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the same full disk again; the writer is dropped either way
                pass
        return True

    def record(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line to ``out/name``; NaN / inf (e.g. the IoU of a class absent from prediction and
        labels) become null, so every line is strict JSON. On a full disk the line is skipped (no partial line
        is left)."""
        if not self.enabled:
            return
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        line = json.dumps(clean, allow_nan=False) + "\n"
        path = self.out / name
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(line)
        except OSError as e:
            try:
                os.truncate(path, size)  # a partial line would break every reader of the file
            except OSError:
                pass
            if not self.skip_full_disk(e, f"{name} lines", self.out):
                raise

    def scalars(self, prefix: str, values: dict[str, Any], step: int) -> None:
        """TensorBoard scalars ``prefix/key`` for the finite numbers in ``values``."""
        try:
            tb = self.tensorboard
            if tb is None:
                return
            for k, v in values.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    tb.add_scalar(f"{prefix}/{k}", v, step)
        except Exception as e:  # noqa: BLE001 - re-raised unless the disk is full
            if not self._tensorboard_failed(e):
                raise

    def image(self, tag: str, chw_uint8: torch.Tensor, step: int) -> None:
        try:
            tb = self.tensorboard
            if tb is not None:
                tb.add_image(tag, chw_uint8, step)
        except Exception as e:  # noqa: BLE001 - re-raised unless the disk is full
            if not self._tensorboard_failed(e):
                raise

    def flush(self) -> None:
        if self._writer:
            try:
                self._writer.flush()
            except Exception as e:  # noqa: BLE001 - re-raised unless the disk is full
                if not self._tensorboard_failed(e):
                    raise


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes from a thread that dies on a failed write, and Python prints the dying thread's
    traceback; the main thread gets the same error at its next call (:class:`RunLog` warns once). Keep a
    full disk in that thread quiet; everything else is shown as before. Installed once per process."""
    previous = threading.excepthook
    if getattr(previous, "_usis_quiet_tensorboard", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and disk_full_cause(args.exc_value) is not None:
            return
        previous(args)

    hook._usis_quiet_tensorboard = True
    threading.excepthook = hook
