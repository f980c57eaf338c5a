"""Which of a region's volunteering peers an edge asks to fetch and seed preheated content; no I/O.

``edgeswarm preheat PATH --region R --peers 25%`` leaves an order at each edge
of the region: a content, the share of the region's volunteers that should
hold it, and an expiry.  A peer volunteers by asking its edge for orders
(``GET /preheat/orders``, only when its ``--accept-preheat`` allows it), with
the room it gives preheated content; the edge answers with the orders it
assigns to that peer.

An order wants ``ceil(share x volunteers)`` peers of its region.  Peers are
ranked per content by a hash of (content, address group, peer id) -
rendezvous hashing - so the choice is spread evenly, is the same whichever
edge or restart makes it, and changes little as volunteers come and go; an
order gives one place per address group (an IPv4 address, an IPv6 /64): peer
ids are free text and content ids public, so one address that ground 16 ids
offline held every place of an order (an adversarial session).  A peer once assigned stays assigned
while it keeps volunteering: it is fetching or seeding already, and swapping
it for a better-ranked newcomer would waste both uplinks; only a lower share
for the order lets the worst-ranked go.  A peer without the room for a
content is never chosen for it.

What a poll costs does not grow with the volunteers: their count per region
is kept, and an order short of peers looks through the region's volunteers
again at most once a TOPUP_S.  A volunteer's poll changing its room each time
made every later poll sort and rank the whole region again (an adversarial
session: 17 ms a poll at 18 000 volunteers, and 2 000 newcomers 40 s of the
primary's CPU).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeswarm.policy.tracker import address_group

SWEEP_S = 1.0  # seconds between two looks for silent volunteers
TOPUP_S = 1.0  # seconds between two looks through a region's volunteers for an order short of peers
MAX_DECLINED = 32  # content ids a volunteer's poll names as declined, at most
Volunteer = tuple[str, str]  # (address, peer id): how the tracker names a peer too
Region = str | None


@dataclass(frozen=True)
class Order:
    """Have ``share`` of ``region``'s volunteers hold ``content`` (published at ``path``, ``size`` bytes) until ``expires``."""

    content: str
    path: str
    size: int
    region: Region
    share: float
    expires: float


@dataclass
class _Seen:
    region: Region
    room: int
    last: float
    declined: frozenset[str] = frozenset()  # contents it said it cannot hold (no room, a full disk): never chosen for them


@dataclass
class PreheatOrders:
    """Orders and volunteers of one edge; time is passed in (monotonic seconds)."""

    forget_after: float  # a volunteer silent this long has left (the edge uses three announce intervals)
    orders: dict[tuple[str, Region], Order] = field(default_factory=dict)
    volunteers: dict[Volunteer, _Seen] = field(default_factory=dict)
    assigned: dict[tuple[str, Region], set[Volunteer]] = field(default_factory=dict)
    eligible: Callable[[Volunteer, Order], bool] = lambda volunteer, order: True  # may it hold it (its token: the desk's)
    _generation: int = 0  # bumped when volunteers come, go or change: what ``in_region`` and a top-up read
    _regions: dict[Region, tuple[int, list[Volunteer]]] = field(default_factory=dict)  # region -> (generation, its volunteers)
    _topped: dict[tuple[str, Region], tuple[int, float]] = field(default_factory=dict)  # order -> its last top-up's generation, time
    _count: Counter[Region] = field(default_factory=Counter)  # region -> its volunteers (``wanted`` is O(1))
    _at: Counter[str] = field(default_factory=Counter)  # address -> its volunteers (``at``: a newcomer's check is O(1))
    _swept: float = -math.inf  # when silent volunteers were last looked for (at most once a SWEEP_S: a poll is not O(volunteers))

    def add(self, order: Order) -> None:
        """A new order, or a new share or expiry for the same content and region (its assigned peers are kept); an
        order for another version of its path in its region is replaced (republished: both stood, the old one held)."""
        if not 0 < order.share <= 1:
            raise ValueError(f"share must be more than 0 and at most 1, not {order.share!r}")
        for old in [k for k, o in self.orders.items() if o.path == order.path and o.region == order.region and o.content != order.content]:
            del self.orders[old]
            self.assigned.pop(old, None)
        key = (order.content, order.region)
        before = self.orders.get(key)
        self.orders[key] = order
        peers = self.assigned.setdefault(key, set())
        self._topped.pop(key, None)
        if before is not None and order.share < before.share and len(peers) > self.wanted(order):  # scaled down: the
            # worst-ranked go (all kept their place, disk and uplink, for the order's life: an adversarial session)
            keep = sorted(peers, key=lambda v: rank(order.content, v))[: self.wanted(order)]
            peers.intersection_update(keep)

    def drop(self, order: Order) -> None:
        """The order ends before its expiry (its path withdrawn)."""
        key = (order.content, order.region)
        self.orders.pop(key, None)
        self.assigned.pop(key, None)
        self._topped.pop(key, None)

    def seen(self, now: float, volunteer: Volunteer, region: Region, room: int, declined: frozenset[str] = frozenset()) -> None:
        """A peer of ``region`` asked for orders, giving ``room`` bytes to preheated content, and naming the contents it
        ``declined``: their places go to others (a volunteer that could not hold an order kept its place for good, the
        order never fulfilled: an adversarial session)."""
        before = self.volunteers.get(volunteer)
        if before is None:
            self._at[volunteer[0]] += 1
        if before is None or before.region != region:
            self._count[region] += 1
            if before is not None:
                self._uncount(before.region)
        if before is None or before.region != region or before.room != max(0, room) or before.declined != declined:
            self._generation += 1
        self.volunteers[volunteer] = _Seen(region, max(0, room), now, declined)
        for key, peers in self.assigned.items():
            if key[0] in declined and volunteer in peers:
                self._release(key, {volunteer})

    def at(self, address: str) -> int:
        """The volunteers at ``address`` (a newcomer beyond --max-peer-ids is refused: counting them was O(volunteers))."""
        return self._at.get(address, 0)

    def changed(self) -> None:
        """Something ``eligible`` reads changed (a volunteer's token): top-ups look again."""
        self._generation += 1

    def expire(self, now: float) -> None:
        """Drop expired orders, and volunteers silent for ``forget_after`` seconds (and their assignments)."""
        for key in [k for k, o in self.orders.items() if o.expires <= now]:
            del self.orders[key]
            self.assigned.pop(key, None)
        if 0 <= now - self._swept < SWEEP_S:
            return
        self._swept = now
        self.forget({v for v, s in self.volunteers.items() if now - s.last > self.forget_after})

    def forget(self, gone: set[Volunteer]) -> None:
        """These volunteers leave, with their assignments (silent too long, or refused: their token expired)."""
        gone = gone & self.volunteers.keys()
        if not gone:
            return
        self._generation += 1
        for v in gone:
            self._uncount(self.volunteers.pop(v).region)
            self._at[v[0]] -= 1
            if not self._at[v[0]]:
                del self._at[v[0]]
        for key, peers in self.assigned.items():
            if peers & gone:
                self._release(key, gone)

    def _release(self, key: tuple[str, Region], gone: set[Volunteer]) -> None:
        """Places of an order given up: its next top-up looks at once, not TOPUP_S after its last (a clean stop's place
        went to another only a second later, and the held polls had been answered before then)."""
        self.assigned[key] -= gone
        self._topped.pop(key, None)

    def _uncount(self, region: Region) -> None:
        self._count[region] -= 1
        if not self._count[region]:
            del self._count[region]

    def count(self, region: Region) -> int:
        """The region's volunteers."""
        return self._count.get(region, 0)

    def in_region(self, region: Region) -> list[Volunteer]:
        """The region's volunteers, in a stable order; sorted once per change, and read by a top-up only (16 384 fake
        volunteers made each poll cost the edge's loop 0.3 s: an adversarial session)."""
        cached = self._regions.get(region)
        if cached is None or cached[0] != self._generation:
            cached = self._regions[region] = (self._generation, sorted(v for v, s in self.volunteers.items() if s.region == region))
        return cached[1]

    def wanted(self, order: Order) -> int:
        """How many of its region's volunteers the order wants: the share of them, rounded up."""
        return math.ceil(order.share * self.count(order.region) - 1e-9)

    def chosen(self, order: Order, now: float | None = None) -> set[Volunteer]:
        """The peers holding the order: those assigned, topped up with the best-ranked volunteers that have the room.

        A top-up looks again only when volunteers came, went or changed since
        the last, and (given ``now``) at most once a TOPUP_S after it.
        """
        key = (order.content, order.region)
        peers = self.assigned.setdefault(key, set())
        short = self.wanted(order) - len(peers)
        last = self._topped.get(key)
        stale = last is None or (last[0] != self._generation and (now is None or not 0 <= now - last[1] < TOPUP_S))
        if short > 0 and stale:
            self._topped[key] = (self._generation, now if now is not None else -math.inf)
            groups = {address_group(a) for a, _ in peers}
            able = [
                v
                for v in self.in_region(order.region)
                if v not in peers
                and self.volunteers[v].room >= order.size
                and order.content not in self.volunteers[v].declined
                and self.eligible(v, order)
            ]
            for v in sorted(able, key=lambda v: rank(order.content, v)):
                if short == 0:
                    break
                if address_group(v[0]) not in groups:
                    groups.add(address_group(v[0]))
                    peers.add(v)
                    short -= 1
        return set(peers)

    def holds(self, content: str, volunteer: Volunteer) -> bool:
        """``volunteer`` was assigned ``content`` by a standing order (in any region): a seed the operator placed."""
        return any(volunteer in peers for (c, _), peers in self.assigned.items() if c == content)

    def for_volunteer(self, now: float, volunteer: Volunteer) -> list[Order]:
        """The orders assigned to ``volunteer`` (which must have been ``seen``), by path."""
        self.expire(now)
        seen = self.volunteers.get(volunteer)
        if seen is None:
            return []
        mine = [o for o in self.orders.values() if o.region == seen.region and volunteer in self.chosen(o, now)]
        return sorted(mine, key=lambda o: o.path)


def rank(content: str, volunteer: Volunteer) -> str:
    """The volunteer's place for ``content`` (lower first): a hash, so every edge ranks alike; its address group first,
    which a peer cannot choose, then its id, which it can (it only orders the group's own volunteers)."""
    group = hashlib.sha256(f"{content}\0{address_group(volunteer[0])}".encode()).hexdigest()
    return group + hashlib.sha256(f"{content}\0{volunteer[1]}".encode()).hexdigest()
