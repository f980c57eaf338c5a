"""Rate-limited log lines: a flood of one kind of event costs a few lines, not a line per event.

A node under attack sees the same event thousands of times a second (bad
requests, refused accepts, slow headers).  ``Throttle`` lets through at most
``burst`` lines of each kind per ``interval``; the rest are counted, and when
that interval is over ``due()`` names each kind with the number held back, so
the log says "suppressed K similar lines" once instead of K times.  It is
I/O-free: the caller passes the clock and does the logging (``ThrottledLog``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    shown: int = 0
    held: int = 0


class Throttle:
    """At most ``burst`` lines per kind per ``interval`` seconds; the rest are counted for a summary."""

    def __init__(self, burst: int = 5, interval: float = 60.0):
        self.burst = burst
        self.interval = interval
        self._windows: dict[str, _Window] = {}
        self._held: dict[str, int] = {}  # lines held back in windows that have ended, not yet reported

    def admit(self, kind: str, now: float) -> bool:
        """Whether a line of this kind may be logged now; if not, it is counted as held back."""
        window = self._windows.get(kind)
        if window is None or now - window.start >= self.interval:
            self._end(kind)
            window = self._windows[kind] = _Window(now)
        if window.shown < self.burst:
            window.shown += 1
            return True
        window.held += 1
        return False

    def due(self, now: float, ending: bool = False) -> list[tuple[str, int]]:
        """(kind, lines held back) for every window that has ended with lines held back, each reported once; with
        ``ending`` (the node stops), every window's."""
        for kind, window in list(self._windows.items()):
            if ending or now - window.start >= self.interval:
                self._end(kind)
        out, self._held = list(self._held.items()), {}
        return out

    def _end(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window is not None and window.held:
            self._held[kind] = self._held.get(kind, 0) + window.held


class ThrottledLog:
    """A logger whose lines pass through a ``Throttle``; call ``flush()`` now and then to log the summaries."""

    def __init__(self, logger: logging.Logger, throttle: Throttle, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.throttle = throttle
        self.clock = clock
        self._levels: dict[str, int] = {}
        _EVERY.add(self)

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` unless this kind already had its share of lines in this interval."""
        if self.allow(level, kind):
            self.logger.log(level, msg, *args)

    def allow(self, level: int, kind: str) -> bool:
        """Whether a line of this kind and level is to be logged now (for lines some other code writes)."""
        if not self.logger.isEnabledFor(level):
            return False
        self._levels[kind] = level
        return self.throttle.admit(kind, self.clock())

    def flush(self, ending: bool = False) -> None:
        """Log one summary line for each kind that had lines held back in an interval now over (``ending``: in any)."""
        for kind, held in self.throttle.due(self.clock(), ending):
            self.logger.log(self._levels.get(kind, logging.INFO), "suppressed %d similar lines: %s", held, kind)


_EVERY: weakref.WeakSet[ThrottledLog] = weakref.WeakSet()  # this process's: flushed together (``flush_every``)
FLUSH_EVERY = 10.0  # seconds between two looks for summaries due


def flush_every(ending: bool = False) -> None:
    """Every throttled log's summaries due; with ``ending`` (the node stops), of what each window held back so far: a
    burst's summary came only with the next line of its kind, after a flood that ended never, and at a stop inside
    a window it was lost (2 000 refusals, 20 lines, no sum: adversarial sessions)."""
    for one in list(_EVERY):
        one.flush(ending)


async def flushing(every: float = FLUSH_EVERY) -> None:
    """``flush_every`` every ``every`` seconds, until cancelled (a node's servers run it: daemon.Servers)."""
    while True:
        await asyncio.sleep(every)
        flush_every()
