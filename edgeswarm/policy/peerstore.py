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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgeswarm.errors import EdgeswarmError
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerKey, PeerRecord, next_rate

UNMAPPED = "unmapped"
NO_USER = "-"


class StoreUnavailable(EdgeswarmError):
    """The shared store cannot be reached: the edge answers announces 503 and keeps serving files."""


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

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int, draws: int | None = None) -> Placed:
        """Store ``rec`` (its ``upload_rate`` set here, from the record it replaces) and read a sample of its swarm.

        A swarm of at most ``sample + 1`` records is read whole; a larger
        one, ``draws`` random records (by default ``sample + 1``).
        """
        ...

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None: ...

    async def report(self, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool) -> None:
        """A peer's cumulative received bytes by kind: what is new since its last report is added to ``region``'s totals."""
        ...

    async def shares(self) -> dict[str, Counter[str]]: ...

    async def swarm(self, cid: str) -> list[PeerRecord]: ...

    async def contents(self) -> list[str]: ...

    async def counts(self, now: float | None = None) -> Counts:
        """Live by ``now`` (by default the wall clock: a shared store's records carry the edges' wall-clock times)."""
        ...

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]: ...

    async def close(self) -> None: ...


def region_name(region: Region | None) -> str:
    return region.name if region else UNMAPPED


def added(previous: Sequence[int] | None, stats: Sequence[int]) -> list[int]:
    """What a report adds to its region's totals: the growth since the previous one, or all of it after a restart (a counter went back)."""
    if previous is None or any(s < p for s, p in zip(stats, previous, strict=True)):
        return list(stats)
    return [s - p for s, p in zip(stats, previous, strict=True)]


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
        self._stats: dict[tuple[str, PeerKey], tuple[int, ...]] = {}  # tuples: not the garbage collector's (claims._Tally)
        self._shares: dict[str, Counter[str]] = {}
        self._rng = random.Random(seed)  # sampling need not be unpredictable, only uncorrelated with ranking

    def describe(self) -> str:
        return "memory"

    async def put(self, now: float, cid: str, rec: PeerRecord, sample: int, draws: int | None = None) -> Placed:
        swarm = self._swarms.setdefault(cid, _Swarm())
        previous = swarm.records.get(rec.key)
        rec.upload_rate = next_rate(previous, rec.uploaded, now)
        if previous is not None:
            rec.first_seen = previous.first_seen
        swarm.put(rec)
        cutoff = now - self.ttl  # silent since the last expiry run: not handed out
        picked = swarm.sample(self._rng, sample + 1, draws)
        if next(iter(swarm.records.values())).last_seen < cutoff:  # the oldest record: are any silent at all?
            picked = [c for c in picked if c.last_seen >= cutoff]
        return Placed(len(swarm.records), picked)

    async def remove(self, cid: str, key: PeerKey) -> PeerRecord | None:
        swarm = self._swarms.get(cid)
        rec = swarm.remove(key) if swarm else None
        if swarm is not None and not swarm.records:
            del self._swarms[cid]
        return rec

    async def report(self, cid: str, key: PeerKey, region: str, stats: dict[str, int], stopped: bool) -> None:
        previous = self._stats.get((cid, key))
        if previous is None and stopped:
            return  # a peer the tracker never knew, or forgot: ids are free, so its word adds nothing
        values = tuple(stats.values())
        totals = self._shares.setdefault(region, Counter())
        for kind, n in zip(stats, added(previous, values), strict=True):
            totals[kind] += n
        if stopped:
            del self._stats[(cid, key)]
        else:
            self._stats[(cid, key)] = values

    async def shares(self) -> dict[str, Counter[str]]:
        return {region: Counter(c) for region, c in self._shares.items()}

    async def swarm(self, cid: str) -> list[PeerRecord]:
        swarm = self._swarms.get(cid)
        return list(swarm.records.values()) if swarm else []

    async def contents(self) -> list[str]:
        return list(self._swarms)

    async def counts(self, now: float | None = None) -> Counts:
        """A full read (status only).  A peer is placed by its most recent announce, should its address have moved regions."""
        latest: dict[PeerKey, PeerRecord] = {}
        out = Counts(reports=len(self._stats))
        for cid, swarm in self._swarms.items():
            for key, rec in swarm.records.items():
                out.memberships[region_name(rec.region)] += 1
                out.swarms.setdefault(region_name(rec.region), Counter())[cid] += 1
                if key not in latest or rec.last_seen > latest[key].last_seen:
                    latest[key] = rec
        out.peers = Counter(region_name(r.region) for r in latest.values())
        out.users = Counter(r.user or NO_USER for r in latest.values())
        out.identities = len(latest)
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
                self._stats.pop((cid, rec.key), None)
                dropped.append((cid, rec))
            if not swarm.records:
                del self._swarms[cid]
        return dropped

    async def close(self) -> None:
        return None


# -- Redis ---------------------------------------------------------------------------------------
