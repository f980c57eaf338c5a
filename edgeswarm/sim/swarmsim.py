"""A swarm in memory and virtual time: the download engine against simulated peers and edges.

Every peer runs edgeswarm.policy.engine exactly as the daemon does: the same
workers, picker, staffing, edge choice, fallback and failure costs.  Only
what they ask for is simulated: a piece request takes a round trip and then
shares its uploader's link with the uploader's other transfers (processor
sharing, as TCP flows roughly do); an uploading peer answers through the
real Choker; an edge chooses what to seed with the real SuperSeeder and
hands out neighbours with the real Tracker (strict locality); what a peer
stores reaches its HAVE subscribers after the HAVE stream's batching delay.
No sockets and no sleeping, so a unit test runs a 200-peer crowd in seconds
and any run replays exactly.

``python -m edgeswarm.sim.swarmsim`` sweeps N for synchronized streams,
staggered streams and whole-file downloads and writes the curves of
docs/engine.md (P2P share, and the last peer's time against the bound).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeswarm.policy.choker import SLOTS, Choker
from edgeswarm.policy.engine import LONELY_ASK_S, AskHave, Command, Engine, Fetch, Neighbour, Result, Seed, Sleep, Wait, Worker
from edgeswarm.policy.regions import Region
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.policy.superseed import SuperSeeder
from edgeswarm.policy.tracker import ANNOUNCE_INTERVAL, AnnounceRecord, Tracker, settle
from edgeswarm.policy.vocabulary import EDGE, PEER_OTHER_REGION, flash_crowd_bound, p2p_share, peer_bytes, peer_kind
from edgeswarm.protocol import havefeed

PIECE = 256 * 1024
RTT = 0.002  # seconds for a request to reach its server and the answer's head to come back
TIMEOUT = 10.0  # seconds a request to a node that is down takes to fail
CID = "c0ffee"
IDLE_SAMPLE = 0.5  # seconds between two looks at which uplinks idle


@dataclass
class Crowd:
    """One simulated run; the defaults are `bench swarm`'s loopback set-up (12 peers, 2 regions, 32 MiB)."""

    peers: int = 12
    regions: int = 2
    size: int = 32 * 1024 * 1024
    mode: str = "stream"  # stream: each reads the file in order, as a player or curl through the gateway; get: whole file
    # a peer that completes leaves (stops seeding), as `edgeswarm get` exits; None: as the mode does (get leaves)
    leave_when_done: bool | None = None
    stagger: float = 0.0  # seconds between two peers' starts
    edge_Bps: float = 8e6
    peer_Bps: float = 2e6
    edges: int = 1
    edge_rates: tuple[float, ...] | None = None  # one rate per edge, overriding edges and edge_Bps
    seeding: bool = True  # False: edges answer 404 to /seed, as one that is not a super-seeder
    seed_line: bool = True  # False: the edge sends whole-file askers' seed answers all at once, as streams' (before the line)
    upload_line: bool = True  # False: a peer sends background pieces all at once, as urgent ones (before its line)
    edge_down: tuple[float, float] | None = None  # (from, until): the first edge refuses everything meanwhile
    edge_hangs: bool = False  # ... or, wedged, takes each request and never answers it (it times out, TIMEOUT)
    black_holes: int = 0  # extra peers per region that announce every piece and never answer (a fallback's test)
    # complete peers per region before the crowd (preheated volunteers): they upload and never read, and the edge's
    # super-seeder counts the one copy of each piece it sent them while they fetched it
    seeds: int = 0
    choke_slots: int = SLOTS
    limit: float = 3600.0  # virtual seconds before the run is cut
    rtt: float = RTT  # a far edge and peers: every request's round trip

    @property
    def rates(self) -> tuple[float, ...]:
        """Each edge's upload rate."""
        return self.edge_rates or (self.edge_Bps,) * self.edges


class Loop:
    """Virtual time: callbacks in time order; a run never sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._seq = itertools.count()

    def after(self, delay: float, fn: Callable, *args: object) -> None:
        heapq.heappush(self._heap, (self.now + max(0.0, delay), next(self._seq), fn, args))

    def run(self, done: Callable[[], bool], limit: float) -> None:
        while self._heap and not done():
            when, _, fn, args = heapq.heappop(self._heap)
            if when > limit:
                break
            self.now = when
            fn(*args)


class Uplink:
    """One node's upload capacity, shared equally by the transfers in progress (processor sharing)."""

    def __init__(self, loop: Loop, rate: float):
        self.loop, self.rate = loop, rate
        self._flows: dict[int, list] = {}  # id -> [bytes left, callback]
        self._ids = itertools.count()
        self._last = 0.0
        self._version = 0

    def send(self, nbytes: int, done: Callable[[], None]) -> int:
        self._advance()
        fid = next(self._ids)
        self._flows[fid] = [float(nbytes), done]
        self._schedule()
        return fid

    def cancel(self, fid: int) -> int:
        """Stop a transfer (its receiver abandoned it): the bytes it had left, which the link gives the others."""
        self._advance()
        flow = self._flows.pop(fid, None)
        self._schedule()
        return 0 if flow is None else max(0, math.ceil(flow[0]))

    def busy(self) -> bool:
        return bool(self._flows)

    def _advance(self) -> None:
        if self._flows:
            share = self.rate * (self.loop.now - self._last) / len(self._flows)
            for f in self._flows.values():
                f[0] -= share
        self._last = self.loop.now

    def _schedule(self) -> None:
        self._version += 1
        if self._flows:
            least = min(f[0] for f in self._flows.values())
            self.loop.after(max(0.0, least) * len(self._flows) / self.rate, self._tick, self._version)

    def _tick(self, version: int) -> None:
        if version != self._version:
            return
        self._advance()
        for fid in [fid for fid, f in self._flows.items() if f[0] <= 1e-6]:
            self._flows.pop(fid)[1]()
        self._schedule()


@dataclass(eq=False)
class Request:
    """A Fetch or Seed in flight, which ``SimPeer.abandon`` may stop: answered once; ``stop`` frees its sender's link."""

    answer: Callable[[Result], None]
    answered: bool = False
    stop: Callable[[], None] | None = None

    def reply(self, result: Result) -> None:
        if not self.answered:
            self.answered = True
            self.answer(result)


def _also(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        if first is not None:
            first()
        then()

    return both


class Line:
    """Bodies one at a time, in the order asked: ``serving.in_line`` in virtual time (the edge's seed line, a peer's
    background uploads).  Not modelled: ``LINE_HOLD`` (simulated receivers read as fast as they are sent to)."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self._waiting: list[tuple[Request, Callable[[Callable[[], None]], None]]] = []
        self._busy = False

    def join(self, request: Request, start: Callable[[Callable[[], None]], None]) -> None:
        """``start(free)`` sends the body at its turn, and calls ``free`` when it is done or stopped; a request
        answered (abandoned) while it waited is skipped."""
        self._waiting.append((request, start))
        self._next()

    def _next(self) -> None:
        while self._waiting and not self._busy:
            request, start = self._waiting.pop(0)
            if not request.answered:
                self._busy = True
                start(self._freer())

    def _freer(self) -> Callable[[], None]:
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed, self._busy = True, False
                self.loop.after(0.0, self._next)

        return free


class SimEdge:
    """An edge in p2p mode holding the whole file: tracker, super-seeder, one upload link."""

    def __init__(self, sim: Simulation, url: str, rate: float):
        self.sim, self.url = sim, url
        self.uplink = Uplink(sim.loop, rate)
        self.tracker = Tracker(locality="strict", ttl=3 * ANNOUNCE_INTERVAL)
        self.seeder = SuperSeeder()
        self.sent: Counter[str] = Counter()  # region -> bytes
        self.forced: Counter[str] = Counter()  # region -> bytes a reader's deadline forced (urgent /piece)
        self.seed_line = Line(sim.loop)  # seed answers to whole-file askers, one at a time

    def down(self) -> bool:
        window = self.sim.crowd.edge_down
        return window is not None and self is self.sim.edges[0] and window[0] <= self.sim.loop.now < window[1]

    def piece(self, asker: SimPeer, index: int, urgent: bool, request: Request) -> None:
        if request.answered:
            return
        if self.down():
            self._refuse(request)
            return
        if urgent:
            self.forced[asker.region.name] += self.sim.piece_len(index)
        self._send(asker, index, request, lambda seconds, n: request.reply(Result("ok", seconds, n)))

    def seed(self, asker: SimPeer, claimed: frozenset[int], start: int, whole: bool, unseen: frozenset[int], request: Request) -> None:
        if self.down():
            self._refuse(request)
            return
        if not self.sim.crowd.seeding:
            self.sim.loop.after(self.sim.rtt, request.reply, Result("unsupported"))
            return
        index = self.seeder.choose(self.sim.loop.now, asker.region.name, CID, claimed, start, self.sim.count, unseen)
        if index is None:
            self.sim.loop.after(self.sim.rtt, request.reply, Result("none"))
            return
        self.sim.loop.after(self.sim.rtt / 2, asker.seed_named, index, request)  # the answer's head names the piece

        def answer(seconds: float, n: int) -> None:
            request.reply(Result("ok", seconds, n, index, data=True))

        if not (whole and self.sim.crowd.seed_line):
            self._send(asker, index, request, answer)
            return
        self.seeder.record(self.sim.loop.now, asker.region.name, CID, index, asker.key)  # a copy from the moment it is picked

        def turn(free: Callable[[], None], asked: float = self.sim.loop.now) -> None:
            def done(seconds: float, n: int) -> None:
                answer(self.sim.loop.now - asked, n)
                free()

            self._send(asker, index, request, done)
            request.stop = _also(request.stop, free)  # the line moves on when its answer is abandoned too

        self.seed_line.join(request, turn)

    def _refuse(self, request: Request) -> None:
        """Down: refused at once, or held until the asker's timeout (``Crowd.edge_hangs``)."""
        if self.sim.crowd.edge_hangs:
            self.sim.loop.after(TIMEOUT, request.reply, Result("stalled", message="timed out"))
        else:
            self.sim.loop.after(self.sim.rtt, request.reply, Result("failed", message="connection refused"))

    def _send(self, asker: SimPeer, index: int, request: Request, reply: Callable[[float, int], None]) -> None:
        """The piece counts as the region's copy from the moment it is sent (as the edge's ``_copy``); bytes as they go."""
        loop, nbytes, started, region = self.sim.loop, self.sim.piece_len(index), self.sim.loop.now, asker.region.name
        self.seeder.record(loop.now, region, CID, index, asker.key)
        self.sent[region] += nbytes
        fid = self.uplink.send(nbytes, lambda: loop.after(self.sim.rtt / 2, reply, loop.now + self.sim.rtt / 2 - started, nbytes))

        def stop() -> None:
            self.sent[region] -= self.uplink.cancel(fid)

        request.stop = stop

    def announce(self, peer: SimPeer) -> list[dict]:
        now = self.sim.loop.now
        self.seeder.observe(now, peer.region.name, CID, peer.key, peer.placed_seed)
        answer = settle(self.tracker.announce(now, peer.announce_record("started" if peer.announces == 0 else "update")))
        return [
            {"peer_id": r.peer_id, "url": r.url, "have": set(r.have), "same_region": r.region == peer.region, "placed": self._placed(r.url)}
            for r in answer
        ]

    def _placed(self, url: str) -> bool:
        """A seed a preheat order put there: the edge's answers say so (TrackerService.placed)."""
        other = self.sim.peers.get(url)
        return other is not None and other.placed_seed


class SimPeer:
    """A peer daemon: the engine, a HAVE feed to its subscribers, an uploader with the real choker."""

    def __init__(self, sim: Simulation, i: int, region: int, hole: bool = False, complete: bool = False):
        self.sim, self.hole = sim, hole
        self.placed_seed = complete  # a preheat order's volunteer, whole before the crowd
        self.upload_line = Line(sim.loop)  # background pieces, one at a time (the daemon's upload_line)
        self.peer_id = f"{'hole' if hole else 'seed' if complete else 'peer'}{i}"
        self.address = f"10.{region}.{i // 250}.{i % 250 + 1}"
        self.url = f"http://{self.address}:7000"
        self.key = (self.address, self.peer_id)
        self.region = Region(f"r{region}", "sim")
        self.uplink = Uplink(sim.loop, sim.crowd.peer_Bps)
        self.choker = Choker(slots=sim.crowd.choke_slots)
        self.ranking = SourceRanking()
        self.engine = Engine(
            self, sim.count, range(sim.count) if hole or complete else (), seed=self.peer_id, deadline=2.0,
            edges=[e.url for e in sim.edges], ranking=self.ranking, clock=lambda: sim.loop.now,
        )  # fmt: skip
        self.subscribers: dict[str, SimPeer] = {}
        self.received: Counter[str] = Counter()  # vocabulary.SOURCE_KINDS -> bytes
        self.started = sim.loop.now
        self.done_at: float | None = None
        self.read_waits: list[float] = []  # seconds a reader waited for each piece it did not have
        self._parked: list[list] = []  # [worker, resumed?] waiting for a change
        self._readers: dict[int, Callable[[], None]] = {}
        self.announces = 0
        self.asked_lonely = -math.inf  # when this peer last asked for peers between announces (lonely)
        self.left = False
        self._fetching = 0  # requests to peers in flight
        self._requests: defaultdict[int, list[Request]] = defaultdict(list)  # piece -> its Fetch and Seed in flight

    # -- the engine's host --------------------------------------------------------------------
    def spawn(self, worker: Worker) -> None:
        self.sim.loop.after(0.0, self._resume, worker, None)

    def changed(self) -> None:
        parked, self._parked = self._parked, []
        for w in parked:
            if not w[1]:
                w[1] = True
                self.sim.loop.after(0.0, self._resume, w[0], None)

    def crossed(self, url: str, nbytes: int) -> None:
        self.received[EDGE] += nbytes

    def abandon(self, index: int) -> None:
        for request in self._requests.pop(index, ()):
            if not request.answered:
                if request.stop is not None:
                    request.stop()
                request.answered = True  # at once: a body still waiting in a line never starts
                self.sim.loop.after(0.0, request.answer, Result("abandoned"))

    def seed_named(self, index: int, request: Request) -> None:
        """The head of an edge's /seed answer: the engine learns the piece, and the answer is that piece's transfer."""
        self.engine.seed_coming(index)
        if not request.answered:
            self._requests[index].append(request)

    def delivered(self, index: int, url: str, peer: Neighbour | None, nbytes: int) -> None:
        now = self.sim.loop.now
        if peer is not None:
            self.choker.received(now, peer.peer_id, nbytes)
        self.received[EDGE if peer is None else peer_kind(peer.same_region)] += nbytes
        for s in list(self.subscribers.values()):
            self.sim.loop.after(havefeed.BATCH + self.sim.rtt / 2, s.heard_from, self, index)
        wake = self._readers.pop(index, None)
        if wake is not None:
            wake()
        if self.engine.picker.complete() and self.done_at is None:
            self.done_at = now
            for n in list(self.engine.neighbours.values()):  # as the daemon: free our places under their caps
                self.dropped(n)
            leave = self.sim.crowd.leave_when_done
            if leave or (leave is None and self.sim.crowd.mode == "get"):
                self.leave()

    def announce_record(self, event: str) -> AnnounceRecord:
        """What the edge's tracker hears from this peer (simulated peers report no byte counts)."""
        return AnnounceRecord(
            cid=CID,
            peer_id=self.peer_id,
            url=self.url,
            address=self.address,
            region=self.region,
            have=self.have(),
            piece_count=self.sim.count,
            event=event,
        )

    def leave(self) -> None:
        """Stop, as `edgeswarm get` does when its file is written: a `stopped` announce, streams and uploads end."""
        self.left = True
        self.engine.closed = True
        edge = self.sim.edges[0]
        settle(edge.tracker.announce(self.sim.loop.now, self.announce_record("stopped")))
        edge.seeder.leave(self.region.name, CID, self.key)
        for s in list(self.subscribers.values()):
            n = s.engine.neighbours.get(self.url)
            if n is not None:
                s.engine.stream_lost(n)
        self.subscribers.clear()

    def dropped(self, n: Neighbour) -> None:
        other = self.sim.peers.get(n.url)
        if other is not None:
            other.subscribers.pop(self.url, None)
        n.subscribed, n.stream = False, None

    def lonely(self) -> None:
        """An announce now, between intervals, as the daemon's (Peer.ask_for_peers), once every LONELY_ASK_S."""
        if self.sim.loop.now - self.asked_lonely >= LONELY_ASK_S:
            self.asked_lonely = self.sim.loop.now
            self.announce(again=False)

    def gone(self) -> bool:
        return False

    # -- running the workers --------------------------------------------------------------------
    def _resume(self, worker: Worker, reply: object) -> None:
        try:
            command = worker.send(reply)
        except StopIteration:
            return
        self._do(worker, command)

    def _do(self, worker: Worker, command: Command) -> None:
        loop, events = self.sim.loop, self.sim.events

        def answer(reply: object) -> None:
            if isinstance(reply, Result):
                events[reply.kind] += 1
            if isinstance(command, Fetch) and command.peer is not None:
                self._fetching -= 1
            self._resume(worker, reply)

        if isinstance(command, Wait):
            w = [worker, False]
            self._parked.append(w)
            if command.timeout is not None:
                loop.after(command.timeout, self._timeout, w)
        elif isinstance(command, Sleep):
            loop.after(command.seconds, self._resume, worker, None)
        elif isinstance(command, Fetch) and command.data is not None:
            loop.after(0.0, answer, Result("ok", 0.0, self.sim.piece_len(command.index)))
        elif isinstance(command, Fetch):
            if command.peer is not None:
                self._fetching += 1
                events["most_peer_requests_at_once"] = max(events["most_peer_requests_at_once"], self._fetching)
            request = Request(answer)
            self._requests[command.index].append(request)
            loop.after(self.sim.rtt / 2, self.sim.node(command.url).piece, self, command.index, command.urgent, request)
            if command.peer is None:  # an edge's answer head comes a round trip later (it sends it at once): Peer.fetch_piece
                loop.after(self.sim.rtt, self.ranking.heard, command.url, self.sim.rtt)
        elif isinstance(command, Seed):
            loop.after(
                self.sim.rtt / 2,
                self.sim.edge(command.edge).seed,
                self,
                command.claimed,
                command.start,
                command.whole,
                command.unseen,
                Request(answer),
            )
        elif isinstance(command, AskHave):
            events["have_polls"] += len(command.neighbours)
            held = [None if self._unanswered(n) else self.sim.peers[n.url].have() for n in command.neighbours]
            loop.after(self.sim.rtt, answer, held)

    def _unanswered(self, n: Neighbour) -> bool:
        other = self.sim.peers[n.url]
        return other.hole or other.left

    def _timeout(self, w: list) -> None:
        if not w[1]:
            w[1] = True
            self._parked.remove(w)
            self._resume(w[0], None)

    # -- as an uploader -------------------------------------------------------------------------
    def have(self) -> set[int]:
        return set(self.engine.picker.have)

    def piece(self, asker: SimPeer, index: int, urgent: bool, request: Request) -> None:
        loop, reply = self.sim.loop, request.reply
        if request.answered:
            return
        if self.hole:
            loop.after(TIMEOUT, reply, Result("failed", message="timed out"))
        elif self.left:
            loop.after(self.sim.rtt, reply, Result("failed", message="connection refused"))
        elif index not in self.engine.picker.have:
            loop.after(self.sim.rtt / 2, reply, Result("not_held"))
        elif not self.choker.request(loop.now, asker.peer_id):
            loop.after(self.sim.rtt / 2, reply, Result("choked", self.choker.retry_after(loop.now)))
        else:
            nbytes, started = self.sim.piece_len(index), loop.now

            def send(free: Callable[[], None]) -> None:
                def sent() -> None:
                    self.choker.sent(loop.now, asker.peer_id, nbytes)
                    free()
                    loop.after(self.sim.rtt / 2, reply, Result("ok", loop.now + self.sim.rtt / 2 - started, nbytes))

                fid = self.uplink.send(nbytes, sent)
                request.stop = _also(lambda: self.choker.sent(loop.now, asker.peer_id, nbytes - self.uplink.cancel(fid)), free)

            if urgent or not self.sim.crowd.upload_line:
                send(lambda: None)
            else:
                self.upload_line.join(request, send)

    # -- the HAVE stream ----------------------------------------------------------------------------
    def subscribe(self) -> None:
        """Open the HAVE streams the engine allows; the uploader adds the subscriber as its neighbour too."""
        for n in list(self.engine.neighbours.values()):
            if not self.engine.may_subscribe(n):
                continue
            other = self.sim.peers[n.url]
            if other.hole or other.left or len(other.subscribers) >= havefeed.MAX_SUBSCRIBERS:
                continue  # polled by the scout instead
            n.subscribed = True
            other.subscribers[self.url] = self
            self.sim.loop.after(self.sim.rtt, self._snapshot, n, other)
            if other.engine.add_neighbour(self.peer_id, self.url, other.region == self.region, subscriber=True) is not None:
                other.subscribe()

    def _snapshot(self, n: Neighbour, other: SimPeer) -> None:
        if n.subscribed:
            self.engine.heard(n, "snapshot", other.have())

    def heard_from(self, other: SimPeer, index: int) -> None:
        n = self.engine.neighbours.get(other.url)
        if n is not None and n.subscribed and self.done_at is None:
            self.engine.heard(n, "have", [index])

    # -- what the user does ---------------------------------------------------------------------------
    def start(self) -> None:
        self.announce()
        if self.sim.crowd.mode == "get":
            self.engine.want_whole()
        else:
            self._read(0)

    def announce(self, again: bool = True) -> None:
        """An announce and its answer's peers; ``again``: the next one an interval on."""
        if self.left:
            return
        answer = self.sim.edges[0].announce(self)
        self.announces += 1
        if not self.hole:
            self.engine.tracker_answer(answer)
            self.subscribe()
            if again:
                self.sim.loop.after(ANNOUNCE_INTERVAL, self.announce)

    def _read(self, index: int) -> None:
        """A player reading in order, as fast as pieces come (curl through the gateway)."""
        while index < self.sim.count and index in self.engine.picker.have:
            index += 1
        if index >= self.sim.count:
            return
        asked = self.sim.loop.now
        self.engine.reading(index)

        def got() -> None:
            self.read_waits.append(self.sim.loop.now - asked)
            self._read(index + 1)  # the next piece is asked for before this one is done, as the gateway's fetches ahead are
            self.engine.read_done(index)  # (else a reader would be gone between two pieces, and its startup with it)

        self._readers[index] = got


@dataclass
class Outcome:
    crowd: Crowd
    share: float  # bytes from peers / bytes received
    bound: float  # seconds: vocabulary.flash_crowd_bound
    last_done: float  # seconds from the first start to the last peer's completion (inf: not all finished)
    edge_copies: dict[str, float]  # region -> copies of the file the edge sent there
    forced_copies: dict[str, float]  # of which urgent (deadline-forced) requests
    cross_region: int  # bytes between regions
    read_wait_p95: float  # seconds a reader waited for a piece, 95th percentile
    read_wait_max: float  # ... the longest
    finished: int
    events: dict = field(default_factory=dict)
    edge_sent: dict = field(default_factory=dict)  # edge URL -> bytes
    # the longest a peer's uplink sent nothing while it held a piece another peer still lacked (sampled)
    idle_uplink_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.last_done / self.bound


class Simulation:
    def __init__(self, crowd: Crowd):
        self.crowd = crowd
        self.loop = Loop()
        self.count = math.ceil(crowd.size / PIECE)
        self.edges = [SimEdge(self, f"http://edge{k}:8000", rate) for k, rate in enumerate(crowd.rates)]
        self.peers: dict[str, SimPeer] = {}
        self.crowd_peers: list[SimPeer] = []
        self.events: Counter[str] = Counter()  # results by kind, have polls, most peer requests in flight at once
        self.idle: dict[str, float] = defaultdict(float)  # peer id -> seconds its uplink has idled with something to give (sampled)
        self.longest_idle = 0.0  # the longest such stretch
        self.rtt = crowd.rtt

    def piece_len(self, index: int) -> int:
        return min(PIECE, self.crowd.size - index * PIECE)

    def edge(self, url: str) -> SimEdge:
        return next(e for e in self.edges if e.url == url)

    def node(self, url: str) -> SimEdge | SimPeer:
        return next((e for e in self.edges if e.url == url), None) or self.peers[url]

    def run(self) -> Outcome:
        c = self.crowd
        for k in range(c.black_holes * c.regions):
            hole = SimPeer(self, 1000 + k, k % c.regions + 1, hole=True)
            self.peers[hole.url] = hole
            hole.announce()
        for k in range(c.seeds * c.regions):
            seed = SimPeer(self, 2000 + k, k % c.regions + 1, complete=True)
            self.peers[seed.url] = seed
            seed.announce()
            for index in range(k // c.regions, self.count, c.seeds):  # the edge sent each piece to one seed of the region
                self.edges[0].seeder.record(0.0, seed.region.name, CID, index, seed.key)
        for i in range(c.peers):
            self.loop.after(i * c.stagger, self._join, i)
        self.loop.after(IDLE_SAMPLE, self._sample_idle)
        self.loop.run(lambda: len(self.crowd_peers) == c.peers and all(p.done_at is not None for p in self.crowd_peers), c.limit)
        return self._outcome()

    def _sample_idle(self) -> None:
        """Time each uplink's stretches of sending nothing while it holds a piece another peer still lacks."""
        live = [(p, p.engine.picker.have) for p in self.crowd_peers if not p.left]
        for p, held in live:
            if not p.uplink.busy() and any(not held <= other for q, other in live if q is not p):
                self.idle[p.peer_id] += IDLE_SAMPLE
                self.longest_idle = max(self.longest_idle, self.idle[p.peer_id])
            else:
                self.idle[p.peer_id] = 0.0
        self.loop.after(IDLE_SAMPLE, self._sample_idle)

    def _join(self, i: int) -> None:
        p = SimPeer(self, i, i % self.crowd.regions + 1)
        self.peers[p.url] = p
        self.crowd_peers.append(p)
        p.start()

    def _outcome(self) -> Outcome:
        c, ps = self.crowd, self.crowd_peers
        got = sum((p.received for p in ps), Counter())
        total = sum(got.values()) or 1
        done = [p.done_at for p in ps if p.done_at is not None]
        waits = sorted(w for p in ps for w in p.read_waits)
        sent = sum((e.sent for e in self.edges), Counter())
        forced = sum((e.forced for e in self.edges), Counter())
        return Outcome(
            crowd=c,
            share=p2p_share(peer_bytes(got), total) or 0.0,
            bound=bound(c),
            last_done=max(done) if len(done) == len(ps) else math.inf,
            edge_copies={r: sent[r] / c.size for r in sorted(sent)},
            forced_copies={r: forced[r] / c.size for r in sorted(forced)},
            cross_region=got[PEER_OTHER_REGION],
            read_wait_p95=waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else 0.0,
            read_wait_max=waits[-1] if waits else 0.0,
            finished=len(done),
            events=dict(self.events) | {"announces": sum(p.announces for p in ps)},
            edge_sent={e.url: sum(e.sent.values()) for e in self.edges},
            idle_uplink_s=self.longest_idle,
        )


def bound(c: Crowd) -> float:
    """Seconds from the first start before which the last peer cannot be done: bench swarm's bound for a crowd
    that starts together; for a staggered one, the last start plus the whole swarm's upload delivering one copy."""
    edge = sum(c.rates)
    together = flash_crowd_bound(c.size, c.peers, edge, [c.peer_Bps] * c.peers)
    return max(together, (c.peers - 1) * c.stagger + c.size / (edge + c.peers * c.peer_Bps))


def simulate(crowd: Crowd) -> Outcome:
    return Simulation(crowd).run()


# -- the sweep behind docs/engine.md ----------------------------------------------------------------
SCENARIOS: dict[str, dict[str, Any]] = {
    "synchronized streams": {"mode": "stream"},
    "staggered streams (one start a second)": {"mode": "stream", "stagger": 1.0},
    "whole-file downloads": {"mode": "get"},
}
SIZES = (2, 4, 8, 12, 25, 50, 100, 200)


def sweep(sizes: tuple[int, ...] = SIZES) -> list[dict]:
    from rich.progress import Progress

    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("simulating", total=len(SCENARIOS) * len(sizes))
        for name, knobs in SCENARIOS.items():
            for n in sizes:
                o = simulate(Crowd(peers=n, **knobs))
                rows.append({"scenario": name, "peers": n, "share": o.share, "ratio": o.ratio, "bound_s": o.bound,
                             "last_s": o.last_done, "edge_copies": sum(o.edge_copies.values()),
                             "read_wait_p95_s": o.read_wait_p95})  # fmt: skip
                progress.advance(task)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == name]
        left.plot([r["peers"] for r in mine], [100 * r["share"] for r in mine], marker="o", label=name)
        right.plot([r["peers"] for r in mine], [r["ratio"] for r in mine], marker="o", label=name)
    n = [r["peers"] for r in rows if r["scenario"] == next(iter(SCENARIOS))]
    left.plot(n, [100 * (1 - 2 / k) if k > 2 else 0 for k in n], "k--", linewidth=1, label="ceiling (one edge copy per region)")
    left.set(xscale="log", xlabel="peers (2 regions)", ylabel="P2P share (%)", ylim=(0, 100), title="P2P share")
    right.set(xscale="log", xlabel="peers (2 regions)", ylabel="last peer done / lower bound", title="Time against the bound")
    right.axhline(1.0, color="k", linestyle="--", linewidth=1)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # as the edgeswarm command's: --o is not --out
        prog="python -m edgeswarm.sim.swarmsim",
        description="Sweep the download engine in virtual time over crowd sizes (edge 8 MB/s, peers 2 MB/s, "
        "32 MiB, 2 regions, strict locality, every other knob at its default) and write the table and plot of docs/engine.md.",
    )
    parser.add_argument("--peers", type=int, nargs="+", default=list(SIZES), help="crowd sizes (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="directory for engine-sweep.json and .png (default docs)")
    args = parser.parse_args(argv)
    rows = sweep(tuple(args.peers))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.out / "engine-sweep.png")
    print("| scenario | peers | P2P share | last done / bound | edge copies | read wait p95 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['peers']} | {100 * r['share']:.1f} % | {r['ratio']:.2f} | {r['edge_copies']:.2f} | {r['read_wait_p95_s']:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
