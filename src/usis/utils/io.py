"""Files written atomically, and the cache folder.

Every file ``usis`` writes that a reader may open while it is written (checkpoints, exports, caches,
reports) goes through :func:`atomic_write`: a temporary file in the same folder, flushed to disk, then
``os.replace`` onto the target, so a reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None] | str | bytes, binary: bool = True,
                 fsync: bool = False, before_replace: Callable[[], None] | None = None) -> Path:
    """Write ``path`` atomically: ``write(f)`` into ``NAME.XXXXXXXX.tmp`` beside it, then rename.

    ``write``: a function of the open file, or the ``str`` / ``bytes`` content itself. ``binary``: the
    mode of the file handed to ``write`` (text files are UTF-8). ``fsync``: force the bytes to disk
    before the rename (checkpoints: a power cut must not leave an empty file under the old name).
    ``before_replace``: called once the new content is complete, just before the rename (checkpoint
    rotation keeps the old file under another name there).
    A failure leaves no temporary file behind and ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(write, (str, bytes)):
        content = write
        binary = isinstance(content, bytes)

        def write(f):
            f.write(content)
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
    return path


def torch_save_atomic(obj: Any, path: str | os.PathLike, fsync: bool = True) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f), fsync=fsync)


def default_cache_dir() -> Path:
    """Where weights and statistics are cached: ``$USIS_CACHE`` if set, else ``~/.cache/usis``."""
    return Path(os.environ.get("USIS_CACHE") or Path.home() / ".cache" / "usis").expanduser()
