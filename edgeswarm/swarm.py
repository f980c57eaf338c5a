"""One content being fetched by a peer from its edges and from other peers at once.

The asyncio shell around ``PiecePicker``: one worker per peer source (one
request in flight each, as BitTorrent's upload slots expect), a worker on the
edges for what readers need urgently, and one asking the edge what to spread
(``POST /seed``: the edge as its region's super-seeder).  What neighbours hold
arrives on their HAVE streams (edgeswarm.havefeed), one subscription per
neighbour, reopened with back-off; a scout polls ``/have`` only of the
neighbours whose stream cannot be opened.  Every piece is verified by the
piece store before it counts; a peer that sends a bad one has its address
banned for this content (ids are free to mint, addresses are not), one that
vanishes or chokes us is set aside for a while and its piece goes back to the
pool.  Edges are ranked by measured throughput, so the fastest one is used
and a failed or slowed one replaced (p2pd scenario 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edgeswarm import havefeed
from edgeswarm.httpspec import HttpError
from edgeswarm.picker import PiecePicker
from edgeswarm.piecestore import CorruptPiece, PieceNotStored
from edgeswarm.tracker import PER_ADDRESS, address_group
from edgeswarm.upstream import UpstreamError

if TYPE_CHECKING:
    from edgeswarm.manifest import SignedManifest
    from edgeswarm.peer import Peer

log = logging.getLogger("edgeswarm.swarm")
MAX_PEERS = 5  # peer sources used at once
EDGE_WORKERS = 1  # requests in flight to edges at once: the edge is the expensive source
URGENT = 4  # pieces ahead of a reader that are urgent
WINDOW = 16  # pieces ahead of a reader that are fetched at all
FALLBACK_AFTER = 10.0  # seconds without a peer delivering before the edge may take anything
TAIL = 4  # missing pieces at which the edge may take any of them
MAX_FAILURES = 3  # consecutive failures before a peer is dropped
HAVE_POLL = 1.0  # seconds between two asks of the /have of a neighbour without a HAVE stream
MAX_SUBSCRIPTIONS = 32  # neighbours' HAVE streams kept open at once; the others are polled
MAX_NEIGHBOURS = 128  # known at once per content: tracker answers and subscribers add, idle ones make room
SEED_WAIT = 2.0  # seconds after an edge's 204 ("trade with your region") before asking /seed again


@dataclass
class Neighbour:
    peer_id: str
    url: str
    same_region: bool
    failures: int = 0
    have_checked: float = 0.0
    task: asyncio.Task | None = field(default=None, repr=False)
    stream: bool | None = None  # its HAVE stream: live (True), unsupported (False: polled), or not open now
    subscription: asyncio.Task | None = field(default=None, repr=False)


class Swarm:
    def __init__(self, peer: Peer, signed: SignedManifest):
        self.peer = peer
        self.signed = signed
        self.cid = signed.content_id
        m = signed.manifest
        self.picker = PiecePicker(m.piece_count, peer.store.held(self.cid), seed=peer.peer_id, deadline=peer.deadline)
        self.neighbours: dict[str, Neighbour] = {}  # by URL (built from a connection's address), not by stated id
        self.banned: set[str] = set()
        self.waiters: dict[int, list[asyncio.Future]] = {}
        self.last_peer_delivery = time.monotonic()
        self.completed = asyncio.Event()
        self._changed: asyncio.Future = asyncio.get_running_loop().create_future()
        self._edge_tasks: list[asyncio.Task] = []
        self._no_seed: set[str] = set()  # edges that answered 404 to /seed: not seeders (not p2p, or older)
        self._scout_task: asyncio.Task | None = None
        self._closed = False
        if self.picker.complete():
            self.completed.set()

    # -- what the user wants -------------------------------------------------------
    def want_whole(self) -> None:
        self.picker.whole()
        self._check_complete()
        self._staff()
        self._poke()

    async def piece(self, index: int) -> None:
        """Wait until piece ``index`` is stored (a gateway read); it becomes urgent."""
        if index in self.picker.have:
            if self.peer.store.has(self.cid, index):
                return
            self.picker.have.discard(index)  # evicted, or found bad on disk: fetch it again
        fut = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(index, []).append(fut)
        self.picker.awaited.setdefault(index, time.monotonic())
        self._reposition()
        self._staff()
        try:
            await fut
        finally:
            waiting = self.waiters.get(index, [])
            if fut in waiting:
                waiting.remove(fut)
            if not waiting:
                self.waiters.pop(index, None)
                self.picker.awaited.pop(index, None)

    def _reposition(self) -> None:
        if self.waiters and not self.picker.whole_file:
            self.picker.stream(min(self.waiters), URGENT, WINDOW)
        elif self.waiters:
            self.picker.urgent = sorted(i for i in self.waiters if i not in self.picker.have)[:URGENT]
        self._poke()

    # -- who else has it -------------------------------------------------------------
    def update_neighbours(self, answer: list[dict]) -> None:
        """Peers from a tracker answer: ``{"peer_id", "url", "have": set[int], "same_region"}``."""
        for p in answer:
            n = self.add_neighbour(p["peer_id"], p["url"], p["same_region"])
            if n is not None:
                n.same_region = p["same_region"]  # the tracker knows regions; a subscriber only claims one
                if not n.stream:  # a live stream is newer than the tracker's view
                    self.picker.peer_has(n.peer_id, p["have"])
        self._staff()
        self._poke()

    def add_neighbour(self, peer_id: str, url: str, same_region: bool, subscriber: bool = False) -> Neighbour | None:
        """A neighbour (from the tracker, or one that subscribed to us), subscribed to; None if it may not be one.

        Neighbours are known by URL, which the tracker and our own listener
        build from the address a connection came from; the id is only what a
        peer states.  So a subscriber stating the id of a peer known at
        another URL is not taken for it (the tracker, which checks addresses,
        moves an id), and no address gets more than ``PER_ADDRESS``
        neighbours, as no address gets more of a tracker answer.
        """
        if peer_id == self.peer.peer_id or _host(url) in self.banned:
            return None
        n = self.neighbours.get(url)
        if n is None:
            if subscriber and (why := refuse_subscriber(self.neighbours.values(), peer_id, url)):
                log.info("subscriber %s at %s is not taken as a neighbour: %s", peer_id[:64], url, why)
                return None
            known = next((m for m in self.neighbours.values() if m.peer_id == peer_id), None)
            if known is not None:  # the tracker checked the address: the id moved (a restart on a new port)
                self._drop(known)
            if len(self.neighbours) >= MAX_NEIGHBOURS and not self._forget_one():
                return None
            n = self.neighbours[url] = Neighbour(peer_id, url, same_region)
        if (
            n.subscription is None
            and not self._closed
            and sum(m.subscription is not None and not m.subscription.done() for m in self.neighbours.values()) < MAX_SUBSCRIPTIONS
        ):
            n.subscription = asyncio.create_task(self._subscription(n))
        return n

    def _forget_one(self) -> bool:
        """Make room for a neighbour: forget one with neither a worker nor a live stream (gone, most likely)."""
        idle = [m for m in self.neighbours.values() if not m.stream and (m.task is None or m.task.done())]
        if not idle:
            return False
        self._drop(min(idle, key=lambda m: m.have_checked))
        return True

    async def _subscription(self, n: Neighbour) -> None:
        """Keep ``n``'s HAVE stream open while we download: reopen a lost one at once, then after 1, 2, 4... s.

        While it is not open, what ``n`` held is forgotten (it may have left)
        and the scout polls it.  One that answers plain /have only is polled
        for good; one at its subscriber cap (429) is polled until a tracker
        answer names it again; one that cannot be reached MAX_FAILURES times
        in a row has left: it is dropped, and comes back with a tracker answer
        or its own subscription.
        """
        failures = 0
        while not self._closed and self.neighbours.get(n.url) is n and not self.completed.is_set():
            try:
                async with contextlib.aclosing(self.peer.have_stream(n.url, self.cid)) as events:  # a break closes it
                    async for event in events:
                        failures, n.stream = 0, True
                        self._heard(n, event)
                        if self.completed.is_set() or self.neighbours.get(n.url) is not n:
                            break  # done with this content, or with this neighbour: free the uploader's slot
            except StreamUnsupported:
                n.stream = False
                return
            except UpstreamError as exc:
                log.debug("HAVE stream of %s: %s", n.url, exc.message)
                if exc.status == 429:
                    break
            if n.stream:  # it was live: reopen at once, and forget what it held meanwhile
                self.picker.peer_has(n.peer_id, ())
                n.stream = None
                await asyncio.sleep(0.1)
                continue
            failures += 1
            if failures >= MAX_FAILURES and (n.task is None or n.task.done()):
                self._drop(n)
                break
            await asyncio.sleep(havefeed.backoff(failures))
        n.subscription, n.stream = None, None

    def _heard(self, n: Neighbour, event: havefeed.HaveEvent) -> None:
        """A line of ``n``'s HAVE stream: availability for the picker; a worker for ``n`` if it now has something for us."""
        if self.neighbours.get(n.url) is not n:
            return
        if event.kind == "snapshot":
            self.picker.peer_has(n.peer_id, event.pieces)
        elif event.kind == "have":
            for i in event.pieces:
                self.picker.peer_got(n.peer_id, i)
        else:
            return
        if (n.task is None or n.task.done()) and any(self.picker.wants(i) for i in event.pieces):
            self._staff()
        self._poke()

    def _staff(self) -> None:
        """Keep workers on the MAX_PEERS most useful neighbours."""
        if self._closed:
            return
        active = [n for n in self.neighbours.values() if n.task is not None and not n.task.done() and n.peer_id not in self.picker.paused]
        missing = set(self.picker.missing())
        useful = sorted(
            (n for n in self._unstaffed() if missing & self._held_by(n.peer_id)),
            key=lambda n: (not n.same_region, -len(missing & self._held_by(n.peer_id)), -(self.peer.ranking.rate(n.url) or 0)),
        )
        for n in useful[: max(0, MAX_PEERS - len(active))]:
            n.task = asyncio.create_task(self._peer_worker(n))
        while len(self._edge_tasks) < EDGE_WORKERS:
            self._edge_tasks.append(asyncio.create_task(self._edge_worker(len(self._edge_tasks))))
        if len(self._edge_tasks) == EDGE_WORKERS:
            self._edge_tasks.append(asyncio.create_task(self._seed_worker()))
        if self._scout_task is None:
            self._scout_task = asyncio.create_task(self._scout())

    def _unstaffed(self) -> list[Neighbour]:
        return [n for n in self.neighbours.values() if n.task is None or n.task.done()]

    def _held_by(self, peer_id: str) -> set[int]:
        return {i for i in range(self.picker.count) if self.picker.holds(peer_id, i)}

    # -- workers -------------------------------------------------------------------
    async def _peer_worker(self, n: Neighbour) -> None:
        while not self._closed and _host(n.url) not in self.banned:
            index = self.picker.pick(n.peer_id, time.monotonic())
            if index is None:
                if self.picker.done():
                    return
                await self._wait_change(1.0)
                if not n.stream:
                    await self._refresh_have(n)
                if not set(self.picker.missing()) & self._held_by(n.peer_id):
                    return  # nothing for us: free the slot; the scout keeps asking this peer
                continue
            outcome = await self._transfer(n.peer_id, n.url, index, peer=n)
            if outcome == "gone":
                return

    async def _scout(self) -> None:
        """Ask the neighbours with neither a worker nor a live HAVE stream what they hold: a few each second.

        Tracker answers are an interval apart, tell what a neighbour held at
        its last announce, and stop while the tracker is down.  A neighbour
        whose stream cannot be opened (an older peer, one at its subscriber
        cap) would never be used; asking it directly keeps peers that know
        each other trading whatever the tracker does.
        """
        while not self._closed and not self._gone():
            unstaffed = [n for n in self._unstaffed() if not n.stream]
            if unstaffed and self.picker.missing():
                unstaffed.sort(key=lambda n: n.have_checked)
                await asyncio.gather(*(self._refresh_have(n) for n in unstaffed[:MAX_PEERS]))
                self._staff()
            await asyncio.sleep(HAVE_POLL)

    async def _refresh_have(self, n: Neighbour) -> None:
        """Ask a neighbour what it holds now, at most once a second; one that does not answer is set aside, asked less and less often."""
        now = time.monotonic()
        if now - n.have_checked < HAVE_POLL or not self.peer.ranking.available(n.url, now):
            return
        n.have_checked = now
        held = await self.peer.fetch_have(n.url, self.cid)
        if held is None and not self._gone():  # with the content gone, no answer could be read: not the neighbour's fault
            self.peer.ranking.failure(n.url, time.monotonic())
        elif self.neighbours.get(n.url) is n:
            self.picker.peer_has(n.peer_id, held)

    def _gone(self) -> bool:
        """The content left the store (evicted or dropped): nobody needs asking what they hold of it."""
        return self.peer.store.manifest(self.cid) is None

    def _fallback(self, now: float) -> bool:
        """Peers cannot be counted on: the edge may take anything, as before it seeded."""
        return (
            not self.neighbours
            or now - self.last_peer_delivery > FALLBACK_AFTER
            # the file's tail (not the stream window's): the edge races choked or slow peers for the last pieces
            or self.picker.count - len(self.picker.have) <= TAIL
        )

    def _seeder(self) -> str | None:
        """The edge to ask /seed: the fastest live one that has not refused it."""
        live = self.peer.ranking.ranked(self.peer.edges, time.monotonic())
        return next((e for e in live if e not in self._no_seed), None)

    async def _edge_worker(self, slot: int) -> None:
        """Urgent pieces (a reader's deadline window) from the edge; everything else too when peers cannot be counted on
        or no edge seeds."""
        picks = 0
        while not self._closed:
            now = time.monotonic()
            fallback = self._fallback(now)
            if fallback or self._seeder() is None:
                index = self.picker.pick(f"edge#{slot}", now, edge=True, fallback=fallback)
            else:  # the seeding worker asks the edge for the rest
                index = self.picker.pick_urgent(f"edge#{slot}", now, edge=True, seeding=True)
            if index is None:
                await self._wait_change(0.25)
                continue
            edge = self._choose_edge(slot, picks)
            picks += 1
            if edge is None:
                await self._wait_change(1.0)
                continue
            try:
                if await self._transfer(f"edge#{slot}", edge, index, urgent=self.picker.is_urgent(index)) == "gone":
                    await asyncio.sleep(1)  # the content left the store: do not spin
            except Exception:  # a bug must not silently stop the only edge worker
                log.exception("edge worker failed on piece %d of %s", index, self.signed.manifest.path)
                await asyncio.sleep(1)

    async def _seed_worker(self) -> None:
        """Non-urgent pieces as the edge chooses them (``POST /seed``): each goes to the region about once, and the region trades it.

        After a 204 ("your region has every piece you lack") it asks again only
        after SEED_WAIT; meanwhile urgent needs and fallbacks are the edge
        worker's.  Ends when no edge seeds (they answered 404): the edge worker
        then takes what no peer holds, as before.
        """
        while not self._closed:
            edge = self._seeder()
            if edge is None:
                if not self._no_seed:  # every edge set aside for now
                    await self._wait_change(1.0)
                    continue
                self._poke()  # the edge worker takes over the non-urgent pieces
                return
            if self.picker.done() or self._fallback(time.monotonic()):
                await self._wait_change(1.0)
                continue
            started = time.monotonic()
            try:
                got = await self.peer.fetch_seed(edge, self.cid, self.picker.claimed(), self.picker.seed_from())
            except SeedUnsupported:
                log.info("%s does not seed (404 to /seed): its pieces are fetched as before", edge)
                self._no_seed.add(edge)
                continue
            except UpstreamError as exc:
                backoff = self.peer.ranking.failure(edge, time.monotonic())
                log.warning("edge %s failed on /seed (%s); set aside for %.0f s", edge, exc.message, backoff)
                continue
            except KeyError:  # the content left the store
                return
            if got is None:
                await asyncio.sleep(SEED_WAIT)
                continue
            elapsed = time.monotonic() - started
            if got[0] in self.picker.have:
                continue  # it crossed a peer's copy: nothing to store
            try:
                if await self._transfer("edge-seed", edge, got[0], data=got[1]) == "ok":
                    self.peer.ranking.success(edge, len(got[1]), elapsed)
            except Exception:  # a bug must not silently stop seeding
                log.exception("seeding worker failed on piece %d of %s", got[0], self.signed.manifest.path)
                await asyncio.sleep(1)

    def _choose_edge(self, slot: int, picks: int) -> str | None:
        """The fastest live edge; unmeasured ones are tried first and the others re-measured now and then."""
        ranking = self.peer.ranking
        live = ranking.ranked(self.peer.edges, time.monotonic())
        if not live:
            return None
        unmeasured = [e for e in live if ranking.rate(e) is None]
        if unmeasured:
            return unmeasured[0]  # measure every edge once
        if len(live) > 1 and picks % 8 == 7:
            return live[1 + picks // 8 % (len(live) - 1)]  # re-measure the others now and then: they may have recovered
        return live[0]

    async def _transfer(
        self, source: str, url: str, index: int, peer: Neighbour | None = None, urgent: bool = False, data: bytes | None = None
    ) -> str:
        """Fetch one piece (unless ``data`` came already, from /seed) and store it; returns "ok", "retry" or "gone" (stop using this peer)."""
        self.picker.start(source, index, time.monotonic())
        ok = False
        try:
            started = time.monotonic()
            fetched = data is None  # else /seed's answer, timed by the seeding worker
            if data is None:
                data = await self.peer.fetch_piece(url, self.cid, index, to_peer=peer is not None, urgent=urgent)
            self.peer.store.put_piece(self.cid, index, data)
            if fetched:
                self.peer.ranking.success(url, len(data), time.monotonic() - started)
            ok = True
            self.picker.finish(source, index, True)  # before _delivered: completion is judged from the picker
            self._delivered(index, data, url, peer)
            return "ok"
        except CorruptPiece:
            self.peer.metrics.events[("corrupt_piece", url)] += 1
            if peer is not None:
                self._ban(peer, f"sent a corrupt piece {index} of {self.signed.manifest.path}")
                return "gone"
            self.peer.ranking.failure(url, time.monotonic())
            return "retry"
        except Choked as exc:
            if peer is not None:
                self.picker.paused.add(peer.peer_id)
                self._staff()  # someone else may have a free slot
                await asyncio.sleep(exc.retry_after)
                self.picker.paused.discard(peer.peer_id)
            return "retry"
        except NotHeld:
            if peer is not None:
                self.picker.peer_has(peer.peer_id, self._held_by(peer.peer_id) - {index})
            return "retry"
        except (UpstreamError, HttpError) as exc:
            backoff = self.peer.ranking.failure(url, time.monotonic())
            if peer is None:
                log.warning("edge %s failed (%s); set aside for %.0f s", url, exc, backoff)
                return "retry"
            peer.failures += 1
            if peer.failures >= MAX_FAILURES:
                log.info("dropping peer %s after %d failures (%s)", url, peer.failures, exc)
                self._drop(peer)
                return "gone"
            self.picker.paused.add(peer.peer_id)
            await asyncio.sleep(min(backoff, 5))
            self.picker.paused.discard(peer.peer_id)
            return "retry"
        except KeyError:  # the content was dropped from the store meanwhile
            return "gone"
        except PieceNotStored:  # our disk is full or failing (the store logged it): the gateway reads from the store
            await asyncio.sleep(1)
            return "retry"
        finally:
            if not ok:
                self.picker.finish(source, index, False)
            self._poke()

    def _delivered(self, index: int, data: bytes, url: str, peer: Neighbour | None) -> None:
        n = len(data)
        if peer is not None:
            peer.failures = 0
            self.last_peer_delivery = time.monotonic()
            self.peer.choker.received(time.monotonic(), peer.peer_id, n)
            kind = "peer-same-region" if peer.same_region else "peer-other-region"
        else:
            kind = "edge"
        self.peer.count_received(self.cid, kind, url, n)
        self.peer.havefeed.stored(self.cid, index, time.time())
        for fut in self.waiters.get(index, []):
            if not fut.done():
                fut.set_result(None)
        self._check_complete()

    def _check_complete(self) -> None:
        if self.picker.complete() and not self.completed.is_set():  # a player that read it all completed it too
            self.completed.set()
            self.peer.on_complete(self)
            for n in self.neighbours.values():  # we need nobody's pieces now: free our places under their caps
                self._unsubscribe(n)

    def _unsubscribe(self, n: Neighbour) -> None:
        if n.subscription is not None and n.subscription is not asyncio.current_task():
            n.subscription.cancel()
            n.subscription, n.stream = None, None

    def _ban(self, peer: Neighbour, why: str) -> None:
        """Ban the peer's address, and so every id it announces under: a new id must not buy a new chance."""
        host = _host(peer.url)
        if host not in self.banned:
            log.warning("peer %s %s: its address %s is banned for this content", peer.url, why, host)
            self.banned.add(host)
        for n in [n for n in self.neighbours.values() if _host(n.url) == host]:
            self._drop(n)

    def _drop(self, peer: Neighbour) -> None:
        if self.neighbours.get(peer.url) is peer:
            del self.neighbours[peer.url]
        self._unsubscribe(peer)
        self.picker.peer_gone(peer.peer_id)
        self._staff()

    # -- plumbing ---------------------------------------------------------------------
    def _poke(self) -> None:
        """Wake every worker waiting for something to do (a fresh future per generation, so none misses it)."""
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    async def _wait_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)

    async def close(self) -> None:
        self._closed = True
        tasks = [*self._edge_tasks, *(t for n in self.neighbours.values() for t in (n.task, n.subscription) if t is not None)]
        if self._scout_task is not None:
            tasks.append(self._scout_task)
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
            "held": len(self.picker.have),
            "complete": self.picker.complete(),
            "neighbours": len(self.neighbours),
            "have_streams": sum(1 for n in self.neighbours.values() if n.stream),
            "banned": sorted(self.banned),
        }


def refuse_subscriber(neighbours: Iterable[Neighbour], peer_id: str, url: str) -> str | None:
    """Why a subscriber at a new ``url`` may not become a neighbour, or None if it may.

    The id is only what it states: one known at another URL stays that
    peer's.  Its address may have ``PER_ADDRESS`` neighbours, as it may have
    that many places in a tracker answer.
    """
    group, same_address = address_group(_host(url)), 0
    for m in neighbours:
        if m.peer_id == peer_id:
            return f"id already known at {m.url}"
        same_address += address_group(_host(m.url)) == group
    return f"its address has {PER_ADDRESS} neighbours already" if same_address >= PER_ADDRESS else None


def _host(url: str) -> str:
    """The address a neighbour's URL points at (the tracker built it from the address it saw): what a ban holds."""
    return urlsplit(url).hostname or url


class Choked(Exception):
    def __init__(self, retry_after: float):
        super().__init__(f"choked; retry after {retry_after:g} s")
        self.retry_after = retry_after


class NotHeld(Exception):
    """The source does not hold the piece (any more)."""


class SeedUnsupported(Exception):
    """The edge answered 404 to /seed: it does not seed (not in p2p mode, or older)."""


class StreamUnsupported(Exception):
    """The neighbour answers a plain /have only (an older peer): it is polled instead."""
