"""Training progress on stderr: a tqdm bar in a terminal, plain lines in a log file.

The display itself is :mod:`usis.utils.progress` (the synthetic evaluator's training uses it too, and
``metrics`` may not import ``usis.train``); the names stay importable from here.
"""

from __future__ import annotations

from usis.utils.progress import NoProgress, PlainProgress, progress_bar

__all__ = ["NoProgress", "PlainProgress", "progress_bar"]
