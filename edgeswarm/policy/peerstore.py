"""Where a tracker keeps its swarms: in the edge's memory, or in Redis for several edges of one region.

Kraken's split: this module is the storage contract (``PeerStore``) and its
memory implementation, which does no I/O; the Redis one is
edgeswarm.store.redispeers (one contract: tests/test_peerstore.py runs the
same tests against both); tracker.py is the policy that ranks what it reads.

What one announce costs is O(what changed): it writes the asker's record
(its bitfield as one value) and reads a bounded random sample of its swarm,
never the whole swarm.  A record silent for ``ttl`` is gone; the P2P-share
totals per region are counters updated by each announce's delta, so they
survive the peers, and with Redis the edges too.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgeswarm.errors import EdgeswarmError
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerKey, PeerRecord, next_rate

UNMAPPED = "unmapped"
NO_USER = "-"
# seconds a peer's last report stays the base of its next one once it is silent (at least two ttls): its counters run
# on, so a report with no base is taken whole (a new peer, or a restarted one), and a base dropped with a record silent
# for a ttl counted a laptop's bytes again after each sleep longer than that, and, with Redis, every peer of an edge
# with a longer --announce-interval than the others (an adversarial session: totals 1.2 to 3.8 times the bytes)
BASE_KEEP = 3600.0


class StoreUnavailable(EdgeswarmError):
    """The shared store cannot be reached: the edge answers announces 503 and keeps serving files.

    ``how``: "unreachable" or "refuses" (counted apart in /metrics);
    ``kind``: that and the error's type, without what changes from one failure
    to the next (an address, a count): an outage is logged again when its kind
    changes.
    """

    def __init__(self, message: str, how: str = "unreachable", error: str = ""):
        super().__init__(message)
        self.how = how
        self.kind = f"{how} {error}" if error else message


@dataclass
class Placed:
    """What ``put`` read: the swarm's live size (the asker included) and a sample of it (the asker perhaps among them)."""

    size: int
    candidates: list[PeerRecord]


@dataclass
class Counts:
    """Live peers as /status counts them: distinct peers, and (peer, content) memberships, per region; peers per token user."""

    peers: Counter[str] = field(default_factory=Counter)
    memberships: Counter[str] = field(default_factory=Counter)
    users: Counter[str] = field(default_factory=Counter)
    identities: int = 0
    reports: int = 0
    swarms: dict[str, Counter[str]] = field(default_factory=dict)  # region -> content -> its live peers there (the dashboard)


class PeerStore(Protocol):
    """The swarms of a region.  Every method may raise StoreUnavailable (a shared store that is down)."""

    ttl: float

    def describe(self) -> str:
        """The store as logs and /status name it (never a password)."""
        ...

    def at(self, now: float) -> float:
        """The store's time at the tracker's ``now``: what every ``now`` given to it, and its records' ``last_seen``, count in.

        The tracker's own tables run on its clock (an edge's monotonic one:
        a step of the wall clock forgot or kept every peer at once); a store
        shared by several edges needs a clock they share, the wall clock.
        """
        ...

    def behind(self) -> float:
        """How far the times the store stamps its records with run behind the ``now`` given to it: 0, or for a shared
        store whose clock is behind this edge's, by that much (it stamps by the earlier of the two), so that what
        judges a record's silence outside the store (the tracker's pool) judges it as the store does."""
        ...

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int, draws: int | None = None) -> Placed:
        """Store ``rec`` (its ``upload_rate`` set here, from the record it replaces, and its ``last_seen`` to the time
        stored: a shared store's, never after its own clock) and read a sample of its swarm.

        A swarm of at most ``sample + 1`` records is read whole; a larger
        one, ``draws`` random records (by default ``sample + 1``).
        """
        ...

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None: ...

    async def report(
        self, now: float, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool, base: dict[str, int] | None = None
    ) -> None:
        """A peer's cumulative received bytes by kind: what is new since its last report (kept ``base_keep(ttl)``) is
        added to ``region``'s totals, and never what ``base`` says a tracker took already (``added``)."""
        ...

    async def shares(self) -> dict[str, Counter[str]]: ...

    async def swarm(self, cid: str) -> list[PeerRecord]: ...

    async def contents(self) -> list[str]: ...

    async def counts(self, now: float | None = None) -> Counts:
        """Live by ``now`` (by default the store's time now: a shared store's records carry the edges' wall-clock times)."""
        ...

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]: ...

    async def close(self) -> None: ...


def _decrement(counter: Counter[str], key: str) -> None:
    """One fewer ``key``; at zero it goes (a count of nothing is not listed)."""
    counter[key] -= 1
    if not counter[key]:
        del counter[key]


def base_keep(ttl: float) -> float:
    """Seconds a silent peer's last report is kept as its base (``BASE_KEEP``, and two ttls at least)."""
    return max(BASE_KEEP, 2 * ttl)


def region_name(region: Region | None) -> str:
    return region.name if region else UNMAPPED


def added(previous: Sequence[int] | None, stats: Sequence[int], base: Sequence[int] | None = None) -> list[int]:
    """What a report adds to its region's totals: the growth since the previous one, or all of it after a restart (a
    counter went back), but never what is below ``base``.

    ``base`` is the announce's ``stats_base``: the highest stats a tracker
    acknowledged for the content, which a peer sends with a ``started`` (its
    first announce to an edge).  A tracker with no report of the peer took
    its whole counters: one that a router's fallback moved to another
    region's edge and back had them booked again by each tracker it came to,
    for good (an adversarial session: the region's bytes 1.3 to 1.9 times
    what its peers received).  ``base`` only ever lowers what is booked.
    """
    floor = [0] * len(stats) if base is None else [min(b, s) for b, s in zip(base, stats, strict=True)]
    if previous is None or any(s < p for s, p in zip(stats, previous, strict=True)):
        return [s - f for s, f in zip(stats, floor, strict=True)]
    return [s - max(p, f) for s, p, f in zip(stats, previous, floor, strict=True)]


class _Swarm:
    """One content's records, in order of last announce (expiry pops the front), with an index for O(1) sampling.

    ``items`` holds the records themselves in ``keys``' order, so a sample
    draws records by position: no key hashed, no dict probed per draw (at
    100 000 peers those probes are cache misses, and cost more than ranking).
    """

    def __init__(self) -> None:
        self.records: dict[PeerKey, PeerRecord] = {}
        self.keys: list[PeerKey] = []
        self.items: list[PeerRecord] = []
        self.pos: dict[PeerKey, int] = {}

    def put(self, rec: PeerRecord) -> PeerRecord | None:
        key = rec.key
        previous = self.records.pop(key, None)
        self.records[key] = rec
        if previous is None:
            self.pos[key] = len(self.keys)
            self.keys.append(key)
            self.items.append(rec)
        else:
            self.items[self.pos[key]] = rec
        return previous

    def remove(self, key: PeerKey) -> PeerRecord | None:
        rec = self.records.pop(key, None)
        if rec is not None:
            i, last, last_rec = self.pos.pop(key), self.keys.pop(), self.items.pop()
            if last != key:
                self.keys[i], self.items[i] = last, last_rec
                self.pos[last] = i
        return rec

    def sample(self, rng: random.Random, n: int, draws: int | None = None) -> list[PeerRecord]:
        """All of a swarm of up to ``n`` records, else ``draws`` (default ``n``) draws with replacement, repeats dropped (rare when few)."""
        items = self.items
        if len(items) <= n:
            return list(self.records.values())
        draw, size = rng.random, len(items)
        return [items[i] for i in dict.fromkeys([int(draw() * size) for _ in range(draws or n)])]


class MemoryPeerStore:
    """The default: one edge's swarms in its own memory (lost when it stops; a single edge's peers re-announce)."""

    def __init__(self, ttl: float = 90.0, seed: int = 0):
        self.ttl = ttl
        self._swarms: dict[str, _Swarm] = {}
        # (content, identity) -> (when it last reported, its figures), oldest first; tuples: not the garbage collector's
        self._stats: dict[tuple[str, PeerKey], tuple[float, tuple[int, ...]]] = {}
        self._shares: dict[str, Counter[str]] = {}
        self._rng = random.Random(seed)  # sampling need not be unpredictable, only uncorrelated with ranking
        # what counts() reports, kept as records come and go (a full read was an /status poll's main cost: a fifth
        # of a second at 50 000 peers): region -> content -> its members there; identity -> swarms it is in; and
        # identity -> (last announce, region, user) of its newest record, which places the peer
        self._in_region: dict[str, Counter[str]] = {}
        self._memberships: dict[PeerKey, int] = {}
        self._placed: dict[PeerKey, tuple[float, str, str]] = {}
        self._peers: Counter[str] = Counter()  # region -> peers placed there
        self._users: Counter[str] = Counter()  # token user -> its live peers

    def describe(self) -> str:
        return "memory"

    def at(self, now: float) -> float:
        """The tracker's own time: one process's store judges silence by the clock its tracker runs on."""
        return now

    def behind(self) -> float:
        return 0.0

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int, draws: int | None = None) -> Placed:
        swarm = self._swarms.setdefault(cid, _Swarm())
        previous = swarm.records.get(rec.key)
        rec.upload_rate = next_rate(previous, rec.uploaded, now)
        if previous is not None:
            rec.first_seen = previous.first_seen
        self._insert(cid, rec)
        cutoff = now - self.ttl  # silent since the last expiry run: not handed out
        picked = swarm.sample(self._rng, sample + 1, draws)
        if next(iter(swarm.records.values())).last_seen < cutoff:  # the oldest record: are any silent at all?
            picked = [c for c in picked if c.last_seen >= cutoff]
        return Placed(len(swarm.records), picked)

    def _insert(self, cid: str, rec: PeerRecord) -> None:
        """``rec`` into its swarm, in place of its identity's record there, and the tallies with it (put, restore)."""
        previous = self._swarms.setdefault(cid, _Swarm()).put(rec)
        if previous is not None:
            self._left(cid, previous)
        self._joined(cid, rec)

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None:
        swarm = self._swarms.get(cid)
        rec = swarm.remove(key) if swarm else None
        if rec is not None:
            self._left(cid, rec)
        if swarm is not None and not swarm.records:
            del self._swarms[cid]
        return rec

    def _joined(self, cid: str, rec: PeerRecord) -> None:
        """``rec`` is now in ``cid``'s swarm: counted in its region, and placing its peer if it is the newest."""
        region, key = region_name(rec.region), rec.key
        self._in_region.setdefault(region, Counter())[cid] += 1
        self._memberships[key] = self._memberships.get(key, 0) + 1
        placed = self._placed.get(key)
        if placed is None or rec.last_seen >= placed[0]:
            self._place(key, (rec.last_seen, region, rec.user or NO_USER))

    def _left(self, cid: str, rec: PeerRecord) -> None:
        """``rec`` left ``cid``'s swarm (replaced, removed or expired).

        A peer in other swarms keeps its place: only a token's user moves
        regions under one identity, and one whose newest record left stays
        where that record was until it announces again (within an interval).
        """
        region, key = region_name(rec.region), rec.key
        per = self._in_region[region]
        per[cid] -= 1
        if not per[cid]:
            del per[cid]
            if not per:
                del self._in_region[region]
        left = self._memberships[key] - 1
        if left:
            self._memberships[key] = left
        else:
            del self._memberships[key]
            self._place(key, None)

    def _place(self, key: PeerKey, placed: tuple[float, str, str] | None) -> None:
        """Where ``key``'s peer now counts (its newest record's region and user), or nowhere (None: it left every swarm)."""
        old = self._placed.pop(key, None)
        if old is not None:
            _decrement(self._peers, old[1])
            _decrement(self._users, old[2])
        if placed is not None:
            self._placed[key] = placed
            self._peers[placed[1]] += 1
            self._users[placed[2]] += 1

    async def report(
        self, now: float, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool, base: dict[str, int] | None = None
    ) -> None:
        last = self._stats.pop((cid, key), None)  # put back last, if at all: the table stays in order of report
        if last is None and stopped:
            return  # a peer the tracker never knew, or forgot: ids are free, so its word adds nothing
        values = tuple(stats.values())
        totals = self._shares.setdefault(region, Counter())
        floor = None if base is None else [base.get(kind, 0) for kind in stats]
        for kind, n in zip(stats, added(None if last is None else last[1], values, floor), strict=True):
            totals[kind] += n
        if not stopped:
            self._stats[(cid, key)] = (now, values)

    async def shares(self) -> dict[str, Counter[str]]:
        return {region: Counter(c) for region, c in self._shares.items()}

    async def swarm(self, cid: str) -> list[PeerRecord]:
        swarm = self._swarms.get(cid)
        return list(swarm.records.values()) if swarm else []

    async def contents(self) -> list[str]:
        return list(self._swarms)

    async def counts(self, now: float | None = None) -> Counts:
        """Status only, from the tallies kept as records come and go.  A peer is placed by its most recent announce,
        should its address have moved regions."""
        out = Counts(reports=len(self._stats), identities=len(self._placed))
        for region, per in self._in_region.items():
            out.memberships[region] = per.total()
            out.swarms[region] = Counter(per)
        out.peers, out.users = Counter(self._peers), Counter(self._users)
        return out

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """O(what expires): each swarm is in order of last announce, so the scan stops at its first live record."""
        dropped = []
        for cid in list(self._swarms):
            swarm = self._swarms[cid]
            silent = []
            for rec in swarm.records.values():
                if now - rec.last_seen <= self.ttl:
                    break
                silent.append(rec)
            for rec in silent:
                swarm.remove(rec.key)
                self._left(cid, rec)
                dropped.append((cid, rec))
            if not swarm.records:
                del self._swarms[cid]
        keep, stale = base_keep(self.ttl), []
        for base, (when, _) in self._stats.items():  # the oldest first: the scan stops at the first base still kept
            if now - when <= keep:
                break
            stale.append(base)
        for base in stale:
            del self._stats[base]
        return dropped

    async def close(self) -> None:
        return None

    # what store/trackersnapshot.py keeps across the edge's restart
    def records(self) -> Iterator[tuple[str, PeerRecord, tuple[int, ...] | None]]:
        """Every record, each swarm's in order of last announce, with its peer's last report (``report``) or None."""
        for cid, swarm in self._swarms.items():
            for key, rec in swarm.records.items():
                base = self._stats.get((cid, key))
                yield cid, rec, None if base is None else base[1]

    def share_totals(self) -> dict[str, dict[str, int]]:
        return {region: dict(totals) for region, totals in self._shares.items()}

    def restore(self, cid: str, rec: PeerRecord, stats: tuple[int, ...] | None) -> None:
        """Put back a record ``records`` gave, its swarm's records in the order given (expiry reads them oldest first)."""
        self._insert(cid, rec)
        if stats is not None:
            self._stats[(cid, rec.key)] = (rec.last_seen, stats)

    def restore_shares(self, shares: dict[str, dict[str, int]]) -> None:
        for region, totals in shares.items():
            self._shares.setdefault(region, Counter()).update(totals)


# -- Redis ---------------------------------------------------------------------------------------
