"""A swarm's candidate pool: the random draws its announces rank windows of, kept between them and renewed a few at a time.

Why: in a swarm of 100 000 peers, a fresh sample of 61 records per announce
touches 61 records nobody touched lately, and those cache misses cost more
than ranking them (bench tracker).  So the tracker keeps one pool per swarm:
each announce draws only a few new records from the store, which push out
the ones drawn longest ago, and ranks the pool, whose records stay hot, with
what ranking needs of each (its asker-independent part) computed once, when
the record enters the pool.  A candidate then stays in the pool for about
``capacity / draws`` announces of its swarm instead of one.

Each announce ranks a random window of the pool (``window``), half of it, not
the whole pool: in a swarm larger than the pool, every announce ranking the
same candidates handed every asker the same best ones, so everyone's
neighbours were the same few uplinks (simulator, 100 whole-file downloads:
2.03 x the bound against 1.28 x with fresh samples; with windows of a pool
twice the sample, 1.33 x).  The pool's slots hold draws in the random order
they came, so a run of slots is a random subset.

What a pool holds stays current: the asker's new record replaces its old one
in place, a peer that stops or expires leaves it, and a silent record is
never ranked.  Records changed through another edge sharing the store (Redis)
are seen once drawn again, or when the pool is read whole again: every
``refresh`` seconds (tracker.py), and at once while the swarm is no larger
than the pool (then the pool is the whole swarm, as the store reads it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeswarm.policy.tracker import PeerKey, PeerRecord, RankPart


class Pool:
    """One swarm's candidates: at most ``capacity`` records and their rank parts, the oldest draw replaced first."""

    def __init__(self, capacity: int, now: float, part: Callable[[PeerRecord], RankPart]):
        """``part``: what ranking needs of a record whatever the asker (tracker.rank_part)."""
        self.capacity = capacity
        self.records: list[PeerRecord] = []
        self.parts: list[RankPart] = []  # parts[i] is records[i]'s
        self._part = part
        self._slot: dict[PeerKey, int] = {}
        self._cursor = 0  # the slot the next draw replaces: the one drawn longest ago
        self._oldest = math.inf  # at most the oldest last_seen in the pool: prune() scans only when it may find something
        self.filled = now  # when the pool was last read whole
        self.used = now  # when an announce last ranked it

    def __len__(self) -> int:
        return len(self.records)

    def whole(self, now: float, records: Iterable[PeerRecord]) -> None:
        """A whole new sample (or the whole of a small swarm): the pool starts afresh with it."""
        self.records, self.parts, self._slot = [], [], {}
        self._cursor = 0
        self._oldest = math.inf
        self.filled = now
        self.add(records)

    def add(self, records: Iterable[PeerRecord]) -> None:
        """Fresh draws: a record already in the pool is updated in place, others replace the oldest draws."""
        slot, pool, parts = self._slot, self.records, self.parts
        for rec in records:
            key = rec.key
            i = slot.get(key)
            if i is None:
                if len(pool) < self.capacity:
                    i = len(pool)
                    pool.append(rec)
                    parts.append(self._part(rec))
                else:
                    i = self._cursor
                    del slot[pool[i].key]
                    self._cursor = (i + 1) % self.capacity
                slot[key] = i
            pool[i], parts[i] = rec, self._part(rec)
            if rec.last_seen < self._oldest:
                self._oldest = rec.last_seen

    def window(self, rng: random.Random, size: int) -> tuple[list[PeerRecord], list[RankPart]]:
        """``size`` candidates and their parts, a run of slots from a random one on (wrapping): the whole pool if it is no
        larger.  Slices, not a sample: an announce's cost is its ranking, not choosing what to rank."""
        n = len(self.records)
        if n <= size:
            return self.records, self.parts
        start = rng.randrange(n)
        end = start + size
        if end <= n:
            return self.records[start:end], self.parts[start:end]
        return self.records[start:] + self.records[: end - n], self.parts[start:] + self.parts[: end - n]

    def update(self, rec: PeerRecord) -> None:
        """A peer announced: if it is a candidate, its new record takes the old one's place (its new pieces, its new rate)."""
        i = self._slot.get(rec.key)
        if i is not None:
            self.records[i], self.parts[i] = rec, self._part(rec)

    def discard(self, key: PeerKey) -> None:
        """A peer left its swarm (stopped, expired): never handed out again."""
        i = self._slot.pop(key, None)
        if i is None:
            return
        last, last_part = self.records.pop(), self.parts.pop()
        if i < len(self.records):
            self.records[i], self.parts[i] = last, last_part
            self._slot[last.key] = i
        if self._cursor >= len(self.records):
            self._cursor = 0

    def prune(self, cutoff: float) -> None:
        """Records silent since ``cutoff`` leave the pool (a cheap check when there are none)."""
        if self._oldest < cutoff:
            for rec in [r for r in self.records if r.last_seen < cutoff]:
                self.discard(rec.key)
            self._oldest = min((r.last_seen for r in self.records), default=math.inf)
