"""Errors and warnings a user can act on: one base class each, caught and printed once by the CLI.

Every error here means "the user can fix this": its message names the file or setting and the fix, and
``usis`` prints it as one ``error: ...`` line and exits 2 (no traceback). Each class also derives from the
built-in type it replaced (``ValueError`` / ``RuntimeError``), so ``except ValueError`` keeps working.

Warnings: :class:`UsisWarning` and its subclasses are shown as one ``usis: warning: ...`` line (not
Python's ``file.py:588: UserWarning`` plus a source line) once :func:`install_warning_format` ran, which
the CLI and every data-parallel worker do.

This module imports nothing from ``usis``: every other module may import it.
"""

from __future__ import annotations

import sys
import warnings


class UsisError(Exception):
    """Base of every user-fixable problem; the message says what and how to fix it."""


class ConfigError(UsisError, ValueError):
    """A setting (``--set key=value``, a preset, a stored config) that cannot work."""


class DeviceError(ConfigError):
    """A device name that does not exist here (CUDA requested on a machine without it, a typo)."""


class CheckpointError(UsisError, RuntimeError):
    """A checkpoint or export that cannot be read or does not fit the requested use."""


class DatasetError(UsisError, ValueError):
    """A problem with the data that the user must fix (wrong folder, class ids, image sizes)."""


class CorruptImageError(DatasetError):
    """An image file that cannot be decoded (truncated, not an image, unsupported format)."""


class MetricsError(UsisError, RuntimeError):
    """A metric that cannot be computed as asked (missing weights, too few images)."""


class GenerateError(UsisError, ValueError):
    """A generate / export / pipeline request that cannot be served as given."""


class EvaluateError(GenerateError):
    """An evaluation request that cannot be served as given."""


class DiskFullError(UsisError, OSError):
    """A write failed because the disk (``ENOSPC``) or the user's quota (``EDQUOT``) is full; the file it was
    replacing is unchanged and no partial file is left. ``path``: the file; ``free`` / ``needed``: bytes
    free in its folder and (an estimate of) bytes it needed, ``None`` if unknown; ``errno``: the cause."""

    def __init__(self, message: str, path=None, free: int | None = None, needed: int | None = None,
                 errno: int | None = None):
        super().__init__(message)
        self.path, self.free, self.needed = path, free, needed
        self.errno = errno

    def __reduce__(self):  # whole across processes (a data-parallel worker hands it to the launcher)
        return type(self), (str(self), self.path, self.free, self.needed, self.errno)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or inf; the run stopped before saving anything non-finite. Not a :class:`UsisError`:
    the trainer catches it and ``usis train`` exits with its own status, 3."""


class UsisWarning(UserWarning):
    """Something the user should know; the run goes on."""


class PeriodicEvaluationWarning(UsisWarning):
    """Periodic evaluation is switched off or skipped; training goes on."""


class DataWarning(UsisWarning):
    """The data work, but not as the user may expect (no validation split, skipped files, ...)."""


class DiskFullWarning(UsisWarning):
    """A sample grid or log line was not written because the disk is full; training goes on."""


def warn(message: str, category: type[UsisWarning] = UsisWarning) -> None:
    """Issue a :class:`UsisWarning` (shown as ``usis: warning: message``)."""
    warnings.warn(message, category, stacklevel=2)


_default_showwarning = warnings.showwarning


def _show(message, category, filename, lineno, file=None, line=None):
    if isinstance(category, type) and issubclass(category, UsisWarning):
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"usis: warning: {message}\n")
        except (OSError, ValueError):
            pass
        return
    _default_showwarning(message, category, filename, lineno, file, line)


def install_warning_format() -> None:
    """Show :class:`UsisWarning` as one ``usis: warning: ...`` line; other warnings as Python does."""
    warnings.showwarning = _show
