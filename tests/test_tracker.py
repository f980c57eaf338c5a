"""The regional tracker: locality, usefulness ranking, spread, expiry and upload rates."""

from __future__ import annotations

import asyncio
import ipaddress
import zlib
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeswarm.policy import tracker
from edgeswarm.policy.peerstore import MemoryPeerStore
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import (
    AnnounceRecord,
    Full,
    Limits,
    OutOfOrder,
    PeerRecord,
    Refused,
    Tracker,
    address_group,
    labels,
    peer_url,
    peer_url_problem,
    rank,
)

EAST, WEST = Region("east", "att"), Region("west", "verizon")
N = 8  # pieces
CID = "c" * 64


def peer(pid: str, region: Region | None = EAST, have: set[int] | None = None, rate: float = 0.0, pieces: int = N) -> PeerRecord:
    return PeerRecord(
        peer_id=pid,
        url=f"http://10.0.0.1:{1000 + len(pid)}",
        address="10.0.0.1",
        region=region,
        have=set() if have is None else set(have),
        piece_count=pieces,
        uploaded=0,
        downloaded=0,
        upload_rate=rate,
        last_seen=0.0,
    )


def address(pid: str) -> str:
    """Each test peer at its own address (10.x.y.z from its id), so per-address limits stay out of the way."""
    return str(ipaddress.IPv4Address(0x0A000000 + zlib.crc32(pid.encode()) % (1 << 24)))


async def announce(
    t: Tracker, now: float, pid: str, *, region: Region | None = EAST, have=(), uploaded: int = 0, event: str = "update", cid=CID
):
    addr = address(pid)
    url = f"http://{addr}:{len(pid)}"
    heard = AnnounceRecord(
        cid=cid, peer_id=pid, url=url, address=addr, region=region, have=set(have), piece_count=N, uploaded=uploaded, event=event
    )
    return await t.announce(now, heard)


def ids(records) -> list[str]:
    return [r.peer_id for r in records]


# ---- ranking --------------------------------------------------------------------------------------


def test_complete_is_holding_every_piece():
    assert peer("s", have=set(range(N))).complete
    assert not peer("p", have={0}).complete


async def test_asker_is_never_in_its_own_answer():
    asker = peer("me", have={0})
    others = [peer(f"p{i}", have=set(range(N))) for i in range(5)]
    assert "me" not in ids(rank(asker, [asker, *others], "prefer"))
    t = Tracker()
    for i in range(5):
        await announce(t, 0, f"p{i}", have=range(N))
    assert "me" not in ids(await announce(t, 1, "me"))
    assert "me" not in ids(await announce(t, 2, "me"))  # not even once it is in the swarm


def test_strict_excludes_other_regions_and_unmapped_is_its_own_region():
    swarm = [peer("e1", EAST, {1}), peer("w1", WEST, set(range(N))), peer("u1", None, set(range(N))), peer("u2", None, {2})]
    assert ids(rank(peer("e0", EAST), swarm, "strict")) == ["e1"]
    assert ids(rank(peer("w0", WEST), swarm, "strict")) == ["w1"]
    assert set(ids(rank(peer("u0", None), swarm, "strict"))) == {"u1", "u2"}


def test_prefer_puts_same_region_first_even_before_better_peers():
    asker = peer("me", WEST, {0})
    swarm = [
        peer("seed-east", EAST, set(range(N)), rate=1e9),
        peer("seed-unmapped", None, set(range(N)), rate=1e9),
        peer("weak-west", WEST, {1}),
        peer("useless-west", WEST, {0}),
    ]
    assert ids(rank(asker, swarm, "prefer"))[:2] == ["weak-west", "useless-west"]
    assert set(ids(rank(asker, swarm, "prefer"))[2:]) == {"seed-east", "seed-unmapped"}


def test_useful_peers_before_useless_ones_whatever_their_rate():
    asker = peer("me", have={0, 1})
    ranked = rank(asker, [peer("fast-useless", have={0, 1}, rate=1e9), peer("slow-useful", have={5})], "prefer")
    assert ids(ranked) == ["slow-useful", "fast-useless"]


def test_seeds_first_then_more_useful_pieces_then_rate():
    asker = peer("me", have=set(range(1, N)))  # lacks only piece 0
    swarm = [
        peer("partial-fast", have={0, 1}, rate=1e9),  # as useful as a seed (holds the one missing piece)
        peer("seed-slow", have=set(range(N)), rate=1.0),
    ]
    assert ids(rank(asker, swarm, "prefer")) == ["seed-slow", "partial-fast"]
    asker = peer("me", have=set())
    swarm = [
        peer("one", have={0}, rate=1e9),
        peer("three", have={0, 1, 2}),
        peer("two-fast", have={3, 4}, rate=50.0),
        peer("two-slow", have={5, 6}),
    ]
    assert ids(rank(asker, swarm, "prefer")) == ["three", "two-fast", "two-slow", "one"]


def test_rank_is_deterministic():
    asker = peer("me")
    swarm = [peer(f"p{i}", have={0}) for i in range(20)]
    assert ids(rank(asker, swarm, "prefer")) == ids(rank(asker, list(reversed(swarm)), "prefer"))


def test_tie_break_spreads_first_choices_across_askers():
    """Equal candidates: each asker gets its own order, so nobody is everyone's first peer (a hot spot)."""
    swarm = [peer(f"seed{i}", have=set(range(N))) for i in range(20)]
    firsts = Counter(rank(peer(f"asker{a}"), swarm, "prefer")[0].peer_id for a in range(200))
    assert len(firsts) >= 15
    assert max(firsts.values()) <= 30  # 10 expected per seed


regions = st.sampled_from([EAST, WEST, Region("north", "att"), None])
records = st.builds(
    peer,
    pid=st.sampled_from([f"p{i}" for i in range(30)]),
    region=regions,
    have=st.sets(st.integers(0, N - 1)),
    rate=st.sampled_from([0.0, 1.0, 1e3, 1e6]),
)


def reference_rank(asker: PeerRecord, swarm: list[PeerRecord], locality: str) -> list[str]:
    """The handout order as the module's docstring states it, one tuple per candidate and a stable sort: what ``rank`` must equal."""
    home = asker.region.name if asker.region else None
    base = zlib.crc32(f"{asker.owner}/{asker.peer_id}".encode() + b"|")
    keyed = []
    seeding = len(asker.have) >= asker.piece_count  # it lacks nothing: leechers first, who want what it has
    for c in swarm:
        away = (c.region.name if c.region else None) != home
        if c.key == asker.key or (away and locality == "strict"):
            continue
        useful = len(c.have - asker.have)
        complete = len(c.have) >= c.piece_count
        tie = zlib.crc32(f"{c.owner}/{c.peer_id}".encode(), base)
        keyed.append(((away, useful == 0, complete == seeding, -useful, -c.upload_rate, tie), c))
    keyed.sort(key=lambda t: t[0])
    return [c.peer_id for _, c in keyed]


@settings(max_examples=200, deadline=None)
@given(asker=records, swarm=st.lists(records, max_size=40), locality=st.sampled_from(["strict", "prefer"]))
def test_rank_is_the_documented_order(asker, swarm, locality):
    """rank's one-integer keys (and their cache on the records) order exactly as the criteria, ties in input order."""
    swarm = [replace(p, upload_rate=p.upload_rate) for p in swarm]  # distinct records, as a store gives
    assert ids(rank(asker, swarm, locality)) == reference_rank(asker, swarm, locality)
    assert ids(rank(asker, swarm, locality)) == reference_rank(asker, swarm, locality)  # again, from the cached keys


def test_a_seed_is_handed_leechers_first():
    """To an asker that lacks nothing every candidate is useless, and seeds sorted first: a BitTorrent seed was handed
    30 seeds and none of the 5 leechers of its swarm (an adversarial session)."""
    full = set(range(N))
    seeds = [peer(f"seed{i}", have=full, rate=9.0) for i in range(41)]
    leechers = [peer(f"leech{i}", have={0}) for i in range(5)]
    assert set(ids(rank(peer("me", have=full), seeds + leechers, "prefer")[:5])) == {f"leech{i}" for i in range(5)}
    assert set(ids(rank(peer("me"), seeds + leechers, "prefer")[:5])) <= {f"seed{i}" for i in range(41)}  # a leecher: seeds


def test_a_changed_rate_or_bitfield_is_ranked_anew():
    """The rank key cached on a record follows its rate and pieces (the memory store sets a new record's rate after building it)."""
    asker = peer("me")
    slow, fast = peer("slow", have={0}, rate=1.0), peer("fast", have={0}, rate=2.0)
    assert ids(rank(asker, [slow, fast], "prefer")) == ["fast", "slow"]
    slow.upload_rate = 3.0
    assert ids(rank(asker, [slow, fast], "prefer")) == ["slow", "fast"]
    slow.have = set()
    assert ids(rank(asker, [slow, fast], "prefer")) == ["fast", "slow"]


@settings(max_examples=40, deadline=None)
@given(asker=records, swarm=st.lists(records, max_size=20))
def test_strict_never_hands_out_another_region(asker, swarm):
    answer = rank(asker, swarm, "strict")
    assert all(p.region == asker.region for p in answer)
    assert asker.peer_id not in ids(answer)
    assert len(answer) == len([p for p in swarm if p.region == asker.region and p.peer_id != asker.peer_id])


@settings(max_examples=40, deadline=None)
@given(asker=records, swarm=st.lists(records, max_size=20))
def test_prefer_is_a_same_region_block_then_the_rest(asker, swarm):
    answer = rank(asker, swarm, "prefer")
    same = [p.region == asker.region for p in answer]
    assert same == sorted(same, reverse=True)
    assert len(answer) == len([p for p in swarm if p.peer_id != asker.peer_id])
    for a, b in pairwise(answer):  # within a block: useful before useless
        if a.region == b.region:
            assert bool(a.have - asker.have) >= bool(b.have - asker.have)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), regions, st.sets(st.integers(0, N - 1))), max_size=40), st.integers(1, 9))
def test_tracker_strict_answers_stay_in_region(announces, max_answer):
    async def run() -> None:
        t = Tracker(locality="strict", max_answer=max_answer)
        placed: dict[str, Region | None] = {}
        for now, (n, region, have) in enumerate(announces):
            placed[f"p{n}"] = region
            answer = await announce(t, now, f"p{n}", region=region, have=have)
            assert len(answer) <= max_answer
            assert all(placed[p.peer_id] == region for p in answer)

    asyncio.run(run())


# ---- the tracker ----------------------------------------------------------------------------------


async def test_max_answer_is_honoured():
    t = Tracker(max_answer=5)
    for i in range(12):
        await announce(t, 0, f"p{i}", have={i % N})
    assert len(await announce(t, 1, "me")) == 5
    t = Tracker()
    for i in range(40):
        await announce(t, 0, f"p{i}")
    assert len(await announce(t, 1, "me")) == 30


async def test_answer_is_ranked():
    t = Tracker()
    await announce(t, 0, "useless", have={0})
    await announce(t, 0, "seed", have=range(N))
    await announce(t, 0, "other-region-seed", region=WEST, have=range(N))
    assert ids(await announce(t, 1, "me", have={0})) == ["seed", "useless", "other-region-seed"]


async def test_announce_updates_the_record():
    t = Tracker()
    first = AnnounceRecord(
        cid=CID,
        peer_id="p",
        url="http://10.0.0.9:7",
        address="10.0.0.9",
        region=EAST,
        have={0},
        piece_count=N,
        event="update",
        user="alice",
    )
    await t.announce(0, first)
    moved = replace(first, url="http://10.9.9.9:7", address="10.9.9.9", region=WEST, have={0, 1}, uploaded=100, downloaded=200)
    await t.announce(5, moved)  # hers: it moved
    (rec,) = await t.swarm(CID)
    assert (rec.url, rec.address, rec.region, rec.have, rec.uploaded, rec.downloaded, rec.last_seen, rec.user) == (
        "http://10.9.9.9:7",
        "10.9.9.9",
        WEST,
        {0, 1},
        100,
        200,
        5,
        "alice",
    )


async def test_have_is_copied_not_aliased():
    t = Tracker()
    have = {0}
    await t.announce(
        0,
        AnnounceRecord(
            cid=CID, peer_id="p", url="http://10.0.0.1:1", address="10.0.0.1", region=EAST, have=have, piece_count=N, event="started"
        ),
    )
    have.add(5)
    assert (await t.swarm(CID))[0].have == {0}


async def test_stopped_removes_the_peer_and_its_empty_swarm():
    t = Tracker()
    await announce(t, 0, "a", event="started")
    await announce(t, 0, "b", event="started")
    assert await announce(t, 1, "a", event="stopped") == []
    assert ids(await t.swarm(CID)) == ["b"]
    assert "a" not in ids(await announce(t, 2, "c"))
    await announce(t, 3, "b", event="stopped")
    await announce(t, 3, "c", event="stopped")
    assert await t.contents() == []
    assert await announce(t, 4, "ghost", event="stopped") == []  # unknown peer: harmless
    assert await t.contents() == []


async def test_unknown_event_and_locality_are_refused():
    with pytest.raises(ValueError, match="event"):
        await announce(Tracker(), 0, "p", event="paused")
    with pytest.raises(ValueError, match="locality"):
        Tracker(locality="nearby")  # type: ignore[arg-type]


async def test_expire_drops_silent_peers_and_empty_swarms():
    t = Tracker(ttl=90)
    await announce(t, 0, "old", cid="1" * 64)
    await announce(t, 0, "old", cid="2" * 64)
    await announce(t, 50, "fresh", cid="2" * 64)
    assert await t.expire(90) == []  # exactly ttl old: still in
    assert len(await t.expire(91)) == 2
    assert await t.contents() == ["2" * 64]
    assert ids(await t.swarm("2" * 64)) == ["fresh"]
    assert len(await t.expire(200)) == 1
    assert await t.contents() == []
    assert await t.peer_count() == 0


async def test_counts_and_listings():
    t = Tracker()
    await announce(t, 0, "a", cid="1" * 64)
    await announce(t, 0, "a", cid="2" * 64)
    await announce(t, 0, "b", cid="2" * 64)
    assert sorted(await t.contents()) == ["1" * 64, "2" * 64]
    assert await t.peer_count() == 2  # a peer in two swarms is one peer
    assert sorted(ids(await t.swarm("2" * 64))) == ["a", "b"]
    assert await t.swarm("9" * 64) == []


async def test_upload_rate_is_derived_from_deltas():
    t = Tracker()
    await announce(t, 0, "p", uploaded=0)
    assert (await t.swarm(CID))[0].upload_rate == 0
    await announce(t, 10, "p", uploaded=10_000)
    assert (await t.swarm(CID))[0].upload_rate == pytest.approx(1000)
    await announce(t, 20, "p", uploaded=30_000)  # 2000 B/s now: the average moves towards it
    rate = (await t.swarm(CID))[0].upload_rate
    assert 1000 < rate < 2000
    await announce(t, 20, "p", uploaded=40_000)  # no time elapsed: no sample, no division by zero
    assert (await t.swarm(CID))[0].upload_rate == rate
    await announce(t, 30, "p", uploaded=500)  # restarted peer: counter went back, ignored
    assert (await t.swarm(CID))[0].upload_rate == rate
    await announce(t, 40, "p", uploaded=500)  # idle since the restart: decays
    assert (await t.swarm(CID))[0].upload_rate < rate


async def test_measured_rate_orders_equal_peers():
    t = Tracker()
    for pid, up in [("slow", 1_000), ("fast", 100_000)]:
        await announce(t, 0, pid, have=range(N))
        await announce(t, 10, pid, have=range(N), uploaded=up)
    assert ids(await announce(t, 11, "me")) == ["fast", "slow"]


# ---- the address-claim rule -----------------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.0.0.5", "2001:db8::5", "::ffff:10.0.0.5"])
def test_a_peers_url_is_built_on_the_address_it_connected_from(address):
    """No peer names its own upload host, so none can send a swarm's traffic at someone else's address."""
    parts = urlsplit(peer_url(address, 7000))
    assert (parts.scheme, parts.hostname, parts.port) == ("http", address, 7000)


@pytest.mark.parametrize("address", ["10.0.0.5", "2001:db8::5"])
def test_the_urls_a_tracker_builds_are_the_urls_a_peer_uses(address):
    assert peer_url_problem(peer_url(address, 7000)) is None
    assert peer_url_problem(f"{peer_url(address, 7000)}/relay/0a1b-p7") is None  # a relay at a promoted peer


@pytest.mark.parametrize(
    "url", ["https://edge.example/relay/0a1b-p7", "http://other-edge:8080/relay/0a1b-p7", "http://[fe80::1%eth0]:7000"]
)
def test_relays_at_any_edge_and_link_local_peers_are_used(url):
    """A relay is at its edge's --register-url, which may be a name without a port, of an edge the peer does not know
    (one sharing the region's tracker store): peers dropped every relayed peer of such edges (a review)."""
    assert peer_url_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x12?",  # a path and a query: the edge chose what the victim was asked
        "http://127.0.0.1:8080/admin",
        "http://victim.example:80",  # a name, where trackers write the address they saw
        "http://127.0.0.1",  # no port
        "file:///etc/passwd",
        "gopher://127.0.0.1:70",
        "http://user:pw@127.0.0.1:80",
        "http://127.0.0.1:80#x",
        "http://[::1:80",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:80/relay/a/b",  # a path below a relay's
        "http://127.0.0.1:80/relay/",
    ],
)
def test_a_tracker_answer_cannot_point_peers_at_any_url(url):
    """An edge that listed any URL made every peer of its swarm a request source against a service of its choosing:
    27 requests a second per peer at the default interval, any host, port and path (an adversarial session)."""
    assert peer_url_problem(url) is not None


# ---- identity and limits (issue 9, defects 5 and 8) ------------------------------------------------


async def at(t: Tracker, now: float, pid: str, addr: str, *, user: str | None = None, event: str = "update", cid=CID, have=()):
    url = f"http://{addr}:7000"
    return await t.announce(
        now, AnnounceRecord(cid=cid, peer_id=pid, url=url, address=addr, region=EAST, have=set(have), piece_count=N, event=event, user=user)
    )


async def test_an_announce_that_arrives_after_its_peers_stopped_changes_nothing():
    """Sent before the ``stopped``, it came after: only ``started`` joins again (OutOfOrder: the edge's 409)."""
    t = Tracker(ttl=10)
    await at(t, 0, "x", "10.0.0.1", event="started")
    await at(t, 1, "x", "10.0.0.1", event="stopped")
    for late in ("update", "completed"):
        with pytest.raises(OutOfOrder, match="announce 'started' to join again"):
            await at(t, 2, "x", "10.0.0.1", event=late)
    await at(t, 2, "x", "10.0.0.1", event="stopped")  # said again (a retry): no error, nothing changes
    assert await t.swarm(CID) == [] and t.state_size()["identities"] == 0
    await at(t, 2, "x", "10.0.0.1", cid="b" * 64)  # its other contents are not concerned
    await at(t, 2, "x", "10.0.0.66")  # nor another owner's peer of the same id
    await at(t, 3, "x", "10.0.0.1", event="started")  # the peer back: in the swarm again
    await at(t, 4, "x", "10.0.0.1")
    assert sorted(r.address for r in await t.swarm(CID)) == ["10.0.0.1", "10.0.0.66"]


async def test_a_stopped_peer_is_remembered_for_a_ttl_and_a_bounded_number_of_them(monkeypatch):
    t = Tracker(ttl=10)
    await at(t, 0, "x", "10.0.0.1", event="stopped")
    await t.expire(11)
    await at(t, 12, "x", "10.0.0.1")  # older than a ttl: a late announce is no longer known as one
    monkeypatch.setattr(tracker, "MAX_LEFT", 3)
    for i in range(5):
        await at(t, 20, f"p{i}", f"10.0.1.{i}", event="stopped")
    assert t.state_size()["left"] == 3
    await at(t, 21, "p0", "10.0.1.0")  # the oldest went first
    with pytest.raises(OutOfOrder):
        await at(t, 21, "p4", "10.0.1.4")


async def test_an_id_cannot_be_taken_over_after_its_owner_stops():
    t = Tracker()
    await at(t, 0, "x", "10.0.0.1")
    await at(t, 1, "x", "10.0.0.1", event="stopped")
    await at(t, 2, "x", "10.0.0.66")  # the squatter: gets an id of its own address, not the owner's
    await at(t, 3, "x", "10.0.0.1", event="started")  # the owner comes back: no refusal
    assert sorted(r.address for r in await t.swarm(CID)) == ["10.0.0.1", "10.0.0.66"]
    await at(t, 4, "x", "10.0.0.66", event="stopped")  # nor can it stop the owner's peer
    assert [r.address for r in await t.swarm(CID)] == ["10.0.0.1"]


async def test_a_shared_bare_id_is_labelled_apart_in_answers():
    t = Tracker()
    await at(t, 0, "x", "10.0.0.1", user="alice")
    await at(t, 0, "x", "10.0.0.2", user="bob")
    answer = await at(t, 1, "me", "10.0.0.3")
    assert sorted(labels(answer)) == ["x@10.0.0.1", "x@10.0.0.2"]
    await at(t, 2, "x", "10.0.0.2", user="bob", event="stopped")
    assert labels(await at(t, 3, "me", "10.0.0.3")) == ["x"]  # unique again: its own name


async def test_a_refusals_wait_is_until_the_oldest_ids_last_announce_in_any_swarm_expires():
    """An id's last announce is that of its most recently announced swarm (read in O(1): a max over 20 000 swarms per
    id made each refusal cost the edge 0.3 s)."""
    t = Tracker(ttl=90, limits=Limits(ids_per_address=2))
    await at(t, 0, "a", "10.0.0.66", cid="1" * 64)
    await at(t, 5, "b", "10.0.0.66")
    await at(t, 20, "a", "10.0.0.66", cid="2" * 64)
    await at(t, 30, "a", "10.0.0.66", cid="1" * 64)  # its first swarm again: the last announce is this one
    with pytest.raises(Refused) as err:
        await at(t, 40, "c", "10.0.0.66")
    assert err.value.retry_after == pytest.approx(90 - (40 - 5))  # b, last seen at 5, expires first
    await at(t, 50, "b", "10.0.0.66", event="stopped")
    await at(t, 60, "a", "10.0.0.66", cid="2" * 64, event="stopped")  # a's last swarm gone: its other one, at 30, is last
    await at(t, 60, "d", "10.0.0.66")
    with pytest.raises(Refused) as err:
        await at(t, 70, "c", "10.0.0.66")
    assert err.value.retry_after == pytest.approx(90 - (70 - 30))


async def test_a_refusals_wait_is_at_most_a_ttl_whatever_the_callers_clock_did():
    """The wait was the ttl less the oldest id's silence: an hour and a quarter from a wall clock stepped back an hour
    (an adversarial session: ``Retry-After: 3567`` at a 15 s ttl), which the peer waited out one interval at a time."""
    t = Tracker(ttl=90, limits=Limits(ids_per_address=1))
    await at(t, 3600, "a", "10.0.0.66")
    with pytest.raises(Refused) as err:
        await at(t, 0, "b", "10.0.0.66")
    assert err.value.retry_after == 90


class _SteppedStore(MemoryPeerStore):
    """A store on a clock of its own, as a shared one is on the wall clock (``PeerStore.at``), which a test steps."""

    def __init__(self, wall: float):
        super().__init__()
        self.wall = wall

    def at(self, now: float) -> float:
        return self.wall


async def test_a_store_on_another_clock_stamps_its_records_by_it_and_the_trackers_own_tables_run_on_the_trackers():
    """A shared store's records carry the edges' wall-clock times; an edge's own tables (live ids per address, rate
    buckets, pools) run on its monotonic clock, which no step of the wall clock moves: with them on the wall clock a
    step back of an hour kept a dead peer's place under ``--max-peer-ids`` for the hour (an adversarial session)."""
    store = _SteppedStore(1_000_000.0)
    t = Tracker(ttl=15, limits=Limits(ids_per_address=1), store=store)
    await at(t, 5, "a", "10.0.0.66")
    assert [r.last_seen for r in await t.swarm(CID)] == [1_000_000.0]
    store.wall -= 3600  # the wall clock steps back an hour; the tracker's runs on
    await t.expire(25)  # a fell silent 20 s ago by the tracker's clock
    assert t.state_size()["identities"] == 0
    await at(t, 25, "b", "10.0.0.66")  # its address's place is free again
    assert {r.peer_id: r.last_seen for r in await t.swarm(CID)}["b"] == 996_400.0


async def test_an_id_is_in_at_most_its_share_of_swarms_the_least_recently_announced_leaving():
    """One address's 16 ids claiming 20 000 contents each took an edge from 92 to 758 MB without a refusal."""
    t = Tracker(ttl=90, limits=Limits(swarms_per_id=3))
    cids = [f"{i:064x}" for i in range(5)]
    for now, cid in enumerate(cids):
        await at(t, now, "hoarder", "10.0.0.66", cid=cid)
    await at(t, 5, "hoarder", "10.0.0.66", cid=cids[2])  # announced again: the most recent now
    await at(t, 6, "hoarder", "10.0.0.66", cid="f" * 64)
    held = [cid for cid in [*cids, "f" * 64] if await t.swarm(cid)]
    assert held == [cids[2], cids[4], "f" * 64] and t.state_size()["records"] == 3
    await at(t, 7, "other", "10.0.0.66", cid=cids[0])  # another id of the same address has a share of its own
    assert [r.peer_id for r in await t.swarm(cids[0])] == ["other"]


async def test_live_ids_per_address_are_limited_until_one_expires():
    t = Tracker(ttl=90, limits=Limits(ids_per_address=3))
    for i in range(3):
        await at(t, 0, f"fake{i}", "10.0.0.66")
    await at(t, 0, "fake0", "10.0.0.66", cid="1" * 64)  # an id it has, in another swarm: still one id
    with pytest.raises(Refused) as err:
        await at(t, 10, "fake3", "10.0.0.66")
    assert "10.0.0.66 already has 3 live peer ids" in err.value.message and err.value.retry_after == pytest.approx(80)
    await at(t, 10, "honest", "10.0.0.1")  # other addresses are not affected
    await at(t, 60, "fake0", "10.0.0.66")
    await t.expire(91)  # fake1 and fake2 went silent
    await at(t, 91, "fake3", "10.0.0.66")
    assert t.state_size()["identities"] == 3  # fake0, fake3, honest


async def test_a_token_user_is_limited_across_addresses():
    t = Tracker(limits=Limits(ids_per_user=2))
    await at(t, 0, "a", "10.0.0.1", user="mallory")
    await at(t, 0, "b", "10.0.0.2", user="mallory")
    with pytest.raises(Refused, match="user:mallory"):
        await at(t, 0, "c", "10.0.0.3", user="mallory")
    await at(t, 0, "c", "10.0.0.3", user="alice")


async def test_announce_rate_per_address_refuses_without_charging_refusals():
    t = Tracker(limits=Limits(announces_per_s=2, announce_burst=4))
    for _ in range(4):
        await at(t, 0, "p", "10.0.0.1")
    with pytest.raises(Refused, match="too many announces") as err:
        await at(t, 0, "p", "10.0.0.1")
    assert err.value.retry_after == pytest.approx(0.5)
    with pytest.raises(Refused):
        await at(t, 0.25, "p", "10.0.0.1")
    await at(t, 0.5, "p", "10.0.0.1")  # one announce refilled at 2/s; the refusals did not cost any
    await at(t, 0.5, "q", "10.0.0.2")  # another address has its own bucket


async def test_one_address_gets_a_few_places_in_an_answer_whatever_it_floods():
    """Within the candidates an announce reads: a swarm larger than the sample dilutes others by the flood's share of it."""
    t = Tracker(limits=Limits(ids_per_address=1000, announce_burst=1000), sample=1000)
    for i in range(500):
        await at(t, 0, f"sybil{i}", "10.0.0.66", have=range(N))  # seeds: the best ranked of all
    for i in range(5):
        await at(t, 0, f"honest{i}", f"10.0.1.{i}", have={i})
    answer = await at(t, 1, "me", "10.0.2.1")
    assert Counter(r.address for r in answer)["10.0.0.66"] == 2
    assert {r.peer_id for r in answer} >= {f"honest{i}" for i in range(5)}


async def test_a_full_tracker_crowds_out_the_sender_holding_the_most_and_refuses_an_equal():
    """Limits.records bounds what many addresses can make it keep: a flood pays with its own records first."""
    t = Tracker(ttl=30, limits=Limits(records=40, announce_burst=1000))
    for i in range(36):  # one flooding address: 4 ids in 9 swarms each
        await at(t, 0, f"f{i % 4}", "10.6.6.6", cid=f"{i // 4:064x}")
    for i in range(4):
        await at(t, 1, f"h{i}", f"10.0.0.{i}")
    assert t.records == 40 and t.crowded_out == 0
    await at(t, 2, "late", "10.0.0.9", cid="a" * 64)  # a newcomer: the flood's oldest record makes room
    assert t.records == 40 and t.crowded_out == 1
    assert ("10.6.6.6", "f0") not in t.local(f"{0:064x}") and ("10.0.0.9", "late") in t.local("a" * 64)
    await at(t, 3, "h0", "10.0.0.0")  # a member's update adds nothing: never refused nor crowding out
    assert t.crowded_out == 1
    with pytest.raises(Full, match=r"holds 40 records, its most, and 10\.6\.6\.6 holds as many as anyone") as err:
        await at(t, 3, "f0", "10.6.6.6", cid="b" * 64)  # the heaviest sender gets no more
    assert err.value.retry_after == 10 and t.records == 40 and t.crowded_out == 1


async def test_at_its_bound_a_tracker_weighs_an_ipv6_site_as_one_sender():
    """By /64, one /48 was 65 536 senders of a record or two each: at the bound, honest seeds of fifty records each
    were crowded out down to one (a review).  A /48 is one sender, as an IPv4 address is."""
    t = Tracker(ttl=30, limits=Limits(records=40, announce_burst=1000))
    for seed in ("2001:db8:1::1", "2001:db8:2::1"):
        for c in range(10):
            await at(t, 0, "seed", seed, cid=f"{c:064x}")
    for n in range(20):  # one site's /64s, a record each
        await at(t, 1, "x", f"2001:db8:bad:{n:x}::1", cid="e" * 64)
    assert t.records == 40
    for n in range(20, 30):  # more of its /64s: it holds the most, and gets no more
        with pytest.raises(Full, match="2001:db8:bad::/48 holds as many as anyone"):
            await at(t, 2, "x", f"2001:db8:bad:{n:x}::1", cid="e" * 64)
    await at(t, 2, "newcomer", "2001:db8:3::1", cid="f" * 64)  # another site's: it takes the place of the flood's
    for seed in ("2001:db8:1::1", "2001:db8:2::1"):
        assert sum((seed, "seed") in t.local(f"{c:064x}") for c in range(10)) == 10
    assert t.crowded_out == 1 and t.records == 40
    assert tracker.sender_of("2001:db8:bad:7::/64") == "2001:db8:bad::/48" and tracker.sender_of("10.0.0.1") == "10.0.0.1"


async def test_a_full_tracker_of_equal_senders_refuses_the_new_one():
    t = Tracker(limits=Limits(records=3))
    for i in range(3):
        await at(t, 0, f"p{i}", f"10.0.0.{i}")
    with pytest.raises(Full):
        await at(t, 1, "q", "10.0.0.9")
    with pytest.raises(Full):  # one more than the others would make it the heaviest: no room taken for that
        await at(t, 1, "p0", "10.0.0.0", cid="b" * 64)
    await at(t, 1, "p0", "10.0.0.0", event="stopped")  # a record that leaves is room for one
    await at(t, 2, "q", "10.0.0.9")
    assert t.records == 3 and t.crowded_out == 0


async def test_expiry_frees_every_per_peer_table():
    t = Tracker(ttl=10)
    for i in range(20):
        await at(t, 0, f"p{i}", f"10.0.0.{i}", user="u" if i % 2 else None, cid=str(i % 3) * 64)
    assert t.state_size()["identities"] == 20
    await t.expire(11)
    assert t.state_size() == {"records": 0, "identities": 0, "limit_keys": 0, "rate_keys": 0, "left": 0, "pools": 0}
    assert await t.contents() == [] and t._here == {}


@pytest.mark.parametrize(
    ("address", "group"),
    [("10.0.0.5", "10.0.0.5"), ("::ffff:10.0.0.5", "10.0.0.5"), ("2001:db8::5", "2001:db8::/64"), ("2001:db8::1:0:0:9", "2001:db8::/64")],
)
def test_ipv6_addresses_are_limited_by_their_64(address, group):
    assert address_group(address) == group


async def test_which_peers_announce_here_is_known_per_content_and_forgotten_with_them():
    """The super-seeder keeps the copies of these peers (``retain``): the answer must follow joins, moves, stops and expiry."""
    t = Tracker(ttl=10)
    await at(t, 0, "a", "10.0.0.1", user="alice")
    await at(t, 0, "b", "10.0.0.2", cid="1" * 64)
    assert t.local(CID) == {("10.0.0.1", "a")} and t.local("1" * 64) == {("10.0.0.2", "b")}
    await at(t, 1, "a", "10.0.0.9", user="alice")  # her peer moved
    assert t.local(CID) == {("10.0.0.9", "a")}
    await at(t, 2, "a", "10.0.0.9", user="alice", event="stopped")
    assert t.local(CID) == set()
    await t.expire(11)
    assert t.local("1" * 64) == set() and t.local_contents() == []
