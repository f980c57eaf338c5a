"""``Recent``: a mapping that keeps its most recently used keys only, up to a limit.

A daemon remembers things per path, per content or per token (the newest
version of a path, a torrent made, a verified token, bytes sent to a
region): keys that clients or live streams name without end.  Each such
table forgets its least recently used key past its limit, by this one rule.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """An OrderedDict whose setting and ``touch`` make a key the most recent; past ``limit`` keys the least recent go."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        self.put(key, value)

    def put(self, key: K, value: V) -> list[K]:
        """Set ``key`` as the most recent; the keys forgotten to stay within the limit (for tables that keep an index of them)."""
        super().__setitem__(key, value)
        self.move_to_end(key)
        forgotten = []
        while len(self) > self.limit:
            forgotten.append(self.popitem(last=False)[0])
        return forgotten

    def touch(self, key: K) -> V | None:
        """``key``'s value, made the most recent; None if it is not here."""
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]
