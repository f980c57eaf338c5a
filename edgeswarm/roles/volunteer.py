"""A peer that volunteers for preheating: it asks its edges for orders and fetches and seeds what it is given.

Only with ``--accept-preheat SIZE``: the user's disk and uplink are the
user's, so a peer takes no orders by default, and with the flag never more
than SIZE bytes of preheated content at once (its ``--upload-limit`` still
caps what it sends).  Every announce interval it asks each tracking edge
``GET /preheat/orders`` with the room it has left; each assigned path is
fetched through the swarm like a ``--seed`` path and pinned against eviction
while the order stands.  When an edge stops listing it (the order expired,
or this peer was not chosen any more) it is unpinned: the pieces stay until
the cache needs the room (docs/protocol.md#preheating-peers).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

from edgeswarm.node.upstream import UpstreamError

if TYPE_CHECKING:
    from edgeswarm.roles.peer import Peer

log = logging.getLogger("edgeswarm.roles.volunteer")
MIN_WAIT = 1.0


class Volunteer:
    def __init__(self, peer: Peer, room: int):
        self.peer = peer
        self.room = room  # --accept-preheat: bytes of preheated content held at most
        self.held: dict[str, tuple[str, int]] = {}  # path -> (content id, size) taken on
        self.refused: set[str] = set()  # content ids logged as not fitting (once each)

    def used(self) -> int:
        return sum(size for _, size in self.held.values())

    async def ask(self, edge: str) -> tuple[list[dict], float | None]:
        """The orders ``edge`` assigns this peer, and its interval; none from an edge that takes no orders."""
        peer = self.peer
        target = f"/preheat/orders?peer_id={quote(peer.peer_id, safe='')}&room={max(0, self.room - self.used())}"
        try:
            reply = await peer.upstream.get(edge, target, peer.edge_headers())
        except UpstreamError as exc:
            log.info("preheat orders from %s: %s", edge, exc.message)
            return [], None
        if reply.status != 200:
            if reply.status not in (404, 405):  # an edge without --p2p, or from before preheat orders, has none
                log.info("preheat orders from %s: %d %s", edge, reply.status, reply.body[:200].decode(errors="replace").strip())
            return [], None
        try:
            doc = json.loads(reply.body)
            orders = [o for o in doc["orders"] if isinstance(o["path"], str) and isinstance(o["size"], int)]
            interval = float(doc.get("interval", 0)) or None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad preheat orders from %s: %s", edge, exc)
            return [], None
        return orders, interval

    async def take(self, order: dict) -> None:
        """Fetch and pin one assigned path, if it fits in the room left."""
        path = order["path"]
        signed = await self.peer.resolve(path)
        size, cid = signed.manifest.size, signed.content_id
        if self.used() + size > self.room:
            if cid not in self.refused:
                log.info("preheat %s: %d bytes do not fit in the %d left of --accept-preheat", path, size, self.room - self.used())
                self.refused.add(cid)
            return
        store = await self.peer._store()
        store.pinned.add(cid)
        self.held[path] = (cid, size)
        self.peer.swarm(signed).want_whole()
        log.info("preheat %s: fetching and seeding it for the region (%d bytes)", path, size)

    def drop(self, path: str) -> None:
        cid, _ = self.held.pop(path)
        store = self.peer.store
        if store is not None:
            store.pinned.discard(cid)
        log.info("preheat %s: no longer ordered; unpinned (evictable)", path)

    async def run(self) -> None:
        """Ask every interval; take new orders, drop withdrawn ones."""
        peer = self.peer
        await peer.bound.wait()
        await peer._store()
        while True:
            edges = [e for e in peer.edges if e in peer._p2p_edges]
            answers = await asyncio.gather(*(self.ask(e) for e in edges))
            ordered = {o["path"]: o for orders, _ in answers for o in orders}
            for path in [p for p in self.held if p not in ordered]:
                self.drop(path)
            for path, order in ordered.items():
                if path not in self.held:
                    try:
                        await self.take(order)
                    except Exception as exc:  # the path gone, an edge down: asked again next time
                        log.warning("preheat %s: %s", path, exc)
            intervals = [i for _, i in answers if i]
            await asyncio.sleep(max(MIN_WAIT, min(intervals, default=peer.schedule.interval)))
