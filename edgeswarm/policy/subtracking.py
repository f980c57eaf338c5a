"""Where a peer sends each round of announces: its edge, or the sub-tracker its edge named.

Sans-IO (time is passed in).  An edge with promoted peers names one of them
in its answers (``"tracker": URL``, promotion.py).  The peer then sends its
neighbour-list refreshes (``update`` rounds) there, and still announces to
the edge itself:

- for news: a content the edge has not heard ``started`` for, one completed
  since, or one we hold no ticket for; ``stopped`` always goes to the edge;
- before the edge would forget it or its tickets lapse: the edge keeps a
  record three intervals and a ticket at least three (``max(60 s, 3 ×
  interval)``), so a round that comes 1.5 intervals or more after the edge
  last answered goes to the edge: every other round at most.  Usage
  accounting and tickets stay the edge's; the edge's update load from such
  a peer halves, which is what the record's lifetime allows.

One round at a time goes to a sub-tracker, and the peer does not wait for
it: until it is answered (or fails), that edge's rounds go to the edge
itself, news among them.  Awaited, a slow sub-tracker (each batch of 50
answered just under the timeout) held its peers' news, and their rounds to
every other edge, for ceil(contents / 50) times its answer time: 18 s in a
big region, minutes for an HLS viewer holding thousands of segments (an
adversarial session).

A content's first round at a sub-tracker says ``started`` (later ones
``update``): a peer that restarted told it ``stopped`` at its shutdown, and a
sub-tracker, as an edge, refuses an ``update`` after a ``stopped`` (409, the
announce that was in flight when its peer stopped), which set it aside for
three intervals after every restart.

Any failure of the sub-tracker (no connection, a timeout, a 4xx or 5xx, an
item refused, an answer that does not parse) forgets it: that round goes to
the edge at once, and the edge's next answer names one again (the same or
another).  The one that failed is set aside for ``SET_ASIDE`` intervals,
and used again only once an edge answer that came after that names it: by
then its edge has demoted it if it stopped announcing, and a killed
sub-tracker costs each of its peers one failed attempt (up to a timeout),
not one every other round until its demotion.  One that fails again after
its time aside is set aside twice as long each time, up to ``MAX_SET_ASIDE``
intervals, until a round there is answered: a broken sub-tracker that keeps
announcing to its edge stays promoted (its edge cannot see it fail), and cost
each of its peers a failed round every three intervals for good.
"""

from __future__ import annotations

EDGE_EVERY = 1.5  # intervals after the edge's last answer when the next round goes to the edge again
# intervals a failed sub-tracker is not used, even when named: the edge demotes a peer silent for three intervals at its
# expiry run, once an interval, so up to four after its last announce, which came before our failure; and one more for
# an edge running late.  At three, its answers still named a killed one when the time aside ended, and each of its
# peers failed there twice (then set it aside six intervals) about one kill in two (an adversarial session)
SET_ASIDE = 5.0
MAX_SET_ASIDE = 48.0  # intervals at most (4 h at the default 300 s), for one that failed again after each time aside


class AnnounceRoute:
    """Per edge: the sub-tracker its last answer named, and when it last answered us."""

    def __init__(self) -> None:
        self._named: dict[str, str] = {}  # edge -> the sub-tracker its last answer named
        self._heard: dict[str, float] = {}  # edge -> when it last took an announce of ours
        self._aside: dict[str, float] = {}  # sub-tracker that failed -> until when it is not used
        self._strikes: dict[str, int] = {}  # sub-tracker -> its failures since a round there was last answered
        self._joined: dict[str, set[str]] = {}  # sub-tracker -> contents it took our "started" for (an edge names it)
        self._out: set[str] = set()  # edges with a round at their sub-tracker now: their other rounds go to the edge
        self.to_subtracker = 0  # rounds sent to a sub-tracker and answered
        self.fallbacks = 0  # rounds a sub-tracker failed, sent to the edge instead

    def edge_answered(self, edge: str, now: float, tracker: str | None) -> None:
        """The edge took an announce of ours; its answer named ``tracker`` (None: none, announce to the edge)."""
        self._heard[edge] = now
        before = self._named.pop(edge, None) if tracker is None else self._named.get(edge)
        if tracker is not None:
            self._named[edge] = tracker
        self._unused(before)

    def heard(self, edge: str) -> float:
        """When ``edge`` last took an announce of ours (-inf: never)."""
        return self._heard.get(edge, -float("inf"))

    def rewind(self, edge: str, when: float) -> None:
        """``edge`` took only part of a round (what the sub-tracker refused): when it took a whole one stays ``when``,
        so that the round every EDGE_EVERY intervals still brings it every content."""
        self._heard[edge] = when

    def target(self, edge: str, now: float, interval: float, news: bool) -> str | None:
        """The sub-tracker to send this ``update`` round for ``edge`` to; None: the edge itself (module docstring)."""
        tracker, heard = self._named.get(edge), self._heard.get(edge, -float("inf"))
        # one set aside is asked again once an edge answer after its time aside names it: dead, it is demoted by then
        if tracker is None or news or edge in self._out or heard < self._aside.get(tracker, -float("inf")):
            return None
        if now - heard >= EDGE_EVERY * interval:
            return None
        return tracker

    def sent(self, edge: str) -> None:
        """A round for ``edge`` is on its way to its sub-tracker: until it has ``ended``, the others go to the edge."""
        self._out.add(edge)

    def ended(self, edge: str) -> None:
        """That round is over: answered, failed (and sent to the edge), or cut off."""
        self._out.discard(edge)

    def named(self, edge: str) -> str | None:
        """The sub-tracker ``edge`` last named, if it has not failed since."""
        return self._named.get(edge)

    def event(self, tracker: str, cid: str) -> str:
        """The event of an ``update`` round's item for ``cid`` at ``tracker``: ``started`` the first time (module docstring)."""
        return "update" if cid in self._joined.get(tracker, ()) else "started"

    def joined(self, tracker: str, cid: str) -> None:
        """``tracker`` took an announce of ``cid`` from us; not kept once no edge names it (a round there was still out
        when an edge's answer dropped it), as ``_unused`` forgets it then."""
        if tracker in self._named.values():
            self._joined.setdefault(tracker, set()).add(cid)

    def left(self, tracker: str, cid: str) -> None:
        """We told ``tracker`` ``stopped`` for ``cid``."""
        self._joined.get(tracker, set()).discard(cid)

    def _unused(self, tracker: str | None) -> None:
        """Forget what ``tracker`` was told once no edge names it: one named again may have restarted since."""
        if tracker is not None and tracker not in self._named.values():
            self._joined.pop(tracker, None)

    def answered(self, tracker: str) -> None:
        self.to_subtracker += 1
        self._strikes.pop(tracker, None)

    def failed(self, edge: str, tracker: str, now: float, interval: float) -> None:
        """``tracker``, the sub-tracker ``edge`` named, failed: forget it until the edge names one again (unless its
        answers to the rounds sent meanwhile named another), and set it aside (SET_ASIDE intervals, doubled for each
        failure since a round there was answered)."""
        self.fallbacks += 1
        if self._named.get(edge) == tracker:
            del self._named[edge]
        self._joined.pop(tracker, None)  # it failed: it may have restarted, or may when it comes back
        strikes = self._strikes[tracker] = self._strikes.get(tracker, 0) + 1
        self._aside[tracker] = now + min(MAX_SET_ASIDE, SET_ASIDE * 2 ** (strikes - 1)) * interval
        # a few at most: those whose time aside ended long ago (any failure since would have set them aside again) go
        for t in [t for t, until in self._aside.items() if until + MAX_SET_ASIDE * interval <= now]:
            del self._aside[t]
            self._strikes.pop(t, None)

    def forget(self, edge: str) -> None:
        """An edge we no longer use."""
        self._unused(self._named.pop(edge, None))
        self._heard.pop(edge, None)

    def status(self, now: float) -> dict[str, object]:
        return {
            "named": dict(sorted(self._named.items())),
            "set_aside": sorted(t for t, until in self._aside.items() if until > now),
            "rounds_answered": self.to_subtracker,
            "fallbacks": self.fallbacks,
        }
