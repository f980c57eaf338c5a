"""The tracker service behind POST /announce: identity rules and what an announce books in the ledger (no sockets)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from edgeswarm.errors import HttpError
from edgeswarm.policy.peerstore import base_keep
from edgeswarm.policy.regions import RegionMap
from edgeswarm.policy.tracker import Limits
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.roles import announce
from edgeswarm.roles.announce import MAX_COUNT, TrackerService

CID = "ab" * 32
PIECE = 256 * 1024
M = Manifest("a.bin", 4 * PIECE, "application/octet-stream", PIECE, ("0" * 64,) * 4, 0)  # 1 MiB, four pieces
ALL = "8A=="  # the bitfield of all four


def doc(peer: str = "p1", **extra) -> dict:
    return {
        "peer_id": peer,
        "port": 7000,
        "content": CID,
        "pieces": 4,
        "have": "AA==",
        "uploaded": 0,
        "downloaded": 0,
        "event": "update",
        "stats": {"edge": 0, "peer_same_region": 0, "peer_other_region": 0},
        **extra,
    }


@pytest.fixture
def service() -> TrackerService:
    return TrackerService(None, "prefer", 1.0)


async def test_a_peer_id_is_its_addresses_without_tokens(service):
    await service.handle(doc(), "127.0.0.5", M)
    await service.handle(doc(event="stopped"), "127.0.0.5", M)
    await service.handle(doc(), "127.0.0.6", M)  # someone else takes the id the moment its owner stops ...
    answer, _ = await service.handle(doc(event="started"), "127.0.0.5", M)  # ... and the owner still gets back in (was 409)
    assert [(p["peer_id"], p["url"]) for p in answer["peers"]] == [("p1@127.0.0.6", "http://127.0.0.6:7000")]
    assert sorted(p.address for p in await service.tracker.swarm(CID)) == ["127.0.0.5", "127.0.0.6"]


async def test_a_seeder_is_credited_the_copies_its_downloaders_took_before_they_left(service):
    """Downloaders that come and go between two of a seeder's announces are gone when it announces: bounded by the
    swarm then, it was booked one copy of three and flagged (an adversarial session, with three ``edgeswarm get``)."""
    await service.handle(doc(peer="seed", have=ALL, event="started"), "127.0.0.5", M)
    for i in range(3):
        await service.handle(doc(peer=f"get{i}", event="started"), f"127.0.0.{10 + i}", M)
        await service.handle(doc(peer=f"get{i}", event="stopped", have=ALL, usage={"from_peers": M.size}), f"127.0.0.{10 + i}", M)
    _, usage = await service.handle(doc(peer="seed", have=ALL, usage={"uploaded": 3 * M.size}), "127.0.0.5", M)
    assert usage == {"reported_uploaded": 3 * M.size}


async def test_users_cannot_squat_each_others_peer_ids(service):
    await service.handle(doc(), "127.0.0.5", M, "alice")
    answer, _ = await service.handle(doc(), "127.0.0.6", M, "bob")  # the same id, another user: another peer
    assert [(p["peer_id"], p["url"]) for p in answer["peers"]] == [("p1@127.0.0.5", "http://127.0.0.5:7000")]  # no user names
    assert (await service.status())["users"] == {"alice": 1, "bob": 1}
    await service.handle(doc(), "127.0.0.7", M, "alice")  # alice's peer moved: fine, it is hers
    assert sorted(p.address for p in await service.tracker.swarm(CID)) == ["127.0.0.6", "127.0.0.7"]


async def test_usage_is_booked_as_the_peer_reports_it(service):
    await service.handle(doc(peer="other"), "127.0.0.9", M)
    _, usage = await service.handle(doc(have=ALL, usage={"from_this_edge": 50, "from_peers": 30, "uploaded": 100}), "127.0.0.5", M)
    assert usage == {"reported_from_edge": 50, "reported_from_peers": 30, "reported_uploaded": 100}
    _, usage = await service.handle(doc(usage={"from_this_edge": 7}), "127.0.0.5", M)  # this edge does not book its P2P bytes
    assert usage == {"reported_from_edge": 7}
    _, usage = await service.handle(doc(), "127.0.0.5", M)
    assert usage == {}


async def test_claims_beyond_what_was_possible_are_cut_and_booked_as_excess(service):
    huge = 10 << 30
    await service.handle(doc(peer="honest"), "127.0.0.9", M)
    stats = {"edge": 0, "peer_same_region": huge, "peer_other_region": 0}
    _, usage = await service.handle(doc(have=ALL, usage={"from_peers": huge, "uploaded": huge}, stats=stats), "127.0.0.5", M)
    assert usage["reported_from_peers"] == M.size  # it cannot have got more than the content
    assert usage["reported_uploaded"] == M.size  # what it holds, to its one neighbour
    assert usage["claim_excess"] == 3 * huge - 3 * M.size  # both claims and the stats
    assert (await service.status())["regions"]["unmapped"]["bytes_from_peers_same_region"] == M.size
    _, usage = await service.handle(doc(have=ALL, stats=stats), "127.0.0.5", M)  # the same cumulative lie again: nothing new to cut
    assert usage == {}


async def test_stopped_from_a_stranger_adds_nothing_to_the_region(service):
    stats = {"edge": 0, "peer_same_region": M.size, "peer_other_region": 0}
    for i in range(50):  # fresh ids, each "leaving" with a swarm's worth of P2P bytes
        await service.handle(doc(f"ghost{i}", event="stopped", stats=stats), "127.0.0.66", M)
    assert (await service.status())["regions"] == {}
    await service.handle(doc("real", stats=stats), "127.0.0.5", M)
    await service.handle(doc("real", event="stopped", stats=stats), "127.0.0.5", M)
    assert (await service.status())["regions"]["unmapped"]["bytes_from_peers_same_region"] == M.size  # a real peer's bytes stay


async def test_a_started_books_only_the_stats_above_its_stats_base(service):
    """A peer the router's fallback moved here says, with its ``started``, what another tracker took of its stats:
    booked again here, a region's bytes counted up to twice, for good (an adversarial session)."""
    stats = {"edge": M.size, "peer_same_region": 0, "peer_other_region": 0}
    base = {"edge": M.size // 2, "peer_same_region": 0, "peer_other_region": 0}
    await service.handle(doc(event="started", have=ALL, stats=stats, stats_base=base), "127.0.0.5", M)
    assert (await service.status())["regions"]["unmapped"]["bytes_from_edge"] == M.size // 2


async def test_an_announce_that_comes_after_its_peers_stopped_is_409_and_books_nothing(service):
    """Sent before the peer's ``stopped``, it arrived after it: taken, the gone peer was back in the swarm for a ttl."""
    stats = {"edge": M.size, "peer_same_region": 0, "peer_other_region": 0}
    await service.handle(doc(event="started"), "127.0.0.5", M)
    last = {"have": ALL, "stats": stats, "usage": {"from_this_edge": M.size}}  # not acknowledged: "stopped" reports it too
    _, usage = await service.handle(doc(event="stopped", **last), "127.0.0.5", M)
    assert usage == {"reported_from_edge": M.size}
    with pytest.raises(HttpError) as err:
        await service.handle(doc(**last), "127.0.0.5", M)
    assert err.value.status == 409 and "said stopped" in err.value.message
    assert (await service.status())["regions"]["unmapped"]["bytes_from_edge"] == M.size  # once
    assert await service.tracker.swarm(CID) == []


async def test_over_a_limit_is_429_with_retry_after():
    service = TrackerService(None, "prefer", 1.0, Limits(ids_per_address=2))
    await service.handle(doc("a"), "127.0.0.5", M)
    await service.handle(doc("b"), "127.0.0.5", M)
    with pytest.raises(HttpError) as err:
        await service.handle(doc("c"), "127.0.0.5", M)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "3"} and "live peer ids" in err.value.message


async def test_token_users_behind_one_address_are_counted_apart():
    """Carrier-grade NAT: docs say tokens' users are counted apart, but a token user's ids counted against the address
    too: 24 users behind one address, each with a token, got 16 places between them, and one holding 16 ids locked the
    others out (an adversarial session).  Each user has --max-peer-ids of their own; without tokens, the address has."""
    service = TrackerService(None, "prefer", 1.0, Limits(ids_per_address=2, ids_per_user=2))
    await service.handle(doc("a1"), "127.0.0.5", M, "alice")
    await service.handle(doc("a2"), "127.0.0.5", M, "alice")
    for user in ("bob", "carol", "dave"):  # behind the same address, past its 2
        await service.handle(doc(f"{user}1"), "127.0.0.5", M, user)
    with pytest.raises(HttpError) as err:  # alice's own limit holds
        await service.handle(doc("a3"), "127.0.0.5", M, "alice")
    assert err.value.status == 429 and "user:alice already has 2 live peer ids" in err.value.message
    await service.handle(doc("x1"), "127.0.0.5", M)  # without a token: the address's limit, as before
    await service.handle(doc("x2"), "127.0.0.5", M)
    with pytest.raises(HttpError) as err:
        await service.handle(doc("x3"), "127.0.0.5", M)
    assert err.value.status == 429 and "127.0.0.5 already has 2 live peer ids" in err.value.message


async def test_a_full_tracker_is_503_with_retry_after_and_says_so_once_each_way(caplog):
    service = TrackerService(None, "prefer", 2.0, Limits(records=2))
    await service.handle(doc("a"), "127.0.0.5", M)
    await service.handle(doc("b"), "127.0.0.6", M)
    for _ in range(2):
        with pytest.raises(HttpError) as err:
            await service.handle(doc("c"), "127.0.0.7", M)
        assert err.value.status == 503 and err.value.headers == {"Retry-After": "2"} and "holds 2 records" in err.value.message
    await service.handle(doc("a", event="stopped"), "127.0.0.5", M)
    st = await service.status()
    assert (st["max_records"], st["crowded_out"], st["state"]["records"]) == (2, 0, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "holds 2 records, its most (--max-peer-records)" in lines[0], lines
    assert lines[1] == "the tracker has room again: it holds 1 of at most 2 records"


async def test_every_per_peer_table_empties_when_peers_expire(service, monkeypatch):
    for i in range(10):
        stats = {"edge": 100, "peer_same_region": 0, "peer_other_region": 0}
        await service.handle(doc(f"p{i}", have=ALL, usage={"from_peers": 10, "uploaded": 10}, stats=stats), f"127.0.0.{i + 1}", M)
    state = (await service.status())["state"]
    assert state["records"] == 10 and state["reports"] == 10 and state["claims"] == 10
    stats_before = (await service.status())["regions"]
    later = time.monotonic() + 10
    service.clock = lambda: later
    st = await service.status()
    assert st["peers"] == 0 and st["state"] == {"records": 0, "identities": 0, "reports": 10, "claims": 0}, st["state"]
    much_later = later + base_keep(service.store.ttl)  # the bases of reports a sleeping peer's next one counts from
    service.clock = lambda: much_later
    st = await service.status()
    assert st["peers"] == 0 and set(st["state"].values()) == {0}, st["state"]
    assert st["regions"]["unmapped"]["bytes_from_edge"] == stats_before["unmapped"]["bytes_from_edge"] == 1000  # kept, per region


class SteppedClocks:
    """What announce.py reads of ``time``: a wall clock that NTP steps, and a monotonic one that only runs on."""

    def __init__(self) -> None:
        self.wall, self.mono = time.time(), time.monotonic()

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


async def test_a_step_of_the_wall_clock_neither_drops_live_peers_nor_keeps_dead_ones(monkeypatch):
    """The tracker judged peers' silence by the wall clock: an edge's clock stepped an hour forward (NTP correcting a
    slow clock, a VM restored) dropped every live peer at once, and stepped back kept a dead one an hour more, counted,
    handed out and holding its address's ``--max-peer-ids`` place (429, Retry-After 3566) (an adversarial session)."""
    clocks = SteppedClocks()
    monkeypatch.setattr(announce, "time", clocks)
    service = TrackerService(None, "prefer", 5.0, Limits(ids_per_address=1))  # a ttl of 15 s
    await service.handle(doc("a", event="started"), "127.0.0.5", M)
    clocks.wall += 3600
    clocks.mono += 1
    assert (await service.status())["peers"] == 1  # it announced a second ago
    await service.handle(doc("a"), "127.0.0.5", M)
    clocks.wall -= 3600
    clocks.mono += 45  # it died without a word three ttls ago
    assert (await service.status())["peers"] == 0
    await service.handle(doc("b", event="started"), "127.0.0.5", M)  # its address's place is free
    answer, _ = await service.handle(doc("c", event="started"), "127.0.0.6", M)
    assert [p["peer_id"] for p in answer["peers"]] == ["b"]  # and it is handed out no more


async def test_a_peer_costs_the_garbage_collector_one_object_its_record():
    """Each full collection of the cyclic garbage collector walks every object it tracks: at 100 000 peers, six per
    peer (the record, two claim tallies, two sets and a list) made pauses of 0.4-0.7 s of the edge's whole event loop,
    every 15 s or so while peers announce (bench tracker).  What the tracker keeps per peer besides its record is
    numbers and strings in tuples and dicts, which the collector stops tracking."""
    service = TrackerService(None, "prefer", 300.0)

    async def join(first: int, n: int) -> int:
        for i in range(first, first + n):
            stats = {"edge": 100, "peer_same_region": 50, "peer_other_region": 0}
            address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            await service.handle(doc(f"p{i}", have=ALL, usage={"from_peers": 10, "uploaded": 10}, stats=stats), address, M)
            await service.handle(doc(f"p{i}", usage={"from_peers": 10, "uploaded": 10}, stats=stats), address, M)
        gc.collect()
        return len(gc.get_objects())

    before = await join(0, 500)
    after = await join(500, 2000)
    assert (after - before) / 2000 < 1.1, (after - before) / 2000


@pytest.mark.parametrize(
    "bad",
    [
        {"uploaded": MAX_COUNT + 1},
        {"stats": {"edge": MAX_COUNT + 1}},
        {"stats_base": {"edge": -1}},
        {"stats_base": [1, 2]},
        {"usage": {"uploaded": MAX_COUNT + 1}},
        {"usage": {"uploaded": True}},
        {"usage": {"stolen": 5}},
        {"usage": [1, 2]},
        {"ip": "10.0.0.1"},
    ],
)
async def test_bad_fields_are_refused_before_any_change(service, bad):
    with pytest.raises(HttpError) as err:
        await service.handle(doc(**bad), "127.0.0.5", M)
    assert err.value.status == 400
    assert await service.tracker.peer_count() == 0 and (await service.status())["regions"] == {}


async def test_peers_count_distinct_peers_everywhere_and_memberships_count_swarms():
    """A peer in several swarms is one peer at the top, in its region and for its user; memberships count per swarm."""
    regions = RegionMap.from_doc(
        {
            "regions": [
                {"name": "east", "isp": "a", "networks": ["127.1.0.0/16"]},
                {"name": "west", "isp": "b", "networks": ["127.2.0.0/16"]},
            ]
        }
    )
    service = TrackerService(regions, "strict", 1.0)
    cids = ["ab" * 32, "cd" * 32, "ef" * 32]
    joined = {("e1", "127.1.0.1", "alice"): cids, ("e2", "127.1.0.2", "alice"): cids[:2], ("w1", "127.2.0.1", None): cids[:1]}
    for (peer, address, user), theirs in joined.items():
        for cid in theirs:
            await service.handle(doc(peer, content=cid), address, M, user)
    st = await service.status()
    memberships = sum(len(theirs) for theirs in joined.values())
    assert st["peers"] == len(joined) == sum(r["peers"] for r in st["regions"].values())
    assert st["regions"]["east"]["peers"] == 2 and st["regions"]["west"]["peers"] == 1
    assert st["swarm_memberships"] == memberships == sum(r["swarm_memberships"] for r in st["regions"].values())
    assert st["regions"]["east"]["swarm_memberships"] == len(cids) + 2
    assert st["regions"]["east"]["swarms"] == {cids[0]: 2, cids[1]: 2, cids[2]: 1} and st["regions"]["west"]["swarms"] == {cids[0]: 1}
    for row in st["regions"].values():  # a region's swarms hold its memberships, content by content
        assert sum(row["swarms"].values()) == row["swarm_memberships"]
    assert st["users"] == {"alice": 2, "-": 1}


async def test_status_callers_at_once_share_one_ask_of_the_store_and_each_gets_its_figures(service):
    """/status does not wait for the store again while an ask is unanswered (a hung Redis); callers at the same moment
    (a router's poll beside a dashboard's) share that ask and wait for it, rather than answer "no answer" at once (a
    first version of that rule did, for a memory store that answers within a turn of the loop: a CI run)."""
    await service.handle(doc(), "127.0.0.5", M)
    answers = await asyncio.gather(*(service.status() for _ in range(5)))
    assert all("store_error" not in a and a["peers"] == 1 for a in answers), answers
