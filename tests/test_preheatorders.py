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
