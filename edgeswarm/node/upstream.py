"""The client side of a node: HTTP GETs to parents and siblings, errors made plain.

Every failure an edge can meet upstream - refused connection, DNS, reset,
timeout - becomes an UpstreamError carrying the status the edge should answer
with (502 for a bad or unreachable upstream, 504 for one too slow) and a
sentence an operator can act on.

No body from another node is trusted to be small: every one is read in
chunks against a cap and abandoned (502) as soon as it passes it, whether or
not it announced a ``Content-Length``.  A peer answering with an endless
chunked body costs its victim one chunk of memory, not all of it.

A request has ``timeout`` seconds, and every MIN_RATE bytes of its body that
arrive buy it one more: a large piece from an honest but slow uplink (a
2 MiB piece of a 4 GB file, from a peer serving six neighbours at once
through a few Mbit/s) arrives whole, while one that stalls or drips bytes
is cut at the timeout, as before.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from edgeswarm.errors import HttpError
from edgeswarm.policy.sources import SourceRanking
from edgeswarm.protocol.manifest import MAX_PIECE

MAX_MANIFEST = 1024 * 1024  # /manifest, /content: the origin's are at most ~140 KB (2048 piece hashes)
MAX_ANNOUNCE = 1024 * 1024  # an announce answer: a few dozen peers with their bitfields
MAX_ANSWER = 64 * 1024  # anything else: /have, keys, error pages
CHUNK = 64 * 1024
T = TypeVar("T")
HEDGE_AFTER = 1.5  # seconds a source has to answer before the next one is asked too (first_answer)
MIN_RATE = 16 * 1024  # bytes a second a body must keep up on average to outlast the timeout; a sender's floor for its readers too


def node_url(base: str, path: str) -> URL:
    """Another node's URL: its base and a path already percent-encoded (yarl must not encode it again)."""
    return URL(base.rstrip("/") + path, encoded=True)


class UpstreamError(HttpError):
    """Another node failed us: the status this node should answer (502, 504, or the upstream's 429) and why."""


class OutOfDescriptorsHere(UpstreamError):
    """This process could not open a connection: out of file descriptors.  Not the other node's fault: it is not set aside."""


class Hopeless(UpstreamError):
    """A failure no retry changes as things are configured: a server that is no edgeswarm node (originkey.NotANode),
    one this node cannot reach from the address it connects from (an IPv4 host from an IPv6 ``--listen``), or whose
    certificate does not verify."""


class Unreachable(UpstreamError):
    """No connection to the other node: refused, no route, a name not found.  A daemon retries; ``get`` ends (curl's way)."""


class Busy(UpstreamError):
    """Another node answered 503 with Retry-After (busy, or an origin hashing a file replaced on disk): passed on as
    such, and no failure of that node (it is not set aside: it said when to come back)."""


def says_busy(status: int, headers: Mapping[str, str]) -> bool:
    """An answer that is a 503 with Retry-After: busy, to be asked again then (no failure of the node that said so)."""
    return status == 503 and bool(headers.get("Retry-After"))


def busy(status: int, headers: Mapping[str, str], message: str) -> Busy | None:
    """``Busy`` for an answer that is a 503 with Retry-After, else None."""
    return Busy(503, message, {"Retry-After": headers["Retry-After"]}) if says_busy(status, headers) else None


def passed_on(problems: Sequence[UpstreamError]) -> tuple[int, dict[str, str] | None]:
    """What a node answers when every source failed: their 503 (with a Retry-After) or 504 when all said so, else 502."""
    if problems and all(isinstance(p, Busy) for p in problems):
        return 503, problems[-1].headers
    return (504 if problems and all(p.status == 504 for p in problems) else 502), None


async def first_answer(
    sources: Sequence[str],
    ask: Callable[[str], Awaitable[T]],
    problems: list[UpstreamError],
    ranking: SourceRanking | None = None,
    kind: str = "edge",
) -> T | None:
    """The first answer of ``ask`` to the ``sources`` asked in turn, the next one asked when one failed (UpstreamError,
    kept in ``problems``) or has not answered within ``HEDGE_AFTER``; None if none answered.  The slower asks go on,
    the first answer is kept and the others are cancelled.  Any other exception (a 404, a token refused) is the
    answer, as it was from the sources asked one after another, each with the whole timeout: a wedged first one held a
    peer's new file, or a protected file's key, for 12 s where a second edge answered at once (an adversarial session).

    With ``ranking``, a source (a ``kind``) silent for HEDGE_AFTER when another answered is set aside as the relief
    worker sets aside an edge it raced (``SourceRanking.outraced``): left first, it cost each later ask HEDGE_AFTER again, a new file's first
    piece the reader's deadline more, and a live player every new playlist version (another adversarial session).
    """
    waiting = list(sources)
    asks: dict[asyncio.Future[T], tuple[str, float]] = {}  # in the sources' order: each one's source, when it was asked
    try:
        while waiting or asks:
            if waiting:
                source = waiting.pop(0)
                asks[asyncio.ensure_future(ask(source))] = (source, time.monotonic())
            done, _ = await asyncio.wait(asks, timeout=HEDGE_AFTER if waiting else None, return_when=asyncio.FIRST_COMPLETED)
            for answered in [a for a in asks if a in done]:
                winner, _ = asks.pop(answered)
                try:
                    result = answered.result()
                except UpstreamError as exc:
                    problems.append(exc)
                    continue
                if ranking is not None:
                    now = time.monotonic()
                    ranking.outraced([asked for asked in asks.values() if asked[1] <= now - HEDGE_AFTER], winner, now, kind)
                return result
        return None
    finally:
        for other in asks:  # slower, or answered in the same turn: their answers are nobody's
            other.cancel()
            other.add_done_callback(lambda ask: ask.cancelled() or ask.exception())  # not "never retrieved"


class UpstreamTimeout(UpstreamError):
    """Another node did not answer within the timeout (a 504): stalled, or dripping bytes, rather than refusing."""


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    head_s: float = 0.0  # seconds from the request to its answer's head: the path's round trip and the server's wait


def source_address(listen: str | None, reaches: Iterable[str | None]) -> str | None:
    """The address a peer's connections leave from: its ``--listen`` host, by which edges place it in its region
    (loopback labs give each peer an address of its own), or None (the system's choice) for a wildcard, and for a
    loopback host when some node it must reach (``reaches``: its edges, its router) is not on loopback.

    Bound to 127.0.0.1, no connection leaves the machine: an ``--unreachable``
    peer listening on loopback, as configuration.md allows, reached no edge on
    another machine ("Invalid argument" every 10 s, never announced: an
    adversarial session with peers behind NATs).
    """
    if listen in (None, "", "0.0.0.0", "::"):
        return None
    if _loopback(listen) and not all(_loopback(urlsplit(url).hostname or "") for url in reaches if url):
        return None
    return listen


def source_family(listen: str | None) -> int:
    """The IP family a peer's connections keep to: its ``--listen`` host's, a wildcard's included (``0.0.0.0`` IPv4,
    ``::`` IPv6, as asyncio binds them); 0 (either) for a host name or none.

    Its edges hand it out at the address its announces come from: a peer
    listening on 0.0.0.0 that reached its edge over IPv6 (an IPv6 literal,
    or a name whose AAAA came first) was handed out where nothing listens,
    and traded nothing, without a word (an adversarial session).
    """
    try:
        version = ipaddress.ip_address((listen or "").strip("[]").split("%", 1)[0]).version
    except ValueError:
        return 0
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class Upstream:
    def __init__(
        self,
        timeout: float,
        ssl: SSLContext | None = None,
        bind: str | None = None,
        headers: dict[str, str] | None = None,
        family: int = 0,
    ):
        self.timeout = timeout
        self.ssl = ssl  # an SSLContext with the configured CA, or None for the system's trust store
        self.bind = bind  # source address for outgoing connections: how peers appear in their region
        self.family = family or source_family(bind)  # the only IP family connections use, 0: either
        self.headers = headers or {}  # sent with every request: an edge's own token for its parent and siblings
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=256,
            limit_per_host=64,
            ssl=self.ssl if self.ssl is not None else True,
            local_addr=(self.bind, 0) if self.bind else None,
            family=socket.AddressFamily(self.family),
        )
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, headers=self.headers)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - per request to a wildcard-bound node; an Upstream lives as long as its node
    def _other_family(self, base: str) -> str | None:
        """Why ``base`` cannot be reached from ``bind``, when they are addresses of two IP families (aiohttp said only
        "Cannot connect to host ... [None]"); None otherwise, a host name included."""
        try:
            host = ipaddress.ip_address(urlsplit(base).hostname or "")
            source = ipaddress.ip_address((self.bind or "").strip("[]")).version if self.bind else None
        except ValueError:
            return None
        if source is None and self.family:  # a wildcard --listen: the upload server takes that family only
            wildcard = {socket.AF_INET: (4, "0.0.0.0"), socket.AF_INET6: (6, "[::]")}[socket.AddressFamily(self.family)]
            if wildcard[0] == host.version:
                return None
            other = "[::]" if wildcard[0] == 4 else "0.0.0.0"
            return (
                f"this node listens on IPv{wildcard[0]} only (--listen {wildcard[1]}:PORT), so neighbours could not reach it at "
                f"the IPv{host.version} address the edge would hand out: listen on {other}:PORT to use IPv{host.version} edges"
            )
        if source is None or source == host.version:
            return None
        return f"connections leave from {self.bind} (the --listen address), an IPv{source} one, which reaches no IPv{host.version} host"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def get(
        self,
        base: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        limit: int = MAX_ANSWER,
        head_timeout: float | None = None,
        min_rate: float = MIN_RATE,
    ) -> Reply:
        """GET base+path (path already percent-encoded); the body is read whole, up to ``limit`` bytes.

        ``head_timeout``: the answer's head must come within it (the body then has the rest of ``timeout``);
        ``min_rate``: the body gains a second on the timeout for each ``min_rate`` bytes received.
        """
        return await self.request("GET", base, path, headers, timeout, limit=limit, head_timeout=head_timeout, min_rate=min_rate)

    async def request(
        self,
        method: str,
        base: str,
        path: str,
        headers: dict[str, str] | None,
        timeout: float | None,
        doc: object = None,
        limit: int = MAX_ANSWER,
        on_head: Callable[[int, CIMultiDictProxy[str]], None] | None = None,
        head_timeout: float | None = None,
        min_rate: float = MIN_RATE,
    ) -> Reply:
        """One request; a body longer than ``limit`` (capped at MAX_PIECE) is UpstreamError 502, found while it streams.
        ``limit`` is a success's: an error's body (its message) may be MAX_ANSWER, whatever a piece's length.

        ``on_head`` is called with the status and headers as soon as they come, before the body is read.
        The body has until ``timeout`` plus a second for each ``min_rate`` bytes of it received (module docstring).
        """
        assert self.session is not None
        if self.family:  # aiohttp fails an address of the other family with an AssertionError
            mismatch = self._other_family(base)
            if mismatch is not None:
                raise Hopeless(502, f"{base} is unreachable: {mismatch}")
        seconds = timeout or self.timeout
        url = node_url(base, path)
        loop = asyncio.get_running_loop()
        start, waited = loop.time(), min(head_timeout or seconds, seconds)
        try:
            async with asyncio.timeout_at(start + waited) as deadline:
                async with self.session.request(method, url, headers=headers, json=doc, allow_redirects=False) as resp:
                    deadline.reschedule(start + seconds)
                    waited = seconds

                    def progress(received: int) -> None:
                        nonlocal waited
                        waited = seconds + received / min_rate
                        deadline.reschedule(start + waited)

                    head_s = loop.time() - start
                    if on_head is not None:
                        on_head(resp.status, resp.headers)
                    # a 401's message, longer than a piece of 6 bytes, was taken for an oversized piece
                    bound = min(limit, MAX_PIECE) if resp.status < 300 else max(min(limit, MAX_PIECE), MAX_ANSWER)
                    body = await read_bounded(resp, bound, base, path, progress)
                    return Reply(resp.status, resp.headers, body, head_s)
        except TimeoutError:
            raise UpstreamTimeout(504, f"{base} did not answer {path} within {waited:.4g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Hopeless(502, f"{base}'s TLS certificate does not verify: {exc.certificate_error}") from None
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno in (errno.EMFILE, errno.ENFILE):
                raise OutOfDescriptorsHere(
                    503, f"out of file descriptors here: cannot connect to {base} now; retry", {"Retry-After": "1"}
                ) from None
            if exc.os_error.errno == errno.EINVAL and self.bind:  # the kernel's word for "not from that address"
                raise Unreachable(502, f"{base} is unreachable from {self.bind}, the --listen address connections leave from") from None
            if speaks_no_tls(exc, base):
                raise Hopeless(502, f"{base} does not speak TLS: is it http://? ({exc.os_error})") from None
            raise Unreachable(502, f"{base} is unreachable: {os_reason(exc.os_error)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(502, f"{base} failed on {path}: {client_error_text(exc, base)}") from None


def os_reason(error: OSError) -> str:
    """An OS error's reason: asyncio's refused connections carry no strerror ("Connect call failed ('127.0.0.1', 1)")."""
    if isinstance(error, ConnectionError) and error.errno:  # refused, reset: the system's words
        return os.strerror(error.errno)
    return error.strerror or str(error)  # a name not found (gaierror), TLS: their own


def speaks_no_tls(exc: BaseException, base: str) -> bool:
    """Whether ``base``, named ``https://``, answered a TLS handshake with something else (plain HTTP, most likely)."""
    return base.startswith("https://") and isinstance(exc, aiohttp.ClientConnectorError) and "WRONG_VERSION_NUMBER" in str(exc.os_error)


def client_error_text(exc: BaseException, base: str) -> str:
    """What an aiohttp client error says, for a log line or a 502: aiohttp's own words named the peer's fault as the
    user's (a 200 KB header: "ClientResponseError 400, message='Got more than 8190 bytes...'" with the bytes), named no
    scheme mix-up, and said "ssl:default" of plain-HTTP connections (adversarial sessions)."""
    if speaks_no_tls(exc, base):  # the router said "[SSL: WRONG_VERSION_NUMBER] wrong version number" (an adversarial session)
        return "it does not speak TLS: is it http://?"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientResponseError):  # its answer could not be parsed: not a status it sent
        # the parser's first line, without the bytes it sent (they come after ": b" or on the lines below, with a caret)
        first = str(exc.message).split("\n", 1)[0].split(": b", 1)[0].rstrip(": ")
        return f"its answer is not valid HTTP: {first[:100]}"
    if isinstance(exc, aiohttp.ClientPayloadError):  # its "400" is the parser's code, not a status the server sent
        return "its answer's body was cut short, or its framing (chunks, length, encoding) was broken"
    if isinstance(exc, aiohttp.ServerDisconnectedError) and base.startswith("http://"):
        return "it closed the connection without an answer (restarting; or an HTTPS server, if the URL should be https://)"
    return f"{exc.__class__.__name__} {exc}"[:300]


def said_in(body: bytes, limit: int = 200) -> str:
    """An answer's body as the one-line reason a message quotes: its start on one line, or what it is when it is no
    text (a parent that answered a piece 206 had 200 bytes of the piece pasted into the 502 and the log: an
    adversarial session)."""
    text = " ".join(body[:limit].decode("utf-8", "replace").rstrip("\ufffd").split())
    return text if text.isprintable() and "\ufffd" not in text else f"({len(body)} bytes that are not text)"


ANSWER_TEXT = 4096  # bytes of an answer's body that an error line or a CLI message quotes, at most


async def answer_body(resp: aiohttp.ClientResponse, limit: int = ANSWER_TEXT) -> bytes:
    """The start of an answer's body: at most ``limit`` bytes are read.  Read whole, a hostile router's answer to an
    edge's registration (1.5 GiB, or a gzip bomb) took the edge to 4.2 GB, again every 30 s (an adversarial session)."""
    data = b""
    while len(data) < limit and not resp.content.at_eof():
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def answer_text(resp: aiohttp.ClientResponse, limit: int = ANSWER_TEXT) -> str:
    """The start of an answer's body as the one-line reason a log line or a message quotes (``said_in``)."""
    return said_in(await answer_body(resp, limit), limit)


async def read_bounded(
    resp: aiohttp.ClientResponse, limit: int, base: str, path: str, progress: Callable[[int], None] | None = None
) -> bytes:
    """The body, read a chunk at a time; UpstreamError 502 as soon as it exceeds ``limit`` bytes.

    ``progress`` is told the bytes received after each chunk.

    A ``Content-Length`` over the limit is refused before anything is read;
    one that lies, or a chunked body, is stopped at the first chunk past it.
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamError(502, f"{base} sent more than {limit} bytes for {path} (Content-Length {resp.content_length}); refusing")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > limit:
            raise UpstreamError(502, f"{base} sent more than {limit} bytes for {path}; refusing")
        if progress is not None:
            progress(len(body))
    return bytes(body)
