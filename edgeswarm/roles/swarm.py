"""One content being fetched by a peer from its edges and from other peers at once: the engine over HTTP.

Every decision is edgeswarm.policy.engine's (which neighbours get a worker, which
piece each is asked for, which edge, when the edge may take anything, what a
failure costs); this module runs its workers as asyncio tasks and does what
they ask with the peer's HTTP client and piece store.  It also keeps the
neighbours' HAVE streams open (edgeswarm.protocol.havefeed), one subscription per
neighbour, reopened with back-off.  Every piece is verified by the piece
store before it counts; one that fails is reported to the engine as
corrupt, which bans the sender's address for this content.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, TypeVar

from edgeswarm.errors import EdgeswarmError, HttpError
from edgeswarm.node.upstream import Hopeless, OutOfDescriptorsHere, UpstreamError, UpstreamTimeout
from edgeswarm.policy import engine
from edgeswarm.policy.choker import neighbour
from edgeswarm.policy.engine import AskHave, Command, Fetch, Neighbour, Result, Seed, Sleep, Wait, Worker
from edgeswarm.policy.vocabulary import EDGE, peer_kind
from edgeswarm.protocol import havefeed
from edgeswarm.store.piecestore import CorruptPiece, PieceNotStored

if TYPE_CHECKING:
    from edgeswarm.protocol.manifest import SignedManifest
    from edgeswarm.roles.peer import Peer

T = TypeVar("T")
K = TypeVar("K")

log = logging.getLogger("edgeswarm.roles.swarm")


class Swarm:
    def __init__(self, peer: Peer, signed: SignedManifest):
        self.peer = peer
        self.signed = signed
        self.cid = signed.content_id
        self.waiters: dict[int, list[asyncio.Future]] = {}
        self.completed = asyncio.Event()
        self._changed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task] = set()
        self._transfers: dict[int, set[asyncio.Task]] = {}  # piece -> its requests in flight (abandon() stops them)
        self._asking: dict[str, set[asyncio.Task]] = {}  # source URL -> its requests in flight (source_gone() stops them)
        self._subscriptions: dict[str, asyncio.Task] = {}  # neighbour URL -> its HAVE stream's task
        self.on_stored: Callable[[int, bytes], None] | None = None  # told each piece this swarm stores, verified (get's output)
        self.engine = engine.Engine(
            self,
            signed.manifest.piece_count,
            peer.pinned.opened.held(self.cid),
            seed=peer.peer_id,
            deadline=peer.deadline,
            edges=peer.edges,
            ranking=peer.ranking,
            clock=time.monotonic,
            piece_size=signed.manifest.piece_size,
            startup_bytes=peer.config.startup_window,
            banned=peer.bans_of(self.cid),
            room=None if (capacity := peer.pinned.opened.capacity) is None else capacity // signed.manifest.piece_size,
        )
        self.picker = self.engine.picker
        self.waiting_reads = 0  # gateway reads of this file waiting for pieces now (read_waits)
        # piece -> (status, what) of its last failed fetch, until one succeeds: a read that times out says why (SwarmSource);
        # and the last failure of any piece, until any succeeds (what `get` says when nothing arrives)
        self.failures: dict[int, tuple[int, str]] = {}
        self.last_failure: tuple[int, str] | None = None
        self.used = time.monotonic()  # when a reader, a download or an arriving piece last needed it (retirable)
        self.retired = False  # closed for having nothing to do: its content stays held; a new read starts another swarm
        self.withdrawn: str | None = None  # why this version is no more (its edge answered 404 for a piece): gone()
        if self.picker.complete():
            self.completed.set()

    # -- what the user wants -------------------------------------------------------
    def want_whole(self) -> None:
        self.touch()
        self.engine.want_whole()
        self._check_complete()

    def want_live(self) -> None:
        """A live segment ahead of the player: fetched whole, by the swarm more than by the edge (engine.want_live)."""
        self.touch()
        self.engine.want_live()
        self._check_complete()

    def touch(self) -> None:
        """Someone needs this swarm now: it is not retired for another ``idle`` seconds (retirable)."""
        self.used = time.monotonic()

    def retirable(self, now: float, idle: float) -> bool:
        """Nothing for it to do, and nothing asked of it for ``idle`` seconds: no read waiting, no whole download
        under way, no ``get`` writing its pieces out.  What it holds stays in the store and announced (Peer.announce_all)."""
        downloading = self.picker.whole_file and not self.picker.complete()
        busy = self.waiters or self.waiting_reads or downloading or self.on_stored is not None
        return not busy and now - self.used >= idle

    def read_waits(self, waiting: bool) -> None:
        """A gateway read of this file starts or stops waiting for pieces: several at once are a download (picker.py)."""
        self.waiting_reads += 1 if waiting else -1
        self.engine.reads_waiting(self.waiting_reads)

    async def piece(self, index: int, stop: int | None = None) -> bytes | None:
        """Wait until piece ``index`` is stored (a gateway read, which ends before piece ``stop`` if known; it becomes
        urgent): its verified bytes as they arrived (stored or not: a full disk's reader is served all the same), or
        None if it was held already or came another way (read it from the store)."""
        if index in self.picker.have:
            if self.peer.pinned.opened.has(self.cid, index):
                return None
            self.engine.forget_piece(index)  # evicted, or found bad on disk: fetch it again
        if self.withdrawn is not None:  # nothing more is fetched for it
            raise HttpError(404, self.withdrawn)
        self.touch()
        fut = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(index, []).append(fut)
        self.engine.reading(index, stop)
        try:
            got: bytes | None = await fut
            return got
        finally:
            waiting = self.waiters.get(index, [])
            if fut in waiting:
                waiting.remove(fut)
            if not waiting:
                self.waiters.pop(index, None)
            self.engine.read_done(index)

    # -- who else has it -------------------------------------------------------------
    def update_neighbours(self, answer: list[dict], from_edge: bool = True) -> None:
        """Peers from a tracker answer: ``{"peer_id", "url", "have": set[int], "same_region"}``; an edge's or, if not
        ``from_edge``, a sub-tracker's."""
        self.engine.tracker_answer(answer, from_edge)
        for n in list(self.engine.neighbours.values()):
            self._subscribe(n)

    def add_neighbour(
        self, peer_id: str, url: str, same_region: bool, subscriber: bool = False, claim: str | None = None
    ) -> Neighbour | None:
        """A neighbour (from the tracker, or one that subscribed to us), subscribed to; None if it may not be one."""
        n = self.engine.add_neighbour(peer_id, url, same_region, subscriber, claim)
        if n is not None:
            self._subscribe(n)
        return n

    @property
    def neighbours(self) -> dict[str, Neighbour]:
        return self.engine.neighbours

    @property
    def banned(self) -> set[str]:
        return self.engine.banned

    def _subscribe(self, n: Neighbour) -> None:
        if self.engine.may_subscribe(n):
            n.subscribed = True
            self._subscriptions[n.url] = self._start(self._subscription(n))

    async def _subscription(self, n: Neighbour) -> None:
        """Keep ``n``'s HAVE stream open while we download: reopen a lost one at once, then after 1, 2, 4... s.

        While it is not open, what ``n`` held is forgotten (it may have left)
        and the scout polls it.  One that answers plain /have only is polled
        for good; one at its subscriber cap (429) is polled until a tracker
        answer names it again; one that cannot be reached MAX_FAILURES times
        in a row has left: it is dropped, and comes back with a tracker answer
        or its own subscription.  One whose stream goes over its budget
        (havefeed.StreamBudget) is closed, forgotten and left for
        ``abuse_backoff`` (30 s, doubling) before it is opened again.
        """
        failures = abuses = 0
        try:
            while not self.engine.closed and self.neighbours.get(n.url) is n and not self.completed.is_set():
                try:
                    async with contextlib.aclosing(self.peer.have_stream(n.url, self.cid)) as events:  # a break closes it
                        async for event in events:
                            failures = 0
                            self.engine.heard(n, event.kind, event.pieces)
                            if self.completed.is_set() or self.neighbours.get(n.url) is not n:
                                break  # done with this content, or with this neighbour: free the uploader's slot
                except StreamUnsupported:
                    n.stream = False
                    return
                except StreamAbused as exc:
                    abuses += 1
                    await self._abused(n, exc, abuses)
                    continue
                except UpstreamError as exc:
                    log.debug("HAVE stream of %s: %s", n.url, exc.message)
                    if exc.status == 429:
                        break
                if n.stream:  # it was live: reopen at once, and forget what it held meanwhile
                    self.engine.stream_lost(n)
                    await asyncio.sleep(0.1)
                    continue
                failures += 1
                if self.engine.unreachable(n, failures):
                    break
                await asyncio.sleep(havefeed.backoff(failures))
        finally:
            if self._subscriptions.get(n.url) is asyncio.current_task():
                del self._subscriptions[n.url]
            n.subscribed = False
            if n.stream:
                n.stream = None

    async def _abused(self, n: Neighbour, exc: StreamAbused, abuses: int) -> None:
        """``n``'s stream went over its budget (closed already): forget what it said, say so (throttled), back off.

        Reopened at once, as a lost stream is, a flooding neighbour would cost
        us its flood again within a second; meanwhile the scout polls its
        ``/have``, a bounded answer, should it really hold something.
        """
        self.engine.stream_lost(n)
        delay = havefeed.abuse_backoff(abuses)
        self.peer.quiet.flush()
        self.peer.quiet.log(logging.WARNING, "abusive HAVE streams", "HAVE stream closed: %s; not reopened for %g s", exc, delay)
        await asyncio.sleep(delay)

    # -- the engine's host -----------------------------------------------------------
    def spawn(self, worker: Worker) -> None:
        self._start(self._drive(worker))

    def changed(self) -> None:
        """Wake every worker waiting for something to do (a fresh future per generation, so none misses it)."""
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def delivered(self, index: int, url: str, peer: Neighbour | None, nbytes: int) -> None:
        self.touch()
        if peer is not None:  # its credit, under the name its own requests to us get (choker.neighbour)
            self.peer.choker.received(time.monotonic(), neighbour(peer.peer_id, engine.host_of(peer.url)), nbytes)
        self.peer.count_received(self.cid, _source_kind(peer), url, nbytes)
        self.peer.havefeed.stored(self.cid, index, time.time())
        for fut in self.waiters.get(index, []):
            if not fut.done():
                fut.set_result(None)
        self._check_complete()

    def crossed(self, url: str, nbytes: int) -> None:
        self.peer.count_received(self.cid, EDGE, url, nbytes)  # as the edge's ledger and our usage report count it

    def abandon(self, index: int) -> None:
        for task in self._transfers.pop(index, ()):
            task.cancel()

    def dropped(self, n: Neighbour) -> None:
        self._unsubscribe(n)

    def lonely(self) -> None:
        self.peer.ask_for_peers(self.cid, lonely=True)

    def gone(self) -> bool:
        """Nothing more to fetch: the content left the store, or its edge no longer has it published (``withdrawn``: a
        peer asked for a piece of the old version once a second for minutes after its reader was cut)."""
        return self.withdrawn is not None or self.peer.pinned.opened.manifest(self.cid) is None

    # -- running the engine's workers ------------------------------------------------------
    def _start(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _drive(self, worker: Worker) -> None:
        """Do what ``worker`` asks until it returns; a bug is logged, never a silently stopped worker."""
        reply: object = None
        try:
            while True:
                command = worker.send(reply)
                reply = await self._do(command)
        except StopIteration:
            pass
        except asyncio.CancelledError:
            worker.close()
            raise
        except Exception:
            log.exception("a download worker of %s failed", self.signed.manifest.path)
            worker.close()

    async def _do(self, command: Command) -> object:
        """Do one command; a bug in doing it is logged and reported as a failure, so the worker goes on."""
        try:
            return await self._execute(command)
        except Exception as exc:
            log.exception("%s failed on %s", type(command).__name__, self.signed.manifest.path)
            if isinstance(command, AskHave):
                return [None] * len(command.neighbours)
            return Result("failed", message=repr(exc)) if isinstance(command, Fetch | Seed) else None

    async def _execute(self, command: Command) -> object:
        if isinstance(command, Wait):
            with contextlib.suppress(TimeoutError):  # shielded: a timeout must not cancel the future every worker waits on
                async with asyncio.timeout(command.timeout):
                    await asyncio.shield(self._changed)
            return None
        if isinstance(command, Sleep):
            await asyncio.sleep(command.seconds)
            return None
        if isinstance(command, Fetch):
            return await self._fetch(command)
        if isinstance(command, Seed):
            return await self._seed(command)
        return await asyncio.gather(*(self.peer.fetch_have(n.url, self.cid) for n in command.neighbours))

    async def _fetch(self, f: Fetch) -> Result:
        """Fetch one piece (unless it came from /seed already) and store it, verified."""
        started = time.monotonic()
        try:
            data = f.data
            if not isinstance(data, bytes):
                request = self.peer.fetch_piece(f.url, self.cid, f.index, to_peer=f.peer is not None, urgent=f.urgent)
                _, fetched = await self._outcome(self._transfer(request, f.index, f.url))
                if fetched is None:  # abandoned: a piece is never None
                    return Result("abandoned")
                data = fetched
            self.peer.pinned.opened.put_piece(self.cid, f.index, data)
            self.failures.pop(f.index, None)
            self.last_failure = None
            self._hand(f.index, data)
            if self.on_stored is not None:
                self.on_stored(f.index, data)
            return Result("ok", time.monotonic() - started, len(data))
        except CorruptPiece:
            self.peer.metrics.events[("corrupt_piece", f.url)] += 1
            self._failed(f.index, 502, f"{f.url} sent piece {f.index} corrupt")
            return Result("corrupt")
        except Choked as exc:
            return Result("choked", exc.retry_after)
        except NotHeld:
            return Result("not_held")
        except UpstreamTimeout as exc:
            self._failed(f.index, 504, str(exc))
            return Result("stalled", message=str(exc))
        except OutOfDescriptorsHere as exc:
            return self._short(exc)
        except (UpstreamError, HttpError) as exc:
            self._failed(f.index, exc.status if exc.status >= 500 else 502, str(exc))
            return Result("hopeless" if isinstance(exc, Hopeless) else "failed", message=str(exc))
        except Withdrawn:  # the readers waiting for it learn so now, not at their read timeout
            self.peer.manifests.withdraw(self.signed.manifest.path, self.cid)  # or a new version: the next read asks (edge.py's twin)
            self.withdrawn = (
                f"/{self.signed.manifest.path} is no longer published (its edge answered 404): changed or deleted at the origin"
            )
            for index in list(self.waiters):  # every reader of it: nothing more is fetched for any (gone())
                self._fail(index, HttpError(404, self.withdrawn))
            return Result("gone")
        except KeyError:  # the content was dropped from the store meanwhile
            return Result("gone")
        except PieceNotStored:
            return self._unstored(f, data) if isinstance(data, bytes) else Result("not_stored")

    def _failed(self, index: int, status: int, why: str) -> None:
        self.failures[index] = self.last_failure = (status, why)

    def failure(self, index: int) -> tuple[int, str] | None:
        """Why piece ``index`` has not come (status, what): its last fetch's failure, unless another request for it is
        still under way (then it is slow, whatever an earlier try said)."""
        return None if self._transfers.get(index) else self.failures.get(index)

    def _short(self, exc: OutOfDescriptorsHere) -> Result:
        """Our process is out of file descriptors: said (a few lines a minute at most), and nobody's fault."""
        self.peer.quiet.log(
            logging.WARNING, "out of descriptors", "waiting a second, the open-file limit too low for this load? %s", exc.message
        )
        return Result("short", message=exc.message)

    def _hand(self, index: int, data: bytes) -> int:
        """The verified piece to the reads waiting for it, as it is: not read back from the store, which another read's
        pieces may already have pushed it out of (a small --max-cache); how many there were."""
        readers = [fut for fut in self.waiters.get(index, []) if not fut.done()]
        for fut in readers:
            fut.set_result(data)
        return len(readers)

    def _fail(self, index: int, error: HttpError) -> None:
        for fut in self.waiters.get(index, []):
            if not fut.done():
                fut.set_exception(error)

    def _unstored(self, f: Fetch, data: bytes) -> Result:
        """A verified piece our disk could not keep: the readers waiting for it get it (and it counts as received)."""
        readers = self._hand(f.index, data)
        if readers:
            self.peer.count_received(self.cid, _source_kind(f.peer), f.url, len(data))
        return Result("not_stored", nbytes=len(data) if readers else 0)

    async def _seed(self, s: Seed) -> Result:
        started = time.monotonic()

        def named(index: int) -> None:  # the answer's head: from now on its body is this piece's transfer
            self.engine.seed_coming(index)
            self._register(index, transfer)

        try:
            seed = self.peer.fetch_seed(s.edge, self.cid, set(s.claimed), s.start, on_piece=named, whole=s.whole, unseen=s.unseen)
            transfer = self._transfer(seed, None, s.edge)
            abandoned, got = await self._outcome(transfer)
            if abandoned:
                return Result("abandoned")
        except SeedUnsupported:
            return Result("unsupported")
        except OutOfDescriptorsHere as exc:
            return self._short(exc)
        except UpstreamError as exc:
            return Result("hopeless" if isinstance(exc, Hopeless) else "failed", message=exc.message)
        except KeyError:
            return Result("gone")
        if got is None:
            return Result("none")
        return Result("ok", time.monotonic() - started, len(got[1]), got[0], got[1])

    def _transfer(self, request: Coroutine[object, object, T], index: int | None, url: str) -> asyncio.Task[T]:
        """A request to ``url`` as a task that ``abandon(index)`` (``index`` None: ``_register`` it once it is known) and
        ``source_gone(url)`` may stop."""
        task = asyncio.ensure_future(request)
        if index is not None:
            self._register(index, task)
        _track(self._asking, url, task)
        return task

    def source_gone(self, url: str) -> None:
        """``url`` is no longer a source (its router reports the edge down): what we asked of it is abandoned now, not
        after its timeout (a hung edge held a download 10-22 s while the router's other edge sat idle)."""
        for task in self._asking.pop(url, ()):
            task.cancel()

    def _register(self, index: int, task: asyncio.Task) -> None:
        _track(self._transfers, index, task)

    @staticmethod
    async def _outcome(task: asyncio.Task[T]) -> tuple[bool, T | None]:
        """(abandoned, the transfer's value): a task ``abandon`` stopped is not our own cancellation."""
        try:
            return False, await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                return True, None
            task.cancel()
            raise

    # -- completion and shutdown --------------------------------------------------------
    def _check_complete(self) -> None:
        if self.picker.complete() and not self.completed.is_set():  # a player that read it all completed it too
            self.completed.set()
            self.peer.on_complete(self)
            for n in self.neighbours.values():  # we need nobody's pieces now: free our places under their caps
                self._unsubscribe(n)

    def _unsubscribe(self, n: Neighbour) -> None:
        task = self._subscriptions.pop(n.url, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        n.subscribed = False

    async def close(self) -> None:
        self.engine.closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for futs in self.waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(HttpError(503, "the peer is shutting down"))

    def status(self) -> dict:
        m = self.signed.manifest
        return {
            "path": m.path,
            "id": self.cid,
            "pieces": m.piece_count,
            "held": len(self.peer.pinned.opened.held(self.cid)),  # what the cache keeps: a small --max-cache evicts as it goes
            "complete": self.picker.complete(),  # every piece fetched
            "neighbours": len(self.neighbours),
            "have_streams": sum(1 for n in self.neighbours.values() if n.stream),
            "banned": sorted(self.banned),
        }


class Choked(EdgeswarmError):
    def __init__(self, retry_after: float):
        super().__init__(f"choked; retry after {retry_after:g} s")
        self.retry_after = retry_after


class NotHeld(EdgeswarmError):
    """The source does not hold the piece (any more)."""


class Withdrawn(EdgeswarmError, KeyError):
    """The edge answered 404 for a piece: its parent no longer publishes the content (a file deleted or replaced)."""


class SeedUnsupported(EdgeswarmError):
    """The edge answered 404 to /seed: it does not seed (not in p2p mode, or older)."""


class StreamAbused(EdgeswarmError):
    """A neighbour's HAVE stream went over its budget (havefeed.StreamBudget): closed, and backed off."""


class StreamUnsupported(EdgeswarmError):
    """The neighbour answers a plain /have only (an older peer): it is polled instead."""


def _source_kind(peer: Neighbour | None) -> str:
    """What a received piece counts as: from the edge (no neighbour), or from a peer of our region or another."""
    return EDGE if peer is None else peer_kind(peer.same_region)


def _track(table: dict[K, set[asyncio.Task]], key: K, task: asyncio.Task) -> None:
    """``task`` under ``key`` in ``table`` while it runs (a piece's requests, a source's): no key is kept for nothing,
    as neighbours and pieces come and go."""
    table.setdefault(key, set()).add(task)
    task.add_done_callback(functools.partial(_untrack, table, key))


def _untrack(table: dict[K, set[asyncio.Task]], key: K, task: asyncio.Task) -> None:
    tasks = table.get(key)
    if tasks is not None:
        tasks.discard(task)
        if not tasks:
            del table[key]
