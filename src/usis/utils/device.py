"""The device a run or a generate call uses: chosen once, here."""

from __future__ import annotations

import torch

from usis.errors import DeviceError


def resolve_device(name: str | torch.device = "auto", local_rank: int | None = None,
                   setting: str = "device") -> torch.device:
    """``auto`` (or empty) -> CUDA if available, else CPU; any other name as torch spells it (``cpu``,
    ``cuda``, ``cuda:1``, ``mps``). ``local_rank``: a data-parallel process takes its own GPU.

    An unknown name or an unavailable CUDA device raises :class:`~usis.errors.DeviceError` naming
    ``setting`` (e.g. ``train.device``, ``--device``) and the fix.
    """
    if isinstance(name, torch.device):
        dev = name
    else:
        if name in ("", "auto"):
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise DeviceError(f"{setting}={name}: not a device name; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting}={name}: CUDA is not available here; use cpu (or auto)")
        if local_rank is not None:
            dev = torch.device("cuda", local_rank)
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{setting}={name}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev
