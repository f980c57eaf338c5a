"""A token bucket: the upload cap of edges and peers; and a rate meter (``RateMeter``): an edge's announces a second.

The sans-IO core (``delay``) takes the time as an argument so tests can
drive it without sleeping; ``throttle`` is the asyncio face the daemons use.
(Neither simulator uses it: ``sim`` models rates, ``swarmsim`` its own links.)
Tokens may go negative (debt), so a piece larger than the burst still goes
out and the sender then waits the debt off; callers should throttle in
chunks of about 64 KiB so the rate on the wire is smooth, not bursty.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate: float | None, burst: float | None = None):
        self.rate = rate or None  # bytes/s; None or 0: unlimited
        self.burst = burst if burst is not None else max((rate or 0) * 0.25, 64 * 1024)
        self._tokens = self.burst
        self._stamp: float | None = None

    def delay(self, now: float, nbytes: int) -> float:
        """Reserve ``nbytes``; seconds the caller must wait before sending them."""
        if not self.rate:
            return 0.0
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return max(0.0, -self._tokens / self.rate)

    async def throttle(self, nbytes: int) -> None:
        wait = self.delay(time.monotonic(), nbytes)
        if wait > 0:
            await asyncio.sleep(wait)


class RateMeter:
    """Events a second over the last ``window`` seconds, and in all: an edge's announces, so a fall in its load can be read off it.

    Counted in whole-second buckets (at most ``window`` + 1 kept); time passed in.
    """

    def __init__(self, window: float = 10.0):
        self.window = window
        self.total = 0
        self._buckets: dict[int, int] = {}  # whole second -> events in it, oldest first

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        self._buckets[second] = self._buckets.get(second, 0) + n
        self.total += n
        self._prune(now)

    def rate(self, now: float) -> float:
        """Events a second over the last ``window`` seconds."""
        self._prune(now)
        return sum(self._buckets.values()) / self.window

    def _prune(self, now: float) -> None:
        oldest = now - self.window
        for second in [s for s in self._buckets if s + 1 <= oldest]:
            del self._buckets[second]
