"""A peer that volunteers for preheating: it asks its edges for orders and fetches and seeds what it is given.

Only with ``--accept-preheat SIZE``: the user's disk and uplink are the
user's, so a peer takes no orders by default, and with the flag never more
than SIZE bytes of preheated content at once (its ``--upload-limit`` still
caps what it sends).  It holds a poll open at each tracking edge (``GET
/preheat/orders`` with the room it has left), which the edge answers when
it takes a new order or after ``WAIT`` seconds; each assigned path is
fetched through the swarm like a ``--seed`` path and pinned against eviction
while the order stands.  When an edge stops listing it (the order expired,
or this peer was not chosen any more) it is unpinned: the pieces stay until
the cache needs the room (docs/protocol.md#preheating-peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from edgeswarm.node.upstream import UpstreamError, said_in
from edgeswarm.policy.preheatorders import MAX_DECLINED
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.httpspec import PEER_HEADER

if TYPE_CHECKING:
    from edgeswarm.roles.peer import Peer

log = logging.getLogger("edgeswarm.roles.volunteer")
MIN_WAIT = 1.0
RETRY = 5.0  # seconds before asking again an edge that did not answer
WAIT = 30.0  # seconds an edge may hold an orders poll; it answers at once when it takes a new order


@dataclass(frozen=True)
class Answer:
    """One answer to ``GET /preheat/orders``: the orders (None: the edge did not answer), its interval, its version (long polls)."""

    orders: list[dict] | None
    interval: float | None = None
    version: int | None = None


class Volunteer:
    def __init__(self, peer: Peer, room: int):
        self.peer = peer
        self.room = room  # --accept-preheat: bytes of preheated content held at most
        self.held: dict[str, tuple[str, int]] = {}  # path -> (content id, size) taken on
        self.refused: set[str] = set()  # content ids logged as not fitting (once each)

    def used(self) -> int:
        return sum(size for _, size in self.held.values())

    async def leave(self, within: float) -> None:
        """At the peer's stop: tell each p2p edge this volunteer leaves (``leaving=1``), so that its places go to others
        now; a clean stop kept them three announce intervals, the orders short meanwhile (an adversarial session)."""
        target, edges = self._target(0) + "&leaving=1", self._edges()
        log.info("preheat: leaving the orders of %d edges (the peer stops)", len(edges))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                asks = (self.peer.upstream.get(e, target, self._headers(), timeout=within) for e in edges)
                await asyncio.gather(*asks, return_exceptions=True)

    def _target(self, room: int) -> str:
        return f"/preheat/orders?peer_id={quote(self.peer.peer_id, safe='')}&room={room}"

    def _headers(self) -> dict[str, str]:
        return {PEER_HEADER: self.peer.peer_id, **self.peer.edge_headers()}  # the edge takes orders' polls from peers only

    def _edges(self) -> list[str]:
        return [e for e in self.peer.edges if e in self.peer._p2p_edges]

    async def ask(self, edge: str, since: int | None = None) -> Answer:
        """The orders ``edge`` assigns this peer; with ``since``, held by the edge until it has a newer order (or WAIT)."""
        peer = self.peer
        target = self._target(max(0, self.room - self.used()))
        if self.refused:  # the orders it cannot hold: the edge gives their places to others (they were kept for good)
            target += "&declined=" + ",".join(sorted(self.refused)[:MAX_DECLINED])
        if since is not None:
            target += f"&since={since}&wait={WAIT:g}"
        try:
            reply = await peer.upstream.get(edge, target, self._headers(), timeout=WAIT + peer.upstream.timeout)
        except UpstreamError as exc:
            log.info("preheat orders from %s: %s", edge, exc.message)
            return Answer(None)
        if reply.status != 200:
            if reply.status not in (404, 405):  # an edge without --p2p, or from before preheat orders, has none
                log.info("preheat orders from %s: %d %s", edge, reply.status, said_in(reply.body))
                return Answer(None)
            return Answer([])
        try:
            doc = jsondoc.loads(reply.body)
            orders = [o for o in doc["orders"] if isinstance(o["path"], str) and isinstance(o["size"], int)]
            interval = float(doc.get("interval", 0)) or None
            version = doc.get("version")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad preheat orders from %s: %s", edge, exc)
            return Answer(None)
        return Answer(orders, interval, version if type(version) is int else None)

    async def take(self, order: dict) -> None:
        """Fetch and pin one assigned path, if it fits in the room left."""
        path = order["path"]
        signed = await self.peer.resolve(path)
        size, cid = signed.manifest.size, signed.content_id
        if order.get("content", cid) != cid:  # our manifest of it is older than the edge's order: taken at its next answer
            return
        if self.used() + size > self.room:
            self._decline(cid, f"preheat {path}: {size} bytes do not fit in the {self.room - self.used()} left of --accept-preheat")
            return
        store = await self.peer._store()
        if store.write_error is not None:  # a full disk: the order is declined, not fetched a piece every 10 s for a day
            self._unwritable(path, cid, store.write_error)
            return
        store.pinned.add(cid)
        self.held[path] = (cid, size)
        self.peer.swarm(signed).want_whole()
        log.info("preheat %s: fetching and seeding it for the region (%d bytes)", path, size)

    def _unwritable(self, path: str, cid: str, error: str) -> None:
        self._decline(cid, f"preheat {path}: declined, this peer's cache cannot be written ({error})")

    def _decline(self, cid: str, why: str) -> None:
        """Say (once) why ``cid``'s order is not held, and name it to the edges at the next poll (``declined``)."""
        if cid not in self.refused:
            log.info("%s", why)
            self.refused.add(cid)

    def drop(self, path: str) -> None:
        cid, _ = self.held.pop(path)
        store = self.peer.store
        if store is None or store.write_error is None:  # room freed: what did not fit may now (the edges hear of it)
            self.refused.clear()
        if store is not None:
            store.pinned.discard(cid)
        log.info("preheat %s: no longer ordered; unpinned (evictable)", path)

    async def run(self) -> None:
        """A poll held open at each p2p edge; new orders taken and withdrawn ones dropped as each edge answers."""
        peer = self.peer
        await peer.bound.wait()
        await peer._store()
        polls: dict[str, asyncio.Task[Answer]] = {}
        answers: dict[str, Answer] = {}
        try:
            while True:
                edges = self._edges()
                for edge in [e for e in polls if e not in edges]:
                    polls.pop(edge).cancel()
                    answers.pop(edge, None)
                for edge in edges:
                    if edge not in polls:
                        polls[edge] = asyncio.create_task(self._poll(edge, answers.get(edge)))
                if not polls:
                    await asyncio.sleep(MIN_WAIT)  # no p2p edge known yet
                    continue
                done, _ = await asyncio.wait(polls.values(), timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
                for edge in [e for e, task in polls.items() if task in done]:
                    answer = polls.pop(edge).result()
                    if answer.orders is None:  # the edge did not answer: its last orders stand, and it is asked again soon
                        answer = Answer(answers[edge].orders if edge in answers else None, RETRY)
                    answers[edge] = answer
                await self._follow([o for a in answers.values() for o in a.orders or ()])
        finally:
            for task in polls.values():
                task.cancel()

    async def _poll(self, edge: str, previous: Answer | None) -> Answer:
        """The edge's next answer: held by it when it knows long polls, else asked once its interval (or MIN_WAIT) is over."""
        if previous is not None and previous.version is None:
            await asyncio.sleep(max(MIN_WAIT, previous.interval or self.peer.schedule.interval_of(edge)))
        return await self.ask(edge, previous.version if previous is not None else None)

    async def _follow(self, orders: list[dict]) -> None:
        """Hold what ``orders`` name, and only that."""
        store = self.peer.store
        if store is not None and store.write_error is not None:  # the disk filled while fetching: give those up too
            for path, (cid, _) in list(self.held.items()):
                signed = store.manifest(cid)
                if signed is None or len(store.held(cid)) < signed.manifest.piece_count:  # not whole: it cannot be
                    self.drop(path)
                    if (swarm := self.peer.swarms.get(cid)) is not None:
                        self.peer.stop_swarm(swarm)  # else it went on taking a piece from the edge every 10 s
                    self._unwritable(path, cid, store.write_error)
        ordered = {o["path"]: o for o in orders}
        # a path no longer ordered, or ordered in another version (republished: the old one stayed pinned, and the new
        # one was never fetched: an adversarial session)
        for path in [p for p, (cid, _) in self.held.items() if p not in ordered or ordered[p].get("content", cid) != cid]:
            self.drop(path)
        for path, order in ordered.items():
            if path not in self.held:
                try:
                    await self.take(order)
                except Exception as exc:  # the path gone, an edge down: taken again at the edge's next answer
                    log.warning("preheat %s: %s", path, exc)
