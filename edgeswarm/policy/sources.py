"""Ranking the sources a node can fetch from, by what they actually deliver.

Throughput is measured per transfer and smoothed (EWMA); a source that fails
or sends bad data is set aside for a back-off period that doubles on repeat
offences.  Deterministic and clock-free (callers pass ``now``), so edges,
peers and the swarm simulator (``swarmsim``, not ``sim``) rank sources the
same way and tests need no sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("edgeswarm.roles.swarm")  # said beside the engine's other lines about edges

ALPHA = 0.3  # weight of the newest throughput sample
RISE = 0.05  # weight of a round trip longer than the one kept: a few slow heads (a busy server) barely move it
BASE_BACKOFF = 2.0
MAX_BACKOFF = 60.0
PROBE_EVERY = 1.0  # seconds between probes of a source set aside, when every source is (``probe``)
SAY_EVERY = 60.0  # seconds between two lines about a source that keeps failing at the same back-off (``news``)


@dataclass
class _Source:
    rate: float | None = None  # bytes/s, smoothed
    round_trip: float | None = None  # seconds from a request to its answer's head: about the shortest seen
    link: float | None = None  # bytes/s its bodies come at, all its requests in flight together, smoothed
    failures: int = 0
    until: float = 0.0  # not used before this time
    failed: float = -1e18  # when it last failed (-1e18: never; a clock may start at 0)
    backoff: float = 0.0  # the back-off it was last given
    said: tuple[float, float] | None = None  # (when, back-off) a failure of it was last said, in this episode


class SourceRanking:
    def __init__(self, backoff: float = BASE_BACKOFF, most: float = MAX_BACKOFF) -> None:
        """``backoff``: a first failure's time aside, doubled with each repeat offence up to ``most``."""
        self._sources: dict[str, _Source] = {}
        self.base_backoff, self.max_backoff = backoff, most
        self._probed = -PROBE_EVERY  # when ``probe`` last named a source

    def _get(self, source: str) -> _Source:
        return self._sources.setdefault(source, _Source())

    def success(self, source: str, nbytes: int, seconds: float, sharing: int = 1) -> None:
        """A transfer of ``nbytes`` took ``seconds``, while ``sharing`` requests to it (this one too) were in flight."""
        s = self._get(source)
        rate = nbytes / max(seconds, 1e-6)
        s.rate = rate if s.rate is None else ALPHA * rate + (1 - ALPHA) * s.rate
        if s.round_trip is not None:  # the body's own time: what a request waits for beyond the round trip
            link = nbytes * max(1, sharing) / max(seconds - s.round_trip, 1e-3)
            s.link = link if s.link is None else ALPHA * link + (1 - ALPHA) * s.link
        s.failures = 0
        s.until = 0.0
        s.said = None

    def heard(self, source: str, seconds: float) -> None:
        """An answer's head came ``seconds`` after its request: the round trip follows the shortest (a head that
        waited behind the server's other work is not the path), and rises slowly when the path grows longer."""
        s = self._get(source)
        s.round_trip = seconds if s.round_trip is None or seconds < s.round_trip else s.round_trip + RISE * (seconds - s.round_trip)

    def round_trip(self, source: str) -> float | None:
        return self._get(source).round_trip

    def link(self, source: str) -> float | None:
        return self._get(source).link

    def failure(self, source: str, now: float, began: float | None = None) -> float:
        """Set a source aside; returns the back-off in seconds.

        ``began``: when the failed request was sent.  One sent before the
        source's last failure fails in that same episode: the source is set
        aside again for the back-off it was given, not a doubled one.  Several
        corrupt pieces of one sibling fetched at once set it aside 8, 16 and
        32 s within milliseconds (an adversarial session).
        """
        s = self._get(source)
        if began is None or began > s.failed or s.failures == 0:
            s.failures += 1
            s.backoff = min(self.max_backoff, self.base_backoff * 2.0 ** (s.failures - 1))
            s.failed = now  # the episode's start: a request sent after it that fails is a repeat offence
        s.until = max(s.until, now + s.backoff)
        return s.until - now

    def outraced(self, late: Iterable[tuple[str, float]], winner: str, now: float, kind: str = "edge") -> None:
        """The ``late`` sources (each with when its request was sent) had not answered when ``winner`` did: set aside
        as failed since then (``failure``: their back-off doubles while they keep losing), said when ``news``.  The
        engine's raced pieces and the first answer of several sources (upstream.first_answer) both go by it."""
        for source, began in late:
            backoff = self.failure(source, now, began)
            if self.news(source, now):
                log.warning(
                    "%s %s has not answered within %.0f s; %s answered in its place; set aside for %.0f s",
                    kind,
                    source,
                    now - began,
                    winner,
                    backoff,
                )

    def news(self, source: str, now: float) -> bool:
        """Whether the failure just counted is worth a log line: the first of an episode, one that lengthened the
        back-off, or one ``SAY_EVERY`` after the last line.  While every source is set aside one is probed each
        ``PROBE_EVERY``: a line for each failed probe was 3 600 lines an hour of an edge's outage, each saying it was
        set aside for 60 s (an adversarial session)."""
        s = self._get(source)
        if s.said is not None and s.backoff <= s.said[1] and now - s.said[0] < SAY_EVERY:
            return False
        s.said = (now, s.backoff)
        return True

    def revive(self, source: str, began: float | None = None) -> None:
        """The source is known to answer again (a peer's edge answers announces): its back-off is over.  ``began``: when
        the request that shows it was sent; one sent before the source last failed shows nothing (an edge's pieces
        asked before it refused our token, coming after, each ended the pause, and it was asked again at once)."""
        s = self._get(source)
        if began is not None and began <= s.failed:
            return
        s.failures = 0
        s.until = 0.0
        s.said = None

    def available(self, source: str, now: float) -> bool:
        return self._get(source).until <= now

    def rate(self, source: str) -> float | None:
        return self._get(source).rate

    def probe(self, sources: list[str], now: float) -> str | None:
        """When every one of ``sources`` is set aside: the one whose back-off ends first, at most once a PROBE_EVERY,
        and not within a PROBE_EVERY of its last failure.

        A back-off grows while a source keeps failing (up to MAX_BACKOFF), so
        a gateway whose only edge came back after a long outage answered its
        players 504 until the back-off ran out (13 s after a 40 s outage, up
        to a minute); asked now and then, the edge is found again within
        about a second.  None while some source is available, or too soon.
        """
        aside = [s for s in sources if not self.available(s, now)]
        if not aside or len(aside) < len(sources) or now - self._probed < PROBE_EVERY:
            return None
        aside = [s for s in aside if now - self._get(s).failed >= PROBE_EVERY]
        if not aside:
            return None
        self._probed = now
        return min(aside, key=lambda s: self._get(s).until)

    def ranked(self, sources: list[str], now: float) -> list[str]:
        """Sources not set aside, fastest measured first, unmeasured ones after in the given order.  One whose back-off
        is over is back at its old rank: ranked last until it delivered again, the fastest edge late once (a cold file,
        a 4 s stop) was never asked again by a player's reads, which are all urgent (a review); a wedged one costs a
        reader the race's deadline (engine.relief_worker), and its back-off doubles."""
        live = [s for s in sources if self.available(s, now)]
        return sorted(live, key=lambda s: -(self._get(s).rate or 0.0))
