"""An edge of several processes (``edge --workers N``) that looks like one edge from outside.

node/workers.py forks the workers; each runs a whole ``Edge`` on the shared
port (SO_REUSEPORT).  What they share, and how:

- the cache directory: each worker has its own view of it (store/piecestore.py
  says how writes, quota and eviction stay sound across processes), and a
  piece missed by several workers at once is fetched by one of them
  (store/filllock.py);
- the ledger: each adds its own counts with an UPSERT that adds bytes, as
  several edges sharing one database do (store/ledger.py);
- the swarm, tickets and seeding state: worker 0, the primary, owns them.  The
  others forward what reads or changes them - announces (peers' and
  BitTorrent clients'), ``/seed``, a peer's ``/piece`` (a copy in its region),
  ``/torrent`` and ``/magnet`` (the info hashes announces name), relayed
  peers' WebSockets and the requests relayed to them, preheat orders - to the
  primary over a private unix socket, with the client's address in
  ``FORWARDED_FOR``.  So the default memory tracker store is one swarm, and a
  Redis one is too;
- live playlists: every worker's requests for one are answered by the
  primary, so that concurrent requests collapse into one upstream fetch;
- ``/status`` and ``/metrics``: forwarded to the primary, which adds up every
  worker's own figures (asked of each worker's private socket) into one answer.

Every answer carries ``WORKER_HEADER``: the worker whose connection it came
on.  The private sockets live in a 0700 directory, so only this user can
forward a client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgeswarm.node import collector, workers
from edgeswarm.node.carried import Carried
from edgeswarm.node.daemon import (
    BACKLOG,
    ServerLimits,
    Servers,
    client_gone,
    drain_then,
    gone_how,
    shown,
    stop_signal,
    tag_log_lines,
    text_error,
)
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.metrics import Collected
from edgeswarm.node.registrar import Registration
from edgeswarm.node.sharedbucket import SharedTokenBucket
from edgeswarm.policy.live import is_playlist
from edgeswarm.policy.regions import url_host
from edgeswarm.protocol import relay
from edgeswarm.protocol.httpspec import PEER_HEADER
from edgeswarm.protocol.wire import json_response, status_limit
from edgeswarm.roles import edge as edge_role
from edgeswarm.roles.announce import STATUS_STORE_WAIT
from edgeswarm.roles.config import EdgeConfig
from edgeswarm.store import cachelock
from edgeswarm.store.filllock import FillLocks
from edgeswarm.store.ledger import LedgerError
from edgeswarm.trust.signing import KeyFileError, load_or_create_private_key

log = logging.getLogger("edgeswarm.roles.edge")
FORWARDED_FOR = "X-Edgeswarm-Forwarded-For"  # trusted only on the private unix socket
REACHED_AT = "X-Edgeswarm-Reached-At"  # the edge's address as the client reached it; trusted only on the private unix socket
WORKER_HEADER = "X-Edgeswarm-Worker"  # the index of the worker that took the client's connection
# a worker's /metrics on its private socket: when its process started (Metrics.started, its /status "started"), for the
# merge to tell its restart by, as /status does.  Not process_start_time_seconds: without /proc there is none, and no
# restart was ever seen; and it is of /proc/stat btime, which a clock step moves: prometheus_client reads it once per
# process, were it read at each scrape, every worker would look restarted at each step (its counts added twice)
STARTED_HEADER = "X-Edgeswarm-Worker-Started"
UNANSWERED_SAID_AFTER = 1.0  # seconds before a worker says the primary did not answer: by then it knows if the edge stops
SIBLING_WAIT_S = 5.0  # beyond the parent's timeout: the siblings asked first, and the write
# seconds a worker waits for another's /status or /metrics (the primary's whole answer, or a worker's own figures)
# before it answers without them: a worker hung by SIGSTOP (or swapping) held /status 60 s, past a router's 1 s poll,
# which took the edge out of rotation while the other worker served every file, and /metrics 10 s, Prometheus' scrape
# timeout (adversarial sessions)
STATUS_WAIT_S = 0.5
# ... and for the primary's whole /status or /metrics, which itself waits up to STATUS_STORE_WAIT for the tracker store:
# at 0.5 s a hung Redis's answer (its store_error) was cut, and the worker answered with its own figures that said
# nothing of it
PRIMARY_STATUS_WAIT_S = STATUS_STORE_WAIT + 0.25
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer", "proxy-connection"}
# /metrics gauges merged by their largest value, not added up: those every worker reports alike, and its open files,
# which each worker has against a limit of its own (process_max_fds): a sum read N times fuller than any worker was
_LARGEST_GAUGES = {"edgeswarm_cache_max_bytes", "python_info", "process_max_fds", "process_open_fds"}


def worker_count(config: EdgeConfig) -> int:
    return config.workers if config.workers is not None else workers.usable_cores()


def run(
    config: EdgeConfig,
    listen: tuple[str, int],
    access_log: bool,
    ssl_context=None,
    limits: ServerLimits | None = None,
    registration: Registration | None = None,
) -> int:
    """``edgeswarm edge``: one process as ever with one worker, else a supervisor and its workers."""
    count = worker_count(config)
    if count == 1:
        with cachelock.held(config.cache, "edge"):
            asyncio.run(edge_role.run(edge_role.Edge(config), listen, access_log, ssl_context, limits, registration))
        return 0
    cachelock.hold(config.cache, "edge")  # an unusable cache, or one in use, stops the edge here; the workers share the lock
    load_or_create_private_key(config.cache / "swarm.key")  # created once, here, not raced by the workers
    try:
        keep = workers.reserve_port(*listen)
    except OSError as exc:
        raise SystemExit(f"edgeswarm edge: cannot listen on {url_host(listen[0])}:{listen[1]}: {exc.strerror or exc}") from None
    rundir = workers.private_dir("edge")
    try:
        with keep:
            host, port = keep.getsockname()[:2]  # port 0 -> the real one, and the address as bound

            def work(slot: workers.Slot) -> int:
                keep.close()
                tag_log_lines(f"worker {slot.index}")
                try:
                    asyncio.run(_worker(slot, config, access_log, ssl_context, limits, registration if slot.index == 0 else None))
                except (KeyFileError, LedgerError, OSError, ValueError) as exc:  # as cli/__init__.py says them
                    print(f"edgeswarm edge: {exc}", file=sys.stderr)
                    return 2
                return 0

            def listening() -> None:
                shown = url_host(host)
                scheme = "https" if ssl_context is not None else "http"
                logging.getLogger("edgeswarm").info("edge listening on %s://%s:%d (%d workers)", scheme, shown, port, count)

            return workers.Supervisor("edge", count, listen[0], port, rundir, work, listening).run()
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


async def _worker(
    slot: workers.Slot,
    config: EdgeConfig,
    access_log: bool,
    ssl_context,
    limits: ServerLimits | None,
    registration: Registration | None,
) -> None:
    """One worker: a whole edge on the shared port, its private socket, and (primary) the door for forwarded requests."""
    # the swarm is the primary's: the others forward to it, and keep an empty memory store (no Redis connection of their own)
    store = config.tracker_store if slot.index == 0 else "memory"
    bucket = SharedTokenBucket(os.path.join(slot.rundir, "upload.bucket"), config.upload_limit)  # one cap for all workers
    node = edge_role.Edge(dataclasses.replace(config, tracker_store=store), bucket)
    node.pinned.worker = (slot.index, slot.count)
    node.pinned.counts_found = slot.restarted
    node.forwards_tracker = slot.index != 0  # its empty store is no tracker's: "tracker store: memory" beside Redis misled
    # a content's series is the sum of every worker's, and each drops a content on its own: one forgetting it would make
    # the merged counter go down, which Prometheus takes for a reset (an adversarial review); so workers keep theirs
    node.pinned.on_drop = lambda cid: None
    node.fill_locks = FillLocks(config.cache, config.timeout + SIBLING_WAIT_S)
    link = WorkerLink(node, slot, config.upload_limit)
    app = node.app()
    link.install(app)
    if registration is not None:
        registration.attach(app)
    collector.tune()  # as serve_many does for a daemon of one process
    servers = Servers("edge", access_log, ssl_context, limits, reuse_port=True)
    private = web.AppRunner(link.private_app(), handle_signals=False, access_log=None)
    try:
        bound = await servers.start([(app, slot.host, slot.port, "")])
        if slot.index == 0:
            await servers.add_unix(slot.primary_path)
            servers.watch_certificate()  # said once for the edge, not by each worker
        await private.setup()
        await web.UnixSite(private, slot.socket_path(slot.index), backlog=BACKLOG).start()
        if registration is not None:
            registration.on_bound("https" if ssl_context is not None else "http", *bound[""])
        log.info("edge worker %d of %d (pid %d) serving", slot.index, slot.count, os.getpid())
        workers.ready()
        beating = asyncio.create_task(workers.heartbeat())  # kept until the worker ends, cancelled below
        await stop_signal()
        link.stop()
        if registration is not None:  # the primary: its routers take the edge out, the other workers' ports closing
            await drain_then(servers, registration.drain)
        beating.cancel()
    finally:
        await private.cleanup()
        await servers.close()
        await link.close()
        node.fill_locks.close()
        bucket.close()


class WorkerLink:
    """One worker's ties to the others: forwarding to the primary, and the figures it adds up."""

    def __init__(self, node: edge_role.Edge, slot: workers.Slot, cap: int | None):
        self.node, self.slot = node, slot
        self.cap = cap  # --upload-limit, as /status shows it (every worker shares the one bucket: not a sum of theirs)
        self.primary = slot.index == 0
        self.stopping = False  # the edge is stopping: the primary is expected not to answer
        self._session: aiohttp.ClientSession | None = None
        self._private: dict[int, aiohttp.ClientSession] = {}
        # the primary's silence, not the whole exchange: an answer is passed on as the client takes it, and a slow peer
        # taking a 64 MiB piece would be cut at a total; while the client does not read, the primary is not read either.
        # No shorter than the primary's own longest wait upstream, a torrent the origin is still hashing: at 60 s, the
        # other workers answered 503 blaming a healthy primary that answered 200 at 75 s (an adversarial session); a
        # hung primary is the watchdog's to restart (node/workers.py), which ends the wait at once
        self.wait = max(60.0, 3 * node.config.timeout, edge_role.TORRENT_TIMEOUT + SIBLING_WAIT_S)
        self.timeout = aiohttp.ClientTimeout(total=None, connect=self.wait, sock_read=self.wait)
        # 5 lines a minute of the primary's failures to answer: under a flood, 100 lines in a second (an adversarial session)
        self.quiet = ThrottledLog(log, Throttle(burst=5, interval=60.0))
        self._carried: dict[str, Carried] | None = None  # the primary's: /metrics and /status counters across restarts
        self._unsaid: list[tuple[str, str]] = []  # (request, why) the primary did not answer, to be said (_say_unanswered)
        self._saying: asyncio.TimerHandle | None = None

    def stop(self) -> None:
        """The edge is stopping: the primary is expected not to answer, and what it did not answer is said at once."""
        self.stopping = True
        self._say_unanswered()

    def install(self, app: web.Application) -> None:
        app.middlewares.insert(0, self._middleware)
        app.on_response_prepare.append(self._mark)

    async def _mark(self, _: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault(WORKER_HEADER, str(self.slot.index))

    def forwarded(self, request: web.Request) -> bool:
        """What the primary answers for all workers: the swarm's state, and the figures of the whole edge."""
        path = request.path
        if path in ("/status", "/metrics") or is_playlist(path):  # a live playlist: one upstream fetch for all workers' viewers
            return True
        if self.node.tracker is None:
            return False
        return (
            path in ("/announce", "/scrape", "/relay", "/preheat")
            or path.startswith(("/seed/", "/torrent/", "/magnet/", "/relay/", "/preheat/"))
            or (path.startswith("/piece/") and PEER_HEADER in request.headers)
        )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self._take_up(request.path)
        if _private(request):  # forwarded by another worker (to the primary): answered here, for the client it names
            request = request.clone(remote=request.headers.get(FORWARDED_FOR, ""))
            request[edge_role.REACHED_AT] = request.headers.get(REACHED_AT)
        elif not self.forwarded(request):
            return await handler(request)
        elif not self.primary:
            return await self._forward(request)
        response = await handler(request)
        if request.method == "GET" and response.status == 200 and request.path in ("/status", "/metrics"):
            return await self._merged(request, response)
        return response

    def _take_up(self, path: str) -> None:
        """Before an answer that says what the edge holds of a content, the pieces every worker stored: the directory's
        have-set (/status does so for the contents it lists: Edge._content_row)."""
        store = self.node.store
        if store is not None and path.startswith(("/have/", "/seed/")):
            store.adopt_all(path.split("/", 3)[2])

    def _primary(self) -> aiohttp.ClientSession:
        if self._session is None:
            # no pool limit (aiohttp's default is 100): a relayed peer's link holds its connection for as long as it lasts,
            # and past 100 every request this worker passed on waited for good (an adversarial session); what is passed
            # on is bounded by this worker's own connection cap
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(self.slot.primary_path, limit=0), timeout=self.timeout, auto_decompress=False
            )
        return self._session

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """The request, as the primary answers it; 503 while the primary is restarting.

        The answer is passed on as it comes, as the client takes it (a peer's
        piece, a relayed peer's HAVE stream), but /status and /metrics; a
        WebSocket (a relayed peer's ``/relay``) is bridged.
        """
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers[FORWARDED_FOR] = request.remote or ""
        headers[REACHED_AT] = edge_role.reached_at(request) or ""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._bridge(request, {k: v for k, v in headers.items() if not k.lower().startswith("sec-websocket")})
        # an encoded body is the primary's to refuse (415) by its header; aiohttp drains it here afterwards, as a single edge would
        encoded = request.headers.get("Content-Encoding", "identity").lower() != "identity"
        body = await request.read() if request.body_exists and not encoded else None
        streamed: web.StreamResponse | None = None
        # a relayed HAVE stream lasts as long as its subscriber stays: only the connection is timed
        timeout = aiohttp.ClientTimeout(total=None, connect=self.wait) if request.path.startswith("/relay/") else self.timeout
        if request.path in ("/status", "/metrics"):
            timeout = aiohttp.ClientTimeout(total=PRIMARY_STATUS_WAIT_S)
        try:
            async with self._primary().request(
                request.method, f"http://edge{request.rel_url}", headers=headers, data=body, allow_redirects=False, timeout=timeout
            ) as reply:
                out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP}
                out[WORKER_HEADER] = str(self.slot.index)
                # passed on as it comes: read whole, a relayed answer the relayed peer broke off became a 503 blaming the
                # primary (a review), and each peer's piece was held here for as long as the peer took to read it, 81 MB
                # for 300 peers that stopped reading (an adversarial session; a single edge sends it from the file).  What
                # the edge answers from memory anyway is read whole, /status falling back to this worker's own
                if request.method == "HEAD" or request.path in ("/status", "/metrics"):
                    return web.Response(status=reply.status, body=await reply.read(), headers=out)
                streamed = web.StreamResponse(status=reply.status, headers=out)
                streamed.content_length = reply.content_length  # None: chunked (a relayed peer's HAVE stream)
                await streamed.prepare(request)
                async for chunk in reply.content.iter_any():
                    await streamed.write(chunk)
                await streamed.write_eof()
                return streamed
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if streamed is not None:  # begun: abort the connection, never an error inside the body
                return self._cut(request, streamed, exc)
            if request.path == "/status" and request.method == "GET":
                # this worker's own figures: a router polling while the primary restarted took the edge out of rotation
                # (a 503 for 2 s) though this worker served every file meanwhile.  Not for /metrics: Prometheus takes
                # counters that fall to one worker's for a reset of the whole edge, so a scrape fails (the 503) instead
                return await self._own_status(request)
            return self._unanswered(request, exc)

    def _cut(self, request: web.Request, streamed: web.StreamResponse, exc: BaseException) -> web.StreamResponse:
        """A streamed answer the primary or the client ended early: the client's connection is cut, in one line (5 a
        minute).  Raised instead, aiohttp logged it as an error with a traceback, for a relayed peer leaving (normal
        churn) or a subscriber hanging up; the primary's own line says why its answer ended."""
        who = gone_how(request) if client_gone(request) else f"the primary's answer ended early ({type(exc).__name__})"
        self.quiet.log(logging.INFO, "passed-on answers cut", "%s %s: %s: connection cut", request.method, shown(request), who)
        if request.transport is not None:
            request.transport.abort()
        streamed.force_close()
        return streamed

    def _unanswered(self, request: web.Request, exc: BaseException) -> web.Response:
        """The 503 for a request the primary did not answer, and a line (5 a minute) saying why: it may be restarting,
        or too busy (a flood), or this worker out of descriptors; "restarting" was said of all three."""
        why = f"{type(exc).__name__} {exc}".strip()
        if self.quiet.allow(logging.INFO if self.stopping else logging.WARNING, "primary unanswered"):  # a few a minute
            self._unsaid.append((shown(request), why))
            if self.stopping:
                self._say_unanswered()
            elif self._saying is None:
                self._saying = asyncio.get_running_loop().call_later(UNANSWERED_SAID_AFTER, self._say_unanswered)
        return text_error(
            503, f"this edge's primary worker did not answer (restarting, or too busy: {why[:120]}); retry", {"Retry-After": "1"}
        )

    def _say_unanswered(self) -> None:
        """The lines of ``_unanswered``, said UNANSWERED_SAID_AFTER late: as the edge stops its primary goes first, and
        a worker not yet told of the stop (its own SIGTERM a moment behind) said a fault at WARNING, 1 in 3 clean stops
        (an adversarial session); a stop (or the worker's close) says them at once, at INFO."""
        if self._saying is not None:
            self._saying.cancel()
            self._saying = None
        unsaid, self._unsaid = self._unsaid, []
        for what, why in unsaid:
            log.log(
                logging.INFO if self.stopping else logging.WARNING,
                "worker %d: the primary worker did not answer %s%s: %s",
                self.slot.index,
                what,
                " (the edge is stopping)" if self.stopping else "",
                why,
            )

    async def _own_status(self, request: web.Request) -> web.StreamResponse:
        """This worker's /status alone, saying so (``workers.answered`` 1): the primary that adds the others' is away."""
        response = await self.node.get_status(request)
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        doc = json.loads(response.body)
        doc["workers"] = {"count": self.slot.count, "answered": 1, "primary": "unanswered"}  # restarting, or too busy
        for part in edge_role.PRIMARY_STATUS:  # the primary's alone: this worker's own are empty, not the edge's figures
            if part in doc:
                doc[part] = None
        return _status_response(doc, self.slot.index)

    async def _bridge(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        """A WebSocket to the primary, joined message for message to the client's (a relayed peer's link)."""
        try:
            upstream = await self._primary().ws_connect(
                f"http://edge{request.rel_url}", headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5.0), max_msg_size=0
            )
        except aiohttp.WSServerHandshakeError as exc:  # its wait and its challenge passed on (aiohttp keeps no body): a
            # full relay's Retry-After lost here, the refused peer tried again after 1, 2, 4, 8 s instead of 30 (a session)
            refusal = relay.pick(exc.headers or {}, ("Retry-After", "WWW-Authenticate"))
            return text_error(exc.status, f"the primary worker refused the WebSocket: {exc.status} {_phrase(exc.status)}", refusal)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._unanswered(request, exc)
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        await asyncio.gather(_pipe(client, upstream), _pipe(upstream, client))
        return client

    async def _merged(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """The primary's own /status or /metrics with every other worker's figures added in (asked with the same query)."""
        assert isinstance(response, web.Response) and isinstance(response.body, bytes)
        path, asked = request.path, request.path_qs
        answers = await asyncio.gather(*(self._ask(i, asked) for i in range(1, self.slot.count)))
        others = [None if a is None else a[0] for a in answers]
        mine = response.body
        carried = self._carried_state()
        if path == "/status":
            doc = merge_status(json.loads(mine), [None if o is None else json.loads(o) for o in others], carried["status"])
            self._keep(carried)
            store = self.node.store
            if store is not None and "contents" in doc:  # a version one worker dropped (its directory gone) may linger in another's memory
                doc["contents"] = [c for c in doc.get("contents", []) if (store.content_dir / c["id"]).is_dir()]
                doc["contents"] = doc["contents"][: status_limit(request)]
            if store is not None:  # the workers may each know a part: the directory knows them all
                doc["content_count"] = _directories(store.content_dir)
            doc["workers"] = {"count": self.slot.count, "answered": 1 + sum(o is not None for o in others)}
            doc["upload_limit_Bps"] = self.cap
            return _status_response(doc, 0)
        texts = [mine.decode(), *(None if o is None else o.decode() for o in others)]
        starts = [self.node.metrics.started, *(0.0 if a is None else a[1] for a in answers)]
        merged = merge_metrics(texts, starts, carried["metrics"])
        self._keep(carried)
        return web.Response(body=merged, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, WORKER_HEADER: "0"})

    def _carried_state(self) -> dict[str, Carried]:
        """The workers' counters as last added up (node/carried.py), read from the private directory at the first
        /status or /metrics of a primary that restarted, so that its own restart is carried over too."""
        if self._carried is None:
            self._carried = {"metrics": Carried(), "status": Carried()}
            with contextlib.suppress(OSError, ValueError):
                kept = json.loads(Path(self.slot.rundir, CARRIED_FILE).read_text())
                self._carried = {part: Carried.loads(kept[part]) for part in self._carried}
        return self._carried

    def _keep(self, carried: dict[str, Carried]) -> None:
        """Write the state (a few KB) for a primary that may restart: whole, or not at all (a rename)."""
        path = Path(self.slot.rundir, CARRIED_FILE)
        with contextlib.suppress(OSError):
            path.with_suffix(".tmp").write_text(json.dumps({part: c.dumps() for part, c in carried.items()}))
            os.replace(path.with_suffix(".tmp"), path)

    async def _ask(self, index: int, path: str) -> tuple[bytes, float] | None:
        """A worker's own /status or /metrics from its private socket, and when its process started (STARTED_HEADER, 0 if
        not said); None if it does not answer (restarting)."""
        session = self._private.get(index)
        if session is None:
            connector = aiohttp.UnixConnector(self.slot.socket_path(index))
            session = self._private[index] = aiohttp.ClientSession(connector=connector)
        wait = aiohttp.ClientTimeout(total=STATUS_WAIT_S)
        try:
            async with session.get(f"http://worker{path}", timeout=wait) as reply:
                return (await reply.read(), float(reply.headers.get(STARTED_HEADER, 0.0))) if reply.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    def private_app(self) -> web.Application:
        """What a worker tells the primary about itself alone."""

        async def status(request: web.Request) -> web.StreamResponse:
            # the primary asking, on this worker's private socket: trusted as the operator is (Edge._trusted_client)
            return await self.node.get_status(request.clone(remote="127.0.0.1", host="localhost"))

        async def metrics(_: web.Request) -> web.Response:
            if self.node.tracker is not None:
                self.node._p2p_last = await self.node._p2p_status()
            started = repr(self.node.metrics.started)
            return web.Response(
                body=self.node.metrics.prometheus(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, STARTED_HEADER: started}
            )

        app = web.Application()
        app.router.add_get("/status", status)
        app.router.add_get("/metrics", metrics)
        return app

    async def close(self) -> None:
        self._say_unanswered()
        for session in [*self._private.values(), *([self._session] if self._session else [])]:
            with contextlib.suppress(Exception):
                await session.close()


def _private(request: web.Request) -> bool:
    """Did the request come on a unix socket (another worker), not on the public port?"""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


_ADDED = ("bytes_sent", "events", "responses", "cache_lookups")  # counters by a name
_ADDED_NUMBERS = ("cache_bytes", "ledger_pending_rows")  # gauges of each worker's own
CARRIED_FILE = "carried-counters.json"


def _directories(path: Path) -> int:
    """Subdirectories of ``path`` (a cache's contents), one directory read; 0 if it cannot be read."""
    try:
        with os.scandir(path) as entries:
            return sum(1 for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return 0


def merge_status(primary: dict[str, Any], others: list[dict[str, Any] | None], carried: Carried | None = None) -> dict[str, Any]:
    """The primary's /status (the swarm's parts are its alone) with the other workers' figures added: its counters
    through ``carried`` (a worker's restart carried over; ``others[i]`` None: worker i + 1 did not answer, its last
    counts), and the gauges of those that answered."""
    carried = carried or Carried()
    doc = dict(primary)
    totals: dict[str, float] = {}
    for worker, one in enumerate([primary, *others]):
        # its process's start, exact: now - uptime_s moved by the time the answer took, and a stall of a second made the
        # merge take the primary for restarted and count what it had sent twice, for good (a review)
        since = float(one.get("started", 0.0)) if one is not None else 0.0
        for key, n in carried.take(worker, None if one is None else _status_counts(one), since).items():
            totals[key] = totals.get(key, 0.0) + n
    answered = [o for o in others if o is not None]
    for other in answered:
        for key in _ADDED_NUMBERS:
            if key in doc:
                doc[key] = doc[key] + other.get(key, 0)
        if "contents" in doc:  # not a brief one (edge.brief_status)
            contents = {c["id"]: c for c in doc["contents"]}
            for c in other.get("contents", []):  # a piece one worker stored, another takes up when asked: the most any holds
                mine = contents.get(c["id"])
                contents[c["id"]] = c if mine is None or c["held"] > mine["held"] else mine
            doc["contents"] = sorted(contents.values(), key=lambda c: c["path"])
        doc["uptime_s"] = max(doc.get("uptime_s", 0), other.get("uptime_s", 0))
        if "cache_error" in other:  # one disk: a worker whose writes failed says for all (the others may not have tried)
            doc.setdefault("cache_error", other["cache_error"])
    return _with_counts(doc, totals)


_FLAT_COUNTS = ("evicted_pieces", "cache_write_failures")  # a /status counter that is one number
_SEP = "\x1f"  # between the parts of a /status counter's key (_status_counts): never in a name, a kind or a status


def _status_counts(doc: dict[str, Any]) -> dict[str, float]:
    """A /status's counters by one flat key each, for ``Carried``: what the workers add up."""
    counts: dict[str, float] = {}
    for key in _ADDED:
        for name, n in doc.get(key, {}).items():
            counts[f"{key}{_SEP}{name}"] = n
    for endpoint, by_status in doc.get("responses_by_endpoint", {}).items():
        for status, n in by_status.items():
            counts[f"responses_by_endpoint{_SEP}{endpoint}{_SEP}{status}"] = n
    for r in doc.get("bytes_received", []):
        counts[f"bytes_received{_SEP}{r['kind']}{_SEP}{r['source']}"] = r["bytes"]
    for key in _FLAT_COUNTS:
        if key in doc:
            counts[key] = doc[key]
    return counts


def _with_counts(doc: dict[str, Any], totals: dict[str, float]) -> dict[str, Any]:
    """``doc`` with its counters set to ``totals`` (``_status_counts``' keys), as whole numbers."""
    for key in _ADDED:
        if key in doc:
            doc[key] = {}
    by_endpoint: dict[str, dict[str, int]] = {}
    received: dict[tuple[str, str], int] = {}
    for flat, n in sorted(totals.items()):
        key, *parts = flat.split(_SEP)
        if key in _ADDED and key in doc:
            doc[key][parts[0]] = int(n)
        elif key == "responses_by_endpoint":
            by_endpoint.setdefault(parts[0], {})[parts[1]] = int(n)
        elif key == "bytes_received":
            received[(parts[0], _SEP.join(parts[1:]))] = int(n)
        elif key in _FLAT_COUNTS and key in doc:
            doc[key] = int(n)
    if "responses_by_endpoint" in doc:
        doc["responses_by_endpoint"] = by_endpoint
    if "bytes_received" in doc:
        doc["bytes_received"] = [{"kind": k, "source": src, "bytes": n} for (k, src), n in sorted(received.items())]
    return doc


def merge_metrics(texts: list[str | None], starts: list[float], carried: Carried | None = None) -> bytes:
    """Several workers' /metrics as one (``texts[i]``: worker i's, None if it did not answer; ``starts[i]``: when its
    process started, STARTED_HEADER): counters and histograms added up through ``carried`` (a worker's restart carried
    over, one that did not answer at its last counts), the gauges of those that answered added too (but those all
    report alike, and start times, which are the earliest)."""
    carried = carried or Carried()
    families: dict[str, Metric] = {}
    series: dict[str, dict[_Series, None]] = {}  # family -> its series, in the order they came
    values: dict[_Series, float] = {}
    for worker, text in enumerate(texts):
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text or ""):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            keys = series.setdefault(family.name, {})
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                keys[key] = None
                if family.type in _COUNTING and not sample.name.endswith("_created"):
                    counts[json.dumps(key)] = sample.value
                    continue
                old = values.get(key)
                if old is None:
                    values[key] = sample.value
                elif sample.name.endswith(("_created", "_start_time_seconds")):
                    values[key] = min(old, sample.value)
                elif family.name in _LARGEST_GAUGES:
                    values[key] = max(old, sample.value)
                else:
                    values[key] = old + sample.value
        for flat, n in carried.take(worker, None if text is None else counts, starts[worker]).items():
            name, sample_name, labels = json.loads(flat)
            key = (name, sample_name, tuple((k, v) for k, v in labels))
            series.setdefault(name, {})[key] = None  # also a series only a worker's last counts hold
            values[key] = values.get(key, 0.0) + n
    for name, keys in series.items():
        merged = families.get(name)
        if merged is not None:
            for key in keys:
                merged.add_sample(key[1], dict(key[2]), values[key])
    return generate_latest(Collected(lambda: list(families.values())))


_Series = tuple[str, str, tuple[tuple[str, str], ...]]  # (family, sample name, labels)
_COUNTING = ("counter", "histogram", "summary")  # families whose samples only grow (their _created aside)


async def _pipe(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse
) -> None:
    """Copy one side's messages to the other until either closes; then close the other."""
    try:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
    except (aiohttp.ClientError, ConnectionError):
        pass
    finally:
        await dst.close()


def _phrase(status: int) -> str:
    """The reason phrase of an HTTP status (a primary's refusal passed on without its text), or nothing."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _status_response(doc: dict, worker: int) -> web.Response:
    """A merged /status as one worker's own is sent (``json_response``: indented for curl and grep), saying which worker answered."""
    response = json_response(doc)
    response.headers[WORKER_HEADER] = str(worker)
    return response
