"""One file per snapshot holding the whole training state, written atomically.

Everything in it is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usis.errors import CheckpointError, DiskFullError
from usis.utils.io import atomic_write, disk_full_reason, format_size

TEMP_PATTERN = "*.pt.*.tmp"  # what save_atomic writes before the rename (mkstemp: NAME.pt.XXXXXXXX.tmp)


def save_atomic(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never a torn file).

    ``previous``: keep the file that ``path`` held until now under this name (a hard link, else a copy,
    renamed into place), so a good checkpoint survives the next save; ``path`` exists at every moment.
    A full disk is a :class:`~usis.errors.DiskFullError` (``needed``: the larger of the state's size and
    the file it replaces); ``path`` and ``previous`` are then as they were, and no temporary file is left.
    """
    path = Path(path)

    def rotate() -> None:
        if previous is None or not path.exists():
            return
        keep = Path(previous).with_name(f"{Path(previous).name}.{os.getpid()}.tmp")
        try:
            os.link(path, keep)
        except OSError:  # no hard links on this file system
            try:
                shutil.copyfile(path, keep)
            except BaseException:  # a full disk part-way through the copy: previous stays as it was
                keep.unlink(missing_ok=True)
                raise
        os.replace(keep, previous)

    needed = max(state_nbytes(obj), path.stat().st_size if path.exists() else 0)
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True, before_replace=rotate, size_hint=needed)


def state_nbytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) state: about the size of its ``torch.save`` file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_nbytes(v) for v in obj)
    return 0


def remove_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a save killed mid-write (``kill -9``, power loss) left in
    ``folder``; at the paper's size each is about 2 GB. Call it only when no save is under way there."""
    folder = Path(folder)
    removed = sorted(folder.glob(TEMP_PATTERN)) if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


CHECKPOINT_VERSION = 1  # of the checkpoint's layout; a file from a newer usis is refused with a clear message


def checkpoint_path(run_dir: str | os.PathLike, name: str = "latest") -> Path:
    """``RUN/checkpoints/<name>.pt`` (``latest``, ``previous``, ``best``)."""
    return Path(run_dir) / "checkpoints" / f"{name}.pt"


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """A checkpoint file as given, or the ``latest.pt`` of a run folder (``RUN/checkpoints/latest.pt``, or
    ``latest.pt`` in the folder itself); ``None`` for a folder without one."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    for cand in (checkpoint_path(path), path / "latest.pt"):
        if cand.is_file():
            return cand
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or a run folder's latest): plain data, ``weights_only``. A missing, unreadable
    or newer-format file is a :class:`CheckpointError` naming it and the fix."""
    found = find_checkpoint(path)
    if found is None or not found.exists():
        raise CheckpointError(f"checkpoint {found or Path(path) / 'checkpoints/latest.pt'} does not exist; pass the "
                              ".pt file written by `usis train` (RUN/checkpoints/latest.pt or best.pt)")
    try:
        state = torch.load(found, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise CheckpointError(f"cannot read checkpoint {found}: {e}. Is it a complete usis checkpoint?") from e
    version = state.get("version", 1) if isinstance(state, dict) else 1
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{found} was written by a newer usis (checkpoint format {version}; this version reads "
                              f"up to {CHECKPOINT_VERSION}): upgrade usis (pip install -U usis) to use it")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def all_finite(modules: Iterable[nn.Module]) -> bool:
    """Whether every floating-point parameter and buffer of ``modules`` is finite (a run never saves NaN)."""
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return False
    return True


def disk_full_message(run_dir: str | os.PathLike, path: Path, e: DiskFullError) -> str:
    """One line for a save of checkpoint ``path`` of the run in ``run_dir`` that met a full disk: where, how
    much space, what is kept, what to do."""
    latest = checkpoint_path(run_dir)
    kept = [p.name for p in (latest, checkpoint_path(run_dir, "previous")) if p.exists()]
    if latest.exists():
        todo = (f"{' and '.join(kept)} {'are' if len(kept) > 1 else 'is'} unchanged; free some space there and "
                f"continue the run with: usis train --out {shlex.quote(str(run_dir))} --resume")
    else:
        todo = "no checkpoint of this run was written yet; free some space there and start it again"
    return (f"disk full while saving checkpoint {path.name} in {path.parent} ({disk_full_reason(e.errno)}): "
            f"{format_size(e.free)} free, a checkpoint needs about {format_size(e.needed)}; {todo}")
