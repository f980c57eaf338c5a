"""Counts per key that know their largest at every step: the tracker's records per sender, at its cap.

A full tracker makes room by taking a record from whoever holds the most
(tracker.py, ``Limits.records``), so it asks for the largest count once per
new record: a scan of every sender would cost milliseconds a record at a
million records.  Keys live in buckets by count (the LFU cache's layout), so
a change of one is O(1) and so is the largest.
"""

from __future__ import annotations


class Heaviest:
    """A count per key, and a key of the largest count, both O(1) per change."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._bucket: dict[int, dict[str, None]] = {}  # count -> its keys (an ordered set: the longest there first)
        self._top = 0

    def __len__(self) -> int:
        return len(self._count)

    def get(self, key: str) -> int:
        return self._count.get(key, 0)

    def add(self, key: str, step: int) -> None:
        """Change ``key``'s count by ``step`` (+1 or -1); a key at zero is forgotten."""
        old = self._count.get(key, 0)
        new = old + step
        if step not in (1, -1) or new < 0:
            raise ValueError(f"{key!r} counts {old}: a step of {step} is not one up or down to zero or more")
        if old:
            self._leave(old, key)
        if new:
            self._count[key] = new
            self._bucket.setdefault(new, {})[key] = None
            self._top = max(self._top, new)
        else:
            self._count.pop(key, None)

    def top(self) -> tuple[str, int] | None:
        """A key of the largest count (the one there longest), with its count; None when every count is zero."""
        if not self._top:
            return None
        return next(iter(self._bucket[self._top])), self._top

    def _leave(self, count: int, key: str) -> None:
        keys = self._bucket[count]
        del keys[key]
        if not keys:
            del self._bucket[count]
            if count == self._top:  # counts move by one: the next largest is one less, or there is none
                self._top = count - 1 if count - 1 in self._bucket else 0
