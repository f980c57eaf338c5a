"""Relays for peers that cannot accept connections (issue 14, item 2): the edge's hub and the peer's client.

The wire format is ``edgeswarm.protocol.relay``'s.  On the edge, ``RelayHub``
takes each relayed peer's WebSocket (``GET /relay``) and passes its
neighbours' ``GET /relay/<id>/piece/..`` and ``/have/..`` down it, under
limits: relayed peers at once, requests in flight per peer (HAVE streams
apart), the exact piece length, a deadline for the answer's head and a
silence limit after it.  A peer whose WebSocket is gone is a quick 503.
A relayed peer's answer is vetted before it reaches the requester
(``relay.vet``: the statuses and headers an upload server really sends, a
body exactly as long as it says), and a peer that keeps sending bad frames
or answers loses its WebSocket.

On the peer, ``RelayClient`` keeps one WebSocket per tracking edge and
answers each request with its own upload server over loopback, so the
ticket check, the choker, the upload cap and the HAVE feed are the ones
every direct request meets.  The requester's address (as the edge saw it)
rides along in ``X-Edgeswarm-Relayed-For`` with a secret only this process
knows, so nobody else can make the upload server believe another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import Stopping, text_error
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.upstream import CHUNK
from edgeswarm.policy.ratelimit import TokenBucket
from edgeswarm.policy.tracker import address_group, limit_key, owner_of
from edgeswarm.protocol import havefeed, relay
from edgeswarm.protocol.httpspec import PEER_HEADER, retry_after

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from edgeswarm.protocol.manifest import SignedManifest
    from edgeswarm.roles.peer import Peer

log = logging.getLogger("edgeswarm.roles.relay")
HEARTBEAT = 15.0  # seconds between WebSocket pings: a dead link is found within two
SILENCE = 3 * havefeed.HEARTBEAT  # seconds a started answer may stay silent (a HAVE stream sends {} every 10 s)
# Bytes of an answer that may wait for its requester: a whole piece (its exact length), else (a HAVE stream) MAX_QUEUED;
# all of a relay's requests, HUB_QUEUED; past either the request is cut.  Cut at 256 KiB, pieces over it (files over
# 512 MiB) failed whenever the relayed peer sent faster than the edge wrote, half of 1 MiB pieces at loopback speed, and
# pausing the peer's link instead held every other request of that peer behind one requester that stopped reading
# (reviews).  A requester that takes nothing for WRITE_STALL seconds is cut too: its bytes wait no longer.
MAX_QUEUED = 4 * CHUNK
HUB_QUEUED = 64 * 1024 * 1024
WRITE_STALL = 15.0
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 300.0  # seconds an edge's Retry-After for a refused relay is kept at most
BAD_FRAMES = 10  # bad frames or refused answers a relayed peer may send before its WebSocket is closed


@dataclass(frozen=True)
class RelayLimits:
    """What one edge's relay takes (docs/configuration.md#relay)."""

    peers: int = 256  # relayed peers connected at once; 0: this edge relays nobody
    requests: int = 8  # piece (and plain /have) requests in flight per relayed peer
    streams: int = havefeed.MAX_SUBSCRIBERS  # HAVE streams open per relayed peer
    per_address: int = 16  # relayed peers per address (an IPv6 /64) or token user, as live peer ids per address
    timeout: float = 10.0  # seconds for the relayed peer's answer to start


@dataclass(eq=False)
class _Pending:
    """One request in flight down a relay: what came back for it, queued for the requester."""

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    queued: int = 0
    overflow: bool = False
    room: int = MAX_QUEUED  # the most ``queued`` may be (the answer's whole length, for a piece)


@dataclass(eq=False)
class _Link:
    """One relayed peer's WebSocket."""

    rid: str
    peer_id: str
    group: str
    ws: web.WebSocketResponse
    pending: dict[int, _Pending] = field(default_factory=dict)
    next_id: int = 0
    requests: int = 0
    streams: int = 0
    bad: int = 0  # bad frames and refused answers so far (BAD_FRAMES closes the WebSocket)
    since: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RelayHub:
    """The edge's side: relayed peers' WebSockets, and their neighbours' requests passed down them."""

    def __init__(
        self,
        limits: RelayLimits,
        manifest: Callable[[str], SignedManifest | None],
        bucket: TokenBucket | None = None,
        unknown_piece_limit: int | None = None,
    ):
        self.limits = limits
        self.unknown_piece_limit = unknown_piece_limit  # a promoted peer's relay: pieces of contents it does not hold, up to this
        self.manifest = manifest  # the edge's store lookup: a piece's exact length bounds its answer
        self.bucket = bucket  # the edge's --upload-limit: relayed bytes are its egress too
        self.queued = 0  # bytes of every request's answer waiting for its requester (HUB_QUEUED at most)
        self.links: dict[str, _Link] = {}
        self.bytes: Counter[str] = Counter()  # "out" to requesters, "in" from relayed peers
        self.events: Counter[str] = Counter()  # requests, refusals and failures by kind
        self.quiet = ThrottledLog(log, Throttle(burst=5, interval=60.0))  # a hostile peer's bad frames: a few lines
        self.stopping = False  # close() ran: the relays end because this edge stops, not because their peers left

    @staticmethod
    def relay_id(address: str, user: str | None, peer_id: str) -> str:
        return relay.relay_id(address_group(address), owner_of(address, user), peer_id)

    def url_for(self, base: str, address: str, user: str | None, peer_id: str) -> str:
        """The URL the tracker hands out for a relayed peer: this edge, as the peer reached it, and the peer's relay id."""
        return f"{base.rstrip('/')}/relay/{self.relay_id(address, user, peer_id)}"

    # -- the relayed peer's WebSocket ----------------------------------------------------
    async def connect(self, request: web.Request, user: str | None) -> web.WebSocketResponse:
        """``GET /relay`` (WebSocket): a peer that cannot be reached offers to answer its neighbours through this edge."""
        peer_id = request.headers.get(PEER_HEADER, "")
        if not 0 < len(peer_id) <= 64 or not peer_id.isprintable():
            raise HttpError(400, f"a relay needs the peer's id in {PEER_HEADER} (1-64 printable characters)")
        address = request.remote or ""
        # counted as the tracker counts live ids: a token user apart from its address (token users behind one
        # carrier-grade NAT address shared its 16 relay places: an adversarial session)
        rid, group = self.relay_id(address, user, peer_id), limit_key(address, user)
        old = self.links.get(rid)
        if old is None:
            if len(self.links) >= self.limits.peers:
                self.events["refused_full"] += 1
                raise HttpError(503, f"this edge relays {self.limits.peers} peers already", {"Retry-After": "30"})
            if sum(link.group == group for link in self.links.values()) >= self.limits.per_address:
                self.events["refused_address"] += 1
                raise HttpError(429, f"{group} has {self.limits.per_address} relayed peers already", {"Retry-After": "30"})
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=relay.MAX_FRAME)
        await ws.prepare(request)
        link = self.links[rid] = _Link(rid, peer_id, group, ws)
        if old is not None:  # the same peer again (a reconnect): the new link wins
            await old.ws.close(message=b"replaced by a new relay connection")
        log.info("relaying peer %s (%s) as %s", peer_id[:64], address, rid)
        try:
            async for msg in ws:
                bad = None
                if msg.type == aiohttp.WSMsgType.BINARY:
                    bad = self._data(link, msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    bad = self._frame(link, msg.data)
                if bad is not None:
                    await self._strike(link, f"a bad frame: {bad}")
        finally:
            if self.links.get(rid) is link:
                del self.links[rid]
            for pending in link.pending.values():
                pending.queue.put_nowait(relay.End(-1, "the relayed peer disconnected"))
            log.info("relayed peer %s (%s) left", peer_id[:64], rid)
        return ws

    def _data(self, link: _Link, message: bytes) -> str | None:
        """A chunk of an answer, queued for its requester; what is wrong with the frame, if it is bad."""
        try:
            fid, chunk = relay.split_data(message)
        except ValueError as exc:
            return str(exc)
        pending = link.pending.get(fid)
        if pending is None or pending.overflow:
            return None  # a request already over: its late chunks are dropped
        self.bytes["in"] += len(chunk)
        if pending.queued + len(chunk) > pending.room or self.queued + len(chunk) > HUB_QUEUED:
            pending.overflow = True  # never buffer without bound: cut it
            pending.queue.put_nowait(b"")  # its requester's loop wakes to the cut, even with nothing else queued
            return None
        pending.queued += len(chunk)
        self.queued += len(chunk)
        pending.queue.put_nowait(chunk)
        return None

    def _frame(self, link: _Link, text: str) -> str | None:
        """A head or an end, queued for its requester; what is wrong with the frame, if it is bad."""
        try:
            frame = relay.decode(text)
        except ValueError as exc:
            return str(exc)
        pending = link.pending.get(frame.id)
        if pending is not None and isinstance(frame, relay.Head | relay.End):
            pending.queue.put_nowait(frame)
        return None

    async def _strike(self, link: _Link, why: str) -> None:
        """One more bad frame or refused answer from ``link``'s peer: a rate-limited line; at BAD_FRAMES, its WebSocket closed.

        A relayed peer that sends garbage is broken or hostile; either way it
        must not cost the edge a log line per frame (a flood of them was
        megabytes a second) nor keep a relay that serves nobody right.
        """
        link.bad += 1
        self.events["bad_frames"] += 1
        self.quiet.flush()
        self.quiet.log(logging.INFO, "bad relay frames", "relayed peer %s sent %s", link.rid, why)
        if link.bad == BAD_FRAMES and not link.ws.closed:
            self.events["closed_bad_frames"] += 1
            self.quiet.log(logging.WARNING, "relays closed", "relayed peer %s: closing its relay after %d bad frames", link.rid, link.bad)
            reason = f"{BAD_FRAMES} bad frames or answers, the last {why}"
            await link.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:120])

    # -- the neighbours' requests ----------------------------------------------------------
    async def forward(self, request: web.Request) -> web.StreamResponse:
        """``GET /relay/<id>/piece/..`` or ``/have/..``: passed to the relayed peer, its answer vetted and passed back."""
        rid, tail = request.match_info["rid"], "/" + request.match_info["tail"]
        if request.method != "GET":  # a HEAD's answer has no body: the relayed peer's would be read as the next answer
            raise HttpError(405, "a relay passes GET requests only", {"Allow": "GET"})
        if not relay.PATH.fullmatch(tail):
            raise HttpError(404, f"a relay passes /piece/<id>/<index> and /have/<id> only, not {tail[:80]}")
        link = self.links.get(rid)
        if link is None or link.ws.closed:
            self.events["not_connected"] += 1
            raise HttpError(503, f"peer {rid[:40]} is not connected to this relay", {"Retry-After": "5"})
        limit = self._body_limit(tail)
        stream = tail.startswith("/have/") and havefeed.CONTENT_TYPE in request.headers.get("Accept", "")
        if stream and link.streams >= self.limits.streams:
            self.events["refused_busy"] += 1
            raise HttpError(429, f"relayed peer {rid} has {self.limits.streams} HAVE streams open", {"Retry-After": "30"})
        if not stream and link.requests >= self.limits.requests:
            self.events["refused_busy"] += 1
            raise HttpError(429, f"relayed peer {rid} has {self.limits.requests} requests in flight", {"Retry-After": "1"})
        fid, link.next_id = link.next_id, (link.next_id + 1) % (1 << 32)
        pending = link.pending[fid] = _Pending(room=MAX_QUEUED if stream else max(MAX_QUEUED, limit))
        if stream:
            link.streams += 1
        else:
            link.requests += 1
        self.events["streams" if stream else "requests"] += 1
        ended = False
        try:
            headers = relay.pick(request.headers, relay.REQUEST_HEADERS)
            await self._send(link, relay.encode(relay.Request(fid, tail, headers, request.remote or "")))
            head = await self._head(pending, rid)
            try:
                passed, length = self._vet(head, tail, limit, stream)
            except ValueError as exc:
                await self._strike(link, f"an answer that was refused ({exc})")
                return self._refuse(rid, str(exc))
            resp = web.StreamResponse(status=head.status, headers=passed)
            if length is not None:
                resp.content_length = length  # a body of another length is cut, never passed on whole
            await resp.prepare(request)
            ended = await self._body(resp, pending, length, self._cap(head.status, limit, stream), link)
            return resp
        finally:
            link.pending.pop(fid, None)
            self.queued -= pending.queued  # what its requester will not take now
            if stream:
                link.streams -= 1
            else:
                link.requests -= 1
            if not ended and not link.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send(link, relay.encode(relay.Cancel(fid)))

    def _vet(self, head: relay.Head, tail: str, limit: int, stream: bool) -> tuple[dict[str, str], int | None]:
        """The headers and exact body length to answer with (None: chunked); ValueError if the answer may not pass.

        Beyond ``relay.vet``: a piece of a content known here is exactly its
        manifest's length, whatever the peer says; any other answer is as long
        as its Content-Length says, never more than its cap (``_cap``).
        """
        headers, length = relay.vet(head)
        if head.status == 200 and tail.startswith("/piece/") and self.manifest(tail.split("/")[2]) is not None:
            if length not in (None, limit):
                raise ValueError(f"a Content-Length of {length} for a {limit}-byte piece")
            return headers, limit
        cap = self._cap(head.status, limit, stream)
        if length is not None and cap is not None and length > cap:
            raise ValueError(f"a Content-Length of {length}, over the {cap} bytes such an answer may have")
        return headers, length

    @staticmethod
    def _cap(status: int, limit: int, stream: bool) -> int | None:
        """The most bytes an answer may carry: a HAVE stream no bound (it lives on), a 200 the request's, else an error's text."""
        if status != 200:
            return relay.MAX_SMALL_BODY
        return None if stream else limit

    def _refuse(self, rid: str, why: str) -> web.Response:
        """A 502 for an answer that may not be passed on, closing the requester's connection.

        Nothing of the answer was sent; the connection is closed all the same,
        so whatever the relayed peer sends next can never be read on it.
        """
        self.events["refused_answer"] += 1
        resp = text_error(502, f"relayed peer {rid}: its answer was refused: {why}")
        resp.force_close()
        return resp

    def _body_limit(self, tail: str) -> int:
        """The most an answer may carry: a piece's exact length (its content must be known here), else 64 KiB."""
        parts = tail.split("/")
        if parts[1] != "piece":
            return relay.MAX_SMALL_BODY
        signed = self.manifest(parts[2])
        index = int(parts[3])
        if signed is None and self.unknown_piece_limit is not None:
            return self.unknown_piece_limit  # the requester verifies the piece against its manifest, as ever
        if signed is None or index >= signed.manifest.piece_count:
            raise HttpError(404, f"content {parts[2][:12]} or its piece {index} is not known to this relay")
        return signed.manifest.piece_span(index)[1]

    async def _send(self, link: _Link, text: str) -> None:
        async with link.lock:
            await link.ws.send_str(text)

    async def _head(self, pending: _Pending, rid: str) -> relay.Head:
        try:
            async with asyncio.timeout(self.limits.timeout):
                item = await pending.queue.get()
        except TimeoutError:
            self.events["timeout"] += 1
            raise HttpError(504, f"relayed peer {rid} did not answer within {self.limits.timeout:g} s") from None
        if isinstance(item, relay.Head):
            return item
        if self.stopping:
            raise Stopping()
        self.events["failed"] += 1
        why = item.error if isinstance(item, relay.End) and item.error else "no answer"
        raise HttpError(502, f"relayed peer {rid}: {why}")

    async def _body(self, resp: web.StreamResponse, pending: _Pending, length: int | None, cap: int | None, link: _Link) -> bool:
        """Copy the answer's body to the requester; True when it ended cleanly.  Cut (after the head) on any breach.

        ``length``: what the head declared (None: chunked), which the body
        must match exactly; ``cap``: the most a chunked one may carry.  A cut
        (an HttpError here) aborts the requester's connection
        (``daemon.cut_after_start``): no byte past the answer is ever read as
        another one.
        """
        rid, most, sent = link.rid, length if length is not None else cap, 0
        while True:
            if pending.overflow:
                raise HttpError(502, f"cut: more of relayed peer {rid}'s answers waits for their requesters than the relay keeps")
            try:
                async with asyncio.timeout(SILENCE):
                    item = await pending.queue.get()
            except TimeoutError:
                self.events["timeout"] += 1
                raise HttpError(504, f"cut: relayed peer {rid} went silent") from None
            if isinstance(item, relay.End):
                if item.error and self.stopping:
                    raise Stopping()
                if item.error:
                    self.events["failed"] += 1
                    raise HttpError(502, f"cut: relayed peer {rid}: {item.error}")
                if length is not None and sent != length:
                    await self._strike(link, f"an answer of {sent} bytes, not the {length} it declared")
                    raise HttpError(502, f"cut: relayed peer {rid} sent {sent} bytes of the {length} it declared")
                await resp.write_eof()
                return True
            if isinstance(item, relay.Head):
                await self._strike(link, "a second head for one request")
                raise HttpError(502, f"cut: relayed peer {rid} sent a second head")
            if isinstance(item, bytes):
                pending.queued -= len(item)
                self.queued -= len(item)
                sent += len(item)
                if most is not None and sent > most:
                    await self._strike(link, f"an answer over its {most} bytes")
                    raise HttpError(502, f"cut: relayed peer {rid} sent more than the {most} bytes its answer may have")
                if self.bucket is not None:
                    await self.bucket.throttle(len(item))
                try:
                    async with asyncio.timeout(WRITE_STALL):
                        await resp.write(item)
                except TimeoutError:
                    raise HttpError(502, f"cut: the requester of relayed peer {rid} took nothing for {WRITE_STALL:g} s") from None
                self.bytes["out"] += len(item)

    def status(self) -> dict:
        return {
            "peers": len(self.links),
            "requests_in_flight": sum(link.requests for link in self.links.values()),
            "streams_open": sum(link.streams for link in self.links.values()),
            "bytes_out": self.bytes["out"],
            "bytes_in": self.bytes["in"],
            "events": dict(self.events),
        }

    async def close(self, stopping: bool = False) -> None:
        """End every relay; ``stopping``: because this node stops (its streams' ends are said so, not as failures), not
        a peer's demotion, which goes on serving (a review: a demoted peer's relay answered "this node is stopping")."""
        self.stopping = stopping
        for link in list(self.links.values()):
            await link.ws.close(message=b"relay shutting down")


class RelayClient:
    """The peer's side: a WebSocket to each tracking edge, answering what comes down it with our own upload server."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.secret = secrets.token_hex(16)  # proves a relayed request came through us (X-Edgeswarm-Relayed-For)
        self.connected: dict[str, bool] = {}  # edge (or promoted peer) -> its relay is up
        self.via: dict[str, str | None] = {}  # edge -> the promoted peer of our region it told us to hold a relay at
        self.served: Counter[str] = Counter()  # requests answered, by kind
        self.quiet = ThrottledLog(log, Throttle(burst=5, interval=60.0))  # a hostile relay's (a promoted peer's) bad frames
        self._tasks: dict[str, asyncio.Task] = {}
        self._session: aiohttp.ClientSession | None = None

    async def wait_connected(self, seconds: float) -> None:
        """Until some relay is open, or ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while not any(self.connected.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def trusted(self, value: str) -> str | None:
        """The requester's address from an ``X-Edgeswarm-Relayed-For`` value, if it carries our secret; else None."""
        secret, _, address = value.partition(" ")
        return address if address and hmac.compare_digest(secret, self.secret) else None

    async def run(self, edges: Callable[[], set[str]]) -> None:
        """Keep a relay to every edge ``edges()`` names (the tracking edges change with the router), for good."""
        bind = self.peer.upstream.bind
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(bind, 0) if bind else None, ssl=self.peer.upstream.ssl or True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        try:
            while True:
                wanted = edges() | {url for url in self.via.values() if url}
                for edge in wanted - set(self._tasks):
                    self._tasks[edge] = asyncio.create_task(self._keep(edge))
                for edge in set(self._tasks) - wanted:
                    self._tasks.pop(edge).cancel()
                    self.connected.pop(edge, None)
                await asyncio.sleep(1.0)
        finally:
            self.connected.clear()  # stopping: every relay closes, and none is a loss to announce around (_lost)
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self._session.close()

    async def _keep(self, edge: str) -> None:
        """One edge's relay: open, serve, reopen after 1, 2, 4... s (up to 30) when it fails."""
        failures = 0
        while True:
            wait = 0.0  # what the edge asked for (Retry-After), if it refused us
            try:
                served = await self._serve(edge)
                failures = 0 if served else failures + 1
            except aiohttp.WSServerHandshakeError as exc:  # the edge refused: its status and wait, not aiohttp's words
                failures += 1
                wait = min(float(retry_after(exc.headers or {}, 4) or 0), RETRY_AFTER_MAX)
                log.info("relay at %s refused: %s%s", edge, exc.status, f"; asked to wait {wait:g} s" if wait else "")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                log.info("relay at %s: %s", edge, exc)
            self.connected[edge] = False
            # an edge's Retry-After is kept (a relay slot refused, 429: its 30 s were 1, 2, 4, 8 s: an adversarial session)
            await asyncio.sleep(max(wait, min(BACKOFF_MAX, 2 ** max(0, failures - 1)) if failures else 0.5))

    async def _serve(self, edge: str) -> bool:
        """One WebSocket's life; True if it was open (the edge took us)."""
        assert self._session is not None
        credentials = self.peer.edge_headers() if edge in self.peer.edges else {}  # a promoted peer never sees our token
        headers = {PEER_HEADER: self.peer.peer_id, **credentials}
        async with asyncio.timeout(self.peer.upstream.timeout):
            ws = await self._session.ws_connect(f"{edge}/relay", headers=headers, heartbeat=HEARTBEAT, max_msg_size=relay.MAX_FRAME)
        lock, tasks = asyncio.Lock(), dict[int, asyncio.Task]()
        self.connected[edge] = True
        log.info("relay open at %s: neighbours reach this peer through it", edge)
        # the edge hands our relay URL out from our announce: a restarted edge (it keeps no relayed peer) learned us
        # only at our next full one, an interval later, and its viewers took everything from it meanwhile (a review)
        self.peer.reintroduce(edge)
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = relay.decode(msg.data)
                except ValueError as exc:
                    self.quiet.flush()
                    self.quiet.log(logging.INFO, "bad relay frames", "relay %s sent a bad frame: %s", edge, exc)
                    continue
                if isinstance(frame, relay.Cancel) and frame.id in tasks:
                    tasks[frame.id].cancel()
                elif isinstance(frame, relay.Request):
                    task = tasks[frame.id] = asyncio.create_task(self._answer(ws, lock, frame))
                    task.add_done_callback(functools.partial(_forget, tasks, frame.id))
        finally:
            self._lost(edge)
            for task in list(tasks.values()):
                task.cancel()
            await ws.close()
        return True

    def _lost(self, edge: str) -> None:
        """Our relay at ``edge`` closed (the edge died, or left the router's list): every edge where ours is still open
        hears every content now.  Edges sharing a tracker store keep one record of us, naming the relay of the edge that
        took our last announce; that edge killed, the others handed us out at its dead relay until our next full
        announce, 300 s later at the defaults, while we held a live relay at each of them (an adversarial session)."""
        if edge in self.connected:  # not when run() dropped the edge: gone from status, not shown as down
            self.connected[edge] = False  # before the announces it wakes: relay_at names no promoted peer we lost
        others = [other for other, up in self.connected.items() if up and other in self.peer.edges]  # no promoted peer
        if others:
            log.info("relay at %s closed: announcing again to %s, where ours is open", edge, ", ".join(sorted(others)))
        for other in others:
            self.peer.reintroduce(other)

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, lock: asyncio.Lock, req: relay.Request) -> None:
        """One request, answered by our upload server over loopback, its answer streamed up the relay."""
        assert self._session is not None

        async def send(message: str | bytes) -> None:
            async with lock:
                await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))

        host = self.peer.loopback_host()
        url = f"http://{host}:{self.peer.upload_port}{req.path}"
        headers = {**req.headers, relay.RELAYED_FOR_HEADER: f"{self.secret} {req.remote}"}
        self.served["piece" if req.path.startswith("/piece/") else "have"] += 1
        try:
            async with self._session.get(url, headers=headers) as resp:
                await send(relay.encode(relay.Head(req.id, resp.status, relay.pick(resp.headers, relay.RESPONSE_HEADERS))))
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await send(relay.data_frame(req.id, chunk))
            await send(relay.encode(relay.End(req.id)))
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await send(relay.encode(relay.End(req.id, f"the peer's upload server failed: {exc.__class__.__name__}")))

    def relay_at(self, edge: str) -> str | None:
        """The promoted peer ``edge`` named whose relay we hold open now (said in announces to ``edge``)."""
        via = self.via.get(edge)
        return via if via and self.connected.get(via) else None

    def status(self) -> dict:
        return {"edges": dict(self.connected), "via": dict(self.via), "served": dict(self.served)}


def _forget(tasks: dict[int, asyncio.Task], fid: int, _: asyncio.Task) -> None:
    tasks.pop(fid, None)


def relayed_middleware(client: RelayClient | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The upload server's view of a relayed request: the requester's address, not our loopback's.

    Only a request carrying our relay client's secret is believed; any other
    ``X-Edgeswarm-Relayed-For`` is a 403.
    """

    @web.middleware
    async def relayed(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        value = request.headers.get(relay.RELAYED_FOR_HEADER)
        if value is None:
            return await handler(request)
        address = client.trusted(value) if client is not None else None
        if address is None:
            raise HttpError(403, f"{relay.RELAYED_FOR_HEADER} is set by this peer's own relay client only")
        clone = request.clone(remote=address)
        try:
            return await handler(clone)
        finally:
            request.update(clone)  # whether the answer started: what cut_after_start and the error handler read

    return relayed
