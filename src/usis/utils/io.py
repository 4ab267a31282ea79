"""Files written atomically, and the cache folder.

Every file ``usis`` writes that a reader may open while it is written (checkpoints, exports, caches,
reports) goes through :func:`atomic_write`: a temporary file in the same folder, flushed to disk, then
``os.replace`` onto the target, so a reader sees the old file or the new one, never a torn one.

A full disk (``ENOSPC``) or quota (``EDQUOT``) during such a write is a :class:`~usis.errors.DiskFullError`
(one message: the file, the space free in its folder and the space needed); :func:`disk_full_cause`
tells whether any other failed write was one.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from usis.errors import DiskFullError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` error behind ``exc``: itself or one in its ``__cause__`` / ``__context__``
    chain (``torch.save`` reports a failed write as a ``RuntimeError`` raised while handling the OSError);
    ``None`` when the failure was not a full disk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def free_space(folder: str | os.PathLike) -> int | None:
    """Bytes free to this user on the file system of ``folder`` (its nearest existing parent); ``None`` if
    unknown. A quota (``EDQUOT``) may allow less."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def format_size(n: int | float | None) -> str:
    """``27.9 MB``-style sizes (powers of 1000, as ``df -H``); ``unknown`` for ``None``."""
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full_reason(err: int | None) -> str:
    """What a disk-full ``errno`` means, in words."""
    return "the disk quota is exceeded" if err == getattr(errno, "EDQUOT", None) else "no space left on the device"


def disk_full_error(exc: BaseException, path: str | os.PathLike, needed: int | None = None, for_what: str = "",
                    hint: str = "free some space there, or write elsewhere") -> DiskFullError:
    """The :class:`DiskFullError` of a write of ``path`` that failed with ``exc`` (a full disk, see
    :func:`disk_full_cause`): one line naming the file, the space free in its folder and ``needed``
    (bytes, an estimate; ``for_what`` says for what, e.g. ``" for the 12 images left"``), then ``hint``."""
    path = Path(path)
    cause = disk_full_cause(exc)
    err = cause.errno if cause is not None else errno.ENOSPC
    free = free_space(path.parent)
    need = f", about {format_size(needed)} needed{for_what}" if needed else ""
    return DiskFullError(f"disk full: cannot write {path} ({disk_full_reason(err)}): {format_size(free)} free in "
                         f"{path.parent}{need}; {hint}", path=path, free=free, needed=needed, errno=err)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None] | str | bytes, binary: bool = True,
                 fsync: bool = False, before_replace: Callable[[], None] | None = None,
                 size_hint: int | None = None) -> Path:
    """Write ``path`` atomically: ``write(f)`` into ``NAME.XXXXXXXX.tmp`` beside it, then rename.

    ``write``: a function of the open file, or the ``str`` / ``bytes`` content itself. ``binary``: the
    mode of the file handed to ``write`` (text files are UTF-8). ``fsync``: force the bytes to disk
    before the rename (checkpoints: a power cut must not leave an empty file under the old name).
    ``before_replace``: called once the new content is complete, just before the rename (checkpoint
    rotation keeps the old file under another name there). ``size_hint``: the file's expected size in
    bytes, for the message when the disk is full (known for ``str`` / ``bytes`` content).
    A failure leaves no temporary file behind and ``path`` as it was; on a full disk it is a
    :class:`~usis.errors.DiskFullError`.
    """
    path = Path(path)
    if isinstance(write, (str, bytes)):
        content = write
        binary = isinstance(content, bytes)
        size_hint = len(content) if binary else len(content.encode("utf-8"))

        def write(f):
            f.write(content)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
                write(f)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except Exception as e:
        if isinstance(e, DiskFullError) or disk_full_cause(e) is None:
            raise
        raise disk_full_error(e, path, size_hint) from e
    return path


def torch_save_atomic(obj: Any, path: str | os.PathLike, fsync: bool = True) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f), fsync=fsync)


def default_cache_dir() -> Path:
    """Where weights and statistics are cached: ``$USIS_CACHE`` if set, else ``~/.cache/usis``."""
    return Path(os.environ.get("USIS_CACHE") or Path.home() / ".cache" / "usis").expanduser()
