"""Each edge's clock as a peer reads it: a neighbour's swarm ticket is judged by the clock of the edge that signed it.

An edge signs a ticket with its own clock (``iat`` its now, ``exp`` that plus
a few announce intervals).  Judged by the peer's own clock, with the 5 s
leeway, a peer whose clock ran more than 5 s slow refused every neighbour's
ticket as "not valid yet" and uploaded nothing, without a line in its log;
one running fast by more than a ticket's life refused them as expired, and
accepted expired ones that long (consumer clocks are often that far off: a PC
whose hardware clock keeps local time is hours off; an adversarial session).

So a peer reads each edge's clock off the tickets that edge issues to it: an
announce sent at monotonic ``sent`` and answered at ``received`` carries a
ticket whose ``iat`` is the edge's clock at some moment in between, so the
midpoint is off by half the round trip at most (answers slower than
``MAX_ROUND_TRIP`` are not read).  The reading is carried forward on the
monotonic clock, which no step of this machine's wall clock moves (its clock
set right between two announces changes nothing here); a suspend stops it,
so the readings are forgotten then (``forget``) until the next announces,
which a wake hurries (node/sleepwatch.py).  An edge not read yet: this
machine's wall clock, as before.

The bound: an edge's clock judges only the tickets signed with that edge's
key, and is read only off tickets that key signed.  An edge lying about its
clock can make a peer accept only tickets it could sign with any times
anyway; it moves no other edge's.

Sans-IO: both clocks are passed in.
"""

from __future__ import annotations

import math

MAX_ROUND_TRIP = 10.0  # seconds: an answer slower than this reads the edge's clock too loosely (half of it is the 5 s leeway)


class EdgeClocks:
    """Each edge's clock less this machine's monotonic one, from its latest reading."""

    def __init__(self) -> None:
        self._base: dict[str, float] = {}  # edge -> its clock less our monotonic clock
        self._apart: set[str] = set()  # edges whose clock the latest reading found beyond the leeway from our wall clock

    def heard(self, edge: str, issued: float, sent: float, received: float, wall: float, leeway: float) -> float | None:
        """``edge`` signed a ticket at ``issued`` by its clock, answering a request sent at monotonic ``sent`` and
        answered at ``received`` (``wall`` by this machine's wall clock then).

        Returns the edge's clock less this machine's when that has just gone
        beyond ``leeway``, or come back within it (a line for the log); else
        None, so a clock that stays off is said once, not at every announce.
        """
        if not 0 <= received - sent <= MAX_ROUND_TRIP or not math.isfinite(issued):
            return None
        self._base[edge] = issued - (sent + received) / 2
        ahead = self.now(edge, received, wall) - wall
        apart = abs(ahead) > leeway
        if apart == (edge in self._apart):
            return None
        if apart:
            self._apart.add(edge)
        else:
            self._apart.discard(edge)
        return ahead

    def now(self, edge: str, monotonic: float, wall: float) -> float:
        """The time by ``edge``'s clock: its latest reading carried forward, or ``wall`` (ours) before it is read."""
        base = self._base.get(edge)
        return wall if base is None else monotonic + base

    def ahead(self, edge: str, monotonic: float, wall: float) -> float | None:
        """How far ``edge``'s clock runs ahead of this machine's wall clock (negative: behind); None before it is read."""
        return self.now(edge, monotonic, wall) - wall if edge in self._base else None

    def forget(self) -> None:
        """The machine slept: the monotonic clock stood still meanwhile, so every reading is that much behind."""
        self._base.clear()
