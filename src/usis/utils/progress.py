"""Progress on stderr: a tqdm bar in a terminal, plain lines in a log file.

In a terminal tqdm redraws one line several times a second with carriage returns. Written to a file (nohup,
a cluster's job log, ``make demo > log``) those redraws pile up into one endless line (a long run would
write gigabytes of them), so there :func:`progress_bar` writes one plain line every ``interval_s`` seconds
(``train.log_interval_s`` for training) instead, as training frameworks do::

    usis 1200/175000 (0.7%) 8.31 it/s loss_g_seg=0.512 loss_g_adv=0.693 loss_s=0.498 loss_d=1.386 elapsed 2:24 left 5:48:30

and a last one when the bar is closed. Both objects take the same calls: ``update(n)``,
``set_postfix(dict)``, ``close()``. Training (:mod:`usis.train.trainer`) and the synthetic evaluator's first
training (:mod:`usis.metrics.synthetic_eval.fit`) draw their progress with it; it lives here, at the bottom
of the package, so that ``metrics`` need not import ``usis.train``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from tqdm import tqdm


def progress_bar(total: int, initial: int = 0, enabled: bool = True, interval_s: float = 30.0,
                 file: IO[str] | None = None, desc: str = "usis",
                 clock: Callable[[], float] = time.monotonic) -> Any:
    """A progress display of a loop from step ``initial`` to ``total`` on ``file`` (default: ``sys.stderr`` at
    the time of the call): tqdm when ``file`` is a terminal, else a :class:`PlainProgress` that writes a line
    every ``interval_s`` seconds of ``clock``. ``enabled=False``: an object that shows nothing."""
    file = sys.stderr if file is None else file
    if not enabled:
        return NoProgress()
    if _isatty(file):
        return tqdm(total=total, initial=initial, dynamic_ncols=True, desc=desc, file=file)
    return PlainProgress(total, initial, interval_s, file, desc, clock)


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


class NoProgress:
    """The progress display of a run that shows none (``--no-progress``, ranks other than 0)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """One plain line (no carriage return) every ``interval_s`` seconds of progress, and one at :meth:`close`.

    A line: ``desc step/total (percent) it/s postfix... elapsed E left L``; ``it/s`` and the time left are
    measured over the steps since the previous line (the current speed, not the average since a slow
    first step). ``interval_s <= 0``: a line at every update. A failed write (a full disk under the log
    file) is ignored: the display must never end a run.
    """

    def __init__(self, total: int, initial: int = 0, interval_s: float = 30.0, file: IO[str] | None = None,
                 desc: str = "usis", clock: Callable[[], float] = time.monotonic):
        self.total, self.n = int(total), int(initial)
        self.interval_s = float(interval_s)
        self.file = sys.stderr if file is None else file
        self.desc = desc
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self._t0 = self._last_t = clock()
        self._last_n = self.n
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self._last_t >= self.interval_s:
            self._line()

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """The values shown after the speed (losses); shown in the next line."""
        self.postfix = {**(values or {}), **kwargs}

    def close(self) -> None:
        """Write the last line (unless no step was made since the previous one)."""
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._line()

    def format_line(self, now: float) -> str:
        dt, dn = now - self._last_t, self.n - self._last_n
        rate = dn / dt if dt > 0 and dn > 0 else None
        parts = [f"{self.desc} {self.n}/{self.total}"]
        if self.total > 0:
            parts.append(f"({100.0 * self.n / self.total:.1f}%)")
        parts.append(f"{rate:.3g} it/s" if rate is not None else "? it/s")
        parts += [f"{k}={_value(v)}" for k, v in self.postfix.items()]
        parts.append(f"elapsed {_duration(now - self._t0)}")
        if rate is not None and self.total > self.n:
            parts.append(f"left {_duration((self.total - self.n) / rate)}")
        return " ".join(parts)

    def _line(self) -> None:
        now = self.clock()
        line = self.format_line(now)
        self._last_t, self._last_n = now, self.n
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except (OSError, ValueError):
            pass


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS`` (as tqdm shows times)."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
