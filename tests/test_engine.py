"""The download engine in memory: its rules driven directly, then whole swarms in virtual time (edgeswarm.sim.swarmsim).

No sockets and no sleeping: every figure below is a deterministic result of
the same engine the peer daemon runs, against simulated peers and edges.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from edgeswarm.policy import engine
from edgeswarm.policy.engine import MAX_ANSWER_PEERS, PIECE, Engine, Fetch, Neighbour, Result, Seed, Sleep, Wait
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.protocol.manifest import MIN_PIECE
from edgeswarm.sim.swarmsim import Crowd, simulate


class RecordingHost:
    """Records what the engine asks of its driver; runs nothing (the test sends the workers their results)."""

    def __init__(self) -> None:
        self.spawned: list = []
        self.delivered_pieces: list[int] = []
        self.dropped_urls: list[str] = []
        self.lonely_asks = 0
        self.crossed_bytes = 0
        self.abandoned: list[int] = []

    def spawn(self, worker) -> None:
        self.spawned.append(worker)

    def changed(self) -> None:
        pass

    def delivered(self, index: int, url: str, peer: Neighbour | None, nbytes: int) -> None:
        self.delivered_pieces.append(index)

    def crossed(self, url: str, nbytes: int) -> None:
        self.crossed_bytes += nbytes

    def abandon(self, index: int) -> None:
        self.abandoned.append(index)

    def dropped(self, n: Neighbour) -> None:
        self.dropped_urls.append(n.url)

    def lonely(self) -> None:
        self.lonely_asks += 1

    def gone(self) -> bool:
        return False


def make(count: int = 8, now: list[float] | None = None) -> tuple[Engine, RecordingHost]:
    clock = now or [0.0]
    host = RecordingHost()
    e = Engine(host, count, (), seed="me", deadline=2.0, edges=["http://edge:8000"], ranking=SourceRanking(), clock=lambda: clock[0])
    return e, host


def peer_workers(host: RecordingHost) -> list:
    return [w for w in host.spawned if w.gi_code.co_name == "peer_worker"]


def seeding_engine():
    """An engine downloading a whole file with one neighbour known, and its seeding worker."""
    e, host = make()
    e.add_neighbour("b", "http://10.0.0.2:7000", True)
    e.want_whole()
    return spawned(host, "seed_worker"), e, host


def kind(worker) -> str:
    """A spawned worker's function name (edge_worker, seed_worker...), through the engine's ``_kept`` restarter."""
    if worker.gi_code.co_name == "_kept":
        make = worker.gi_frame.f_locals["make"]  # a bound method, or a partial of one
        return getattr(make, "func", make).__name__
    return worker.gi_code.co_name


def spawned(host: RecordingHost, name: str):
    """The engine's worker of that name (edge_worker, seed_worker...) among those it asked to run."""
    return next(w for w in host.spawned if kind(w) == name)


# -- the rules, driven directly -------------------------------------------------------------------------
def test_a_have_line_puts_a_worker_on_the_neighbour_at_once():
    """Availability as it happens: a neighbour heard to hold a piece we want is staffed on that line, not at the next announce."""
    e, host = make()
    e.want_whole()
    n = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert n is not None and not peer_workers(host)
    e.heard(n, "have", [3])
    (worker,) = peer_workers(host)
    assert n.working and n.stream
    command = worker.send(None)
    assert isinstance(command, Fetch) and (command.url, command.index) == (n.url, 3)


def one_peer_working():
    """A whole-file download with one neighbour holding everything, and the worker the engine put on it."""
    e, host = make()
    e.want_whole()
    n = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert n is not None
    e.heard(n, "snapshot", range(8))
    return e, n, peer_workers(host)[0]


def test_a_choked_request_pauses_the_peer_and_puts_its_piece_back():
    e, _, worker = one_peer_working()
    fetch = worker.send(None)
    assert isinstance(fetch, Fetch)
    sleep = worker.send(Result("choked", 3.0))
    assert sleep == Sleep(3.0) and "b" in e.picker.paused
    assert fetch.index not in e.picker.claimed(), "a choked piece goes back to the pool while the peer is paused"
    assert isinstance(worker.send(None), Fetch) and "b" not in e.picker.paused


def corrupt_from(e, host, peer) -> None:
    """``peer`` holds every piece, and the first one a worker asks of it is corrupt."""
    e.heard(peer, "snapshot", range(8))
    worker = next(w for w in peer_workers(host))
    worker.send(None)
    with pytest.raises(StopIteration):
        worker.send(Result("corrupt"))


def test_a_corrupt_piece_bans_the_address_and_every_id_on_it():
    e, host = make()
    e.want_whole()
    a = e.add_neighbour("a", "http://10.0.0.2:7000", True)
    b = e.add_neighbour("a2", "http://10.0.0.2:7001", True)
    assert a is not None and b is not None
    corrupt_from(e, host, a)
    assert e.banned == {"10.0.0.2"} and not e.neighbours
    assert sorted(host.dropped_urls) == [a.url, b.url]
    assert e.add_neighbour("a3", "http://10.0.0.2:7002", True) is None


def test_a_corrupt_piece_bans_an_ipv6_senders_whole_64():
    """A host gets a /64: a hostile seed on 16 of its addresses was banned 16 times, a corrupt piece each (an
    adversarial session); the tracker's limits count a /64 as one address too."""
    e, host = make()
    e.want_whole()
    a = e.add_neighbour("a", "http://[fd00:a6::11]:7000", True)
    other = e.add_neighbour("b", "http://[fd00:a6:0:1::11]:7000", True)  # another /64
    assert a is not None and other is not None
    corrupt_from(e, host, a)
    assert e.banned == {"fd00:a6::/64"} and list(e.neighbours) == [other.url]
    assert e.add_neighbour("a2", "http://[fd00:a6::12]:7000", True) is None


def test_the_edge_may_take_anything_only_when_peers_cannot_be_counted_on():
    now = [0.0]
    e, _ = make(count=16, now=now)
    e.want_whole()
    assert e.fallback(now[0]), "no neighbours: the edge is the only source"
    e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert not e.fallback(now[0])
    now[0] = engine.FALLBACK_AFTER + 1
    assert e.fallback(now[0]), "no peer delivered for FALLBACK_AFTER"


def test_a_far_edge_that_is_the_only_source_gets_as_many_requests_as_its_round_trip_holds():
    """One request at a time paid a round trip a piece: from an edge 100 ms away a lone download took 4 x the bound
    in this simulation, and a get ran at a fifth of curl's rate over a real 200 ms path (an adversarial session)."""
    near, far = (simulate(Crowd(peers=1, regions=1, size=8 << 20, mode=mode, rtt=rtt)) for mode, rtt in (("get", 0.002), ("get", 0.1)))
    assert near.ratio < 1.1
    assert far.last_done < 1.5 * (far.bound + 0.1), far.last_done  # 4.25 s with one request at a time
    stream = simulate(Crowd(peers=1, regions=1, size=8 << 20, mode="stream", rtt=0.1))
    assert stream.last_done < 1.5 * (stream.bound + 0.1), stream.last_done


def test_the_edge_is_asked_one_piece_at_a_time_while_peers_deliver():
    e, host = make(count=16)
    e.want_whole()
    e.ranking.heard("http://edge:8000", 0.2)
    e.ranking.success("http://edge:8000", 256 * 1024, 0.23)  # 8 MB/s bodies 200 ms away: 7 pieces fill the path
    assert e.edge_depth(0) == engine.EDGE_PIPELINE
    e.add_neighbour("b", "http://10.0.0.2:7000", True)
    worker = spawned(host, "edge_worker")
    worker.send(None)
    assert len([w for w in host.spawned if kind(w) == "edge_worker"]) == 1, "peers can be counted on: no pipeline"


def test_a_reader_with_no_neighbours_yet_gets_its_urgent_pieces_from_the_edge_at_once():
    """Start-up: the first tracker answer is on its way; a player's first pieces must not wait for it."""
    e, host = make(count=16)
    e.reading(0)
    edge = spawned(host, "edge_worker")
    command = edge.send(None)
    assert isinstance(command, Fetch) and command.index == 0 and command.urgent


def test_a_late_viewers_startup_comes_from_the_edge_and_a_continuing_reader_has_none():
    """A reader starting where a neighbour still fetching the file holds far more than the startup (a viewer ahead of
    us) takes the first STARTUP_BYTES from the edge, its seeding worker waiting meanwhile; a reader going on where
    the last one left off, a live segment, a whole-file download and a peer at --startup-window 0 do not."""
    e, host = make(count=64)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(40))
    e.reading(0)
    assert sorted(e.picker.startup) == list(range(engine.STARTUP_BYTES // engine.PIECE))
    command = spawned(host, "edge_worker").send(None)
    assert isinstance(command, Fetch) and command.index == 0 and command.urgent
    assert isinstance(spawned(host, "seed_worker").send(None), Wait)

    going_on, _ = make(count=64)
    going_on.picker.have.update(range(10))
    c = going_on.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert c is not None
    going_on.heard(c, "snapshot", range(40))
    going_on.reading(10)
    assert not going_on.picker.startup
    for want in ("want_live", "want_whole"):
        other, _ = make(count=64)
        d = other.add_neighbour("b", "http://10.0.0.2:7000", True)
        assert d is not None
        other.heard(d, "snapshot", range(40))
        getattr(other, want)()
        other.reading(0)
        assert not other.picker.startup, want
    off = Engine(
        RecordingHost(), 64, (), seed="me", deadline=2.0, edges=["http://e"], ranking=SourceRanking(), clock=lambda: 0.0, startup_bytes=0
    )
    m = off.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert m is not None
    off.heard(m, "snapshot", range(40))
    off.reading(0)
    assert not off.picker.startup
    big = Engine(
        RecordingHost(), 8, (), seed="me", deadline=2.0, edges=["http://e"], ranking=SourceRanking(), clock=lambda: 0.0, piece_size=4 << 20
    )
    assert big.startup_window == 1  # 2.5 MiB in 4 MiB pieces: one, rounded up


def test_a_bounded_reads_startup_takes_from_the_edge_no_more_than_the_read_asks():
    """A 64 KiB probe (a Range with an end) behind a complete neighbour takes its one piece from the edge, not the
    startup window; a neighbour is still 'well ahead' only at twice the whole window in, however short the read."""
    e, _ = make(count=64)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(64))
    e.reading(30, 31)
    assert sorted(e.picker.startup) == [30]
    e.reading(62, 200)  # a bound past the file's end is the file's end; the newest read's startup is the one
    assert sorted(e.picker.startup) == [62, 63]

    near, _ = make(count=64)
    c = near.add_neighbour("c", "http://10.0.0.3:7000", True)
    assert c is not None
    near.heard(c, "snapshot", range(12))  # a fellow starter a little ahead: fewer than twice the window
    near.reading(0, 2)
    assert not near.picker.startup


def test_no_startup_waits_for_an_edge_that_is_down_or_for_a_reader_gone():
    """Seeks with the edge down took the whole 2 s deadline each though a complete neighbour could serve them at once
    (an adversarial session with real players); a probe the client dropped kept its window coming from the edge."""
    e, host = make(count=64)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(64))
    e.reading(0)
    assert e.picker.startup
    fetch = spawned(host, "edge_worker").send(None)
    assert isinstance(fetch, Fetch) and fetch.index == 0
    spawned(host, "edge_worker").send(Result("failed", 0.01))  # connection refused: the only edge is set aside
    assert not e.picker.startup and not e.picker.starting(e.clock())
    e.read_done(0)
    e.reading(20)  # a seek while the edge is still set aside: no startup to wait for
    assert not e.picker.startup

    gone, _ = make(count=64)
    c = gone.add_neighbour("c", "http://10.0.0.3:7000", True)
    assert c is not None
    gone.heard(c, "snapshot", range(64))
    for i in range(4):  # a player's read and the gateway's fetches ahead of it
        gone.reading(i)
    assert sorted(gone.picker.startup) == list(range(10))
    for i in range(3):
        gone.read_done(i)
    assert gone.picker.startup  # a reader still waits
    gone.read_done(3)  # the client went away: the fetches ahead were cancelled
    assert not gone.picker.startup


def test_a_seek_takes_the_startup_from_a_request_its_client_left():
    """One startup at a time, the newest read's: a seek's request came before the old connection's close was seen, and
    the edge sent the abandoned window's pieces, lowest first, before the seek's, with peers barred from the seek's
    (a review of the startup rule)."""
    e, host = make(count=64)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(64))
    for i in range(5):
        e.reading(i)  # the first request and the gateway's fetches ahead of it
    edge = spawned(host, "edge_worker")
    assert edge.send(None).index == 0
    e.reading(40)  # the seek's request ...
    for i in range(5):
        e.read_done(i)  # ... then the old connection's close
    nxt = edge.send(Result("ok", 0.1, 1))
    assert isinstance(nxt, Fetch) and nxt.index == 40


def test_a_startup_decided_or_not_goes_to_the_neighbours_when_the_last_edge_fails_on_seed_or_before_the_decision():
    now = [0.0]
    e, host = make(count=64, now=now)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(8))  # not well ahead yet
    e.reading(0)
    seed = spawned(host, "seed_worker")
    assert isinstance(seed.send(None), Seed)  # a /seed in flight
    e.heard(b, "snapshot", range(64))
    e.read_done(0)
    e.reading(30)
    assert e.picker.starting(now[0])
    now[0] = 0.2
    seed.send(Result("failed", message="connection refused"))  # the only edge, set aside on /seed
    assert e.choose_edge(0) is None and not e.picker.starting(now[0])

    now = [0.0]
    e, host = make(count=64, now=now)
    e.reading(0)  # no neighbour yet: the start is undecided
    edge = spawned(host, "edge_worker")
    assert edge.send(None).index == 0
    now[0] = 0.1
    edge.send(Result("failed", message="refused"))  # the only edge set aside before the decision
    e.tracker_answer([{"peer_id": "b", "url": "http://10.0.0.2:7000", "have": set(range(64)), "same_region": True}])
    now[0] = 0.2
    assert e.picker.pick("b", now[0]) == 0  # not decided for an edge that is set aside


def test_workers_waiting_on_a_startup_look_again_when_it_ends_by_the_clock():
    """A seek behind a slow edge waited a second more after its startup's deadline: the neighbours' workers, barred
    meanwhile, slept their whole poll, as nothing else told them the startup was over."""
    now = [0.0]
    e, host = make(count=64, now=now)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(64))
    e.reading(0)
    assert e.picker.starting(0.0)
    now[0] = 1.5
    worker = peer_workers(host)[0]
    waited = worker.send(None)
    assert isinstance(waited, Wait) and waited.timeout is not None and 0.5 <= waited.timeout < 0.52  # the deadline, 2 s


def test_no_startup_from_an_edge_measured_at_under_half_a_neighbours_rate():
    """Seeks behind an edge capped at 100 KB/s waited its deadline where the neighbour served them in 0.4 s."""
    e, _ = make(count=64)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(64))
    e.ranking.success("http://10.0.0.2:7000", 8_000_000, 1.0)
    e.ranking.success("http://edge:8000", 5_000_000, 1.0)
    e.reading(0)
    assert e.picker.startup  # the edge is slower, not by half
    e.read_done(0)
    e.ranking.success("http://edge:8000", 100_000, 1.0)
    e.ranking.success("http://edge:8000", 100_000, 1.0)
    e.ranking.success("http://edge:8000", 100_000, 1.0)
    e.reading(30)
    assert not e.picker.startup


def test_a_startup_window_is_at_most_the_read_ahead_window():
    big = Engine(
        RecordingHost(), 64, (), seed="me", deadline=2.0, edges=["http://e"], ranking=SourceRanking(), clock=lambda: 0.0,
        startup_bytes=8 << 20,
    )  # fmt: skip
    assert big.startup_window == engine.WINDOW


def test_in_the_tail_the_edge_takes_only_what_no_reachable_peer_offers():
    """The file's last pieces: a piece whose holder chokes us goes to the edge; one an unchoked holder has does not."""
    e, _ = make(count=16)
    e.want_whole()
    for peer, url in (("b", "http://10.0.0.2:7000"), ("c", "http://10.0.0.3:7000")):
        e.add_neighbour(peer, url, True)
    e.last_peer_delivery = e.clock()
    e.picker.have.update(range(16 - engine.TAIL))
    e.picker.peer_has("b", [12, 13, 14, 15])
    e.picker.peer_has("c", [15])
    assert e.tail() and not e.fallback(e.clock())
    assert e.picker.pick("edge#0", 0.0, edge=True, tail=True, seeding=True) is None
    e.picker.paused.add("b")
    assert e.picker.pick("edge#0", 0.0, edge=True, tail=True, seeding=True) in {12, 13, 14}, "b chokes us: its pieces go to the edge"


def test_the_edge_races_a_late_peer_only_and_never_itself():
    e, _ = make(count=4)
    e.want_whole()
    e.add_neighbour("b", "http://10.0.0.2:7000", True)
    e.picker.peer_has("b", range(4))
    e.picker.have.update({0, 1, 2})
    e.picker.start("b", 3, 10.0)
    assert e.picker.pick("edge#0", 11.0, edge=True) is None, "a peer's request of 1 s is not raced"
    assert e.picker.pick("edge#0", 10.0 + e.picker.deadline, edge=True) == 3
    e.picker.start("edge-seed", 3, 10.0, edge=True)
    e.picker.urgent = [3]
    e.picker.awaited[3] = 0.0
    assert e.picker.pick_urgent("edge#0", 20.0, edge=True) is None, "the edge is sending it already: asking again only slows it"


def test_a_stored_piece_stops_its_other_transfers_and_the_loser_is_not_blamed():
    """The edge raced a late peer (or the peer beat the edge): once one copy is stored the other transfer is abandoned, so
    neither the slow uplink nor the edge keeps sending bytes nobody needs; the abandoned source is not paused or failed."""
    e, host = make()
    e.want_whole()
    n = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert n is not None
    e.heard(n, "snapshot", range(8))
    worker = peer_workers(host)[0]
    fetch = worker.send(None)
    assert isinstance(fetch, Fetch)
    e.picker.start("edge#0", fetch.index, 0.0, edge=True)
    racer = e.transfer("edge#0", "http://edge:8000", fetch.index)
    assert isinstance(racer.send(None), Fetch)
    with pytest.raises(StopIteration):
        racer.send(Result("ok", 0.5, 1000))
    assert host.abandoned == [fetch.index] and fetch.index in e.picker.have
    after = worker.send(Result("abandoned"))
    assert isinstance(after, Fetch) and after.index != fetch.index, "the worker goes on to another piece at once"
    assert n.failures == 0 and not e.picker.is_paused("b")


def test_a_seed_answer_abandoned_for_a_peers_copy_is_asked_again():
    seed, e, host = seeding_engine()
    assert isinstance(seed.send(None), Seed)
    e.seed_coming(5)
    again = seed.send(Result("abandoned"))
    assert isinstance(again, Seed), "nothing came: the seeding worker asks the edge again"
    assert e.picker.in_flight(5) == set() and host.delivered_pieces == []


def test_the_seeding_worker_asks_the_edge_and_waits_after_a_204():
    seed, e, host = seeding_engine()
    ask = seed.send(None)
    assert isinstance(ask, Seed) and ask.start == 0 and ask.claimed == frozenset()
    assert seed.send(Result("none")) == Sleep(engine.SEED_WAIT)
    ask = seed.send(None)
    stored = seed.send(Result("ok", 0.1, 1000, index=5, data=b"x"))
    assert isinstance(stored, Fetch) and stored.index == 5 and stored.data == b"x"
    assert isinstance(seed.send(Result("ok", 0.0, 1000)), Seed)
    assert 5 in e.picker.have and host.delivered_pieces == [5]


def test_a_reader_told_its_region_holds_everything_takes_a_piece_nobody_reads_yet_from_a_neighbour():
    """After a 204 a stream's seeding worker takes, from a neighbour, a piece ahead of the urgent window (the rarest, in its
    own order) rather than idling: readers in step behind a complete peer then hold different pieces to trade."""
    e, host = make(count=32)
    b = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert b is not None
    e.heard(b, "snapshot", range(32))  # a complete neighbour: a preheated seed, as the tracker says
    e.tracker_answer([{"peer_id": "b", "url": b.url, "have": set(range(32)), "same_region": True, "placed": True}])
    e.reading(0)
    seed = spawned(host, "seed_worker")
    assert isinstance(seed.send(None), Seed)
    fetch = seed.send(Result("none"))
    assert isinstance(fetch, Fetch) and fetch.url == b.url and fetch.peer is b
    assert not e.picker.is_urgent(fetch.index) and fetch.index in e.picker.wanted
    nxt = seed.send(Result("ok", 0.1, 1000))
    assert isinstance(nxt, Fetch) and nxt.index != fetch.index, "it goes on spreading until SEED_WAIT is over"


def test_a_seed_answer_that_crossed_a_peers_copy_is_counted_not_stored():
    """The edge sent it (and bills it): the bytes count as received from the edge, as the usage report counts them."""
    seed, e, host = seeding_engine()
    seed.send(None)
    e.picker.have.add(5)  # a peer's copy landed while the edge's answer was on its way
    assert isinstance(seed.send(Result("ok", 0.1, 1000, index=5, data=b"x")), Seed)
    assert host.crossed_bytes == 1000 and host.delivered_pieces == []


def test_a_whole_file_download_with_no_reader_tells_the_seeding_edge_it_can_wait_in_line():
    seed, e, _ = seeding_engine()
    assert seed.send(None).whole
    e.reading(3)  # a reader waits (a player on a gateway that is also fetching the whole file)
    assert seed.send(Result("none")) == Sleep(engine.SEED_WAIT)
    assert not seed.send(None).whole
    stream, host = make()
    stream.add_neighbour("b", "http://10.0.0.2:7000", True)
    stream.reading(0)
    assert not spawned(host, "seed_worker").send(None).whole


def test_an_edge_that_does_not_seed_leaves_the_rest_to_the_edge_worker():
    seed, e, host = seeding_engine()
    seed.send(None)
    with pytest.raises(StopIteration):
        seed.send(Result("unsupported"))
    assert e.seeder() is None
    edge = spawned(host, "edge_worker")
    command = edge.send(None)
    assert isinstance(command, Fetch) and command.peer is None, "pieces no peer holds go to the edge again"


def test_staffing_prefers_the_same_region_and_stops_at_max_peers():
    e, _ = make(count=64)
    e.want_whole()
    ns = [e.add_neighbour(f"p{i}", f"http://10.0.{i}.1:7000", same_region=i % 2 == 0) for i in range(12)]
    for n in ns:
        assert n is not None
        e.picker.peer_has(n.peer_id, range(64))
    e.staff()
    working = [n for n in ns if n is not None and n.working]
    assert len(working) == engine.MAX_PEERS
    assert all(n.same_region for n in working)


def test_a_worker_frees_its_slot_when_the_neighbour_has_nothing_for_us():
    e, host = make()
    e.want_whole()
    n = e.add_neighbour("b", "http://10.0.0.2:7000", True)
    assert n is not None
    e.heard(n, "have", [1])
    worker = peer_workers(host)[0]
    fetch = worker.send(None)
    assert isinstance(worker.send(Result("ok", 0.1, 100)), Wait) and fetch.index in e.picker.have
    with pytest.raises(StopIteration):
        worker.send(None)  # a live stream: no /have poll; nothing useful left
    assert not n.working


def test_a_worker_leaves_its_slowest_neighbour_for_one_none_of_ours_asks():
    """Rotation: every ROTATE s, the worker on the slowest neighbour makes room for a useful one nobody of ours asks."""
    now = [0.0]
    e, host = make(count=64, now=now)
    e.want_whole()
    ns = [e.add_neighbour(f"p{i}", f"http://10.0.{i}.1:7000", True) for i in range(engine.MAX_PEERS + 1)]
    for n in ns:
        assert n is not None
        e.picker.peer_has(n.peer_id, range(64))
    e.staff()
    idle = [n for n in ns if n is not None and not n.working]
    assert len(idle) == 1
    workers = {w: w.send(None) for w in peer_workers(host)}  # each asks its neighbour for a piece
    by_url = {f.url: w for w, f in workers.items()}
    working = [n for n in ns if n is not None and n.working]
    for k, n in enumerate(working):  # the first is the slowest
        e.ranking.success(n.url, 256 * 1024, 1.0 if k == 0 else 0.2)
    fast, slow = by_url[working[1].url], by_url[working[0].url]
    now[0] = engine.ROTATE
    assert isinstance(fast.send(Result("ok", 0.2, 256 * 1024)), Fetch), "a fast neighbour keeps its worker"
    with pytest.raises(StopIteration):
        slow.send(Result("ok", 1.0, 256 * 1024))
    assert not working[0].working and idle[0].working, "the slot went to the neighbour none of ours had asked"
    assert sum(n.working for n in ns if n is not None) == engine.MAX_PEERS
    now[0] += engine.ROTATE / 2
    nxt = next(w for w in peer_workers(host) if w not in workers)
    first = nxt.send(None)
    assert isinstance(nxt.send(Result("ok", 5.0, 256 * 1024)), Fetch) and first.url == idle[0].url, "one rotation per ROTATE s"


def test_a_seeded_piece_is_in_flight_from_the_answers_head_until_it_lands_or_fails():
    seed, e, _ = seeding_engine()
    seed.send(None)
    e.seed_coming(5)
    assert e.picker.in_flight(5) == {engine.SEED_SOURCE} and 5 in e.picker.claimed()
    seed.send(Result("failed", message="reset mid-body"))
    assert not e.picker.in_flight(5), "a body that never came frees the piece for any source"


def test_each_open_read_has_its_own_urgent_window():
    """A response waiting on pieces 0-4 (its read-ahead) and a second connection at the file's end: the end is
    urgent second, not after the first response's whole run."""
    e, _ = make(count=64)
    for i in range(5):
        e.reading(i)
    e.reading(62)
    assert e.picker.urgent[:2] == [0, 62]
    assert {62, 63} <= e.picker.wanted


def test_a_readers_windows_cover_the_same_bytes_in_smaller_pieces():
    """A live segment's 64 KiB pieces: a reader at its start makes the first MiB urgent, as four 256 KiB pieces were."""
    host = RecordingHost()
    e = Engine(
        host, 20, (), seed="me", deadline=2.0, edges=["http://edge:8000"], ranking=SourceRanking(), clock=lambda: 0.0, piece_size=64 * 1024
    )
    e.reading(0)
    assert sorted(e.picker.urgent) == list(range(16))
    assert e.picker.wanted == set(range(20))
    big, big_host = make(count=20)
    big.reading(0)
    assert sorted(big.picker.urgent) == [0, 1, 2, 3], "256 KiB pieces keep four"
    edge_workers = [[w for w in h.spawned if kind(w) == "edge_worker"] for h in (host, big_host)]
    assert [len(w) for w in edge_workers] == [4, 1], "and the bytes in flight to the edge: one 256 KiB piece's worth"
    assert (e.edge_pipeline, big.edge_pipeline) == (4 * engine.EDGE_PIPELINE, engine.EDGE_PIPELINE)
    assert engine.PIECE == MIN_PIECE, "the engine counts in a file's pieces (policy may not import the manifest's rule)"


# -- whole swarms in virtual time -------------------------------------------------------------------
def test_viewers_who_press_play_together_trade_and_read_on_time():
    """12 gateways streaming at once, 2 regions, every default: most bytes from peers, none across regions,
    readers' pieces within the picker's deadline, and one announce each (availability rides the HAVE streams)."""
    o = simulate(Crowd(mode="stream"))
    assert o.finished == 12
    assert o.share >= 0.75
    assert o.cross_region == 0
    assert o.ratio <= 1.5
    assert o.read_wait_p95 < 2.0
    assert o.events["announces"] == 12


def test_the_edge_sends_each_region_about_one_copy():
    seeding = simulate(Crowd(mode="get"))
    plain = simulate(Crowd(mode="get", seeding=False))
    assert all(c <= 1.1 for c in seeding.edge_copies.values()), seeding.edge_copies
    assert not seeding.forced_copies
    assert sum(plain.edge_copies.values()) > 1.2 * sum(seeding.edge_copies.values()), "the super-seeder is why"


def test_whole_file_askers_get_their_seed_answers_one_at_a_time():
    """`bench swarm --mode get` at its defaults: 20 answers sharing the edge's uplink all land after 20 piece times,
    and until then no peer holds anything to trade; one at a time, the first lands after one piece time."""
    crowd = Crowd(mode="get", peers=20, regions=1, size=16 << 20, edge_Bps=2e6, peer_Bps=1e6, upload_line=False)  # the edge's line alone
    line, together = simulate(crowd), simulate(dataclasses.replace(crowd, seed_line=False))
    assert line.last_done < together.last_done
    assert line.share >= together.share - 0.01
    streams = dataclasses.replace(crowd, mode="stream")
    assert simulate(streams).last_done == simulate(dataclasses.replace(streams, seed_line=False)).last_done, "readers never wait in line"


def test_a_peer_sends_background_pieces_one_at_a_time_so_the_first_can_pass_them_on():
    """`bench swarm --mode stream` at its defaults: a peer's uplink shared by all its background uploads at once lands
    them all late; one at a time (urgent ones never wait), the first asker can pass its piece on sooner."""
    crowd = Crowd(mode="stream", peers=20, regions=1, size=16 << 20, edge_Bps=2e6, peer_Bps=1e6)
    line, together = simulate(crowd), simulate(dataclasses.replace(crowd, upload_line=False))
    assert line.last_done < 0.97 * together.last_done
    assert line.share >= together.share - 0.01


def test_streams_need_the_seeding_edge():
    """Readers who start together all lack the same next pieces: without /seed every one of them takes those from the edge."""
    assert simulate(Crowd(mode="stream", seeding=False)).share < 0.1
    assert simulate(Crowd(mode="stream")).share > 0.7


def test_viewers_in_step_behind_a_preheated_seed_trade_what_they_took_from_it():
    """One complete peer a region before the crowd (preheat --peers): readers that took the same next piece from the
    seed at the same moment had nothing to trade, and the edge, whose copies the seed held, seeded nobody: 8.0 x the
    bound. Readers spreading after a 204 made it 4.4 x; the edge seeding a crowd its seeds cannot carry, 1.2 x, at about
    one edge copy a region, as without the seed."""
    o = simulate(Crowd(mode="stream", seeds=1))
    assert o.finished == 12 and o.cross_region == 0
    assert o.ratio < 2.0
    assert all(c <= 1.1 for c in o.edge_copies.values()), o.edge_copies
    whole = simulate(Crowd(mode="get", seeds=1))
    assert whole.finished == 12 and whole.ratio < 1.5  # 2.0 x before


def test_readers_in_step_spread_pieces_when_the_edge_has_none_to_give():
    """The spreading rule alone (the edge seeds nobody: its copies are at a seed it thinks can carry the crowd)."""
    o = simulate(Crowd(mode="stream", seeds=1, peers=6, size=16 << 20))  # three readers a region behind one seed
    assert o.finished == 6 and not o.edge_copies
    assert o.ratio < 4.0  # 5.0 x before the rule, 3.2 x with it: the seed's one uplink is the bound


def test_staggered_streams_and_larger_crowds_still_trade():
    o = simulate(Crowd(mode="stream", stagger=1.0))
    assert o.finished == 12 and o.share >= 0.75
    big = simulate(Crowd(peers=50, mode="get"))
    assert big.finished == 50 and big.share >= 0.9
    assert big.events["most_peer_requests_at_once"] <= engine.MAX_PEERS


def test_every_uplink_with_something_to_give_is_asked_within_seconds():
    """`bench swarm --mode get` at its defaults: no peer's uplink idles long while it holds what others lack.

    Without rotation (and each downloader's own order of neighbours), the
    crowd's workers stayed on the uplinks they first found, and one holding
    pieces everyone lacked sent nothing for 6-9 s.
    """
    o = simulate(Crowd(peers=20, regions=1, size=16 * 1024 * 1024, edge_Bps=2e6, peer_Bps=1e6, mode="get"))
    assert o.finished == 20
    assert o.idle_uplink_s <= 2 * engine.ROTATE


def test_the_fastest_edge_carries_the_load():
    o = simulate(Crowd(peers=1, regions=1, mode="get", edge_rates=(1e6, 8e6)))
    slow, fast = o.edge_sent.values()
    assert fast >= 0.75 * (slow + fast)


def test_a_dead_edge_is_replaced():
    o = simulate(Crowd(peers=6, regions=1, mode="get", edges=2, edge_down=(0.0, math.inf)))
    assert o.finished == 6
    assert o.edge_sent["http://edge0:8000"] == 0


def test_an_edge_down_for_minutes_costs_a_few_lines_not_one_a_probe(caplog):
    """With its only edge down a peer asks it again each second (sources.probe), and each failure was a WARNING
    saying it was set aside for 60 s: 3 600 lines an hour (an adversarial session).  Now a line as the back-off
    grows (2 s ... 60 s) and one a minute after."""
    with caplog.at_level(logging.WARNING, logger="edgeswarm.policy.engine"):
        o = simulate(Crowd(peers=1, regions=1, mode="get", edge_down=(0.0, 180.0)))
    assert o.finished == 1 and o.last_done >= 180
    said = [r.getMessage() for r in caplog.records if "set aside for" in r.getMessage()]
    assert 6 <= len(said) <= 10, said  # 2, 4, ... 60 s, then one a minute
    assert "no other edge is left: it is asked again every 1 s" in said[-1]


def test_peers_that_never_deliver_hand_the_file_to_the_edge():
    """A neighbour that claims every piece and never answers: after FALLBACK_AFTER the edge takes anything."""
    o = simulate(Crowd(peers=1, regions=1, mode="get", seeding=False, black_holes=1))
    assert o.finished == 1
    assert o.last_done >= engine.FALLBACK_AFTER
    assert o.events.get("failed", 0) >= 1


def test_a_choking_uploader_sends_requests_elsewhere():
    o = simulate(Crowd(peers=8, choke_slots=1))
    assert o.finished == 8
    assert o.events["choked"] > 0
    assert o.share > 0.3


def test_a_run_replays_exactly():
    a, b = simulate(Crowd(peers=8, stagger=0.3)), simulate(Crowd(peers=8, stagger=0.3))
    assert dataclasses.asdict(a) == dataclasses.asdict(b)


def test_a_full_disk_fetches_only_what_a_reader_waits_for_until_store_retry():
    """A piece our store could not keep goes to its reader; no read-ahead meanwhile (it would be thrown away and
    fetched again), and STORE_RETRY seconds on the rest may be fetched again, so a download resumes once there is room."""
    now = [0.0]
    e, host = make(now=now)
    e.want_whole()  # no neighbour, no seeding edge: the edge worker takes everything
    edge = spawned(host, "edge_worker")
    first = edge.send(None)
    assert isinstance(first, Fetch)
    after = edge.send(Result("not_stored"))  # no reader took it: a second's pause
    assert after == Sleep(1.0) and e.picker.only_awaited
    assert edge.send(None) == Wait(0.25)  # nothing is awaited: nothing is fetched
    e.reading(6)
    got = edge.send(None)
    assert isinstance(got, Fetch) and got.index == 6
    e.read_done(6)  # the reader took the bytes the driver handed it
    assert edge.send(Result("not_stored", nbytes=1000)) == Wait(0.25)  # no pause, and nothing else to fetch
    now[0] = engine.STORE_RETRY + 1
    nxt = edge.send(None)
    assert isinstance(nxt, Fetch) and not e.picker.only_awaited


def test_a_full_disk_hands_each_piece_to_its_reader_once_and_goes_on_at_once():
    """The driver hands an unstored piece to its readers before their tasks run (and say read_done): it was still
    awaited, so the edge worker fetched it again, nobody took that copy, and the worker slept a second: a peer with a
    full disk served its player a piece a second.  And while the store fails the seeding worker waits, so a piece no
    peer holds goes to the edge worker at once, not after seed_patience."""
    now = [0.0]
    e, host = make(now=now)
    e.add_neighbour("b", "http://10.0.0.2:7000", True)  # holds nothing yet: not a fallback, the edge seeds
    e.reading(3)
    edge = spawned(host, "edge_worker")
    assert edge.send(None) == Wait(0.25)  # a piece no peer holds is on its way from /seed, for seed_patience
    e.picker.only_awaited, e._unstored_at = True, now[0]  # our store just failed (the seeding worker waits now)
    got = edge.send(None)
    assert isinstance(got, Fetch) and got.index == 3
    nxt = edge.send(Result("not_stored", nbytes=1000))  # its reader has it, and has not said read_done yet
    assert nxt == Wait(0.25), "fetched again for nobody"
    e.read_done(3)
    e.reading(4)
    assert isinstance(got := edge.send(None), Fetch) and got.index == 4


def test_a_disk_that_stays_full_is_tried_again_less_and_less_often():
    """Each try after the pause that fails again doubles the pause (a background download of a disk that stays full
    asks its edge for a piece every few minutes at most, not every STORE_RETRY seconds forever); a stored piece resets it."""
    now = [0.0]
    e, host = make(now=now)
    e.want_whole()
    edge = spawned(host, "edge_worker")
    assert isinstance(edge.send(None), Fetch)
    pauses = []
    for _ in range(7):
        assert edge.send(Result("not_stored")) == Sleep(1.0)
        failed_at = now[0]
        assert edge.send(None) == Wait(0.25)
        for _ in range(1000):  # the next try, as soon as the pause lets it
            if isinstance(got := edge.send(None), Fetch):
                break
            assert got == Wait(0.25)
            now[0] += 1.0
        pauses.append(now[0] - failed_at)
    assert pauses == [11.0, 21.0, 41.0, 81.0, 161.0, 301.0, 301.0]  # STORE_RETRY doubled up to STORE_RETRY_MAX (+ a step)
    assert isinstance(edge.send(Result("ok", nbytes=1000)), Fetch) and not e.picker.only_awaited  # stored: room again
    assert edge.send(Result("not_stored")) == Sleep(1.0)
    now[0] += engine.STORE_RETRY + 1
    assert isinstance(edge.send(None), Fetch)  # the pause is STORE_RETRY again


def test_an_edge_that_refuses_our_token_is_left_alone_not_probed_each_second():
    """A background download whose token had expired asked its only edge for a piece a second, for good (an adversarial
    session): set aside as any failing edge, the one left was probed each second.  A hopeless failure leaves the edge
    alone HOPELESS_RETRY seconds, doubled each time it fails so again; a piece it sends ends that."""
    now = [0.0]
    e, host = make(now=now)
    e.want_whole()  # no neighbour: the edge worker takes everything
    edge = spawned(host, "edge_worker")
    assert isinstance(edge.send(None), Fetch)
    pauses = []
    for _ in range(7):
        failed_at, got = now[0], edge.send(Result("hopeless", message="token expired 3 s ago"))
        while not isinstance(got, Fetch):  # the next request, as soon as the edge may be asked
            assert got == Wait(1.0)
            now[0] += 1.0
            got = edge.send(None)
        pauses.append(now[0] - failed_at)
    assert pauses == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]  # HOPELESS_RETRY doubled up to HOPELESS_RETRY_MAX
    assert isinstance(edge.send(Result("ok", nbytes=1000)), Fetch)
    edge.send(Result("hopeless", message="token expired 3 s ago"))
    now[0] += engine.HOPELESS_RETRY
    assert isinstance(edge.send(None), Fetch)  # the pause is HOPELESS_RETRY again


def test_an_edge_that_refuses_our_token_for_seed_is_left_alone_by_every_worker():
    """The seeding worker's /seed refused for our token: neither it nor the edge worker asks that edge meanwhile."""
    worker, e, _ = seeding_engine()
    assert isinstance(worker.send(None), Seed)
    assert worker.send(Result("hopeless", message="token expired 3 s ago")) == Wait(1.0)
    assert e.seeder() is None and e.choose_edge(0) is None
    assert e.ranking.available(e.edges[0], 0.0), "the shared ranking is not told: the peer's other files may ask it"


def seeds(e, *names: str) -> list:
    """Neighbours of ``e`` (a whole-file download), at 10.0.0.2 on, each holding every piece."""
    e.want_whole()
    out = []
    for i, name in enumerate(names, 2):
        n = e.add_neighbour(name, f"http://10.0.0.{i}:7000", True)
        assert n is not None
        e.heard(n, "snapshot", range(8))
        out.append(n)
    return out


def test_a_peer_that_holds_a_request_past_the_timeout_is_dropped_at_once():
    """A peer that announces every piece and never answers held a download's last pieces three timeouts each
    (three of them: 34 s for a 4 MB get, ten: 71 s); a refusal still costs it one failure of MAX_FAILURES."""
    e, host = make()
    a, b = seeds(e, "a", "b")
    wa, wb = peer_workers(host)[:2]
    assert isinstance(wa.send(None), Fetch) and isinstance(wb.send(None), Fetch)
    with pytest.raises(StopIteration):
        wa.send(Result("stalled", message="did not answer within 10 s"))
    assert a.url not in e.neighbours and host.dropped_urls == [a.url]
    assert isinstance(wb.send(Result("failed", message="reset")), Sleep)  # one failure: a pause, and kept
    assert b.url in e.neighbours and b.failures == 1


def test_an_edge_or_seeding_worker_that_fails_on_a_bug_runs_again_after_a_pause(monkeypatch, caplog):
    """Only one of each runs: lost for good, a download waited forever for what only the edge sends (an adversarial
    session's ``min() arg is an empty sequence`` in the picker killed a worker). A recurring bug waits longer each time."""
    e, host = make(count=16)
    e.reading(0)
    edge = spawned(host, "edge_worker")
    real = e.picker.pick

    def broken(*args, **kwargs):
        raise ValueError("min() arg is an empty sequence")

    monkeypatch.setattr(e.picker, "pick", broken)
    assert edge.send(None) == Sleep(engine.RESTART_PAUSE)
    assert "the edge worker 0 of a download failed; it runs again in 1 s" in caplog.text
    assert edge.send(None) == Sleep(2 * engine.RESTART_PAUSE), "failed again at once: a longer pause"
    monkeypatch.setattr(e.picker, "pick", real)
    command = edge.send(None)
    assert isinstance(command, Fetch) and command.index == 0 and command.urgent
    seed, e, _ = seeding_engine()
    monkeypatch.setattr(e, "seeder", broken)
    assert seed.send(None) == Sleep(engine.RESTART_PAUSE)


def test_running_out_of_our_own_descriptors_blames_no_source():
    """Under a low open-file limit, a connect failing with EMFILE set the edge aside for up to 32 s and counted
    failures against peers, though the fault was ours: each worker waits SHORT_PAUSE and asks the same source again."""
    e, a, worker = one_peer_working()
    assert isinstance(worker.send(None), Fetch)
    assert worker.send(Result("short", message="out of file descriptors here")) == Sleep(engine.SHORT_PAUSE)
    again = worker.send(None)
    assert isinstance(again, Fetch) and again.url == a.url and a.failures == 0
    seed, e, _ = seeding_engine()
    assert isinstance(seed.send(None), Seed)
    assert seed.send(Result("short", message="out of file descriptors here")) == Sleep(engine.SHORT_PAUSE)
    assert isinstance(seed.send(None), Seed) and e.ranking.ranked(e.edges, e.clock()) == e.edges


def test_the_edge_and_seeding_workers_of_a_complete_download_wait_for_a_change_not_a_timer():
    """A live peer keeps dozens of complete swarms (a stream's window of parts): their workers wait without a timeout,
    until a piece counted as held turns out lost, which wakes them to fetch it again."""
    e = Engine(RecordingHost(), 2, (0, 1), seed="me", deadline=2.0, edges=["http://edge:8000"], ranking=SourceRanking(), clock=lambda: 0.0)
    host = e.host
    e.want_whole()
    edge, seed = spawned(host, "edge_worker"), spawned(host, "seed_worker")
    assert edge.send(None) == Wait(None) and seed.send(None) == Wait(None)
    e.forget_piece(1)
    got = edge.send(None)
    assert isinstance(got, Fetch) and got.index == 1, "a lost piece is fetched again"


def test_an_edge_worker_probes_its_only_edge_while_it_is_set_aside():
    """The edge's back-off doubles while it fails; once it answers again, a reader must not wait the back-off out."""
    now = [0.0]
    e, host = make(count=8, now=now)
    e.reading(0)
    worker = spawned(host, "edge_worker")
    step = worker.send(None)
    for _ in range(6):  # six failures: set aside 32 s
        assert isinstance(step, Fetch)
        step = worker.send(Result("failed", 0.01))
        while not isinstance(step, Fetch):
            now[0] += 1.0
            step = worker.send(None)
    assert not e.ranking.available("http://edge:8000", now[0] + 10)
    assert isinstance(step, Fetch) and step.url == "http://edge:8000"  # asked again within a second, not in 32 s
    worker.send(Result("ok", 0.01, MIN_PIECE))
    assert e.ranking.available("http://edge:8000", now[0])


def test_a_tracker_answer_naming_a_url_that_does_not_parse_raises_nothing():
    """A lying tracker or sub-tracker (a promoted peer) sent ``http://[::1``: urlsplit raised, out of the announce round."""
    e, _ = make()
    e.tracker_answer([{"peer_id": "liar", "url": "http://[::1", "have": {0, 1}, "same_region": True}])
    liar = e.neighbours["http://[::1"]
    e.ban(liar, "sent a corrupt piece 0")
    assert "http://[::1" in e.banned and not e.neighbours


def test_a_sub_trackers_answer_is_taken_within_the_bounds_a_tracker_keeps():
    """A lying promoted peer answered 200 dead ports at its own address, and the real seeds' ids at its own URLs:
    the neighbour table filled with them every round and the real seeds went; a viewer took everything from the
    edge (an adversarial session)."""
    e, _ = make()
    e.tracker_answer([{"peer_id": "seed", "url": "http://10.0.0.9:7000", "have": {0}, "same_region": True}])
    lies = [{"peer_id": f"fake{i}", "url": f"http://10.6.6.6:{1 + i}", "have": {0, 1}, "same_region": True} for i in range(200)]
    steal = {"peer_id": "seed", "url": "http://10.6.6.7:7000", "have": {0, 1}, "same_region": True}
    e.tracker_answer([steal, *lies], from_edge=False)
    assert sorted(e.neighbours) == ["http://10.0.0.9:7000", "http://10.6.6.6:1", "http://10.6.6.6:2"]
    many = [{"peer_id": f"p{i}", "url": f"http://10.1.{i}.1:7000", "have": {0}, "same_region": True} for i in range(100)]
    e.tracker_answer(many, from_edge=False)
    assert len(e.neighbours) == 3 + MAX_ANSWER_PEERS  # what a tracker sends at most
    e.tracker_answer([{**steal, "url": "http://10.0.0.9:1"}], from_edge=False)  # its id at a dead port of its address
    assert "http://10.0.0.9:7000" in e.neighbours and "http://10.0.0.9:1" not in e.neighbours  # a review's variant
    e.tracker_answer([{**steal, "url": "http://10.0.0.9:7001"}])  # an edge checks addresses: the id moved (a restart)
    assert "http://10.0.0.9:7001" in e.neighbours and "http://10.0.0.9:7000" not in e.neighbours


def test_a_download_left_with_no_useful_neighbour_asks_for_peers_and_one_that_needs_nothing_does_not(caplog):
    """Its only seed restarted on a new port: the download never used it again, and took the rest of a 64 MiB file from
    the edge (57 s against 17 s), until its next announce 300 s on (an adversarial session).  Dropping the last
    neighbour that held what it lacks asks the tracker for peers (Host.lonely); a peer that is whole, or reads nothing,
    asks nothing.  A neighbour dropped on one request is not dropped, nor said, again on another in flight."""
    e, host = make()
    e.want_whole()
    seed = e.add_neighbour("seed", "http://10.0.0.2:7000", True)
    leech = e.add_neighbour("leech", "http://10.0.0.3:7000", True)
    assert seed is not None and leech is not None
    e.heard(seed, "snapshot", range(8))
    first = next(w for w in peer_workers(host) if w.gi_frame.f_locals.get("n") is seed)
    assert isinstance(first.send(None), Fetch)
    caplog.set_level("INFO", "edgeswarm.roles.swarm")  # the engine's log is its daemon's
    with pytest.raises(StopIteration):
        first.send(Result("stalled", message="did not answer within 10 s"))
    assert host.dropped_urls == [seed.url] and host.lonely_asks == 1, "the leech has nothing we lack"
    step = e.transfer(seed.url, seed.url, 3, seed)  # a reader's request to it, in flight when it was dropped
    assert isinstance(next(step), Fetch)
    with pytest.raises(StopIteration):
        step.send(Result("stalled", message="did not answer within 10 s"))
    assert caplog.text.count("dropping peer") == 1 and host.dropped_urls == [seed.url]
    whole, host2 = make()  # a seed of the file: nothing to ask for
    for i in range(8):
        whole.picker.have.add(i)
    n = whole.add_neighbour("x", "http://10.0.0.4:7000", True)
    assert n is not None
    whole.drop(n)
    assert host2.lonely_asks == 0


def test_a_stall_drops_a_neighbour_that_never_delivered_and_counts_once_for_one_that_did():
    """A neighbour that had delivered was dropped at its first stall: on a lossy long path TCP's retries took its 5 s
    head timeout, and it was gone until the next tracker answer (an adversarial session).  One that never delivered (a
    black hole announcing everything) is still dropped at once."""
    e, host = make()
    good, hole = seeds(e, "good", "hole")
    step = e.transfer(good.url, good.url, 0, good)
    assert isinstance(next(step), Fetch)
    with pytest.raises(StopIteration):
        step.send(Result("ok", 0.01, MIN_PIECE))
    for n, stalls in ((good, 2), (hole, 1)):
        for i in range(stalls):
            step = e.transfer(n.url, n.url, 1 + i, n)
            assert isinstance(next(step), Fetch)
            try:
                step.send(Result("stalled", message="did not answer within 5 s"))
                for _ in step:  # its pause
                    pass
            except StopIteration:
                pass
    assert host.dropped_urls == [hole.url] and good.failures == 2  # a third stall in a row drops it too


def two_edge_reader(now: list[float]):
    """An engine with two edges measured, ``fast`` first, a reader waiting at piece 0, and its edge worker."""
    e, host = make(count=8, now=now)
    e.edges[:] = ["http://fast:8000", "http://slow:8000"]
    e.ranking.success("http://fast:8000", 90_000_000, 1.0)
    e.ranking.success("http://slow:8000", 40_000_000, 1.0)
    e.reading(0)
    return e, host, spawned(host, "edge_worker")


def test_a_readers_piece_an_edge_is_late_with_is_raced_on_another_edge_and_the_late_one_set_aside():
    """An edge that takes connections and never answers (SIGSTOP) held a player's piece for its whole timeout, 12 s,
    with a second edge idle (an adversarial session).  Late by the deadline, the piece is asked of the other edge;
    its copy lands, the late request is abandoned, and the late edge is set aside."""
    now = [0.0]
    e, host, worker = two_edge_reader(now)
    first = worker.send(None)
    assert isinstance(first, Fetch) and first.url == "http://fast:8000" and first.urgent
    relief = spawned(host, "relief_worker")
    assert isinstance(relief.send(None), Wait), "on time: nobody races it"
    now[0] = e.picker.deadline
    raced = relief.send(None)
    assert isinstance(raced, Fetch) and raced.url == "http://slow:8000" and raced.index == first.index and raced.urgent
    relief.send(Result("ok", 0.01, MIN_PIECE))
    assert first.index in host.abandoned and not e.ranking.available("http://fast:8000", now[0])
    worker.send(Result("abandoned"))
    # its back-off over, it is first again (ranked last until it delivered, it was never asked by reads, all urgent: a
    # review); wedged still, it costs the next reader the deadline, and its back-off doubles
    assert e.ranking.ranked(e.edges, now[0] + 60) == ["http://fast:8000", "http://slow:8000"]


def test_an_edge_re_measured_is_asked_for_a_piece_no_reader_waits_for():
    """The others are re-measured every 8th pick, with a piece nobody waits for: a wedged edge re-measured with a
    player's piece held it for its timeout, on about every other new play (an adversarial session)."""
    now = [0.0]
    e, _, _ = two_edge_reader(now)
    assert e.choose_edge(7) == "http://slow:8000"
    assert e.choose_edge(7, urgent=True) == "http://fast:8000"


def test_a_wedged_edge_among_two_costs_a_reader_the_deadline_not_its_timeout():
    """The faster of two edges wedged (it takes requests and never answers them) while a player reads: every piece
    came, at worst the deadline late, not the 10 s timeout late (an adversarial session: 12 s stalls on every other play)."""
    o = simulate(Crowd(peers=1, regions=1, edge_rates=(16e6, 8e6), edge_down=(1.0, math.inf), edge_hangs=True))
    assert o.finished == 1
    assert o.read_wait_max < 3.0


def two_edge_download(now: list[float], rates: tuple[float, float] = (90e6, 40e6)):
    """An engine with two edges measured at these ``rates``, ``fast`` first, downloading the whole file (nobody
    reads), its edge worker asking ``fast`` a piece, and the relief worker."""
    e, host = make(count=8, now=now)
    e.edges[:] = ["http://fast:8000", "http://slow:8000"]
    for edge, rate in zip(e.edges, rates, strict=True):
        e.ranking.success(edge, round(rate), 1.0)
    e.want_whole()
    worker = spawned(host, "edge_worker")
    first = worker.send(None)
    assert isinstance(first, Fetch) and first.url == "http://fast:8000" and not first.urgent
    return e, host, worker, first, spawned(host, "relief_worker")


def test_a_whole_files_piece_an_edge_is_overdue_with_is_raced_on_another_edge_and_the_late_one_set_aside():
    """`edgeswarm get` with two edges, the one it asked wedged (it takes connections and never answers): nobody reads,
    so nothing raced its piece, and the download waited for the edge's whole timeout, 12 s (an adversarial session).
    Overdue (several times its time at the edge's rate, OVERDUE_AFTER at least), the piece is asked of the other edge."""
    now = [0.0]
    e, host, worker, first, relief = two_edge_download(now)
    now[0] = e.picker.deadline
    assert isinstance(relief.send(None), Wait), "late by the deadline: a reader's, it would be raced; nobody's, not yet"
    now[0] = engine.OVERDUE_AFTER
    raced = relief.send(None)
    assert isinstance(raced, Fetch) and raced.url == "http://slow:8000" and raced.index == first.index and not raced.urgent
    relief.send(Result("ok", 0.01, MIN_PIECE))
    assert first.index in host.abandoned and not e.ranking.available("http://fast:8000", now[0])
    assert e.ranking.available("http://slow:8000", now[0])
    assert isinstance(worker.send(Result("abandoned")), Fetch)


def test_a_piece_is_overdue_at_an_edge_after_several_times_its_time_there_at_the_edges_rate():
    """A slow edge is not raced, nor set aside, for being slow: its piece is raced only after OVERDUE_PIECES times a
    piece's time at its measured rate (here 2 s a piece: 8 s)."""
    now = [0.0]
    e, _, _, first, relief = two_edge_download(now, (PIECE / 2.0, PIECE / 4.0))
    bound = engine.OVERDUE_PIECES * 2.0
    now[0] = bound - 0.1
    assert isinstance(relief.send(None), Wait) and e.ranking.available("http://fast:8000", now[0])
    now[0] = bound
    raced = relief.send(None)
    assert isinstance(raced, Fetch) and raced.url == "http://slow:8000" and raced.index == first.index


def test_a_wedged_edge_among_two_holds_a_whole_file_download_for_seconds_not_its_timeouts():
    """The faster of two edges wedged while `edgeswarm get` downloads: its requests were raced on the other edge only
    for a reader, and the download waited out the edge's timeout twice, 23.8 s for 32 MiB (an adversarial session)."""
    o = simulate(Crowd(peers=1, regions=1, mode="get", edge_rates=(16e6, 8e6), edge_down=(1.0, math.inf), edge_hangs=True))
    assert o.finished == 1
    assert o.last_done < 12.0
