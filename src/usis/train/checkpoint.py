"""One file per snapshot holding the whole training state, written atomically.

Everything in it is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the requested use."""


TEMP_PATTERN = "*.pt.*.tmp"  # what save_atomic writes before the rename (mkstemp: NAME.pt.XXXXXXXX.tmp)


def save_atomic(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never a torn file).

    ``previous``: keep the file that ``path`` held until now under this name (a hard link, else a copy,
    renamed into place), so a good checkpoint survives the next save; ``path`` exists at every moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            previous = Path(previous)
            keep = previous.with_name(f"{previous.name}.{os.getpid()}.tmp")
            try:
                os.link(path, keep)
            except OSError:  # no hard links on this file system
                shutil.copyfile(path, keep)
            os.replace(keep, previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a save killed mid-write (``kill -9``, power loss) left in
    ``folder``; at the paper's size each is about 2 GB. Call it only when no save is under way there."""
    folder = Path(folder)
    removed = sorted(folder.glob(TEMP_PATTERN)) if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        for cand in (path / "checkpoints" / "latest.pt", path / "latest.pt"):
            if cand.exists():
                path = cand
                break
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by `usis train` "
                              "(RUN/checkpoints/latest.pt or best.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise CheckpointError(f"cannot read checkpoint {path}: {e}. Is it a complete usis checkpoint?") from e


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
