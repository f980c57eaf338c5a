"""Promoted peers: which of a region's peers the edge trusts to relay for the peers that cannot be reached, and to track for the others.

Seed 003's supernodes: ordinary nodes promoted when they have enough
resources and have stayed long enough.  Sans-IO: the edge's announce handler
tells ``Promoter`` what each announce showed (time passed in); it answers
whether that peer is promoted, which promoted peer of its region an
unreachable peer should hold its relay at, and which one a reachable peer
should send its neighbour-list refreshes to (its sub-tracker).

- **Promotion**: a reachable peer whose measured upload (the bytes it reports
  sending to peers, over its last ``WINDOW`` readings, at least
  ``SAMPLE_GAP_S`` apart) has reached
  ``min_upload_Bps`` and that has announced for at least ``min_uptime_s``;
  at most ``per_region`` promoted peers per region.
- **Demotion**: a promoted peer that stops announcing (``expire``: the
  tracker's ttl), says ``stopped`` for the last content it announced here
  (``stopped`` for one of several is that content leaving, an eviction or a
  live segment: it leaves the peer's counters, not its promotion), moves
  address or restarts (a content's counter goes back).  Each is recorded
  with its reason for the edge to log (``take_demoted``).  Not for a fall
  of its measured upload: what a peer uploads follows what its neighbours ask of it, and demoting on it made peers flap
  between promoted and demoted as a crowd completed (lab ``relay-promoted``,
  docs/lab.md), dropping their relayed peers' connections each time.  Its relayed peers are sent back to the edge's relay by their
  next announce answer.
- **Assignment**: an unreachable peer's relay, and a reachable peer's
  sub-tracker, is the promoted peer of its region that a rendezvous hash of
  its relay id (its peer key) picks: a region's peers spread over its
  promoted peers, each keeps its pick while that one stays, and when one
  leaves only its own peers move.  A peer is never its own sub-tracker.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

WINDOW = 5  # readings of a peer's upload counters the upload rate is measured over
# seconds between two samples of the window at least (a reading closer to the last one brings it up to date): a
# batch's items each read the counters microseconds apart, and the growth of one item's counter was divided by those
# microseconds: a peer holding several contents that uploaded a few hundred bytes was measured at MB/s and promoted at
# any --promote-upload (a session)
SAMPLE_GAP_S = 1.0
LEFT_KEPT = 64  # contents a peer said stopped for whose counters are kept (a live viewer stops one every segment)


@dataclass(frozen=True)
class PromotionRules:
    min_upload_Bps: float  # measured upload a peer needs to be promoted (half of it to stay)
    min_uptime_s: float = 300.0  # seconds since its first announce here
    per_region: int = 4  # promoted peers per region at most


@dataclass
class _Seen:
    url: str
    region: str | None
    first: float
    last: float
    # (first taken, last brought up to date, total uploaded then), SAMPLE_GAP_S apart by when first taken (``read``)
    samples: deque[tuple[float, float, int]] = field(default_factory=lambda: deque(maxlen=WINDOW))
    uploaded: dict[str, int] = field(default_factory=dict)  # content -> bytes sent to peers, as last reported
    dropped: int = 0  # bytes reported for contents since dropped (``stopped``): what it sent stays in its total
    left: dict[str, int] = field(default_factory=dict)  # content dropped -> its counter then, the last LEFT_KEPT (_stopped)
    best: float = 0.0  # the highest upload rate measured over a window: what it has shown it can send

    def read(self, now: float) -> None:
        """A reading of its total upload at ``now``: a new sample, or the last one brought up to date when that one was
        first taken less than SAMPLE_GAP_S before (the items of one announce request are one sample).  Judged by when
        the last sample was last brought up to date, a peer announcing more than once a second stayed at one sample for
        good, measured at 0 and never promoted (a review)."""
        total = self.dropped + sum(self.uploaded.values())
        if self.samples and now - self.samples[-1][0] < SAMPLE_GAP_S:
            self.samples[-1] = (self.samples[-1][0], now, total)
        else:
            self.samples.append((now, now, total))

    def rate(self) -> float:
        """Bytes a second uploaded over the window's samples, each as last brought up to date, at least SAMPLE_GAP_S
        apart (0 before: two samples of a batch that came as the first turned a second old may be microseconds apart)."""
        if len(self.samples) < 2:
            return 0.0
        (_, t0, b0), (_, t1, b1) = self.samples[0], self.samples[-1]
        return max(0, b1 - b0) / (t1 - t0) if t1 - t0 >= SAMPLE_GAP_S else 0.0


class Promoter:
    """Which reachable peers of each region relay for the unreachable ones (module docstring)."""

    def __init__(self, rules: PromotionRules):
        self.rules = rules
        self.seen: dict[str, _Seen] = {}  # peer key (owner/peer id) -> what its announces showed
        self.promoted: dict[str, str] = {}  # peer key -> its upload URL
        self.assigned: dict[str, str] = {}  # peer key -> the sub-tracker its last answer named
        self.promotions = 0
        self.demotions = 0
        self._demoted: list[tuple[str, str]] = []  # (peer key, why) of the demotions since take_demoted

    def observe(self, now: float, key: str, url: str, region: str | None, cid: str, uploaded: int, stopped: bool = False) -> bool:
        """A reachable peer's announce of ``cid`` (its ``uploaded`` counter for it); returns whether it is promoted now."""
        if stopped:
            self._stopped(key, cid)
            return key in self.promoted
        seen = self.seen.get(key)
        if seen is None or seen.url != url:  # new, or moved: its uptime starts again
            self.forget(key, f"it moved to {url}")
            seen = self.seen[key] = _Seen(url, region, now, now)
        seen.last, seen.region = now, region
        if cid in seen.left and uploaded >= seen.left[cid]:  # announced again with its counter kept: not counted twice
            seen.dropped -= seen.left[cid]
        seen.left.pop(cid, None)
        if uploaded < seen.uploaded.get(cid, 0):  # a restart: its counters start again, and so does its measure
            self.forget(key, f"it restarted (its upload counter for {cid[:12]} went back)")
            seen = self.seen[key] = _Seen(url, region, now, now)
        seen.uploaded[cid] = uploaded
        seen.read(now)
        seen.best = max(seen.best, seen.rate())
        rules = self.rules
        if key not in self.promoted and seen.best >= rules.min_upload_Bps and now - seen.first >= rules.min_uptime_s and self._room(region):
            self.promoted[key] = url
            self.promotions += 1
            self.assigned.pop(key, None)  # a sub-tracker has none: its answers say "promoted", never "tracker"
        return key in self.promoted

    def _stopped(self, key: str, cid: str) -> None:
        """``stopped`` for ``cid``: that content leaves the peer's counters (its bytes stay in its total; fetched again,
        its counter starts at 0, which is no restart); a peer with no content left here has left, and is forgotten.
        Demoted on any ``stopped`` before, a promoted peer lost its relayed and sub-tracked peers, and had to serve
        --promote-uptime again, at every eviction and at every live segment it let go (an adversarial session)."""
        seen = self.seen.get(key)
        if seen is None:
            return
        if cid in seen.uploaded:  # a peer still reading it keeps its counter: announced again, it goes on from there
            seen.left[cid] = seen.uploaded[cid]  # (counted twice in the total, the measure jumped: a review)
            while len(seen.left) > LEFT_KEPT:
                del seen.left[next(iter(seen.left))]
            seen.dropped += seen.uploaded.pop(cid)
        if not seen.uploaded:
            self.forget(key, "it said stopped for the last content it announced here")

    def _room(self, region: str | None) -> bool:
        return sum(1 for k in self.promoted if self.seen[k].region == region) < self.rules.per_region

    def relay_for(self, region: str | None, rid: str, not_url: str | None = None) -> str | None:
        """The promoted peer of ``region`` whose relay the peer with relay id ``rid`` should hold; None: the edge's."""
        return rendezvous((url for k, url in self.promoted.items() if self.seen[k].region == region and url != not_url), rid)

    def tracker_for(self, region: str | None, key: str, url: str) -> str | None:
        """The sub-tracker of the reachable peer ``key`` (at ``url``) of ``region``: a promoted peer other than itself; None: the edge.

        Remembered until the peer is forgotten, for ``status``.
        """
        pick = None if key in self.promoted else self.relay_for(region, key, not_url=url)
        if pick is None:
            self.assigned.pop(key, None)
        else:
            self.assigned[key] = pick
        return pick

    def expire(self, now: float, ttl: float) -> list[str]:
        """Forget peers silent for ``ttl`` seconds (demoting the promoted ones); the keys demoted."""
        gone = [k for k, s in self.seen.items() if now - s.last > ttl]
        demoted = [k for k in gone if k in self.promoted]
        for key in gone:
            self.forget(key, "it stopped announcing")
        return demoted

    def forget(self, key: str, why: str = "forgotten") -> None:
        """Everything known of the peer ``key``; demoted, for ``why``, if it was promoted."""
        if key in self.promoted:
            self._demote(key, why)
        self.seen.pop(key, None)
        self.assigned.pop(key, None)

    def _demote(self, key: str, why: str) -> None:
        del self.promoted[key]
        self.demotions += 1
        self._demoted.append((key, why))

    def take_demoted(self) -> list[tuple[str, str]]:
        """The demotions since the last call, (peer key, why) each: the edge logs each once (only those of ``expire``
        were logged: a peer demoted for a ``stopped`` left no line)."""
        taken, self._demoted = self._demoted, []
        return taken

    def assignments(self) -> Counter[str]:
        """Peers assigned to each promoted peer as their sub-tracker (one demoted since counts no more: its peers move at their next answer)."""
        live = set(self.promoted.values())
        return Counter(url for url in self.assigned.values() if url in live)

    def status(self) -> dict[str, object]:
        by_tracker = self.assignments()
        return {
            "promoted": sorted(self.promoted.values()),
            "promotions": self.promotions,
            "demotions": self.demotions,
            "subtracker_assignments": by_tracker.total(),
            "subtracker_assignments_by_tracker": dict(sorted(by_tracker.items())),
            "rules": {
                "min_upload_Bps": self.rules.min_upload_Bps,
                "min_uptime_s": self.rules.min_uptime_s,
                "per_region": self.rules.per_region,
            },
        }


def rendezvous(urls: Iterable[str], token: str) -> str | None:
    """The URL with the highest hash of (token, URL): each token keeps its pick while that URL stays, whatever comes and goes."""
    best, pick = -1, None
    for url in urls:
        score = int.from_bytes(hashlib.blake2b(f"{token}|{url}".encode(), digest_size=8).digest(), "big")
        if score > best or (score == best and pick is not None and url < pick):
            best, pick = score, url
    return pick
