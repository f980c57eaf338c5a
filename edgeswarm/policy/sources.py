"""Ranking the sources a node can fetch from, by what they actually deliver.

Throughput is measured per transfer and smoothed (EWMA); a source that fails
or sends bad data is set aside for a back-off period that doubles on repeat
offences.  Deterministic and clock-free (callers pass ``now``), so edges,
peers and the swarm simulator (``swarmsim``, not ``sim``) rank sources the
same way and tests need no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA = 0.3  # weight of the newest throughput sample
BASE_BACKOFF = 2.0
MAX_BACKOFF = 60.0


@dataclass
class _Source:
    rate: float | None = None  # bytes/s, smoothed
    failures: int = 0
    until: float = 0.0  # not used before this time


class SourceRanking:
    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}

    def _get(self, source: str) -> _Source:
        return self._sources.setdefault(source, _Source())

    def success(self, source: str, nbytes: int, seconds: float) -> None:
        s = self._get(source)
        rate = nbytes / max(seconds, 1e-6)
        s.rate = rate if s.rate is None else ALPHA * rate + (1 - ALPHA) * s.rate
        s.failures = 0
        s.until = 0.0

    def failure(self, source: str, now: float) -> float:
        """Set a source aside; returns the back-off in seconds."""
        s = self._get(source)
        s.failures += 1
        backoff = min(MAX_BACKOFF, BASE_BACKOFF * 2.0 ** (s.failures - 1))
        s.until = now + backoff
        return backoff

    def revive(self, source: str) -> None:
        """The source is known to answer again (a peer's edge answers announces): its back-off is over."""
        s = self._get(source)
        s.failures = 0
        s.until = 0.0

    def available(self, source: str, now: float) -> bool:
        return self._get(source).until <= now

    def rate(self, source: str) -> float | None:
        return self._get(source).rate

    def ranked(self, sources: list[str], now: float) -> list[str]:
        """Sources not set aside, fastest measured first, unmeasured ones after in the given order."""
        live = [s for s in sources if self.available(s, now)]
        return sorted(live, key=lambda s: -(self._get(s).rate or 0.0))
