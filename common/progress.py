"""Progress of long steps with an estimate of the time left.

On a terminal a ``tqdm`` bar (on stderr, gone when the step ends); otherwise
(CI, a log file, a Ray worker) plain log lines, at most one every ``every``
seconds and one at the end, each with the time so far and the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("edgebind.progress")


def _fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def time_left(t0: float, done: int, total: int) -> str:
    """``", about 3 min left"`` at the pace since ``t0`` (``time.monotonic()``) after ``done`` of ``total``; "" when finished."""
    if done <= 0 or done >= total:
        return ""
    return f", about {_fmt_seconds((time.monotonic() - t0) / done * (total - done))} left"


class Progress:
    """``total`` units of work called ``what``; ``update()`` after each, with figures to show beside it.

    ``bar`` forces the terminal bar on (True) or off (False); by default it is
    on when stderr is a terminal. ``level`` is the plain lines' log level.
    """

    def __init__(self, total: int, what: str, *, unit: str = "step", every: float = 30.0, bar: bool | None = None, level: int = logging.INFO):
        self.total, self.what, self.unit, self.every, self.level = max(int(total), 0), what, unit, every, level
        self.done = 0
        self.t0 = self._last = time.monotonic()
        self._bar = None
        if bar if bar is not None else sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=what, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

    def left(self) -> float | None:
        """Seconds left at the pace so far (None before the first unit)."""
        if self.done == 0:
            return None
        return (time.monotonic() - self.t0) / self.done * max(self.total - self.done, 0)

    def line(self, figures: dict[str, Any] | None = None) -> str:
        elapsed = time.monotonic() - self.t0
        text = f"{self.what}: {self.done}/{self.total} {self.unit}s, {_fmt_seconds(elapsed)} so far"
        left = self.left()
        if left is not None and self.done < self.total:
            text += f", about {_fmt_seconds(left)} left"
        if figures:
            text += "; " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        return text

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if figures:
                self._bar.set_postfix({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every or self.done >= self.total:
            self._last = now
            log.log(self.level, "%s", self.line(figures))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
