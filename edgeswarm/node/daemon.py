"""What every edgeswarm daemon shares: the HTTP server, errors, logs, shutdown.

One aiohttp application per node.  Errors raised as HttpError become a short
plain-text answer with the right status; anything unexpected becomes a 500
with a log line, never a traceback on the wire.  Once an answer has started,
a failure cuts the connection instead: nothing is ever appended to a body.
The bound address is logged as ``listening on http://HOST:PORT`` so tests and
scripts can use port 0.

Client connections are held to ``ServerLimits`` (see connlimit.py): a request
head must arrive within a header timeout, kept-alive connections close when
idle, and at a per-node cap the longest-waiting connections make room.  A
client's malformed request or hang-up is one rate-limited log line, never a
traceback: a flood of them costs a few lines (logthrottle.py).

An app made with a CORS policy (cors.py: the edge's, the gateway's) answers
``OPTIONS`` itself and adds the policy's headers to every answer as its head
goes out, errors and streamed bodies alike.  Every app refuses a request that
changes what it holds from a page of an origin the policy does not name (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import resource
import signal
import socket
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from edgeswarm.errors import HttpError
from edgeswarm.node import collector, logthrottle
from edgeswarm.node.connlimit import FLOOR, ConnectionPolicy, file_budget
from edgeswarm.node.logthrottle import Throttle, ThrottledLog
from edgeswarm.node.metrics import OTHER, Metrics, endpoint_class
from edgeswarm.node.serving import SENT_ASIDE
from edgeswarm.node.taskdump import dump_tasks_on_sigusr1
from edgeswarm.policy.regions import url_host
from edgeswarm.protocol.cors import NOSNIFF, SAFE_METHODS, CorsPolicy, merge_vary
from edgeswarm.trust import tls

log = logging.getLogger("edgeswarm")


class OneLineFormatter(logging.Formatter):
    """One event, one line: a message's control characters (a file name's newline, say) are escaped, as Python writes
    them (``\\n``), so that no name or header can end a line and write one that looks like the node's own (an
    adversarial session forged a whole line so).  A traceback after it stays as it is (it is a bug's, not a client's),
    and so does a record made with ``extra={"lines": True}`` (SIGUSR1's task dump, which an operator asked for)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable() and not getattr(record, "lines", False):
            record.message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in record.message)
        return super().formatMessage(record)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(LOG_FORMAT.format(tag="")))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def tag_log_lines(tag: str) -> None:
    """Every line of this process names it after the logger (``edgeswarm.roles.edge [worker 1]:``): the workers of an
    edge write to one stream, and which of them refused a request or ran out of descriptors was not said."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, OneLineFormatter):
            handler.setFormatter(OneLineFormatter(LOG_FORMAT.format(tag=f" [{tag}]")))


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error's answer: its message as text, never sniffed as a document (it may echo the request's path: an
    adversarial session found edges', origins' and the router's without nosniff, only the gateway's had it)."""
    return web.Response(status=status, text=message.rstrip() + "\n", headers={**NOSNIFF, **(headers or {})})


_TOKEN_PARAM = re.compile(r"([?&]token=)[^&]*")
# seconds a stopping node lets requests in flight finish, all its servers together (aiohttp's graceful stop; 60 s by
# default): a peer's HAVE streams and a player's download never end by themselves, and its two servers took 120 s to
# stop, its port still bound (a restart failed "address already in use"); container runtimes send SIGKILL 10 s after
# SIGTERM.  aiohttp waits its timeout twice (for the handler, then for it once cancelled) and each server in turn: a
# node gave 8 s a server, 10 s in all with its cleanup (an adversarial session), so each gets half of what is left
SHUTDOWN_GRACE = 4.0
MIN_CLOSE_GRACE = 1.0  # seconds requests in flight get at least at the close, after a drain that took the rest (drain_then)
FORCE_AFTER = 1.0  # seconds after a stop signal from which another one means "now" (workers.Supervisor, drain_then)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP (a closed terminal) too: killed, a node lost ledger rows


def shown(request: web.BaseRequest) -> str:
    """The request target as logs may show it: a ``?token=`` is a credential, so it is cut out."""
    return _TOKEN_PARAM.sub(r"\1***", request.path_qs)[:200]


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log, minus credentials: the client, the request (tokens cut), status, size and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not request.remote:  # a worker's request on the edge's private unix socket: that worker logs its client's
            return  # (a line with no client for each /status the router polled: an adversarial session)
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3f',
            request.remote,
            request.method,
            shown(request),
            *request.version,
            response.status,
            response.body_length + request.get(SENT_ASIDE, 0),
            time,
        )


METRICS = web.AppKey("edgeswarm.metrics", Metrics)  # a node app's metrics (make_app)


def make_app(metrics: Metrics, cors: CorsPolicy | None = None, scrape: Literal["public", "private", "none"] = "public") -> web.Application:
    """A node's app: its error middleware and CORS rule, ``/healthz``, and ``/metrics`` as ``scrape`` says: for anyone,
    for the node's user only (no ``*`` CORS: a peer's counters name what its user fetched), or not at all."""
    # one line per refusal, but a flood of them (a Sybil's 429s, a scanner's 400s) costs 20 lines per status per 10 s
    refusals = ThrottledLog(log, Throttle(burst=20, interval=10.0))

    def refused(request: web.Request, status: int, why: str) -> None:
        refusals.flush()
        refusals.log(logging.INFO, f"{status} answers", "%s %s -> %d %s", request.method, shown(request), status, why)

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        t0 = time.monotonic()
        endpoint = route_endpoint(request)

        def _count(resp: web.StreamResponse) -> web.StreamResponse:
            metrics.response(resp.status, endpoint, time.monotonic() - t0)
            return resp

        try:
            resp = await handler(request)
        except HttpError as exc:
            refused(request, exc.status, exc.message)
            resp = text_error(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own refusals, such as 413 for a body over client_max_size
            if exc.status >= 400:
                refused(request, exc.status, exc.reason)
            # answered as a plain response: aiohttp deprecates returning the exception itself
            resp = web.Response(status=exc.status, reason=exc.reason, body=exc.body, headers=exc.headers)
        except ConnectionError as exc:
            if not client_gone(request):  # an upstream's refusal or reset that nothing handled: a bug of ours
                log.exception("internal error on %s %s", request.method, shown(request))
                return _count(text_error(500, "internal error; see the node's log"))
            # the client hung up before a byte of the answer (a player's seek, a timeout): normal, not a 500
            hung_up(request, "%s %s: %s before the answer (%s)", request.method, shown(request), gone_how(request), exc)
            metrics.events[(HANGUP, "")] += 1
            started = request.get(_STARTED)  # (a StreamResponse is a mapping: an empty one is falsy)
            return started if started is not None else web.Response(status=CLIENT_CLOSED)  # not sent: the access log says 499
        except Exception:
            log.exception("internal error on %s %s", request.method, shown(request))
            resp = text_error(500, "internal error; see the node's log")
        if request.get(_HUNG_UP):
            metrics.events[(HANGUP, "")] += 1
        return _count(resp)

    enabled = cors if cors is not None and cors.enabled else None  # the CORS rule, if this app answers browsers
    options = [_options(enabled)] if enabled is not None else []
    pages = _cross_site(cors if cors is not None else CorsPolicy(()))
    app = web.Application(middlewares=[errors, pages, *options, cut_after_start], client_max_size=64 * 1024)
    app[METRICS] = metrics  # for what no route sees: aiohttp's answers to requests it cannot parse (_Handler.handle_error)
    app.on_response_prepare.append(_note_started)
    if enabled is not None:
        app.on_response_prepare.append(_cors_headers(enabled))
    app.router.add_get("/healthz", _ok)

    async def get_metrics(request: web.Request) -> web.Response:
        """Prometheus' text format, saying its version and charset as scrapers expect."""
        request[PRIVATE] = scrape == "private"
        return web.Response(body=metrics.prometheus(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    if scrape != "none":
        app.router.add_get("/metrics", get_metrics)
    return app


PRIVATE = web.RequestKey("edgeswarm.private", bool)  # a handler's mark: this answer is for the user only (cors.py)


def _cross_site(cors: CorsPolicy):
    """A POST, PUT or DELETE from a page of another origin than the node's own and the policy's named ones: 403 (cors.py)."""

    @web.middleware
    async def cross_site(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.method in SAFE_METHODS or getattr(request.match_info, "http_exception", None) is not None:
            return await handler(request)  # reading, or a route that is not there: its 404 or 405 says more
        origin = request.headers.get("Origin")
        if not cors.may_change(origin, f"{request.scheme}://{request.host}"):
            raise HttpError(
                403,
                f"{request.method} from a page on {origin!s:.100}: taken only from this node's own pages and origins --cors-origin names",
            )
        return await handler(request)

    return cross_site


def _options(cors: CorsPolicy):
    """``OPTIONS`` answered here, whatever the route: a CORS preflight, or the plain question of what is allowed."""

    @web.middleware
    async def options(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.method != "OPTIONS":
            return await handler(request)
        headers = {"Allow": ", ".join(_allowed_methods(request))}
        if "Access-Control-Request-Method" in request.headers:
            headers.update(cors.preflight(request.headers.get("Origin")))
        return web.Response(status=204, headers=headers)

    return options


def _allowed_methods(request: web.Request) -> list[str]:
    """The methods the matched path takes, as a 405 would list them, and OPTIONS."""
    exc = getattr(request.match_info, "http_exception", None)
    methods = set(getattr(exc, "allowed_methods", ())) or {"GET", "HEAD"}
    return sorted(methods | {"OPTIONS"})


def _cors_headers(cors: CorsPolicy):
    """The on_response_prepare hook that puts the policy's headers on every answer, just before its head is sent."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in cors.headers(request.headers.get("Origin"), request.get(PRIVATE, False)).items():
            if name == "Vary":
                response.headers["Vary"] = merge_vary(response.headers.get("Vary"), value)
            else:
                response.headers.setdefault(name, value)

    return add


def route_endpoint(request: web.Request) -> str:
    """The endpoint class of the route that matched ``request`` (metrics.endpoint_class): never its path."""
    resource = request.match_info.route.resource
    return endpoint_class(resource.canonical if resource is not None else None)


_STARTED = web.RequestKey("edgeswarm.started", web.StreamResponse)  # the answer whose head went out
_HUNG_UP = web.RequestKey("edgeswarm.hung_up", bool)  # the client left once the answer had started
CUT = "answer_cut"  # edgeswarm_events_total{event="answer_cut"}: an answer begun, then cut for want of its bytes
HANGUP = "client_hangup"  # edgeswarm_events_total{event="client_hangup"}: before or during the answer
CLIENT_CLOSED = 499  # nginx's "client closed request": in the access log only, never sent nor counted as a response


async def _note_started(request: web.Request, response: web.StreamResponse) -> None:
    request[_STARTED] = response


def answer_started(request: web.Request) -> bool:
    """Has an answer's head gone out for ``request``?  Then a failure can only cut it (``cut_after_start``)."""
    return request.get(_STARTED) is not None


def client_gone(request: web.Request) -> bool:
    """Has the client closed its connection?  Tells its hang-up from a ConnectionError of an upstream."""
    return request.transport is None or request.transport.is_closing()


def gone_how(request: web.Request) -> str:
    """Who ended a connection that is gone: the client, or this node because its client read nothing (--idle-timeout)."""
    why = getattr(request.protocol, "cut_why", None)
    return f"cut, {why}" if why else "client went away"


def hung_up(request: web.Request, msg: str, *args: object) -> None:
    """One INFO line for a connection gone mid-request, at most 5 a minute a node (then a count): a player's seek is
    one now and then, but 400 clients that read nothing wrote 400 lines at once (an adversarial session)."""
    conns = getattr(request.protocol, "_conns", None)
    if conns is None:
        log.info(msg, *args)
    else:
        conns.quiet.log(logging.INFO, "connections gone mid-request", msg, *args)


class OutOfMemory(HttpError):
    """A request that ran this process out of memory (an address-space limit: ulimit -v, prlimit --as): a resource, as
    descriptors are, so a 503 the client retries (or a cut it resumes) and one line; it was a 500 and a traceback for
    each request (an adversarial session: 27 at once under prlimit --as)."""

    def __init__(self) -> None:
        super().__init__(503, "out of memory; retry", {"Retry-After": "1"})


class Stopping(HttpError):
    """An answer this node gives up because it stops (a relayed peer's stream as the edge closes its relays): not the
    other side's fault nor a failure, so said at INFO and not counted as a cut (a clean stop of an edge that relayed
    a peer logged a WARNING blaming the peer for each neighbour's stream: a newcomer's walk through README)."""

    def __init__(self) -> None:
        super().__init__(503, "this node is stopping", {"Retry-After": "1"})


@web.middleware
async def cut_after_start(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Once an answer's head is on the wire, a failure can only cut the connection: never a second answer in the body.

    The client then sees a short body (curl: "transfer closed with N bytes
    remaining"), keeps what is right, and resumes with a range.  One log line;
    a traceback only for an internal error.
    """
    try:
        try:
            return await handler(request)
        except MemoryError:  # a resource this node ran short of, as it may of descriptors: no bug, no traceback
            raise OutOfMemory() from None
    except Exception as exc:
        started = request.get(_STARTED)
        if started is None or request.writer.output_size == 0:
            raise
        sent = request.writer.output_size + request.get(SENT_ASIDE, 0)
        if isinstance(exc, Stopping):
            log.info("%s %s: cut after %d bytes: %s", request.method, shown(request), sent, exc.message)
        elif isinstance(exc, ConnectionError):  # reset, broken pipe, "Connection lost" while draining
            request[_HUNG_UP] = client_gone(request)
            hung_up(request, "%s %s: %s after %d bytes", request.method, shown(request), gone_how(request), sent)
        else:  # counted: http_responses_total has it under the status its head said (an adversarial session: 15 cut
            request.app[METRICS].events[(CUT, "")] += 1  # downloads showed only as "file 200")
            if isinstance(exc, HttpError):  # a piece that could not be had, say: the client resumes from elsewhere
                log.warning("%s %s: cut after %d bytes: %d %s", request.method, shown(request), sent, exc.status, exc.message)
            else:
                log.exception("internal error on %s %s after %d bytes: connection cut", request.method, shown(request), sent)
        if request.transport is not None:
            request.transport.abort()
        started.force_close()
        return started


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


@dataclass(frozen=True)
class ServerLimits:
    """What a client connection may cost a node (--header-timeout, --idle-timeout, --max-connections)."""

    header_timeout: float = 20.0
    idle_timeout: float = 75.0
    max_connections: int | None = None  # None: the open-file limit's share for connections (connlimit.file_budget)


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; returns the limit now in force.

    Each connection holds a descriptor, and the common soft limit of 1024 is
    far below what a server needs while the hard limit is often much higher.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit above fs.nr_open
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return file_limit()


def file_limit() -> int:
    """The soft open-file limit in force (an unlimited one counts as 2**20): what a node shares (connlimit.file_budget)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Connections:
    """One node's client connections, held to a ConnectionPolicy across all its servers.

    Closes what the policy names: at the cap when a connection opens, on a
    periodic sweep for deadlines, and when accept() runs out of descriptors.
    """

    def __init__(self, policy: ConnectionPolicy[_Handler]):
        self.policy = policy
        self.quiet = ThrottledLog(log, Throttle(burst=5, interval=60.0))
        self.metrics: Metrics | None = None  # the node's, counting answers to requests no handler saw
        self.loop = asyncio.get_running_loop()
        self._next_shed = 0.0

    def opened(self, conn: _Handler, outside: bool = False) -> None:
        victims = self.policy.opened(conn, self.loop.time(), outside)
        if conn in victims:
            self.quiet.log(logging.WARNING, "refused: all busy", "refused a connection: all %d connections are busy", self.policy.cap)
        elif victims:
            self.quiet.log(logging.INFO, "at the cap", "at the cap of %d connections: closed the longest waiting", self.policy.cap)
        for victim in victims:  # its handler, if any, sees a reset: the log should not blame the client
            victim.cut_why = f"closed for a new one at the cap of {self.policy.cap} connections (--max-connections)"
        _close(victims)

    async def sweep(self) -> None:
        """Close connections past their deadlines; log the summaries of throttled lines."""
        tick = min(1.0, self.policy.header_timeout / 4, self.policy.idle_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            late, idle, stalled = self.policy.expired(self.loop.time())
            if late:
                self.quiet.log(
                    logging.INFO,
                    "slow requests",
                    "closed %d connections that sent no complete request head or body within %gs",
                    len(late),
                    self.policy.header_timeout,
                )
            for conn in late:  # a body still arriving has a handler waiting for it, which sees a reset
                conn.cut_why = f"the client sent no whole request within {self.policy.header_timeout:g} s (--header-timeout)"
            for conn in stalled:  # their handlers see a reset: the log should say who cut them
                conn.cut_why = f"the client read nothing for {self.policy.idle_timeout:g} s (--idle-timeout)"
            _close(late + idle + stalled)
            self.quiet.flush()

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The event loop's error handler: out of descriptors in accept(), shed waiting connections and
        say so once an interval (asyncio would log every failed accept); out of memory, a line without a traceback;
        other errors, rate-limited."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES:
            # asyncio retries accept() a second later, and closed sockets free their descriptors only on the
            # next loop iteration: one shedding per second, not one per failed accept of a burst
            shed = []
            if self.loop.time() >= self._next_shed:
                self._next_shed = self.loop.time() + 1.0
                shed = self.policy.oldest_waiting(max(8, self.policy.cap // 32))
                for victim in shed:
                    victim.cut_why = "closed: this node ran out of file descriptors"
                _close(shed)
            self.quiet.log(
                logging.WARNING,
                "out of descriptors",
                "%s: %s (open-file limit %d, %d connections)%s",
                context.get("message"),
                exc.strerror,
                file_limit(),  # as it is now: an operator's prlimit may have changed it since the start
                len(self.policy) + len(shed),
                f"; closed the {len(shed)} longest waiting" if shed else "",
            )
        elif isinstance(exc, MemoryError):  # a connection's read found no memory (ulimit -v): no bug, as OutOfMemory says
            self.quiet.log(logging.WARNING, "out of memory", "%s: out of memory", context.get("message"))
        elif self.quiet.allow(logging.ERROR, f"event loop: {type(exc).__name__ if exc else 'error'}"):  # a kind per type, not per message
            loop.default_exception_handler(context)


OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # what asyncio's accept loop retries a second later


class _AcceptPass:
    """A listening socket as one pass of asyncio's accept loop sees it: once accept() has run out of
    descriptors, no connection is waiting any more, so the pass ends there.

    Python 3.11's loop goes on after such a failure for the rest of its backlog
    (128 tries), each scheduling a retry a second later that starts a pass of
    its own: hundreds of thousands of failed accepts a minute, a quarter of a
    core (CPython gh-151615, fixed later with a ``return``).
    """

    __slots__ = ("exhausted", "sock")

    def __init__(self, sock):
        self.sock = sock
        self.exhausted = False

    def accept(self):
        if self.exhausted:
            raise BlockingIOError(errno.EAGAIN, "accepting again in a second: out of descriptors")
        try:
            return self.sock.accept()
        except OSError as exc:
            self.exhausted = exc.errno in OUT_OF_RESOURCES
            raise

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def accept_one_pass(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop``'s accept passes end at the first accept() out of descriptors (see _AcceptPass); idempotent.

    Also skips the retry of a server closed meanwhile, which asyncio would log
    as a traceback ("Invalid file descriptor: -1") at shutdown.
    """
    if not hasattr(loop, "_accept_connection") or getattr(loop, "_accept_one_pass", False):
        return  # not a selector loop, or done already
    accept, start = loop._accept_connection, loop._start_serving  # type: ignore[attr-defined]  # private: test_connlimit checks them

    def one_pass(protocol_factory, sock, *args, **kwargs):
        return accept(protocol_factory, _AcceptPass(getattr(sock, "sock", sock)), *args, **kwargs)

    def start_serving(protocol_factory, sock, *args, **kwargs):
        if sock.fileno() != -1:
            start(protocol_factory, sock, *args, **kwargs)

    loop._accept_connection, loop._start_serving = one_pass, start_serving  # type: ignore[attr-defined]
    loop._accept_one_pass = True  # type: ignore[attr-defined]


def tls_accepts_counted(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` hand each accepted TLS connection to its handler as its handshake begins (``_Handler.shaking``),
    reading into a buffer all of them share; idempotent.

    asyncio calls a protocol's connection_made only once the handshake is
    done: sockets that sent nothing were no connection of the policy's, so a
    cap at 336 closed none of 1 200 of them, and real clients of an HTTPS node
    waited 20 s for the handshake timeout (an adversarial session).  Each
    served TLS connection read into 256 KiB of its own, idle or not: 2 000
    kept-alive clients took an edge from 58 to 615 MB (the same session); a
    16 KiB one each doubled the CPU of an upload (a review).  A read's bytes
    are copied out of the buffer before the loop reads another socket.
    """
    if not hasattr(loop, "_make_ssl_transport") or getattr(loop, "_tls_accepts_counted", False):
        return  # not a selector loop, or done already
    make = loop._make_ssl_transport  # private (typeshed lists it): test_connlimit checks it
    shared = bytearray(sslproto.SSLProtocol.max_size)
    view = memoryview(shared)

    def counted(rawsock, protocol, sslcontext, waiter=None, **kwargs):
        transport = make(rawsock, protocol, sslcontext, waiter, **kwargs)
        if isinstance(protocol, _Handler) and kwargs.get("server_side") and waiter is not None:
            tls = transport._ssl_protocol  # its own buffer, allocated as it was made, goes with this
            tls._ssl_buffer, tls._ssl_buffer_view = shared, view
            protocol.shaking(transport, waiter)
        return transport

    loop._make_ssl_transport = counted
    loop._tls_accepts_counted = True  # type: ignore[attr-defined]


def _close(conns: list[_Handler]) -> None:
    """Reset, not close: a close waits until the client reads what is buffered for it, which a stalled one never does."""
    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()
        elif conn.handshaking is not None:  # its socket becomes the TLS protocol's at the loop's next turn, not at accept:
            asyncio.get_running_loop().call_soon(conn.handshaking.abort)  # aborted now, a burst's victims lived on
        conn.force_close()


class _Handler(RequestHandler):
    """aiohttp's HTTP/1 protocol, telling Connections what each connection is doing, and logging
    a client's malformed request or hang-up as one line without a traceback."""

    __slots__ = ("_conns", "_outside", "cut_why", "handshaking")

    def __init__(self, conns: Connections, outside: bool, manager: web.Server, **kwargs):
        super().__init__(manager, **kwargs)
        self._conns = conns
        self._outside = outside  # of a site the node's reserve is not for (connlimit.py)
        self.cut_why: str | None = None  # why this node cut the connection, when it did so while an answer was under way
        self.handshaking: asyncio.Transport | None = None  # the TLS transport, while its handshake is under way

    def shaking(self, transport: asyncio.Transport, done: asyncio.Future) -> None:
        """A TLS connection whose handshake begins (tls_accepts_counted): a connection waiting for its request head,
        for the cap and the header timeout, until the handshake ``done`` calls connection_made, or fails."""
        self.handshaking = transport
        done.add_done_callback(self._shaken)
        self._conns.opened(self, self._outside)

    def _shaken(self, done: asyncio.Future) -> None:
        self.handshaking = None
        if done.cancelled() or done.exception() is not None:  # no connection_made, nor connection_lost, will come
            self._conns.policy.closed(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _give_up_unacked(transport, self._conns.policy.idle_timeout + UNACKED_AFTER_IDLE)
        self._conns.opened(self, self._outside)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._conns.policy.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._conns.policy.data(self, self._loop.time(), len(data))
        super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._conns.policy.stalled(self, self._loop.time())

    def resume_writing(self) -> None:
        super().resume_writing()
        self._conns.policy.flowing(self)

    async def _handle_request(self, request, start_time, request_handler):
        # aiohttp's own (private) step around one request; aiohttp is pinned, and tests/test_connlimit.py fails if it moves
        if self.transport is not None:  # not when the connection was lost before this queued request began
            pending = not request.content.is_eof()  # a body still arriving must, too, within the header timeout
            self._conns.policy.started(self, self._loop.time(), pending)
            if pending:
                request.content.on_eof(lambda: self._conns.policy.body_done(self))
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._conns.policy.finished(self, self._loop.time())

    def log_exception(self, *args, **kw) -> None:
        """aiohttp drains what is left of a body after the answer; a body it cannot decode there (a bad gzip after
        our 415, say) is the client's mistake: one rate-limited line, not an "Unhandled exception" traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            self._conns.quiet.log(logging.INFO, "bad request bodies", "bad request body: %s", _one_line(str(exc)))
            return
        super().log_exception(*args, **kw)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None):
        if isinstance(exc, ConnectionError):  # the client went away mid-request: not an error of ours
            self._conns.quiet.log(logging.DEBUG, "hang-ups", "%s went away: %s", request.remote, exc)
            raise ConnectionError("client went away") from exc
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = _one_line(message or str(exc))
        self._conns.quiet.log(logging.INFO, "bad requests", "bad request from %s: %r", request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response had started")
        if self._conns.metrics is not None:  # a header or URL too long, a bad method: no route saw it, the middleware neither
            self._conns.metrics.response(status, OTHER, 0.0)
        resp = text_error(status, f"bad request: {reason}")
        resp.force_close()
        return resp


UNACKED_AFTER_IDLE = 15.0  # seconds past --idle-timeout: a reader that stopped is cut by the node first, which says so


MAX_USER_TIMEOUT_MS = 2**31 - 1  # TCP_USER_TIMEOUT's most: at every connection's accept, past its registration (an adversarial session)


def _give_up_unacked(transport: asyncio.BaseTransport, seconds: float) -> None:
    """The kernel drops a connection whose client acknowledges nothing for ``seconds`` (TCP_USER_TIMEOUT).

    A client that vanished (its host gone, a path blackholed): a HAVE
    stream's heartbeats went on into its send queue, its place among a
    content's 64 subscribers held, for the kernel's retransmissions (about 15
    minutes; an adversarial session saw 55 s and counting).  Linux also counts
    a window kept shut (a paused player's full buffer) against it: at 30 s,
    such players were cut sooner than --idle-timeout says (a review); at
    --idle-timeout alone, the kernel's abort raced the node's own cut of a
    stalled reader, and the log blamed the client (CI): hence the node's
    --idle-timeout and UNACKED_AFTER_IDLE.
    """
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # milliseconds in a C int: an --idle-timeout over 24.8 days raised TypeError
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(min(seconds, MAX_USER_TIMEOUT_MS / 1000) * 1000)))


def _one_line(text: str) -> str:
    """aiohttp's parser messages span lines (the bad bytes, a caret under them): at most 160 characters on one."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip().strip("^"))[:160]


class _Server(web.Server):
    def __init__(self, conns: Connections, outside: bool, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conns, self._outside = conns, outside

    def __call__(self) -> RequestHandler:
        return _Handler(self._conns, self._outside, self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections are _Handler's (``outside``: its site's leave the node's reserve free)."""

    def __init__(self, app: web.Application, conns: Connections, outside: bool = False, **kwargs):
        super().__init__(app, **kwargs)
        self._conns, self._outside = conns, outside

    async def drain_within(self, seconds: float) -> None:
        """``cleanup``, its requests in flight given ``seconds`` in all: aiohttp waits its timeout twice."""
        self._shutdown_timeout = max(0.1, seconds / 2)
        await self.cleanup()

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            self._conns, self._outside, plain.request_handler, request_factory=plain.request_factory, loop=plain._loop, **plain._kwargs
        )


# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn, 4096 by default): aiohttp's 128 made a
# burst of 400 peers' requests that a worker passes on to the primary fail a third of them at its unix socket with 503
# "did not answer", the primary idle (an adversarial session); on TCP, the dropped connects wait a second's retransmit
BACKLOG = 4096


class _Site(web.TCPSite):
    """A TCPSite whose TLS handshakes must end within ``handshake_timeout`` (--header-timeout).

    asyncio gives a handshake 60 s, and a connection becomes the policy's
    (counted, swept) only once it is done: a few hundred sockets that sent
    nothing held an HTTPS node's every descriptor, where plain HTTP closed
    them after --header-timeout (an adversarial session).  aiohttp's own
    start() names no handshake timeout; this one is the same call with it.
    """

    def __init__(self, *args, handshake_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_context is not None else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def _connections(limits: ServerLimits, role: str) -> Connections:
    """The node's connection policy, its cap the open-file limit's share for connections unless --max-connections says."""
    budget = file_budget(raise_file_limit(), limits.max_connections)
    cap = budget.connections
    if not budget.fits:
        log.warning(
            "--max-connections %d does not fit under the open-file limit %d beside %d piece files and %d for the node itself: "
            "accept() may run out of descriptors",
            cap,
            budget.limit,
            budget.piece_files,
            budget.reserve,
        )
    log.info(
        "%s: open-file limit %d; at most %d connections, request heads within %gs, idle ones closed after %gs",
        role,
        budget.limit,
        cap,
        limits.header_timeout,
        limits.idle_timeout,
    )
    return Connections(ConnectionPolicy(cap, limits.header_timeout, limits.idle_timeout))


async def serve(
    app: web.Application,
    host: str,
    port: int,
    role: str,
    access_log: bool = False,
    ssl_context=None,
    limits: ServerLimits | None = None,
) -> None:
    await serve_many([(app, host, port, "")], role, access_log, ssl_context=ssl_context, limits=limits)


async def serve_many(
    sites: list[tuple[web.Application, str, int, str]],
    role: str,
    access_log: bool = False,
    on_bound: Callable[[str, str, int], None] | None = None,
    ssl_context=None,
    limits: ServerLimits | None = None,
    reserve: tuple[str, float] | None = None,
    drain: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run apps (app, host, port, label) until a stop signal (STOP_SIGNALS), then shut down cleanly (cleanup hooks run).

    With ``ssl_context`` the first site (the node's public one) serves HTTPS.  ``reserve``: see Servers.  ``drain``
    is awaited after the stop signal, the ports still open (an edge leaving its routers: registrar.Registration).
    """
    collector.tune()  # a daemon's process, before its apps' start-up: what they load (a tracker's snapshot) is not frozen
    servers = Servers(role, access_log, ssl_context, limits, reserve=reserve)
    try:
        for label, (host, port) in (await servers.start(sites)).items():
            if on_bound is not None:
                on_bound(label, host, port)
        await stop_signal()
        log.info("%s shutting down", role)
        if drain is not None:
            await drain_then(servers, drain)
    finally:
        await servers.close()


async def stop_signal() -> None:
    """Until one of STOP_SIGNALS comes, for a node's process or an edge's worker: a worker's SIGHUP was the default
    action, so a closed terminal (SIGHUP to the whole process group) killed the workers at once, losing their last
    ledger rows and the swarms' tracker.jsonl (an adversarial session).

    Once one has come, the others are ignored for the rest of the exit: asyncio's loop closes its self-pipe before it
    removes its signal handlers, and a second signal in between (a worker gets its supervisor's SIGTERM and the process
    group's) printed "Exception ignored ... signal wakeup fd ... Bad file descriptor" (an adversarial session, 1 exit
    in 57).  The supervisor still kills workers that a repeated stop signal finds stopping (FORCE_AFTER).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in STOP_SIGNALS:  # one more changes nothing now; left to the loop, it came through its self-pipe (below)
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


async def drain_then(servers: Servers, drain: Callable[[], Awaitable[None]]) -> None:
    """After the stop signal, ``drain`` with the ports open (an edge leaving its routers), its time taken from the grace
    the requests in flight get at ``servers.close()``: they were served all the while, and the whole stop must fit a
    supervisor's or container runtime's SIGKILL, 10 s after SIGTERM (leaving, draining and then the full grace took
    11 s, and the supervisor killed the primary worker: a review).  A stop signal FORCE_AFTER or more after the drain
    began cuts it short (an operator who means it; one sooner is the same stop sent twice, the process group's and a
    supervisor's)."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    task = asyncio.ensure_future(drain())

    def again() -> None:
        if time.monotonic() - began >= FORCE_AFTER:
            log.info("stop signal again: not draining any longer")
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, again)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in STOP_SIGNALS:  # as stop_signal: no signal through the loop's self-pipe as it closes
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    servers.shutdown_timeout = max(MIN_CLOSE_GRACE, servers.shutdown_timeout - (time.monotonic() - began))


class Servers:
    """A node's HTTP servers, all under one set of ``limits`` (one connection cap for the node).

    ``serve_many`` runs a daemon's; ``get`` runs its upload server with one too.
    """

    def __init__(
        self,
        role: str,
        access_log: bool = False,
        ssl_context=None,
        limits: ServerLimits | None = None,
        reuse_port: bool = False,
        shutdown_timeout: float = SHUTDOWN_GRACE,
        reserve: tuple[str, float] | None = None,
    ):
        """``reserve``: (site label, share): that share of the connection cap is kept for that site (connlimit.py)."""
        self.role = role
        self.reserve = reserve
        self.shutdown_timeout = shutdown_timeout  # how long close() lets requests in flight finish (aiohttp's graceful stop)
        self.reuse_port = reuse_port  # several worker processes listen on one port (node/workers.py), which says when all listen
        self.access_log = logging.getLogger("edgeswarm.access") if access_log else None
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self._runners: list[_Runner] = []
        self._sweeper: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None  # the throttled logs' summaries
        self._cert_watch: asyncio.Task | None = None

    async def start(self, sites: list[tuple[web.Application, str, int, str]]) -> dict[str, tuple[str, int]]:
        """Serve apps (app, host, port, label), the first with TLS if any; returns label -> the bound (host, port)."""
        conns = _connections(self.limits, self.role)
        conns.metrics = sites[0][0].get(METRICS) if sites else None
        reserved_for = None
        if self.reserve is not None and any(label == self.reserve[0] for *_, label in sites):
            reserved_for, share = self.reserve
            kept = conns.policy.reserve(max(FLOOR, int(conns.policy.cap * share)))
            log.info("%s: %d of those connections kept for the %s", self.role, kept, reserved_for)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(conns.loop_error)
        accept_one_pass(loop)
        tls_accepts_counted(loop)
        dump_tasks_on_sigusr1(loop, self.role)
        self._sweeper = asyncio.create_task(conns.sweep())
        self._flusher = asyncio.create_task(logthrottle.flushing())
        if not self.reuse_port:  # an edge's workers: its first one says it (watch_certificate), not each
            self.watch_certificate()
        bound = {}
        for n, (app, host, port, label) in enumerate(sites):
            tls = self.ssl_context if n == 0 else None
            runner = _Runner(
                app,
                conns,
                outside=reserved_for is not None and label != reserved_for,
                access_log=self.access_log,
                access_log_class=AccessLogger,
                handle_signals=False,
                keepalive_timeout=self.limits.idle_timeout,  # aiohttp's own idle close; the policy's is the same
                shutdown_timeout=self.shutdown_timeout,
            )
            await runner.setup()
            self._runners.append(runner)
            try:
                site = _Site(
                    runner,
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                    ssl_context=tls,
                    handshake_timeout=self.limits.header_timeout,
                    backlog=BACKLOG,
                )
                await site.start()
            except OSError as exc:
                raise SystemExit(f"edgeswarm {self.role}: cannot listen on {url_host(host)}:{port}: {exc.strerror or exc}") from None
            server = site._server
            assert isinstance(server, asyncio.Server)  # TCPSite's, once started
            address = server.sockets[0].getsockname()  # port 0 -> the real one
            shown = url_host(address[0])
            if not self.reuse_port:
                log.info(
                    "%s %slistening on %s://%s:%d", self.role, f"{label} " if label else "", "https" if tls else "http", shown, address[1]
                )
            bound[label] = (address[0], address[1])
        return bound

    def watch_certificate(self) -> None:
        """Say, while serving, when the HTTPS certificate is about to expire (tls.watch_certificate)."""
        served = tls.served_certificate(self.ssl_context)
        if served is not None and self._cert_watch is None:
            self._cert_watch = asyncio.create_task(tls.watch_certificate(served))

    async def add_unix(self, path: str) -> None:
        """Serve the first app on a unix socket as well, under the same connection policy (a worker's private door)."""
        await web.UnixSite(self._runners[0], path, backlog=BACKLOG).start()

    async def close(self) -> None:
        """Stop serving: every site stops listening at once, then the servers' requests in flight get
        ``shutdown_timeout`` in all, and each app's cleanup hooks run (the last app's first)."""
        for task in (self._sweeper, self._cert_watch):
            if task is not None:
                task.cancel()
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        deadline = time.monotonic() + self.shutdown_timeout
        for runner in reversed(self._runners):
            await runner.drain_within(deadline - time.monotonic())
        self._runners.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            logthrottle.flush_every(ending=True)
