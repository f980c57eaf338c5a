"""The tracker's store contract, run against both stores: the edge's memory and a real redis-server.

What the tracker relies on: a record comes back as it was put (its bitfield
included), the upload rate is derived from the record replaced, an announce
reads a bounded sample and never a silent peer, removal and expiry, the
per-region share totals fed by deltas, and the counts /status shows.  Redis
adds what memory cannot do: a second edge (another client) and a restarted
one see the same swarms and totals.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from redisserver import redis_server, redis_url  # noqa: F401 - fixtures

from edgeswarm import cli
from edgeswarm.policy.peerstore import MemoryPeerStore, StoreUnavailable, added, base_keep
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerRecord
from edgeswarm.store.redispeers import RedisPeerStore, check_url

TTL = 30.0
CID, OTHER = "a" * 64, "b" * 64
EAST, WEST = Region("east", "att"), Region("west", "verizon")
PIECES = 1000


def record(n: int, now: float, have: set[int] | None = None, region: Region | None = EAST, user: str | None = None, **extra) -> PeerRecord:
    rec = PeerRecord(
        peer_id=f"p{n}",
        url=f"http://10.0.{n // 250}.{n % 250}:7000",
        address=f"10.0.{n // 250}.{n % 250}",
        region=region,
        have=set(range(n % 7, PIECES, 3)) if have is None else have,
        piece_count=PIECES,
        uploaded=extra.get("uploaded", 0),
        downloaded=extra.get("downloaded", 17),
        last_seen=now,
        user=user,
        first_seen=now,
        owner=f"user:{user}" if user else f"addr:10.0.{n // 250}.{n % 250}",
        group=f"10.0.{n // 250}.{n % 250}",
    )
    return rec


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request):
    s = MemoryPeerStore(TTL) if request.param == "memory" else RedisPeerStore(request.getfixturevalue("redis_url"), TTL)
    yield s
    await s.close()


def fields(rec: PeerRecord) -> tuple:
    return (rec.key, rec.url, rec.address, rec.region, rec.have, rec.piece_count, rec.uploaded, rec.downloaded, rec.user, rec.group)


async def test_a_record_comes_back_as_it_was_put(store):
    now = time.time()
    recs = [record(0, now), record(1, now, have=set(), region=None, user="alice"), record(2, now, have=set(range(PIECES)))]
    for r in recs:
        await store.put(now, CID, r, 10)
    got = {r.key: r for r in await store.swarm(CID)}
    assert sorted(fields(r) for r in got.values()) == sorted(fields(r) for r in recs)
    assert got[recs[2].key].complete and not got[recs[0].key].complete
    assert all(r.last_seen == pytest.approx(now) for r in got.values())


async def test_the_upload_rate_comes_from_the_record_replaced(store):
    now = time.time() - 20  # the last announce now: a shared store stamps none after its own clock
    await store.put(now, CID, record(0, now, uploaded=1000), 10)
    later = record(0, now + 10, uploaded=11_000)
    await store.put(now + 10, CID, later, 10)
    assert later.upload_rate == pytest.approx(1000)
    (stored,) = await store.swarm(CID)
    assert stored.upload_rate == pytest.approx(1000)
    restarted = record(0, now + 20, uploaded=5)  # the counter went back: no sample, the rate stays
    await store.put(now + 20, CID, restarted, 10)
    assert restarted.upload_rate == pytest.approx(1000)


async def test_an_announce_reads_a_bounded_sample_of_a_large_swarm(store):
    now = time.time()
    for n in range(200):
        await store.put(now, CID, record(n, now), 20)
    placed = await store.put(now, CID, record(200, now), 20)
    assert placed.size == 201
    keys = [c.key for c in placed.candidates]
    assert 0 < len(keys) <= 21 and len(set(keys)) == len(keys)
    small = await store.put(now, OTHER, record(0, now), 20)
    assert small.size == 1 and [c.key for c in small.candidates] == [record(0, now).key]  # a small swarm: all of it


async def test_samples_vary_so_no_peer_is_left_out_for_good(store):
    now = time.time()
    for n in range(100):
        await store.put(now, CID, record(n, now), 10)
    seen = set()
    for _ in range(40):
        seen |= {c.key for c in (await store.put(now, CID, record(0, now), 10)).candidates}
    assert len(seen) > 60


async def test_silent_peers_are_never_handed_out_and_expire(store):
    now = time.time()
    await store.put(now - TTL - 5, CID, record(1, now - TTL - 5), 10)  # silent for longer than the ttl
    placed = await store.put(now, CID, record(2, now), 10)
    assert [c.peer_id for c in placed.candidates] == ["p2"]
    await store.expire(now)
    assert [r.peer_id for r in await store.swarm(CID)] == ["p2"]
    assert (await store.counts(now)).identities == 1


async def test_remove(store):
    now = time.time()
    await store.put(now, CID, record(1, now), 10)
    await store.put(now, CID, record(2, now), 10)
    gone = await store.remove(CID, record(1, now).key)
    assert gone is not None and gone.peer_id == "p1"
    assert await store.remove(CID, record(1, now).key) is None
    assert [r.peer_id for r in await store.swarm(CID)] == ["p2"]
    placed = await store.put(now, CID, record(3, now), 10)
    assert sorted(c.peer_id for c in placed.candidates) == ["p2", "p3"]


def stats(edge: int, same: int, other: int = 0) -> dict[str, int]:
    return {"edge": edge, "peer_same_region": same, "peer_other_region": other}


async def test_share_totals_add_what_is_new_in_each_report(store):
    key, now = record(1, 0).key, time.time()
    await store.report(now, CID, key, "east", stats(100, 50), False)
    await store.report(now, CID, key, "east", stats(150, 80), False)  # cumulative: +50, +30
    await store.report(now, CID, key, "east", stats(150, 80), False)  # the same again (another edge of the region): nothing
    await store.report(now, CID, key, "east", stats(10, 0), False)  # a restarted peer: all of its new run
    await store.report(now, CID, record(2, 0).key, "west", stats(0, 7), False)
    await store.report(now, CID, record(3, 0).key, "west", stats(1000, 0), True)  # stopped, never reported: its word adds nothing
    assert await store.shares() == {"east": Counter(stats(160, 80)), "west": Counter(stats(0, 7))}
    await store.report(now, CID, key, "east", stats(20, 0), True)  # stopped: +10, and its baseline goes
    await store.report(now, CID, key, "east", stats(5, 0), False)  # back later: a new run
    assert (await store.shares())["east"] == Counter(stats(175, 80))


async def test_counts_per_region_and_user(store):
    now = time.time()
    await store.put(now, CID, record(1, now, user="alice"), 10)
    await store.put(now, OTHER, record(1, now, user="alice"), 10)
    await store.put(now, CID, record(2, now, region=WEST), 10)
    await store.put(now, CID, record(3, now, region=None), 10)
    c = await store.counts(now)
    assert c.identities == 3
    assert c.peers == Counter({"east": 1, "west": 1, "unmapped": 1})
    assert c.memberships == Counter({"east": 2, "west": 1, "unmapped": 1})
    assert c.users == Counter({"alice": 1, "-": 2})
    assert sorted(await store.contents()) == [CID, OTHER]


def _status(c) -> tuple:
    return c.identities, c.peers, c.memberships, c.users, c.swarms


async def test_a_peer_that_stopped_is_no_longer_counted(store):
    """/status counts a peer that sent ``stopped`` no more, at once: with Redis it stayed in ``peers``,
    ``swarm_memberships``, ``swarms`` and ``users`` for a ttl (three announce intervals), a region's dashboard showing
    its peak audience 15 minutes after it left, where the memory store showed none (an adversarial session)."""
    now = time.time()
    await store.put(now, CID, record(1, now, user="alice"), 10)
    await store.put(now, OTHER, record(1, now, user="alice"), 10)
    await store.put(now, CID, record(2, now), 10)
    await store.remove(CID, record(2, now).key)
    await store.remove(CID, record(1, now, user="alice").key)  # still in OTHER's swarm: still counted
    assert _status(await store.counts(now)) == (
        1,
        Counter({"east": 1}),
        Counter({"east": 1}),
        Counter({"alice": 1}),
        {"east": Counter({OTHER: 1})},
    )
    await store.remove(OTHER, record(1, now, user="alice").key)
    assert _status(await store.counts(now)) == (0, Counter(), Counter(), Counter(), {})
    assert await store.contents() == []


async def test_a_peer_that_moved_regions_is_counted_where_it_announced_last(store):
    """A token's user's peer that moved regions is counted in its new one only (with Redis: in both, for a ttl), and
    stays there when its newest record leaves, until its last one does."""
    now = time.time()
    key = record(1, now, user="alice").key
    await store.put(now - 10, CID, record(1, now - 10, user="alice"), 10)
    await store.put(now - 10, OTHER, record(1, now - 10, user="alice"), 10)
    await store.put(now, OTHER, record(1, now, region=WEST, user="alice"), 10)
    assert _status(await store.counts(now)) == (
        1,
        Counter({"west": 1}),
        Counter({"east": 1, "west": 1}),
        Counter({"alice": 1}),
        {"east": Counter({CID: 1}), "west": Counter({OTHER: 1})},
    )
    await store.remove(OTHER, key)
    assert _status(await store.counts(now)) == (
        1,
        Counter({"west": 1}),
        Counter({"east": 1}),
        Counter({"alice": 1}),
        {"east": Counter({CID: 1})},
    )
    await store.remove(CID, key)
    assert _status(await store.counts(now)) == (0, Counter(), Counter(), Counter(), {})


async def test_a_peer_whose_newest_record_left_is_counted_as_long_as_another_lives(store):
    """Counted by its other records' times, not by the one that left: no longer than the memory store counts it."""
    store.ttl = 2.0
    now, key = time.time(), record(1, 0).key
    await store.put(now - 1.9, CID, record(1, now - 1.9), 10)
    await store.put(now, OTHER, record(1, now), 10)
    await store.remove(OTHER, key)
    assert _status(await store.counts(now)) == (
        1,
        Counter({"east": 1}),
        Counter({"east": 1}),
        Counter({"-": 1}),
        {"east": Counter({CID: 1})},
    )
    await asyncio.sleep(0.5)  # its record in CID is silent for a ttl by now
    later = time.time()
    await store.expire(later)
    assert _status(await store.counts(later)) == (0, Counter(), Counter(), Counter(), {})


@pytest.mark.integration
async def test_redis_counts_what_memory_counts_as_peers_come_go_and_move(redis_url):  # noqa: F811 - the fixture
    """The two stores' /status counts agree after any puts and removals (expiry aside: memory's runs on a timer,
    Redis's goes by the records' times)."""
    import random

    rng, now = random.Random(11), time.time()
    memory, redis = MemoryPeerStore(TTL), RedisPeerStore(redis_url, TTL)
    contents = [CID, OTHER, "c" * 64]
    try:
        for step in range(600):
            n, cid, at = rng.randrange(30), rng.choice(contents), now - 20 + step / 100
            user = f"u{n % 3}" if n % 4 == 0 else None  # a user's peer may move regions; an address's stays in one
            region = rng.choice([EAST, WEST, None]) if user else [EAST, WEST, None][n % 3]
            put = rng.random() < 0.7
            for s in (memory, redis):
                if put:
                    await s.put(at, cid, record(n, at, region=region, user=user), 5)
                else:
                    await s.remove(cid, record(n, at, user=user).key)
            if step % 20 == 0 or step == 599:
                assert _status(await redis.counts(now)) == _status(await memory.counts(now)), step
    finally:
        await redis.close()


def test_added():
    assert added(None, [5, 6]) == [5, 6]
    assert added([1, 2], [5, 6]) == [4, 4]
    assert added([1, 9], [5, 6]) == [5, 6]  # one counter went back: a restart


def test_added_never_books_what_is_below_the_peers_stats_base():
    """``stats_base``: what a tracker took already, which a peer's ``started`` carries; each tracker a router's fallback
    moved the peer to booked its whole counters again, for good."""
    assert added(None, [5, 6], [4, 6]) == [1, 0]  # first seen here: only what is above it
    assert added(None, [5, 6], [9, 9]) == [0, 0]  # a base above the figures (a lie, or a lost run): nothing, never less
    assert added([1, 2], [5, 6], [3, 1]) == [2, 4]  # its own last report or the base, whichever is higher
    assert added([1, 9], [5, 6], [2, 2]) == [3, 4]  # a restarted peer: its new run, from the base of that run
    assert added([1, 2], [5, 6], None) == added([1, 2], [5, 6], [0, 0]) == [4, 4]  # an older peer sends none


async def test_a_stats_base_is_not_booked_again(store):
    """A peer the router moved here from another region's edge carries, with its ``started``, the stats the other
    tracker took: only what comes above them is booked here, and the next reports go from this tracker's own."""
    key, now = record(1, 0).key, time.time()
    await store.report(now, CID, key, "west", stats(100, 50), False, stats(100, 40))  # first seen here
    assert await store.shares() == {"west": Counter(stats(0, 10))}
    await store.report(now, CID, key, "west", stats(130, 50), False)  # an update: from its last report here
    await store.report(now, CID, record(2, 0).key, "west", stats(7, 0), False)  # no base given: as ever, all of it
    assert await store.shares() == {"west": Counter(stats(37, 10))}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://h/0", "expected memory or redis"),
        ("redis:///0", "no host"),
        ("redis://h:port/0", "port"),
        ("redis://h:1/x", "database"),
        ("redis://h:1/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url, why):
    with pytest.raises(ValueError, match=why):
        check_url(url)


# -- the edge's option ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "why"),
    [
        ("mysql://db/0", "expected memory or redis://HOST:PORT/DB"),
        ("redis://cache:port/0", "port is not a number"),
        ("redis://cache:99999/0", "port is not a number from 0 to 65535"),
        ("redis://cache:6379/zero", "is not a number"),
    ],
)
def test_a_bad_tracker_store_is_a_message_and_exit_2(tmp_path, capsys, store, why):
    args = ["edge", "--cache", str(tmp_path / "c"), "--parent", "http://127.0.0.1:9", "--p2p", "--tracker-store", store]
    with pytest.raises(SystemExit) as stop:  # refused while the flags are read, as argparse refuses any bad value
        cli.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --tracker-store" in err and why in err and "Traceback" not in err, err
    assert not (tmp_path / "c").exists()  # nothing created for an edge that never starts


def test_a_tracker_store_without_p2p_is_refused(tmp_path, capsys):
    args = ["edge", "--cache", str(tmp_path / "c"), "--parent", "http://127.0.0.1:9", "--tracker-store", "redis://h:1/0"]
    assert cli.main(args) == 2
    assert "needs --p2p" in capsys.readouterr().err


# -- what only a shared store does --------------------------------------------------------------


async def test_two_clients_share_swarms_and_totals_and_a_new_one_finds_them(redis_url):  # noqa: F811
    a, b = RedisPeerStore(redis_url, TTL), RedisPeerStore(redis_url, TTL)
    now = time.time()
    try:
        await a.put(now, CID, record(1, now), 10)
        placed = await b.put(now, CID, record(2, now), 10)
        assert sorted(c.peer_id for c in placed.candidates) == ["p1", "p2"]
        await a.report(now, CID, record(1, now).key, "east", stats(100, 10), False)
        await b.report(now, CID, record(1, now).key, "east", stats(100, 10), False)  # the same figures via the other edge
    finally:
        await a.close()
        await b.close()
    fresh = RedisPeerStore(redis_url, TTL)  # a restarted edge
    try:
        assert sorted(r.peer_id for r in await fresh.swarm(CID)) == ["p1", "p2"]
        assert await fresh.shares() == {"east": Counter(stats(100, 10))}
    finally:
        await fresh.close()


async def test_a_record_written_here_is_handed_out_as_written_and_one_changed_elsewhere_is_read_again(redis_url):  # noqa: F811
    a, b = RedisPeerStore(redis_url, TTL), RedisPeerStore(redis_url, TTL)
    now = time.time()
    try:
        mine, odd = record(1, now, uploaded=500), record(3, now, region=Region("ea\x1fst", "att"))  # a separator in a name: cleaned
        await a.put(now, CID, mine, 10)
        await a.put(now, CID, odd, 10)
        got = {c.peer_id: c for c in (await a.put(now, CID, record(2, now), 10)).candidates}
        assert got["p1"] is mine  # the text stored is this record's: no twin decoded from it
        assert got["p3"] is not odd and got["p3"].region == Region("ea?st", "att")  # what is stored, not what was put
        theirs = record(1, now + 1, uploaded=900)  # the same peer, through another edge
        await b.put(now + 1, CID, theirs, 10)
        again = {c.peer_id: c for c in (await a.put(now + 1, CID, record(2, now + 1), 10)).candidates}["p1"]
        assert again is not mine and fields(again) == fields(theirs) and again.upload_rate == pytest.approx(theirs.upload_rate)
    finally:
        await a.close()
        await b.close()


async def test_a_store_that_is_down_raises_store_unavailable_and_recovers(redis_server):  # noqa: F811
    s = RedisPeerStore(redis_server.url, TTL)
    now = time.time()
    try:
        await s.put(now, CID, record(1, now), 10)
        redis_server.stop()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await s.put(now, CID, record(2, now), 10)
        with pytest.raises(StoreUnavailable):
            await s.counts(now)
        redis_server.start()  # empty: nothing was saved
        placed = await s.put(now, CID, record(2, now), 10)  # the same client reconnects (and reloads its scripts)
        assert [c.peer_id for c in placed.candidates] == ["p2"]
    finally:
        await s.close()


def test_memory_swarm_index_follows_puts_and_removes():
    """The memory store samples records by position: its list of records stays in step with its keys through replaces and removes."""
    import random

    from edgeswarm.policy.peerstore import _Swarm

    rng, swarm, live = random.Random(5), _Swarm(), {}
    for step in range(2000):
        n = rng.randrange(60)
        if rng.random() < 0.3:
            swarm.remove(record(n, step).key)
            live.pop(n, None)
        else:
            rec = record(n, step)
            swarm.put(rec)
            live[n] = rec
        assert [swarm.records[k] for k in swarm.keys] == swarm.items
        assert {k: i for i, k in enumerate(swarm.keys)} == swarm.pos
        assert sorted(id(r) for r in swarm.items) == sorted(id(r) for r in live.values())
    picked = swarm.sample(rng, 10)
    assert len({id(r) for r in picked}) == len(picked) <= 10
    assert all(r in swarm.items for r in picked)


async def test_memory_counts_kept_as_records_come_and_go_match_a_full_count():
    """The memory store keeps /status's counts as records are put, replaced, removed and expired (a full read of every
    record was a fifth of a poll at 50 000 peers): after any such steps they are what reading every record gives."""
    import random

    rng = random.Random(7)
    store = MemoryPeerStore(TTL)
    contents = [CID, OTHER, "c" * 64]
    now = 1000.0
    for step in range(3000):
        now += rng.random()
        n, cid = rng.randrange(60), rng.choice(contents)
        user = f"u{n % 4}" if n % 5 == 0 else None  # a peer keeps its region (its address); a user here, one region
        roll = rng.random()
        if roll < 0.7:
            await store.put(now, cid, record(n, now, region=[EAST, WEST, None][n % 3], user=user), 5)
        elif roll < 0.9:
            await store.remove(cid, record(n, now, user=user).key)
        else:
            await store.expire(now)
        if step % 50 == 0 or step == 2999:
            await _matches_a_full_count(store, contents, now)


async def _matches_a_full_count(store: MemoryPeerStore, contents: list[str], now: float) -> None:
    every = [(c, r) for c in contents for r in await store.swarm(c)]
    latest: dict = {}
    swarms: dict[str, Counter[str]] = {}
    for c, r in every:
        if r.key not in latest or r.last_seen > latest[r.key].last_seen:
            latest[r.key] = r
        swarms.setdefault(r.region.name if r.region else "unmapped", Counter())[c] += 1
    got = await store.counts(now)
    assert got.identities == len(latest)
    assert got.memberships == Counter({region: per.total() for region, per in swarms.items()})
    assert got.swarms == swarms
    assert got.peers == Counter(r.region.name if r.region else "unmapped" for r in latest.values())
    assert got.users == Counter(r.user or "-" for r in latest.values())


@pytest.mark.integration
async def test_an_edge_whose_clock_runs_ahead_removes_no_live_peer_of_the_others(redis_url, caplog):  # noqa: F811 - the fixture
    """Two edges share a Redis store; the one whose clock ran 2 ttls ahead removed the other's peers as silent at its
    first announce, without a word (an adversarial session).  Silence goes by the earlier of its clock and Redis's,
    for its reads too: it handed out and counted only its own peers (another session), and it says so."""
    right, ahead = RedisPeerStore(redis_url, TTL), RedisPeerStore(redis_url, TTL)
    try:
        now = time.time()
        await right.put(now, CID, record(1, now), 10)
        placed = await ahead.put(now + 2 * TTL, CID, record(2, now + 2 * TTL), 10)
        assert sorted(c.peer_id for c in placed.candidates) == ["p1", "p2"]
        await ahead.expire(now + 2 * TTL)
        assert sorted(r.peer_id for r in await right.swarm(CID)) == ["p1", "p2"]
        assert (await right.counts(now)).identities == 2
        assert sorted(r.peer_id for r in await ahead.swarm(CID)) == ["p1", "p2"]
        assert (await ahead.counts(now + 2 * TTL)).identities == 2 and await ahead.contents() == [CID]
        assert "this edge's clock runs 60 s ahead of tracker store" in caplog.text
    finally:
        await right.close()
        await ahead.close()


async def test_an_edge_whose_clock_runs_behind_redis_says_so_once(redis_url, caplog):  # noqa: F811 - the fixture
    """An edge behind the others stamps its peers by its own clock, and the others take them for silent that much
    sooner; nothing said so (a review).  Its expiry round reads Redis's TIME: said once while so."""
    behind = RedisPeerStore(redis_url, TTL)
    try:
        for _ in range(3):
            await behind.expire(time.time() - 120)
        await behind.expire(time.time())
        await behind.expire(time.time() - 120)
        assert caplog.text.count("this edge's clock runs 120 s behind tracker store") == 2, caplog.text
    finally:
        await behind.close()


@pytest.mark.integration
async def test_an_edge_whose_clock_runs_ahead_stamps_no_peer_into_the_future(redis_url):  # noqa: F811 - the fixture
    """An edge whose clock ran an hour ahead stamped its peers an hour into the future: one that died without a word was
    counted and handed out for the hour by every edge, those on the right clock too (an adversarial session).  Its
    records are stamped by the earlier of its clock and Redis's, as silence is judged."""
    right, ahead = RedisPeerStore(redis_url, TTL), RedisPeerStore(redis_url, TTL)
    try:
        now = time.time()
        rec = record(1, now + 3600)
        await ahead.put(now + 3600, CID, rec, 10)
        assert rec.last_seen < now + 1  # Redis's clock (this host's)
        assert [r.last_seen for r in await right.swarm(CID)] == [rec.last_seen]
        assert (await right.counts(now + TTL + 1)).identities == 0  # silent for a ttl by the right clock: gone
    finally:
        await right.close()
        await ahead.close()


async def test_an_edge_with_a_shorter_ttl_removes_the_others_peers_but_not_the_base_of_their_next_report(redis_url):  # noqa: F811
    """Edges with different --announce-interval share a store: the one with the shorter ttl removes the other's peers as
    silent between their announces, and with them went the base of each one's next report, which was then counted
    whole: totals 1.2 to 3.8 times the bytes peers reported (an adversarial session)."""
    slow, quick = RedisPeerStore(redis_url, 60.0), RedisPeerStore(redis_url, 0.2)
    try:
        now = time.time()
        key = record(1, now).key
        await slow.put(now, CID, record(1, now), 10)
        await slow.report(now, CID, key, "east", stats(100, 10), False)
        time.sleep(0.5)
        later = time.time()
        await quick.put(later, CID, record(2, later), 10)  # p1 is silent by quick's ttl: removed
        assert [r.peer_id for r in await quick.swarm(CID)] == ["p2"]
        await slow.put(later, CID, record(1, later), 10)
        await slow.report(later, CID, key, "east", stats(150, 10), False)
        assert await slow.shares() == {"east": Counter(stats(150, 10))}
    finally:
        await slow.close()
        await quick.close()


async def test_memory_keeps_a_silent_peers_base_for_base_keep_after_its_record():
    """A laptop that slept past the ttl comes back with its counters run on: only what is new is added."""
    store, now = MemoryPeerStore(TTL), 1_000_000.0
    key = record(1, now).key
    await store.put(now, CID, record(1, now), 10)
    await store.report(now, CID, key, "east", stats(100, 10), False)
    await store.expire(now + 10 * TTL)
    assert await store.swarm(CID) == [] and (await store.counts()).reports == 1
    await store.report(now + 10 * TTL, CID, key, "east", stats(150, 10), False)
    assert (await store.shares())["east"] == Counter(stats(150, 10))
    await store.expire(now + 10 * TTL + base_keep(TTL) + 1)  # silent for longer: forgotten, a report is taken whole
    assert (await store.counts()).reports == 0


async def test_a_redis_that_evicts_keys_is_named_with_its_policy(redis_url):  # noqa: F811
    """Managed Redis often evicts keys with a ttl first (volatile-lru): the report bases, which made totals count twice."""
    store = RedisPeerStore(redis_url, TTL)
    try:
        assert await store.evicts() is None  # Debian's defaults: no memory limit, noeviction
        await store.redis.config_set("maxmemory-policy", "volatile-lru")
        assert await store.evicts() is None  # no limit, nothing is evicted
        await store.redis.config_set("maxmemory", "1gb")
        assert await store.evicts() == "volatile-lru"
    finally:
        await store.redis.config_set("maxmemory", "0")
        await store.redis.config_set("maxmemory-policy", "noeviction")
        await store.close()


async def test_a_connection_redis_closed_while_idle_is_not_handed_out_again(redis_url):  # noqa: F811
    """Redis closes clients idle for its ``timeout``: the client's pool handed such a connection out again (redis-py 8
    checks it only without maintenance notifications), so a quiet edge's expiry or /status read failed, an outage and its
    end logged each interval (a review)."""
    store = RedisPeerStore(redis_url, TTL)
    try:
        assert await store.too_old() is None  # 7.0 or later (Debian's)
        await store.ping()
        await store.redis.client_kill_filter(_type="normal", skipme=False)  # every connection, the pool's own included
        await asyncio.sleep(0.2)
        await store.ping()
    finally:
        await store.close()


async def test_token_users_who_went_silent_are_neither_kept_nor_walked(redis_url):  # noqa: F811
    """The set of users ever seen never shrank, and /status read it whole: 200 000 past users made a router's poll
    take seconds (an adversarial session).  Users are kept by last announce, and leave with their peers."""
    store = RedisPeerStore(redis_url, 0.3)
    try:
        await store.redis.sadd("edgeswarm:userset", *(f"old{i}" for i in range(100)))  # what an older version left
        now = time.time()
        await store.put(now, CID, record(1, now, user="alice"), 10)
        assert (await store.counts(now)).users == {"alice": 1}
        time.sleep(0.5)
        later = time.time()
        await store.put(later, CID, record(2, later, user="bob"), 10)
        await store.expire(later)
        assert (await store.counts(later)).users == {"bob": 1}
        assert await store.redis.zrange("edgeswarm:userseen", 0, -1) == ["bob"]
        assert await store.redis.scard("edgeswarm:userset") == 100  # an older edge's, which it may still read (a review)
        assert 0 < await store.redis.ttl("edgeswarm:users:bob") <= store.keep
    finally:
        await store.close()


async def test_a_wrong_password_and_a_paused_redis_say_so(redis_url):  # noqa: F811
    """Both were "unreachable", the pause with no reason at all ("TimeoutError: ;"); the password's Redis is there."""
    admin, store = RedisPeerStore(redis_url, TTL), RedisPeerStore(redis_url, TTL)
    now = time.time()
    try:
        await store.put(now, CID, record(1, now), 10)  # its connection is open: the pause holds an answer
        await admin.redis.client_pause(2500)
        with pytest.raises(StoreUnavailable, match=r"unreachable: TimeoutError: no answer within 2\.0 s"):
            await store.put(now, CID, record(1, now), 10)
        await asyncio.sleep(0.6)
        await admin.redis.config_set("requirepass", "right")
        wrong = RedisPeerStore(redis_url.replace("redis://", "redis://:wrong@"), TTL)
        try:
            with pytest.raises(StoreUnavailable, match=r"refuses: AuthenticationError: .*\(check the password in --tracker-store\)"):
                await wrong.put(now, CID, record(1, now), 10)
        finally:
            await wrong.close()
    finally:
        await admin.redis.config_set("requirepass", "")
        await admin.close()
        await store.close()


@pytest.mark.integration
async def test_an_edge_whose_clock_runs_ahead_of_redis_still_hands_its_peers_out(redis_url, monkeypatch):  # noqa: F811
    """Records are stamped by the earlier of the edge's clock and Redis's: the tracker's pool, pruned by the edge's own
    clock, dropped every one of an edge an hour ahead, its askers' own too, and it handed out no peer at all (a review
    of the fix that stamps so).  The pool judges silence as the store does (``behind``)."""
    from edgeswarm.protocol.manifest import Manifest
    from edgeswarm.roles.announce import TrackerService
    from edgeswarm.store import redispeers

    real = time.time
    monkeypatch.setattr(redispeers, "time", SimpleNamespace(time=lambda: real() + 3600, monotonic=time.monotonic))
    manifest = Manifest("a.bin", 4 * 262144, "application/octet-stream", 262144, ("0" * 64,) * 4, 0)
    service = TrackerService(None, "prefer", 300.0, store=RedisPeerStore(redis_url, 900.0))
    try:
        for n in (1, 2):
            body = {"peer_id": f"p{n}", "port": 7000, "content": CID, "pieces": 4, "have": "AA==", "uploaded": 0}
            body |= {"downloaded": 0, "event": "started", "stats": {"edge": 0, "peer_same_region": 0, "peer_other_region": 0}}
            answer, _ = await service.handle(body, f"127.0.0.{n}", manifest)
        assert [p["peer_id"] for p in answer["peers"]] == ["p1"]
    finally:
        await service.store.close()
