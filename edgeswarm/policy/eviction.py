"""Which cached pieces to drop when the cache is over quota.

LFU with dynamic aging (LFU-DA, Arlitt et al.): a piece's priority is the
cache's "age" when it was last hit plus how often it was hit.  Popular content
stays even if it was not read in the last minute, while a burst of hits long
ago fades as the age rises with every eviction, so the cache follows a
changing catalogue.  Pure bookkeeping, no I/O: the store carries it out.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Entry:
    size: int
    hits: int
    priority: float
    stamp: int  # tells a live heap row from a stale one


class EvictionPolicy(Generic[K]):
    """The bookkeeping of one cache, whose items are keyed by ``K`` (the piece store's: (content id, index))."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.used = 0
        self._age = 0.0
        self._clock = 0
        self._entries: dict[K, _Entry] = {}
        self._heap: list[tuple[float, int, K]] = []
        self.pinned: Callable[[K], bool] = lambda key: False  # items never evicted (a managed seeder's content)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def _push(self, key: K, entry: _Entry) -> None:
        """A heap row at the entry's priority (set by add or hit: the age then, plus its hits)."""
        self._clock += 1
        entry.stamp = self._clock
        heapq.heappush(self._heap, (entry.priority, entry.stamp, key))
        if len(self._heap) > 4 * len(self._entries) + 1024:  # drop stale rows now and then
            self._heap = [(e.priority, e.stamp, k) for k, e in self._entries.items()]
            heapq.heapify(self._heap)

    def add(self, key: K, size: int, hits: int = 1) -> list[K]:
        """Record a newly stored item; return the items to delete to make room (never itself)."""
        if key in self._entries:
            self.remove(key)
        entry = _Entry(size, hits, self._age + hits, 0)
        self._entries[key] = entry
        self.used += size
        self._push(key, entry)
        return self._victims(protect=key)

    def hit(self, key: K) -> None:
        """O(1): the heap row keeps the old (lower) priority and is corrected when it reaches the top."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.hits += 1
            entry.priority = self._age + entry.hits

    def remove(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry.size

    def _victims(self, protect: K) -> list[K]:
        victims: list[K] = []
        spared = []
        while self.capacity is not None and self.used > self.capacity and self._heap:
            priority, stamp, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is None or entry.stamp != stamp:
                continue  # stale row
            if entry.priority > priority:  # hit since it was pushed: back in at its real priority
                self._push(key, entry)
                continue
            if key == protect or self.pinned(key):
                spared.append((priority, stamp, key))
                continue
            self._age = priority
            self.remove(key)
            victims.append(key)
        for row in spared:
            heapq.heappush(self._heap, row)
        return victims
