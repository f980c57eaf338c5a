"""The download engine of one content: every decision, none of the I/O.

What a peer fetches from whom, and what it does when a source fails, chokes
or lies, lives here; the network does not.  The engine's workers are
generators that *yield* what they want done (fetch a piece, ask the edge
what to seed, ask a neighbour what it holds, wait, sleep) and are sent back
what came of it, as h11 and wsproto keep protocol state behind methods and
leave the sockets to the caller.  Two drivers run them:

* ``edgeswarm.roles.swarm`` in the peer daemon, over HTTP with asyncio;
* ``edgeswarm.sim.swarmsim`` in memory and virtual time, against simulated peers
  and edges, so a unit test runs a 200-peer swarm in a second.

So the daemon and the simulator take the same decisions: staffing (which
neighbours get a worker), edge choice, the fallback to the edge, the
picker's choices, what a choked, failing or corrupting source costs, and
when to ask the edge to seed.  Time comes from the ``clock`` the driver
passes in.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from edgeswarm.policy.picker import PiecePicker
from edgeswarm.policy.sources import PROBE_EVERY, SAY_EVERY, SourceRanking
from edgeswarm.policy.tracker import PER_ADDRESS, address_group

log = logging.getLogger("edgeswarm.roles.swarm")
MAX_PEERS = 5  # peer sources used at once
PIECE = 256 * 1024  # the piece size the next three count in (as many bytes of smaller pieces): manifest.MIN_PIECE
EDGE_WORKERS = 1  # requests in flight to edges at once: the edge is the expensive source
# ... and up to this many while peers cannot be counted on (``fallback``: none known, or none delivering), when the
# edge is the one source there is, as many as its round trip holds at its rate (``edge_depth``): one request at a time
# paid a round trip a piece, and from an edge 200 ms away a get ran at a fifth of curl's rate and a 3.2 Mbit/s stream
# stalled every 2 s (an adversarial session; the engine's simulation at 100 ms: 4 x the bound)
EDGE_PIPELINE = 8
# ... once its round trip is at least this long: nearer, one request at a time still brings 10 MB/s and more, and a
# loopback edge (a millisecond's head, hundreds of MB/s) was asked 3 at once in a viewer's first moments, before its
# tracker answer came: what peers would have sent came from the edge (a loopback test's viewer, 5 pieces for its 2)
PIPELINE_RTT = 0.02
URGENT = 4  # pieces ahead of a reader that are urgent
WINDOW = 16  # pieces ahead of a reader that are fetched at all
STARTUP_BYTES = 10 * PIECE  # a reader starting behind a neighbour well ahead takes these from the edge (picker.start_reader)
FALLBACK_AFTER = 10.0  # seconds without a peer delivering before the edge may take anything
TAIL = 4  # missing pieces at which the edge may take one whose holders all choke us
MAX_FAILURES = 3  # consecutive failures before a peer is dropped
HAVE_POLL = 1.0  # seconds between two asks of the /have of a neighbour without a HAVE stream
MAX_SUBSCRIPTIONS = 32  # neighbours' HAVE streams kept open at once; the others are polled
MAX_NEIGHBOURS = 128  # known at once per content: tracker answers and subscribers add, idle ones make room
MAX_ANSWER_PEERS = 30  # of one tracker answer, the first taken: what a tracker sends at most (tracker.max_answer)
SEED_WAIT = 2.0  # seconds after an edge's 204 ("trade with your region") before asking /seed again
# A live segment is 2 s of play and its player holds one segment ahead: a reader blocked on a piece that a peer has
# been sending for 0.75 s, or that nobody has brought after 0.5 s, goes to the edge too (the whole-file figures, 2 s
# and 1 s, let lab ``live`` stall 8.6-9.6 % of viewing time; these 5.0 %, with the edge's copies per segment unchanged)
LIVE_DEADLINE = 0.75
LIVE_SEED_PATIENCE = 0.5
SEED_SOURCE = "edge-seed"  # the picker's name for a piece the edge chose (POST /seed)
ROTATE = 2.0  # seconds between two workers leaving a slow neighbour for one nobody of ours asks
LONELY_ASK_S = 30.0  # seconds between two asks for peers of a download left with no useful neighbour (Engine.drop)
STORE_RETRY = 10.0  # seconds after our store last failed to write before pieces nobody reads are fetched again
STORE_RETRY_MAX = 300.0  # ... doubled each time that try fails again, up to this
# an edge that failed as no retry soon changes (it refuses our token, its certificate does not verify: Hopeless) is
# left alone as our full disk is: not asked again for so long, doubled each time it fails so again
HOPELESS_RETRY, HOPELESS_RETRY_MAX = STORE_RETRY, STORE_RETRY_MAX
RELIEF_POLL = 0.25  # seconds between two looks of the relief worker at whether an edge request is late (relief_worker)
# a piece no reader waits for (a whole file's) is raced on another edge once in flight at one for this many times its
# expected time there (its measured rate), and this long at least: a cold edge's answer waits for its own parent
OVERDUE_PIECES, OVERDUE_AFTER = 4, 3.0
SHORT_PAUSE = 1.0  # seconds a worker waits after our own process ran out of file descriptors
RESTART_PAUSE = 1.0  # seconds before a download's edge, seeding or scout worker that failed on a bug runs again
RESTART_MAX = 60.0  # the pause doubles with each failure up to this: a bug that recurs costs a log line a minute


@dataclass(eq=False)
class Neighbour:
    """A peer we may fetch from, known by the URL the tracker or our listener built from its address."""

    peer_id: str
    url: str
    same_region: bool
    failures: int = 0
    have_checked: float = float("-inf")
    working: bool = False  # a worker (one request at a time) is on it
    idle_since: float = float("-inf")  # when our last worker on it ended
    subscribed: bool = False  # the driver keeps (or tries to keep) its HAVE stream open
    stream: bool | None = None  # its HAVE stream: live (True), unsupported (False: polled), or not open now
    region_claim: str | None = None  # a subscriber's own word for its region, until a tracker answer names it
    delivered: bool = False  # it has delivered a piece: a stall of its is one failure, not a drop (_after)


@dataclass(frozen=True, eq=False)
class _Flight:
    """An edge worker's request in flight: of piece ``index`` to ``edge``, since ``began``."""

    edge: str
    index: int
    began: float


# -- what a worker asks its driver to do ------------------------------------------------------
@dataclass(frozen=True)
class Wait:
    """Until the engine's state changes (``Engine.changed``), or ``timeout`` seconds (None: only the change)."""

    timeout: float | None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Fetch:
    """Fetch piece ``index`` from ``url`` and store it (verified); ``data``: it came already, from /seed."""

    source: str
    url: str
    index: int
    peer: Neighbour | None = None
    urgent: bool = False
    data: object = None


@dataclass(frozen=True)
class Seed:
    """``POST /seed``: the piece ``edge`` wants us to spread, given what we claim and where we read from."""

    edge: str
    claimed: frozenset[int]
    start: int
    whole: bool = False  # a whole-file download with no reader waiting: its answer may queue behind others' (docs/protocol.md)
    unseen: frozenset[int] = frozenset()  # lacked, and held by no neighbour we know (picker.unseen)


@dataclass(frozen=True)
class AskHave:
    """Ask these neighbours (plain ``/have``) what they hold; answered with one set or None each."""

    neighbours: tuple[Neighbour, ...]


Command = Wait | Sleep | Fetch | Seed | AskHave


@dataclass(frozen=True)
class Result:
    """What came of a Fetch or a Seed.

    ``kind``: "ok" (stored; for a Seed, ``index`` and ``data`` are the piece),
    "none" (a Seed answered 204), "unsupported" (a Seed answered 404),
    "corrupt", "choked" (``seconds``: retry after), "not_held", "failed", "hopeless" (failed as no retry soon changes:
    an edge refusing our token), "short" (our own process is out of file descriptors: nobody's fault, tried again a
    second later) (``message``), "stalled" (no answer within the timeout, ``message``), "not_stored" (our disk; ``nbytes``: handed to a waiting reader all the same), "gone" (the content left the store),
    "abandoned" (stopped by ``Host.abandon``: another source's copy was stored first).
    ``seconds`` of an "ok" is how long the transfer took.
    """

    kind: str
    seconds: float = 0.0
    nbytes: int = 0
    index: int = -1
    data: object = None
    message: str = ""


Worker = Generator[Command, object, None]
Step = Generator[Command, object, str]  # a worker's step, returning how it went


class Host(Protocol):
    """What the engine needs from its driver."""

    def spawn(self, worker: Worker) -> None:
        """Run a worker until it returns, or the engine closes."""

    def changed(self) -> None:
        """Wake every worker waiting on Wait."""

    def delivered(self, index: int, url: str, peer: Neighbour | None, nbytes: int) -> None:
        """A piece was stored: count it, announce it to our subscribers, wake readers."""

    def crossed(self, url: str, nbytes: int) -> None:
        """The edge's /seed answer brought a piece a peer's copy had brought first: count what came, store nothing."""

    def abandon(self, index: int) -> None:
        """Piece ``index`` is stored: stop the transfers of it still in flight (a Fetch, or a Seed whose answer's head
        named it); each one's worker is answered ``abandoned``."""

    def dropped(self, neighbour: Neighbour) -> None:
        """A neighbour is forgotten: close its HAVE stream."""

    def lonely(self) -> None:
        """A download has no neighbour left holding a piece it lacks: ask the tracker for peers soon, not at the next
        interval (at most once every ``LONELY_ASK_S``)."""

    def gone(self) -> bool:
        """The content left the store (evicted or dropped): nobody needs asking what they hold of it."""


class Engine:
    def __init__(
        self,
        host: Host,
        piece_count: int,
        have: Iterable[int],
        *,
        seed: str,
        deadline: float,
        edges: list[str],
        ranking: SourceRanking,
        clock: Callable[[], float],
        piece_size: int = PIECE,
        startup_bytes: int = STARTUP_BYTES,
        banned: set[str] | None = None,
        room: int | None = None,
    ):
        """``startup_bytes``: the edge's share of a late viewer's start (``_start_reader``; the peer's --startup-window);
        ``banned``: the addresses an earlier engine of this content banned (``ban``), which this one goes on refusing;
        ``room``: the pieces our cache can keep at most (--max-cache), None for no limit: a reader's window is at most
        half of it, or the pieces fetched ahead were evicted before the reader came to them and fetched again (an
        adversarial session: a 40 MB read through a 2 MB cache took 53-82 MB)."""
        self.host = host
        self.picker = PiecePicker(piece_count, have, seed=seed, deadline=deadline)
        # a reader's windows and the bytes in flight to edges stay the same whatever the piece size: a live segment's
        # 64 KiB pieces counted as 256 KiB ones left most of the segment a joiner waits for outside its urgent window,
        # and a joiner with no neighbours yet took its 13 pieces from the edge one round trip at a time
        scale = max(1, PIECE // piece_size)  # a manifest's pieces are 64 KiB at least
        self.urgent, self.window, self.edge_workers = URGENT * scale, WINDOW * scale, EDGE_WORKERS * scale
        if room is not None:
            self.window = max(1, min(self.window, room // 2))
            self.urgent = min(self.urgent, self.window)
        self.edge_pipeline = EDGE_PIPELINE * scale
        self.piece_size = piece_size
        self._edge_flights: list[_Flight] = []  # edge workers' requests in flight now
        self._relief = False  # the relief worker runs (relief_worker)
        self._pipelining: set[int] = set()  # slots of the edge workers beyond edge_workers running now (edge_depth)
        self.self_id = seed
        self.edges = edges  # the peer's list: edges it learns later are used too
        self.ranking = ranking
        self.hopeless = SourceRanking(HOPELESS_RETRY, HOPELESS_RETRY_MAX)  # edges left alone after a hopeless failure
        self.clock = clock
        self.neighbours: dict[str, Neighbour] = {}
        self.banned: set[str] = set() if banned is None else banned
        self.last_peer_delivery = clock()
        self._unstored_at = -math.inf  # when our store last failed to write a piece (_store_failing)
        self._store_retry = STORE_RETRY  # how long after it everything may be fetched again (_not_stored)
        self.closed = False
        self.live = False  # a live segment fetched ahead of its player (want_live)
        self._readers: Counter[int] = Counter()  # piece -> readers waiting for it
        # in pieces, rounded up, at most the read-ahead window; 0: every startup from peers
        self.startup_window = min(-(-startup_bytes // piece_size), self.window)
        self._no_seed: set[str] = set()  # edges that answered 404 to /seed: not seeders (not p2p, or older)
        self._edge_workers_started = False
        self._seed_coming: int | None = None  # the piece the edge's current /seed answer is sending
        self._rotated = float("-inf")  # when a worker last left a slow neighbour for an unworked one

    # -- what the user wants -------------------------------------------------------------
    def want_whole(self) -> None:
        self.picker.whole()
        self.staff()
        self.host.changed()

    def want_live(self) -> None:
        """A live segment, fetched ahead of its player: the region's peers and the edge's ``/seed`` carry it.

        Every viewer of a region wants each new segment within a second or
        two of each other, and a segment is a few pieces: the tail rule would
        let the edge send all of them to everyone, and so would the fallback
        while the tracker's first answer is on its way.  Both are off; the
        edge still takes a piece a reader has waited ``seed_patience`` for,
        and anything once known peers stop delivering (FALLBACK_AFTER).  A
        player waits on a live segment with one segment of buffer, so the edge
        steps in sooner than for a file (LIVE_DEADLINE, LIVE_SEED_PATIENCE).
        """
        self.live = True
        self.picker.deadline, self.picker.seed_patience = LIVE_DEADLINE, LIVE_SEED_PATIENCE
        self.want_whole()

    def reading(self, index: int, stop: int | None = None) -> None:
        """A reader waits for piece ``index``: it and the next ones become urgent, the window moves.  ``stop``: the
        piece the read ends before, when it is bounded (a Range with an end), else the file's end."""
        self._start_reader(index, self.picker.count if stop is None else min(stop, self.picker.count))
        self._readers[index] += 1
        self.picker.wait_for(index, self.clock())
        self.picker.readers_at(self._readers, self.urgent, self.window)
        self.staff()
        self.host.changed()

    def reads_waiting(self, n: int) -> None:
        """``n`` of the gateway's reads of this file wait for pieces now: several are a download (picker.py)."""
        if self.picker.reads_waiting(n):
            self.host.changed()  # the workers waiting on the startup look again now

    def _start_reader(self, index: int, stop: int) -> None:
        """A reader that starts where nothing is read or held before it (a player's first request, a seek) may take
        its first pieces from the edge (picker.start_reader says when), none past its read's end ``stop``: a bounded
        probe of 64 KiB took 10 pieces from the edge, 2.5 MiB, where a complete neighbour held them all.  Not for
        live segments, fetched ahead of their players, nor for a whole-file download."""
        picker = self.picker
        if not self.startup_window or self.live or picker.whole_file or picker.downloading or index in picker.have:
            return
        if self._readers[index] or index - 1 in self._readers:
            return
        if index > 0 and index - 1 in picker.have:
            return  # a reader going on where another one, or a download, left off
        edge = self.choose_edge(0)
        if edge is None:
            return  # every edge set aside (down, failing): waiting for one cost each seek the whole deadline, 2 s
        if self._edge_slower(edge):
            return  # a congested edge held each seek for the deadline where a neighbour served it in 0.4 s
        # one startup at a time, the newest read's: a seek, or a player's second connection, waited behind the pieces
        # of a request its client had left (or no longer waits on first), lowest first, with peers barred from its own
        picker.drop_startup()
        picker.start_reader(range(index, min(stop, index + self.startup_window)), self.clock(), self.startup_window)

    def _edge_slower(self, edge: str) -> bool:
        """The edge has delivered to us at under half the rate of our fastest measured neighbour: a startup from it
        would be slower than the neighbours, not faster.  Unmeasured (a viewer's first read), it is not."""
        edge_rate = self.ranking.rate(edge)
        rates = [r for n in self.neighbours.values() if (r := self.ranking.rate(n.url)) is not None]
        return edge_rate is not None and bool(rates) and 2 * edge_rate < max(rates)

    def read_done(self, index: int) -> None:
        """A reader stopped waiting for ``index`` (it came, or the reader gave up).  With no reader left, a startup
        is nobody's: a player's probe dropped after 64 KiB still made the edge send the whole 2.5 MiB window."""
        self._readers[index] -= 1
        if self._readers[index] <= 0:
            del self._readers[index]
            self.picker.stop_waiting(index)
        if not self._readers and self.picker.drop_startup():
            self.host.changed()  # the workers waiting on the startup look again now, not after their timeout

    def forget_piece(self, index: int) -> None:
        """A piece we counted as held is not in the store (evicted, or bad on disk): fetch it again."""
        self.picker.lost(index)
        self.host.changed()  # workers of a complete download wait for nothing but this

    # -- who else has it -------------------------------------------------------------------
    def tracker_answer(self, answer: list[dict[str, Any]], from_edge: bool = True) -> None:
        """Peers from a tracker answer: ``{"peer_id", "url", "have": set[int], "same_region"}``, and ``"placed"``: a seed
        the operator placed (preheat), which a starting reader does not count (picker.py, "Startup").

        Taken within the bounds an honest tracker keeps (MAX_ANSWER_PEERS, PER_ADDRESS), whoever sent it: a lying
        promoted peer's sub-tracker answers of 200 dead ports at its own address filled the table every round,
        pushing out the real seeds, and a viewer took everything from the edge (an adversarial session).  Only an
        edge (``from_edge``), which checks addresses, moves a known id to another URL (``add_neighbour``)."""
        for p in answer[:MAX_ANSWER_PEERS]:
            n = self.add_neighbour(p["peer_id"], p["url"], p["same_region"], moves=from_edge)
            if n is not None:
                n.same_region = p["same_region"]  # the tracker knows regions; a subscriber only claims one
                n.region_claim = None
                if not n.stream:  # a live stream is newer than the tracker's view
                    self.picker.peer_has(n.peer_id, p["have"])
                self.picker.placed(n.peer_id, bool(p.get("placed")))
        self.staff()
        self.host.changed()

    def add_neighbour(
        self, peer_id: str, url: str, same_region: bool, subscriber: bool = False, claim: str | None = None, moves: bool = False
    ) -> Neighbour | None:
        """A neighbour from a tracker, or one that subscribed to us (``claim``: the region it says); None if it may not be one.

        Neighbours are known by URL, which the tracker and our own listener
        build from the address a connection came from; the id is only what a
        peer states.  So an id known at another URL moves there only when an
        edge's answer says so (``moves``: the edge checks addresses; a peer
        restarted on a new port is moved by the edge's next answer); not on a
        sub-tracker's word, even within one address (a liar listing each seed's
        id at a dead port of the seed's own address dropped every live seed,
        each round: a review), nor on a subscriber's.  No address gets more
        than ``PER_ADDRESS`` neighbours, as no address gets more of a tracker
        answer.
        """
        if peer_id == self.self_id or ban_key(url) in self.banned:
            return None
        n = self.neighbours.get(url)
        if n is not None:
            return n
        known = next((m for m in self.neighbours.values() if m.peer_id == peer_id), None)
        if known is not None and moves:
            self.drop(known)
        if why := refuse_neighbour(self.neighbours.values(), peer_id, url):
            if subscriber:
                log.info("subscriber %s at %s is not taken as a neighbour: %s", peer_id[:64], url, why)
            return None
        if len(self.neighbours) >= MAX_NEIGHBOURS and not self._forget_one():
            return None
        n = self.neighbours[url] = Neighbour(peer_id, url, same_region, region_claim=claim if subscriber else None)
        return n

    def may_subscribe(self, n: Neighbour) -> bool:
        """Open ``n``'s HAVE stream? Only while we download, and up to MAX_SUBSCRIPTIONS at once."""
        return (
            not n.subscribed
            and not self.closed
            and not self.picker.complete()
            and sum(m.subscribed for m in self.neighbours.values()) < MAX_SUBSCRIPTIONS
        )

    def _forget_one(self) -> bool:
        """Make room for a neighbour: forget one with neither a worker nor a live stream (gone, most likely)."""
        idle = [m for m in self.neighbours.values() if not m.stream and not m.working]
        if not idle:
            return False
        self.drop(min(idle, key=lambda m: m.have_checked))
        return True

    def heard(self, n: Neighbour, kind: str, pieces: Iterable[int]) -> None:
        """A line of ``n``'s HAVE stream ("snapshot" or "have"): availability for the picker, a worker if useful now."""
        if self.neighbours.get(n.url) is not n:
            return
        n.stream = True  # any line, a heartbeat too, says the stream is live
        if kind not in ("snapshot", "have"):
            return
        pieces = list(pieces)
        if kind == "snapshot":
            self.picker.peer_has(n.peer_id, pieces)
        else:
            for i in pieces:
                self.picker.peer_got(n.peer_id, i)
        if not n.working and any(self.picker.wants(i) for i in pieces):
            self.staff()
        self.host.changed()

    def stream_lost(self, n: Neighbour) -> None:
        """``n``'s live stream ended: what it held is forgotten (it may have left) until it is heard again."""
        if n.stream:
            self.picker.peer_has(n.peer_id, ())
        n.stream = None

    def unreachable(self, n: Neighbour, failures: int) -> bool:
        """``n``'s stream failed ``failures`` times in a row; True if it is taken for gone (and dropped)."""
        if failures >= MAX_FAILURES and not n.working:
            self.drop(n)
            return True
        return False

    def held_by(self, n: Neighbour) -> set[int]:
        return self.picker.held(n.peer_id)

    def useful(self, n: Neighbour) -> int:
        """How many pieces we lack that ``n`` holds."""
        return self.picker.useful(n.peer_id)

    # -- staffing ----------------------------------------------------------------------------
    def staff(self) -> None:
        """Keep workers on MAX_PEERS useful neighbours (in ``_rank``'s order); one edge worker
        for urgent needs and fallbacks, one asking the edge what to seed, and the scout (from the first want on)."""
        if self.closed:
            return
        if not self._edge_workers_started:
            self._edge_workers_started = True
            for slot in range(self.edge_workers):
                self.host.spawn(self._kept(f"edge worker {slot}", functools.partial(self.edge_worker, slot)))
            self.host.spawn(self._kept("seeding worker", self.seed_worker))
            self.host.spawn(self._kept("scout", self.scout))
        active = self._busy()
        if active >= MAX_PEERS:
            return
        scored = [(self.useful(n), n) for n in self.neighbours.values() if not n.working]
        ranked = sorted(((u, n) for u, n in scored if u), key=self._rank)
        for _, n in ranked[: max(0, MAX_PEERS - active)]:
            n.working = True
            self.host.spawn(self.peer_worker(n))

    def _rank(self, scored: tuple[int, Neighbour]) -> tuple[object, ...]:
        """Staffing order (lowest first): same region first; then, for a stream, the most useful and fastest (the
        reader's window is short); for a whole file, the one our workers left longest ago (never asked: first),
        then in an order of our own (a hash), so a crowd's downloaders, who learn their neighbours in the same
        order and find them about as useful, spread over every uplink."""
        useful, n = scored
        if not self.picker.whole_file:
            return (not n.same_region, -useful, -(self.ranking.rate(n.url) or 0))
        return (not n.same_region, n.idle_since, self._order(n))

    def _order(self, n: Neighbour) -> bytes:
        """This downloader's own arbitrary rank of a neighbour, stable for the download."""
        return hashlib.blake2b(f"{self.self_id}/{n.peer_id}".encode(), digest_size=4).digest()

    def _rotate(self, n: Neighbour) -> bool:
        """Should the worker on ``n`` leave it, for the useful neighbour none of our workers has asked for longest?

        For a whole file, yes, at most once every ROTATE seconds, when ``n`` is
        the slowest of our workers' neighbours and another useful one (as near)
        has no worker.  A worker otherwise stays on its neighbour for as long
        as that neighbour has pieces for us: for a whole file, the whole
        download.  So whichever uploaders the crowd's workers first landed on
        kept serving five or six each while others, holding what everyone
        lacked, sent nothing: two of the 20 uplinks of `bench swarm --mode get`
        idle for 10 s in the simulator.  Rotating the slowest, as BitTorrent's
        optimistic unchoke rotates on the uploader's side, spreads the requests
        over every uplink within a few seconds.  Streams do not rotate: a
        reader's window is short, and its most useful neighbour holds most of it.
        """
        now = self.clock()
        if now - self._rotated < ROTATE or not self.picker.whole_file:
            return False
        working = [m for m in self.neighbours.values() if m.working]
        if n not in working:  # dropped or replaced while its request ran (the simulator's 48-peer crowd behind a seed)
            return False
        slowest = min(working, key=lambda m: self.ranking.rate(m.url) or 0.0)
        waiting = any(
            not m.working and m.same_region >= n.same_region and self.useful(m) and not self.picker.is_paused(m.peer_id)
            for m in self.neighbours.values()
        )
        if slowest is not n or not waiting:
            return False
        self._rotated = now
        return True

    def _busy(self, but: Neighbour | None = None) -> int:
        """Neighbours with a worker that is not paused (choked or backing off): the requests we may have in flight."""
        return sum(n.working and n is not but and not self.picker.is_paused(n.peer_id) for n in self.neighbours.values())

    # -- workers -----------------------------------------------------------------------------
    def _kept(self, name: str, make: Callable[[], Worker]) -> Worker:
        """``make()``'s worker, run again after a pause whenever it fails on a bug (an exception of ours).

        A peer worker that fails frees its neighbour and is staffed anew; the
        edge, seeding and scout workers are one each, and a download that lost
        one for good waited forever for the pieces only the edge would send.
        The pause doubles with each failure (RESTART_PAUSE up to RESTART_MAX).
        """
        pause = RESTART_PAUSE
        while not self.closed:
            try:
                yield from make()
                return
            except Exception:
                log.exception("the %s of a download failed; it runs again in %.0f s", name, pause)
            yield Sleep(pause)
            pause = min(RESTART_MAX, 2 * pause)

    def _idle(self, poll: float) -> float | None:
        """How long a worker with nothing to do waits before looking again: ``poll``, or, once every piece is held,
        until something changes (``forget_piece``).  A live peer keeps a few dozen complete swarms (a stream's
        window of parts), and their edge and seeding workers woke five times a second each, for nothing.  A
        startup's end by the clock wakes them too: a seek behind a slow edge waited a second more after its
        startup's deadline before the neighbours were asked."""
        if self.picker.complete():
            return None
        ends = self.picker.startup_changes_in(self.clock())
        return poll if ends is None else min(poll, ends + 0.001)

    def _store_failing(self) -> bool:
        """Whether our store could not write a piece lately (``picker.only_awaited``); after STORE_RETRY seconds
        everything may be fetched again, so a download resumes once there is room (the next failure says otherwise)."""
        if self.picker.only_awaited and self.clock() - self._unstored_at > self._store_retry:
            self.picker.only_awaited = False
        return self.picker.only_awaited

    def peer_worker(self, n: Neighbour) -> Worker:
        """One request at a time to ``n`` while it has something for us; ends (freeing the slot) when it has not."""
        try:
            while not self.closed and ban_key(n.url) not in self.banned and self.neighbours.get(n.url) is n:
                if self._busy(but=n) >= MAX_PEERS:
                    return  # back from a pause, and others took its place meanwhile: at most MAX_PEERS requests at once
                self._store_failing()
                index = self.picker.pick(n.peer_id, self.clock())
                if index is None:
                    if self.picker.done():
                        return
                    yield Wait(self._idle(1.0))
                    if not n.stream:
                        yield from self.ask_have((n,))
                    if not self.useful(n):
                        return  # nothing for us: free the slot; the scout keeps asking this peer
                    continue
                if (yield from self.transfer(n.peer_id, n.url, index, peer=n)) == "gone":
                    return
                if self._rotate(n):
                    n.working, n.idle_since = False, self.clock()
                    self.staff()  # the neighbour none of our workers has asked for longest takes the slot
                    return
        finally:
            if n.working:
                n.working, n.idle_since = False, self.clock()

    def edge_worker(self, slot: int) -> Worker:
        """Urgent pieces (a reader's deadline window) from the edge; everything else too when peers cannot be
        counted on or no edge seeds."""
        picks, source = 0, f"edge#{slot}"
        while not self.closed and not self.host.gone():
            now = self.clock()
            # while our store cannot write, the seeding worker waits: a piece no peer holds is not on its way from
            # /seed, and a reader waiting for it waited seed_patience (a second a piece) for this worker
            seeding = not self._store_failing() and self.seeder() is not None
            fallback, tail = self.fallback(now), self.tail()
            if slot >= self.edge_workers and not (fallback and slot < self.edge_depth(picks)):
                self._pipelining.discard(slot)
                return
            if slot == 0 and fallback:
                self._pipeline(picks)
            if fallback or tail or not seeding:
                index = self.picker.pick(source, now, edge=True, fallback=fallback, tail=tail, seeding=seeding)
            else:  # the seeding worker asks the edge for the rest
                index = self.picker.pick_urgent(source, now, edge=True, seeding=True)
            if index is None:
                yield Wait(self._idle(0.25))
                continue
            urgent = self.picker.is_urgent(index)
            edge = self.choose_edge(picks, urgent=urgent) or self.ranking.probe(self._askable(), now)  # all set aside: one a second
            picks += 1
            if edge is None:
                yield Wait(1.0)
                continue
            self._start_relief()
            if (yield from self._edge_transfer(source, edge, index, urgent)) == "gone":
                yield Sleep(1.0)  # the content left the store: do not spin

    def _edge_transfer(self, source: str, edge: str, index: int, urgent: bool) -> Step:
        """An edge worker's request, counted in flight (``edge_depth``'s measure, ``_late``) while it runs."""
        flight = _Flight(edge, index, self.clock())
        self._edge_flights.append(flight)
        try:
            return (yield from self.transfer(source, edge, index, urgent=urgent))
        finally:
            self._edge_flights.remove(flight)

    def _start_relief(self) -> None:
        """The relief worker, once this download has a second edge to ask."""
        if not self._relief and len(self._askable()) > 1:
            self._relief = True
            self.host.spawn(self._kept("relief worker", self.relief_worker))

    def relief_worker(self) -> Worker:
        """A reader's pieces from another edge while an edge request is late by the deadline: an edge that takes
        connections and never answers (a wedged process) held the one edge worker, and every reader, for its whole
        timeout (12 s) while a second edge sat idle (an adversarial session).  A piece nobody waits for (a whole file's)
        is raced too once it is ``_overdue`` at its edge: `edgeswarm get` waited out that timeout, twice in the
        simulator (24 s for 32 MiB).  The late request goes on: a cold edge's answer waits for its own fetch upstream,
        and whichever copy comes first is kept (``Host.abandon``).  An edge that lost such a race is set aside as if it
        had failed (``_outraced``), its back-off doubling while it keeps losing, so it is asked again with what nobody
        waits for (``choose_edge``)."""
        source = "edge-relief"
        while not self.closed and not self.host.gone():
            race = self._race(source, self.clock())
            if race is None:
                yield Wait(self._idle(RELIEF_POLL))
                continue
            edge, index, late, bound = race
            if (yield from self._edge_transfer(source, edge, index, urgent=self.picker.is_urgent(index))) == "ok":
                self._outraced({f.edge for f in late}, bound, edge)

    def _race(self, source: str, now: float) -> tuple[str, int, list[_Flight], Callable[[_Flight], float]] | None:
        """(another edge, a piece to race there, the late requests it relieves, the bound they are late by), or None:
        a reader's piece while an edge is late by the deadline, else a piece in flight at an edge ``_overdue`` with it."""
        late = self._late(self._by_deadline, now)
        edge = self._reliever(late)
        if edge:
            seeding = not self._store_failing() and self.seeder() is not None  # what the edge worker would take
            if (index := self.picker.pick_urgent(source, now, True, self.fallback(now), seeding, race=True)) is not None:
                return edge, index, late, self._by_deadline
        overdue = self._late(self._overdue, now)
        edge = self._reliever(overdue)
        if edge and (index := self.picker.pick_race(source, [f.index for f in overdue])) is not None:
            return edge, index, overdue, self._overdue
        return None

    def _late(self, bound: Callable[[_Flight], float], now: float) -> list[_Flight]:
        """The edge requests in flight for longer than ``bound`` says, the oldest first."""
        return sorted((f for f in self._edge_flights if f.began <= now - bound(f)), key=lambda f: f.began)

    def _reliever(self, late: list[_Flight]) -> str | None:
        """The edge to race these late requests on: the fastest of the others (none while none is late)."""
        return self.choose_edge(0, exclude={f.edge for f in late}, urgent=True) if late else None

    def _by_deadline(self, flight: _Flight) -> float:
        """How long any request may be in flight at an edge before a reader's pieces go to another one."""
        return self.picker.deadline

    def _overdue(self, flight: _Flight) -> float:
        """How long a request may be in flight at its edge before its piece is raced on another: ``OVERDUE_PIECES``
        times a piece's time there at the edge's measured rate (each request's, so a deep pipeline's share of the edge
        counts), ``OVERDUE_AFTER`` at least, and unmeasured, that; never less than the deadline."""
        rate = self.ranking.rate(flight.edge)
        expected = OVERDUE_PIECES * self.piece_size / rate if rate else 0.0
        return max(OVERDUE_AFTER, self.picker.deadline, expected)

    def _outraced(self, relieved: set[str], bound: Callable[[_Flight], float], winner: str) -> None:
        """``winner`` delivered while the ``relieved`` edges' requests were late by ``bound``: those still late are set
        aside, since their oldest late request was sent (one of theirs sent before this failure that fails later is the
        same episode: ``SourceRanking.failure``)."""
        now = self.clock()
        since: dict[str, float] = {}
        for f in self._late(bound, now):
            if f.edge in relieved:
                since.setdefault(f.edge, f.began)
        self.ranking.outraced(since.items(), winner, now)

    def _pipeline(self, picks: int) -> None:
        """Edge workers for the slots below ``edge_depth`` that have none: they leave when it falls, or peers deliver."""
        for slot in range(self.edge_workers, self.edge_depth(picks)):
            if slot not in self._pipelining:
                self._pipelining.add(slot)
                self.host.spawn(self._kept(f"edge worker {slot}", functools.partial(self.edge_worker, slot)))

    def edge_depth(self, picks: int) -> int:
        """Requests to keep in flight to the edge while it is the one source: one, and as many more as its round trip
        holds at the rate its bodies come (the bandwidth-delay product, in pieces), at most ``edge_pipeline``; one
        until both are measured.  (The rate of whole requests, round trip included, stopped the depth at 2 at 100 ms.)
        """
        edge = self.choose_edge(picks)
        rtt = self.ranking.round_trip(edge) if edge else None
        link = self.ranking.link(edge) if edge else None
        if rtt is None or link is None or rtt < PIPELINE_RTT:
            return self.edge_workers
        pieces = round(rtt * link / self.piece_size)
        return max(self.edge_workers, min(self.edge_pipeline, self.edge_workers + pieces))

    def seed_worker(self) -> Worker:
        """Non-urgent pieces as the edge chooses them (``POST /seed``): each goes to the region about once, and the
        region trades it.

        After a 204 ("your region has every piece you lack") it asks again only
        after SEED_WAIT; meanwhile urgent needs and fallbacks are the edge
        worker's.  Ends when no edge seeds (they answered 404): the edge worker
        then takes what no peer holds, as before.
        """
        asks = 0
        while not self.closed:
            edge = self.seeder(asks)
            if edge is None:
                if not self._no_seed:  # every edge set aside for now
                    yield Wait(1.0)
                    continue
                self.host.changed()  # the edge worker takes over the non-urgent pieces
                return
            if self.picker.done() or self.fallback(self.clock()) or self._store_failing() or self.picker.starting(self.clock()):
                yield Wait(self._idle(1.0))
                continue
            self._seed_coming, asks = None, asks + 1
            whole = self.picker.whole_file and not self.picker.urgent
            start, began = self.picker.seed_from(), self.clock()
            got = yield Seed(edge, frozenset(self.picker.claimed()), start, whole, frozenset(self.picker.unseen(start)))
            assert isinstance(got, Result)
            if self._seed_coming is not None and (got.kind != "ok" or got.index != self._seed_coming or got.index in self.picker.have):
                self.picker.finish(SEED_SOURCE, self._seed_coming, False)  # announced, then not delivered (or not needed)
            self._seed_coming = None
            if got.kind == "unsupported":
                log.info("%s does not seed (404 to /seed): its pieces are fetched as before", edge)
                self._no_seed.add(edge)
            elif got.kind == "short":
                yield Sleep(SHORT_PAUSE)
            elif got.kind == "hopeless":
                self._hopeless(edge, got.message, began)
            elif got.kind == "failed":
                backoff = self.ranking.failure(edge, self.clock(), began)
                log.warning("edge %s failed on /seed (%s); set aside for %.0f s", edge, got.message, backoff)
                self._no_edge_for_startup()
            elif got.kind == "gone":
                return
            elif got.kind == "abandoned":  # a peer's copy of the seeded piece was stored first: ask again
                continue
            elif got.kind == "none":
                until = self.clock() + SEED_WAIT
                while not self.picker.whole_file and self.clock() < until and not self.closed and (yield from self.spread()):
                    pass  # a whole file's picker takes the rarest pieces anyway
                if self.clock() < until:
                    yield Sleep(until - self.clock())
            elif got.index in self.picker.have:
                self.host.crossed(edge, got.nbytes)  # it crossed a peer's copy: nothing to store, but it came
            elif (yield from self.transfer(SEED_SOURCE, edge, got.index, data=got.data)) == "ok":
                self.ranking.success(edge, got.nbytes, got.seconds)

    def spread(self) -> Generator[Command, object, bool]:
        """The region holds every piece the edge would seed us: take one from a neighbour instead, as the edge would have
        chosen it (nobody reads it yet; the rarest, in our own order), so readers in step hold different pieces to trade.

        Without it, a crowd reading one file in step behind complete peers (preheated ones) asked those peers for the
        same next piece at the same moment and had nothing to trade: in the simulator, 6 readers a region behind one
        seed took 8 x the bound, each getting every byte from the seed.
        """
        holders = sorted(
            (n for n in self.neighbours.values() if ban_key(n.url) not in self.banned and not self.picker.is_paused(n.peer_id)),
            key=lambda n: (not n.same_region, n.working, -(self.ranking.rate(n.url) or 0)),
        )
        for n in holders:
            index = self.picker.pick_spread(n.peer_id)
            if index is not None:
                yield from self.transfer(n.peer_id, n.url, index, peer=n)
                return True
        return False

    def seed_coming(self, index: int) -> None:
        """The edge's answer to our /seed names piece ``index`` (its head came; the body follows): it is in flight
        from the edge from now on, so no worker asks anyone for it meanwhile, and the edge is not asked twice."""
        self._seed_coming = index
        self.picker.start(SEED_SOURCE, index, self.clock(), edge=True)

    def scout(self) -> Worker:
        """Ask the neighbours with neither a worker nor a live HAVE stream what they hold: a few each second.

        Tracker answers are an interval apart, tell what a neighbour held at
        its last announce, and stop while the tracker is down.  A neighbour
        whose stream cannot be opened (an older peer, one at its subscriber
        cap) would never be used; asking it directly keeps peers that know
        each other trading whatever the tracker does.
        """
        while not self.closed and not self.host.gone() and not self.picker.complete():
            idle = [n for n in self.neighbours.values() if not n.working and not n.stream]
            if idle and self.picker.missing():
                idle.sort(key=lambda n: n.have_checked)
                yield from self.ask_have(tuple(idle[:MAX_PEERS]))
                self.staff()
            yield Sleep(HAVE_POLL)

    def ask_have(self, ns: tuple[Neighbour, ...]) -> Worker:
        """Ask neighbours what they hold now, each at most once a HAVE_POLL; one that does not answer is set aside."""
        now = self.clock()
        due = tuple(n for n in ns if now - n.have_checked >= HAVE_POLL and self.ranking.available(n.url, now))
        if not due:
            return
        for n in due:
            n.have_checked = now
        answers = yield AskHave(due)
        assert isinstance(answers, list)
        for n, held in zip(due, answers, strict=True):
            if held is None and not self.host.gone():  # with the content gone, no answer could be read: not their fault
                self.ranking.failure(n.url, self.clock(), now)
            elif held is not None and self.neighbours.get(n.url) is n:
                self.picker.peer_has(n.peer_id, held)

    # -- the rules ---------------------------------------------------------------------------
    def fallback(self, now: float) -> bool:
        """Peers cannot be counted on: the edge may take anything, as before it seeded.

        That is when we know none, or none has delivered for FALLBACK_AFTER.
        (Leaving the pieces to /seed until the first tracker answer came was
        tried: the seeding and the edge worker's requests, in flight together,
        halved each one's share of the edge, and the 8-gateway crowd fell from
        65 % to 48 % P2P.)
        """
        if self.live:  # a new segment: no neighbour yet is the normal start, and /seed hands it out (want_live)
            return bool(self.neighbours) and now - self.last_peer_delivery > FALLBACK_AFTER
        return not self.neighbours or now - self.last_peer_delivery > FALLBACK_AFTER

    def tail(self) -> bool:
        """The file's last TAIL pieces (not the stream window's): the edge may take one no reachable peer holds."""
        return not self.live and self.picker.count - len(self.picker.have) <= TAIL

    def seeder(self, picks: int = 0) -> str | None:
        """The edge to ask /seed: chosen as any edge request is, among the live ones that have not refused it."""
        return self.choose_edge(picks, exclude=self._no_seed)

    def choose_edge(self, picks: int, exclude: Collection[str] = frozenset(), urgent: bool = False) -> str | None:
        """The fastest live edge; unmeasured ones are tried first and the others re-measured now and then, with a
        piece no reader waits for (``urgent``: one does): a wedged edge re-measured with a player's piece held it
        for the edge's whole timeout (an adversarial session)."""
        live = [e for e in self.ranking.ranked(self._askable(), self.clock()) if e not in exclude]
        if not live:
            return None
        unmeasured = [e for e in live if self.ranking.rate(e) is None]
        if unmeasured:
            return unmeasured[0]  # measure every edge once
        if len(live) > 1 and picks % 8 == 7 and not urgent:
            return live[1 + picks // 8 % (len(live) - 1)]  # re-measure the others now and then: they may have recovered
        return live[0]

    def _askable(self) -> list[str]:
        """The edges that may be asked: not left alone after a failure no retry soon changes (``_hopeless``)."""
        now = self.clock()
        return [e for e in self.edges if self.hopeless.available(e, now)]

    def transfer(self, source: str, url: str, index: int, peer: Neighbour | None = None, urgent: bool = False, data: object = None) -> Step:
        """One piece from ``source``, and what its outcome costs; returns "ok", "retry" or "gone" (stop using this peer)."""
        began = self.clock()
        self.picker.start(source, index, began, edge=peer is None)
        try:
            result = yield Fetch(source, url, index, peer, urgent, data)
        except BaseException:
            self.picker.finish(source, index, False)
            raise
        assert isinstance(result, Result)
        ok = result.kind == "ok"
        self.picker.finish(source, index, ok)  # before delivered(): completion is judged from the picker
        if ok:  # our store writes again
            self.picker.only_awaited, self._unstored_at, self._store_retry = False, -math.inf, STORE_RETRY
            if data is None:  # else /seed's answer, timed by the seeding worker
                self.ranking.success(url, result.nbytes, result.seconds, len(self._edge_flights) if peer is None else 1)
            if peer is None:
                self.hopeless.revive(url, began)
            if peer is not None:
                peer.failures, peer.delivered = 0, True
                self.last_peer_delivery = self.clock()
            self.host.delivered(index, url, peer, result.nbytes)
            self.host.abandon(index)  # the edge raced a late peer, or a peer the edge: the loser's bytes are nobody's
        self.host.changed()
        return (yield from self._after(result, url, index, peer, began))

    def _after(self, result: Result, url: str, index: int, peer: Neighbour | None, began: float) -> Step:
        """What a failed transfer (sent at ``began``) costs its source; "ok" passes through."""
        kind = result.kind
        if kind in ("ok", "gone"):
            return kind
        if kind == "abandoned":  # another source was faster: no fault of this one
            return "retry"
        if kind == "hopeless" and peer is None:
            self._hopeless(url, result.message, began)
            return "retry"
        if kind == "short":  # our own descriptors ran out: blaming the source set an edge aside for up to 32 s
            yield Sleep(SHORT_PAUSE)
            return "retry"
        if kind == "corrupt":
            if peer is not None:
                self.ban(peer, f"sent a corrupt piece {index}")
                return "gone"
            self.ranking.failure(url, self.clock(), began)
            self._no_edge_for_startup()
        elif kind == "choked" and peer is not None:
            yield from self._pause(peer, result.seconds)
        elif kind == "not_held" and peer is not None:
            self.picker.peer_has(peer.peer_id, self.held_by(peer) - {index})
        elif kind in ("failed", "stalled", "hopeless"):  # a peer's hopeless failure (one of another IP family) as any
            backoff = self.ranking.failure(url, self.clock(), began)
            if peer is None:
                if self.ranking.news(url, self.clock()):
                    log.warning("edge %s failed (%s); set aside for %.0f s%s", url, result.message, backoff, self._probing())
                self._no_edge_for_startup()
                return "retry"
            # a peer that held a request for the whole timeout is dropped at once: three such (a peer that announces
            # everything and never answers) held a download's last pieces 30 s each, and the edge does not race them.
            # One that has delivered counts it once: on a lossy long path (10 % loss, 300 ms) TCP's retries took a
            # good neighbour's 5 s head timeout, and it was gone until the next tracker answer (an adversarial session)
            if self.neighbours.get(peer.url) is not peer:  # dropped meanwhile, on another of its requests: said once
                return "gone"
            peer.failures += MAX_FAILURES if kind == "stalled" and not peer.delivered else 1
            if peer.failures >= MAX_FAILURES:
                why = "a request it held past the timeout" if kind == "stalled" else f"{peer.failures} failures"
                log.info("dropping peer %s after %s (%s)", url, why, result.message)
                self.drop(peer)
                return "gone"
            yield from self._pause(peer, min(backoff, 5))
        elif kind == "not_stored":
            self._not_stored()
            if result.nbytes:  # its readers have it: not wanted again before their tasks run (then fetched twice, and
                self.picker.stop_waiting(index)  # the second copy, nobody's, cost the worker a second's sleep per piece)
            else:
                yield Sleep(1.0)
        return "retry"

    def _hopeless(self, edge: str, why: str, began: float) -> None:
        """``edge`` failed as no retry soon changes (it refuses our token): it is not asked for HOPELESS_RETRY seconds,
        doubled each time it fails so again, and not probed meanwhile.  Set aside as any failing edge, it was the one
        left, probed each second: a download whose token had expired asked its edge for a piece a second, for good,
        each a line in the edge's log (an adversarial session).  Per download, as a token's scope is per file."""
        now = self.clock()
        pause = self.hopeless.failure(edge, now, began)
        if self.hopeless.news(edge, now):
            log.warning("edge %s: %s; not asked again for %.0f s", edge, why, pause)
        self._no_edge_for_startup()

    def _probing(self) -> str:
        """What the set-aside line adds when no edge is left: one is asked again each second meanwhile (sources.probe)."""
        if self.ranking.ranked(self._askable(), self.clock()):
            return ""
        return f" (no other edge is left: it is asked again every {PROBE_EVERY:g} s, and said again in {SAY_EVERY:g} s)"

    def _no_edge_for_startup(self) -> None:
        """An edge failed: if none is left to ask, a reader's startup, decided or not yet, is the neighbours' at once,
        not after its deadline."""
        if self.choose_edge(0) is None and self.picker.drop_startup():
            self.host.changed()

    def _not_stored(self) -> None:
        """Our disk is full or failing (the store logged it): a reader takes its piece as it comes, but what nobody
        waits for is not fetched (it would be thrown away and fetched again) for a while: STORE_RETRY seconds, doubled
        (up to STORE_RETRY_MAX) each time the try after it fails again, so a download in the background of a disk that
        stays full costs its edge a piece every few minutes, not every few seconds."""
        if self.picker.only_awaited:
            self._unstored_at = self.clock()
            return
        if self._unstored_at > -math.inf:  # the try after a pause failed: the disk is still full
            self._store_retry = min(2 * self._store_retry, STORE_RETRY_MAX)
        log.info("our cache cannot store pieces: fetching only what readers wait for, for %.0f s", self._store_retry)
        self.picker.only_awaited, self._unstored_at = True, self.clock()

    def _pause(self, peer: Neighbour, seconds: float) -> Worker:
        """Leave ``peer`` alone for ``seconds`` (it choked us, or failed); someone else may have a free slot."""
        self.picker.pause(peer.peer_id)
        self.staff()
        try:
            yield Sleep(seconds)
        finally:
            self.picker.unpause(peer.peer_id)

    def ban(self, peer: Neighbour, why: str) -> None:
        """Ban the peer's address (an IPv6 one's /64), and so every id it announces under: a new id must not buy a new chance."""
        host = ban_key(peer.url)
        if host not in self.banned:
            log.warning("peer %s %s: its address %s is banned for this content", peer.url, why, host)
            self.banned.add(host)
        for n in [n for n in self.neighbours.values() if ban_key(n.url) == host]:
            self.drop(n)

    def drop(self, peer: Neighbour) -> None:
        if self.neighbours.get(peer.url) is peer:
            del self.neighbours[peer.url]
        self.picker.peer_gone(peer.peer_id)
        self.host.dropped(peer)
        if self._lonely():
            self.host.lonely()
        self.staff()

    def _lonely(self) -> bool:
        """A download under way (a whole file, or a reader's window) that no neighbour left can help: its seed restarted
        on a new port was never used again, the edge sending the rest, until the next announce 300 s on (an
        adversarial session).  A live segment's swarm is short-lived and seeded by the edge: not asked for."""
        picker = self.picker
        wanting = picker.whole_file or bool(picker.wanted)
        return wanting and not self.live and not picker.complete() and not any(self.useful(n) for n in self.neighbours.values())


def ban_key(url: str) -> str:
    """What a ban of the neighbour at ``url`` holds: its address group (an IPv6 address's /64, as the tracker's limits
    count it: a host gets a whole /64, and a hostile seed on 16 addresses of one was banned 16 times, a corrupt piece
    each: an adversarial session), or its relay and group (``host_of``)."""
    return address_group(host_of(url))


def refuse_neighbour(neighbours: Iterable[Neighbour], peer_id: str, url: str) -> str | None:
    """Why a peer at a new ``url`` may not become a neighbour, or None if it may.

    The id is only what it states: one known at another URL stays that
    peer's.  Its address may have ``PER_ADDRESS`` neighbours, as it may have
    that many places in a tracker answer.
    """
    group, crowd = ban_key(url), 0
    for m in neighbours:
        if m.peer_id == peer_id:
            return f"id already known at {m.url}"
        crowd += ban_key(m.url) == group
    return f"its address has {PER_ADDRESS} neighbours already" if crowd >= PER_ADDRESS else None


def host_of(url: str) -> str:
    """The address a neighbour's URL points at (the tracker built it from the address it saw): what a ban holds.

    A relayed peer's URL (``http://EDGE/relay/<group>-<peer>``) points at its
    relay: its ban holds the relay and the peer's address group, so the
    relay's other peers stay usable and a new peer id buys no new chance.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # http://[x: what a lying tracker or sub-tracker can send; its requests fail, and it is dropped
        return url
    host = parts.hostname or url
    segments = parts.path.split("/")
    if len(segments) >= 3 and segments[1] == "relay" and segments[2]:
        return f"{host}/relay/{segments[2].split('-')[0]}"
    return host
