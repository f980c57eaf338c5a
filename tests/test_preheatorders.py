"""Which volunteering peers an edge asks to preheat: the share, the ranking, stickiness, room and expiry (no I/O)."""

from __future__ import annotations

import pytest

from edgeswarm.policy.preheatorders import Order, PreheatOrders, rank
from edgeswarm.roles.preheat import parse_share

CID = "a" * 64


def order(share: float, size: int = 100, region: str | None = "east", expires: float = 1000.0, cid: str = CID) -> Order:
    return Order(cid, "films/a", size, region, share, expires)


def book(n: int, region: str | None = "east", room: int = 1000, now: float = 0.0, orders: PreheatOrders | None = None) -> PreheatOrders:
    orders = orders or PreheatOrders(forget_after=30.0)
    for i in range(n):
        orders.seen(now, (f"10.0.0.{i}", f"p{i}"), region, room)
    return orders


def test_the_share_of_the_regions_volunteers_rounded_up_best_ranked_first():
    orders = book(8)
    orders.seen(0.0, ("10.9.0.1", "w"), "west", 1000)  # another region's volunteer is never counted nor chosen
    o = order(0.25)
    orders.add(o)
    chosen = orders.chosen(o)
    assert orders.wanted(o) == 2 and len(chosen) == 2
    assert chosen == set(sorted(orders.in_region("east"), key=lambda v: rank(CID, v))[:2])
    o3 = order(0.3, cid="b" * 64)
    orders.add(o3)
    assert orders.wanted(o3) == 3  # 2.4 peers: rounded up


def test_each_volunteer_hears_only_its_own_orders():
    orders = book(4)
    orders.add(order(0.5))
    told = {v: orders.for_volunteer(1.0, v) for v in orders.in_region("east")}
    assert sum(1 for got in told.values() if got) == 2
    assert all(got == [] or got[0].content == CID for got in told.values())
    assert orders.for_volunteer(1.0, ("10.9.9.9", "stranger")) == []  # never seen: nothing


def test_assigned_peers_stay_while_newcomers_only_top_up():
    orders = book(4)
    o = order(0.5)
    orders.add(o)
    first = orders.chosen(o)
    for i in range(4, 8):  # four more volunteers: the order now wants 4; the first two keep theirs
        orders.seen(0.0, (f"10.0.0.{i}", f"p{i}"), "east", 1000)
    now = orders.chosen(o)
    assert first <= now and len(now) == 4


def test_a_volunteer_without_the_room_is_never_chosen():
    orders = book(3, room=50)
    orders.seen(0.0, ("10.0.1.1", "roomy"), "east", 500)
    o = order(1.0, size=100)
    orders.add(o)
    assert orders.chosen(o) == {("10.0.1.1", "roomy")}


def test_silent_volunteers_and_expired_orders_go():
    orders = book(2)
    o = order(1.0, expires=100.0)
    orders.add(o)
    assert len(orders.chosen(o)) == 2
    orders.seen(50.0, ("10.0.0.0", "p0"), "east", 1000)  # p0 still asks, p1 fell silent
    orders.expire(50.0)
    assert orders.in_region("east") == [("10.0.0.0", "p0")] and orders.chosen(o) == {("10.0.0.0", "p0")}
    assert orders.for_volunteer(100.0, ("10.0.0.0", "p0")) == [] and orders.orders == {}


def test_a_share_out_of_range_is_refused():
    with pytest.raises(ValueError):
        PreheatOrders(30.0).add(order(0.0))
    with pytest.raises(ValueError):
        PreheatOrders(30.0).add(order(1.5))


@pytest.mark.parametrize(("text", "share"), [("25%", 0.25), ("0.25", 0.25), ("100%", 1.0), ("1", 1.0)])
def test_parse_share(text, share):
    assert parse_share(text) == share


@pytest.mark.parametrize("text", ["0", "0%", "150%", "1.5", "x", "-5%", ""])
def test_parse_share_refuses_what_is_no_share(text):
    with pytest.raises(ValueError, match="share"):
        parse_share(text)


def test_holds_names_the_volunteers_an_order_placed_a_content_at():
    orders = PreheatOrders(forget_after=900.0)
    orders.add(Order(CID, "films/a.bin", 1000, "east", 1.0, 3600.0))
    orders.seen(0.0, ("10.0.0.1", "v1"), "east", 10_000)
    assert [o.content for o in orders.for_volunteer(0.0, ("10.0.0.1", "v1"))] == [CID]
    assert orders.holds(CID, ("10.0.0.1", "v1"))
    assert not orders.holds(CID, ("10.0.0.2", "v1")) and not orders.holds("other", ("10.0.0.1", "v1"))


def test_one_address_holds_one_place_of_an_order_whatever_ids_it_grinds():
    """Peer ids are free text and content ids public: one address that ground 16 ids offline held every place of an
    order, the honest volunteers none (an adversarial session)."""
    orders = book(3)  # three honest volunteers, three addresses
    ground = sorted((f"x{i}" for i in range(5000)), key=lambda pid: rank(CID, ("10.6.6.6", pid)))[:16]
    for pid in ground:
        orders.seen(0.0, ("10.6.6.6", pid), "east", 1000)
    o = order(1.0)
    orders.add(o)
    chosen = orders.chosen(o)
    assert sum(1 for a, _ in chosen if a == "10.6.6.6") == 1 and len(chosen) == 4, chosen


def test_an_order_for_a_new_version_of_its_path_replaces_the_old_one():
    """Republished, both orders stood and the volunteers kept the old version (an adversarial session)."""
    orders = book(2)
    orders.add(order(1.0))
    orders.add(order(1.0, cid="b" * 64))  # the same path, a new content id
    assert [o.content for o in orders.orders.values()] == ["b" * 64]
    assert all(o.content == "b" * 64 for v in orders.in_region("east") for o in orders.for_volunteer(1.0, v))


def test_a_volunteer_that_may_not_hold_a_path_is_not_chosen_for_it():
    """Under --require-token, a volunteer whose token did not cover the path was chosen and kept the place unfetched."""
    orders = book(4)
    orders.eligible = lambda v, o: v[1] != "p0"
    o = order(1.0)
    orders.add(o)
    assert {pid for _, pid in orders.chosen(o)} == {"p1", "p2", "p3"}


def test_a_forgotten_volunteer_gives_its_place_to_the_next():
    """A volunteer whose token expired kept its place until it had been silent three intervals, though its polls were
    refused and it could fetch nothing (an adversarial session): the desk forgets it at its refused poll."""
    orders = book(4)
    o = order(0.25)  # one place
    orders.add(o)
    (first,) = orders.chosen(o)
    orders.forget({first, ("10.9.9.9", "never-seen")})
    (second,) = orders.chosen(o)
    assert second != first and first not in orders.volunteers and orders.for_volunteer(1.0, first) == []


def test_a_volunteer_that_declines_an_order_gives_its_place_to_the_next():
    """A chosen volunteer that could not hold an order (no room left, a full disk) kept its place for good: the order
    was never fulfilled while /preheat said it was (an adversarial session)."""
    orders = book(4)
    o = order(0.25)  # one place
    orders.add(o)
    (first,) = orders.chosen(o)
    orders.seen(1.0, first, "east", 1000, frozenset({CID}))
    (second,) = orders.chosen(o)
    assert second != first
    assert orders.for_volunteer(1.0, first) == []


def test_a_volunteer_changing_its_room_at_every_poll_does_not_make_each_poll_rank_the_region():
    """The room a poll gives changed what a top-up reads, so one client varying it made every later poll sort and rank
    the whole region again: 17 ms a poll at 18 000 volunteers, and 2 000 newcomers cost 40 s of the primary's CPU (an
    adversarial session).  A short order looks again at most once a TOPUP_S; the count it wants is kept, not counted."""
    orders = book(3000, room=50)  # none has the room: the order stays short
    o = order(0.5, size=100)
    orders.add(o)
    assert orders.chosen(o, 0.0) == set()
    looked = []
    real = orders.in_region
    orders.in_region = lambda region: looked.append(region) or real(region)  # type: ignore[method-assign]
    attacker = ("10.6.6.6", "x")
    for i in range(200):  # 200 polls within a second, each with another room
        now = i / 400
        orders.seen(now, attacker, "east", i % 50)  # never the room for it
        orders.for_volunteer(now, attacker)
    assert looked == [] and orders.wanted(o) == 1501
    orders.seen(1.5, ("10.0.9.9", "roomy"), "east", 1000)
    assert orders.chosen(o, 1.5) == {("10.0.9.9", "roomy")} and looked == ["east"]  # a second on: looked again, once


def test_a_lower_share_lets_the_worst_ranked_peers_go():
    """`preheat --peers 100%` then `--peers 25%`: all four kept the file pinned for the order's life (an adversarial
    session).  The best-ranked keep theirs; a higher share again only tops up."""
    orders = book(4)
    orders.add(order(1.0))
    assert len(orders.chosen(order(1.0))) == 4
    orders.add(order(0.25))
    (kept,) = orders.chosen(order(0.25))
    assert kept == min(orders.in_region("east"), key=lambda v: rank(CID, v))
    orders.add(order(0.5))
    assert kept in orders.chosen(order(0.5)) and len(orders.chosen(order(0.5))) == 2
