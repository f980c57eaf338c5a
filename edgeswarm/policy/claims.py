"""What a peer may claim in its announces, and whom a disagreement between claims points at.

Sans-IO, time passed in.  An announce claims bytes the peer got from peers
and sent to peers since its last acknowledged announce (ledger credit), and
the bytes it has received for the content by kind (its region's P2P share on
the edge's ``/status``).  A peer can write any number there, so the edge books
no more than was physically possible (``ClaimPolicy``), and the usage report
blames the claimant whose figures the others do not back (``overclaimers``).

Bounds (docs/security.md#claim-bounds):

- ``from_peers``: over a peer id's life in a swarm, at most the content's size
  (a piece counts once it is verified, and a peer keeps what it has);
- ``uploaded``: per announce, at most the bytes the peer holds times the
  peers it may have served since its last one: the swarm's other peers now
  (the peers this edge tickets: each takes a held piece at most once), and
  every peer id of another owner that joined the swarm since (its own, an id
  churned, served it nothing; each owner's ids count ``ids_per_link`` times
  at most while it announces, and a ``stopped`` is no arrival), counting at
  least one.  The peers now alone cut an honest seeder whose downloaders had
  left before it announced (three ``get`` one after another: 22 MB sent, 8 MB
  booked, and each downloader flagged for a download nobody backed: an
  adversarial session);
- both: at most what the owner's link (the token's user, else the address)
  can carry, a byte bucket of ``max_rate`` bytes/s that fills for ``window``
  seconds (1.2 announce intervals: one interval at full rate, and a late
  announce), so fresh peer ids do not bring fresh budgets;
- ``stats``: the received bytes of each kind are at most the content's size
  (not their sum: an endgame may fetch a piece from the edge and a peer both);
- per owner and content, over ``keep`` seconds: ``from_peers`` and the bytes
  a peer's ``stats`` add are at most ``ids_per_link`` times the content (as
  many copies as the tracker lets one address have live ids), so a peer id
  that announces, stops and comes back under a new id brings no new copy to
  claim: id churn cannot raise a region's P2P share or a user's credit.

What is cut is booked as ``claim_excess``, which flags the claimant, and only
the claimant, in ``edgeswarm usage report``.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgeswarm.policy.vocabulary import STAT_KINDS

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=tuple[Any, ...])
DEFAULT_MAX_RATE = 125_000_000  # bytes/s a peer's link may carry each way: 1 Gbit/s, generous for a user's line


def _renew(table: dict[K, V], key: K, value: V) -> None:
    """Set ``key``, moving it to the end: a table kept in order of last use, whose oldest come first (``_drop_unused``)."""
    table.pop(key, None)
    table[key] = value


def _drop_unused(table: dict[Any, tuple[Any, ...]], now: float, age: float) -> None:
    """Remove the entries last used (their last field) over ``age`` ago: the front of a table kept by ``_renew``."""
    for key in [k for k, _ in itertools.takewhile(lambda item: now - item[1][-1] > age, table.items())]:
        del table[key]


def differs(a: int, b: int, tolerance: float, slack: int) -> bool:
    """Two figures that should match disagree beyond ``max(slack, tolerance × the larger)``."""
    return abs(a - b) > max(slack, tolerance * max(a, b))


@dataclass
class Cut:
    """An announce's claims as the edge books them."""

    usage: dict[str, int]  # announce usage kind -> bytes to book
    stats: dict[str, int]  # received bytes by kind, bounded
    excess: int  # bytes cut from this announce's claims


# What one peer id claimed of one content over its life in the swarm: (from_peers booked, stats cut at its last
# announce, its cumulative stats as booked by STAT_KINDS (none yet: empty), the content's joins by other owners then,
# when last seen).  This and _Copies are
# plain tuples of numbers, replaced at each announce: the cyclic garbage collector stops tracking them (it never
# does a mutable object, nor a tuple subclass), where an object per peer was one more for each full collection to
# walk (at 100 000 peers, pauses of 0.4-0.7 s: README, bench tracker).
_Tally = tuple[int, int, tuple[int, ...], int, float]
# What one owner's peer ids together claimed of one content, copies of it whatever ids they used: (from_peers booked,
# stats booked, how many of its ids joined it, when last seen).
_Copies = tuple[int, int, int, float]
_NO_COPIES: _Copies = (0, 0, 0, 0.0)


@dataclass
class ClaimPolicy:
    max_rate: float = DEFAULT_MAX_RATE
    window: float = 360.0  # seconds of link capacity a claim may draw on: one announce interval (300 s) and 20 %
    keep: float = 900.0  # seconds a silent peer's tally is kept: the tracker's ttl, so a live peer's is never forgotten
    ids_per_link: int = 16  # live peer ids the tracker lets one owner have: copies of a content it may claim per ``keep``
    _tallies: dict[tuple[Hashable, str], _Tally] = field(default_factory=dict)
    _copies: dict[tuple[Hashable, str], _Copies] = field(default_factory=dict)
    _links: dict[tuple[Hashable, str], tuple[float, float]] = field(default_factory=dict)
    _joins: dict[str, tuple[int, float]] = field(default_factory=dict)  # content -> (peer ids that joined it, last used)

    def bound(
        self,
        now: float,
        peer: Hashable,
        link: Hashable,
        cid: str,
        size: int,
        held: int,
        neighbours: int,
        usage: Mapping[str, int],
        stats: Mapping[str, int],
        leaving: bool = False,
    ) -> Cut:
        """Clamp one announce of ``peer`` (behind ``link``) for content ``cid`` of ``size`` bytes, of which it holds ``held``;
        ``leaving``: its ``stopped``."""
        joins = self._joins.get(cid, (0, now))[0]
        copied, copied_stats, own, _ = self._copies.get((link, cid), _NO_COPIES)
        tally = self._tallies.get((peer, cid))
        # its first announce here (or since it stopped or fell silent): one more peer, but a stop is no arrival, and a
        # link's ids count ids_per_link times at most while it announces (100 stops of ids that never joined, or one
        # id started and stopped 100 times, raised another address's bound 100 copies: a review)
        if tally is None and not leaving and own < self.ids_per_link:
            joins, own = joins + 1, own + 1
        others = joins - own  # ids of other owners that joined: a claimant's own churned ids served it nobody
        from_peers, was_excess, was_stats, others_then, _ = tally or (0, 0, (), others, 0.0)
        room = size * self.ids_per_link
        booked = dict(usage)
        if "from_peers" in usage:
            got = self._spend(now, (link, "down"), min(usage["from_peers"], size - from_peers, room - copied))
            booked["from_peers"] = got
            from_peers, copied = from_peers + got, copied + got
        if "uploaded" in usage:
            served = neighbours + max(0, others - others_then)  # who is here, and who came since (and may have gone)
            booked["uploaded"] = self._spend(now, (link, "up"), min(usage["uploaded"], held * served))
        excess = sum(usage.values()) - sum(booked.values())
        bounded, copied_stats = self._bounded_stats(was_stats, copied_stats, room, size, stats)
        stats_excess = sum(stats.values()) - sum(bounded.values())
        excess += max(0, stats_excess - was_excess)  # cumulative figures: only what is new is cut now
        _renew(self._tallies, (peer, cid), (from_peers, stats_excess, tuple(bounded.values()), others, now))
        _renew(self._joins, cid, (joins, now))
        _renew(self._copies, (link, cid), (copied, copied_stats, own, now))
        return Cut(booked, bounded, excess)

    @staticmethod
    def _bounded_stats(before: tuple[int, ...], copied: int, room: int, size: int, stats: Mapping[str, int]) -> tuple[dict[str, int], int]:
        """A peer's cumulative stats as booked (``before``: as last booked), each kind at most the content, and what
        they add at most what its owner has left of ``room``; and what its owner's ids have booked with them
        (``copied`` before)."""
        bounded = {}
        for i, kind in enumerate(STAT_KINDS):
            was = before[i] if before else 0
            now = min(stats.get(kind, 0), size)
            if now < was:  # the peer restarted its counters: a new run of the same id
                was = 0
            added = min(now - was, max(0, room - copied))
            copied += added
            bounded[kind] = was + added
        return bounded, copied

    def _spend(self, now: float, key: tuple[Hashable, str], want: int) -> int:
        """Take up to ``want`` bytes from a link's bucket; what it grants."""
        full = self.max_rate * self.window
        tokens, then = self._links.get(key, (full, now))
        tokens = min(full, tokens + max(0.0, now - then) * self.max_rate)
        granted = max(0, min(want, int(tokens)))
        _renew(self._links, key, (tokens - granted, now))
        return granted

    def forget(self, peer: Hashable, cid: str) -> None:
        """Nothing to keep for a peer id that stopped announcing a content: its link's bucket still remembers."""
        self._tallies.pop((peer, cid), None)

    def expire(self, now: float) -> None:
        """Drop tallies silent for ``keep``, and buckets unused for ``window`` (full again: a fresh one is the same).

        O(what goes): each table is in order of last use (``_renew``), so the
        scan stops at the first entry still in use.  It used to read every
        entry, on each /status too: at 50 000 peers a sixth of the poll.
        """
        _drop_unused(self._tallies, now, self.keep)
        _drop_unused(self._copies, now, self.keep)
        _drop_unused(self._joins, now, self.keep)  # a content nobody announced for a ttl: its last tallies go with it
        _drop_unused(self._links, now, self.window)

    def state_size(self) -> dict[str, int]:
        return {
            "claim_tallies": len(self._tallies),
            "claim_links": len(self._links),
            "claim_copies": len(self._copies),
            "claim_contents": len(self._joins),
        }


def overclaimers(claims: Mapping[str, tuple[int, int]], tolerance: float, slack: int) -> set[str]:
    """Whom to flag when a content's claimed uploads and downloads (``who -> (uploaded, from_peers)``) disagree.

    Nobody, if they agree.  Otherwise every claimant whose claim alone
    explains it (without it the others agree): a one-sided claim flags its
    author and leaves the honest traders of the same content alone, and a liar
    who claims a little less than an honest downloader is flagged beside that
    downloader, not left out in its favour (the largest claim alone was blamed,
    and an adversarial session framed an honest user so: which of two such
    claims is the lie, the figures cannot tell).  When no one claim explains
    it, the claimants on the heavy side, the largest net claim first (ties:
    the larger total claim, then the name), until what the others claim
    agrees.  Two liars who agree with each other pass; this only spots claims
    that nobody backs.
    """
    up = sum(u for u, _ in claims.values())
    down = sum(d for _, d in claims.values())
    if not differs(up, down, tolerance, slack):
        return set()
    alone = {k for k, (u, d) in claims.items() if not differs(up - u, down - d, tolerance, slack)}
    if alone:
        return alone
    flagged: set[str] = set()
    side = 1 if up > down else -1
    while differs(up, down, tolerance, slack) and side * (up - down) > 0:
        who = max(
            (k for k in claims if k not in flagged),
            key=lambda k: (side * (claims[k][0] - claims[k][1]), sum(claims[k]), k),
        )
        flagged.add(who)
        up, down = up - claims[who][0], down - claims[who][1]
    return flagged
