"""Serving one published file over HTTP, the same way on every node.

The node hands in a ``PieceSource`` (the origin reads and verifies its file,
an edge reads its cache or fetches upstream); this module applies RFC 9110 -
conditionals, byte ranges (several as multipart/byteranges), HEAD - and
streams the answer piece by piece.  Headers go out as soon as the first piece is ready and later pieces
are fetched a few ahead, so a range starts flowing before it is complete.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import secrets
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.upstream import MIN_RATE  # what our readers must take is what we take from others
from edgeswarm.policy.ratelimit import TokenBucket
from edgeswarm.protocol.cors import NOSNIFF, SANDBOX, sandboxed
from edgeswarm.protocol.httpspec import (
    Validators,
    byteranges,
    http_date,
    not_modified,
    parse_ranges,
    precondition_failed,
    range_applies,
    served_type,
)
from edgeswarm.protocol.manifest import SignedManifest

CHUNK = 64 * 1024  # write granularity under a rate cap, and of what a hit leaves in the transport's buffer at once
LOOKAHEAD = 4  # pieces fetched ahead of the one being sent, at most ...
# ... and pieces past this many bytes ahead, but one: a large file's pieces (64 MiB at 100 GiB) are each filled whole in
# memory, and eight slow readers of one took an edge to 2 GB and its origin to 5 GB (an adversarial session)
LOOKAHEAD_BYTES = 16 * 1024 * 1024
BOOK_BYTES = 4 * 1024 * 1024  # a long answer's bytes are told to the ledger (on_sent) at least every this many ...
BOOK_S = 2.0  # ... or seconds: a killed edge loses what its ledger had not written (2 s), not whole downloads
SENT_ASIDE = web.RequestKey("edgeswarm.sent_aside", int)  # body bytes sendfile put on the socket, past aiohttp's counts


class PieceSource(Protocol):
    def ahead(self, piece_size: int) -> int:
        """Pieces (of ``piece_size`` bytes) fetched ahead of the one being sent, at most: LOOKAHEAD, fewer for a small
        cache, none while the cache cannot be written (PieceStore.read_ahead)."""

    def local(self, index: int) -> int | None:
        """A descriptor of the piece's file, if it can be sent straight from disk; the source keeps it open.

        Valid until the next await only: the store may close it to make room
        (so it is asked again after one, and must count one piece once).
        """

    def held(self, index: int) -> bool:
        """Whether there is no need to fetch the piece ahead of the reader: ``local`` would probably succeed (or, at
        the origin, reading it when its turn comes is as quick)."""

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        """The verified piece; raises HttpError when it cannot be had.  ``stop``: the piece the read ends before, if
        known (a bounded range): a source that fetches for a read may take no more than it asks for."""


def file_headers(signed: SignedManifest) -> dict[str, str]:
    """A file answer's headers, on every node.  A file that could be a document (cors.sandboxed: HTML, SVG, PDF,
    unknown types; not media) is one of no origin, running no script, wherever it is served: anyone with a publish
    token can put a page on the CDN, and opened at an edge as ``URL?token=TOKEN`` (the form a browser can open under
    --require-token) its script sent the viewer's token away, and opened by the operator it placed preheat orders
    (an adversarial session; the gateway sandboxed already)."""
    m = signed.manifest
    served = served_type(m.content_type)
    modified = file_date(signed)
    return {
        "ETag": signed.etag,
        **({"Last-Modified": http_date(modified)} if modified is not None else {}),
        "Accept-Ranges": "bytes",
        "Content-Type": served,
        "Cache-Control": "public, max-age=0, must-revalidate",
        **NOSNIFF,
        **(SANDBOX if sandboxed(served) else {}),
    }


def file_date(signed: SignedManifest) -> int | None:
    """The file's date as a validator (``Last-Modified``), or None: none when it is ahead of this node's clock.

    A date never goes after Date (RFC 9110 8.8.2.1), and one replaced by the
    clock moves at every answer, so no client could name it back: a file
    dated ahead (an origin host's clock ahead of the edge's, a playlist
    rewritten more than once a second) answered If-Modified-Since with its
    own date 200 whole, If-Unmodified-Since 412 and a date If-Range the
    whole file (an adversarial session).  Without it, its ETag validates,
    and date conditions are ignored as for a file with no date (13.1.3-5).
    """
    modified = signed.manifest.modified
    return modified if modified <= time.time() else None


Transform = Callable[[bytes | memoryview, int], bytes]  # (bytes, their offset in the file) -> bytes to send


async def serve_file(
    request: web.Request,
    signed: SignedManifest,
    source: PieceSource,
    metrics: Metrics,
    bucket: TokenBucket | None = None,
    transform: Transform | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """The file (or its range) as RFC 9110 says.

    ``transform`` decrypts a protected file on its way out, never on disk;
    ``on_sent`` learns the body bytes that really left, however the answer
    ended (the ledger bills that, not the Content-Length), as they leave:
    every BOOK_BYTES or BOOK_S, and the rest at the end.
    """
    m = signed.manifest
    headers = file_headers(signed)
    if transform is not None:  # decrypted for one authorised client: no shared cache may keep it
        headers["Cache-Control"] = "private, no-store"
    elif "Authorization" in request.headers or "token" in request.query:
        headers["Cache-Control"] = "private, max-age=0, must-revalidate"
    v = Validators(signed.etag, file_date(signed))
    # a bodiless or text answer's headers: the validators, and the sandbox too, as a browser updates its stored headers
    # from a 304's (RFC 9111 4.3.4): a page cached before edges sandboxed ran its script on while unchanged (a review);
    # and nosniff, as on every error answer (the 412's text names the path)
    kept = {k: headers[k] for k in ("ETag", "Last-Modified", "Cache-Control", *NOSNIFF, *SANDBOX) if k in headers}
    if precondition_failed(request.headers, v):
        return web.Response(status=412, headers=kept, text=f"precondition failed: {m.path} is now version {signed.etag}\n")
    if not_modified(request.headers, v):
        return web.Response(status=304, headers=kept)
    spans = None
    if request.method == "GET" and range_applies(request.headers, v):
        spans = parse_ranges(request.headers.get("Range"), m.size)
    parts, close = _layout(spans, m.size, headers)
    headers["Content-Length"] = str(sum(len(head) + last - first + 1 for head, first, last in parts) + len(close))
    resp = web.StreamResponse(status=206 if spans else 200, headers=headers)
    if request.method == "HEAD" or m.size == 0:
        await resp.prepare(request)
        return resp
    await _stream(request, resp, source, m, parts, close, metrics, bucket, transform, on_sent)
    return resp


Part = tuple[bytes, int, int]  # (framing sent before the bytes, first, last): one span of the file in the body


def _layout(spans: list[tuple[int, int]] | None, size: int, headers: dict[str, str]) -> tuple[list[Part], bytes]:
    """The body's parts and closing bytes for ``spans`` (None: the whole file); sets Content-Range or the multipart type."""
    if spans is None:
        return [(b"", 0, size - 1)], b""
    if len(spans) == 1:
        first, last = spans[0]
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return [(b"", first, last)], b""
    boundary = secrets.token_hex(10)
    heads, close = byteranges(spans, size, headers["Content-Type"], boundary)
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    return [(head, first, last) for head, (first, last) in zip(heads, spans, strict=True)], close


async def _stream(
    request,
    resp,
    source: PieceSource,
    m,
    parts: list[Part],
    close: bytes,
    metrics: Metrics,
    bucket: TokenBucket | None,
    transform: Transform | None,
    on_sent: Callable[[int], None] | None,
) -> None:
    """Send each part's framing, then its pieces in order; pieces not on disk are fetched ``source.ahead`` ahead.

    The bytes-sent counter grows as each span of a piece leaves, not when the
    answer ends: a router reading an edge's egress saw nothing of its
    downloads under way, and kept sending clients to an edge at its cap (an
    adversarial session).  ``on_sent`` (the ledger) learns them as they go too: told once at the end, a killed edge
    billed nothing of a long download, and one that ran past midnight on a month's last day was billed all to the next
    month (an adversarial session).
    """
    pending: dict[int, asyncio.Future] = {}
    sent = [0, 0]  # file bytes that left; of those, told to on_sent
    told_at = [time.monotonic()]
    kind = "client" if not request.path.startswith("/piece/") else "node"

    def tell() -> None:
        if on_sent is not None and sent[0] > sent[1]:
            on_sent(sent[0] - sent[1])
        sent[1], told_at[0] = sent[0], time.monotonic()

    def count(n: int) -> None:
        sent[0] += n
        metrics.sent[kind] += n
        if sent[0] - sent[1] >= BOOK_BYTES or time.monotonic() - told_at[0] >= BOOK_S:
            tell()

    try:
        for head, first, last in parts:
            await _send_span(request, resp, source, m, head, first, last, pending, bucket, transform, count)
        if close:
            await resp.write(close)
        await resp.write_eof()
    finally:
        tell()
        for fut in pending.values():
            fut.cancel()
            if fut.done() and not fut.cancelled():
                fut.exception()  # seen: a failed fetch ahead of a cut answer is not "never retrieved"


async def _send_span(
    request,
    resp,
    source: PieceSource,
    m,
    head: bytes,
    first: int,
    last: int,
    pending: dict[int, asyncio.Future],
    bucket: TokenBucket | None,
    transform: Transform | None,
    count: Callable[[int], None],
) -> None:
    """The part's framing ``head``, then bytes first..last of the file.

    Nothing goes out before the first piece is ready, so a piece that cannot be
    had is still an answer with its status, not a cut connection.
    """
    indices = m.pieces_for(first, last)
    reach = min(source.ahead(m.piece_size), max(1, LOOKAHEAD_BYTES // m.piece_size))  # pieces fetched ahead, at most
    for i in indices:
        piece: int | bytes | None = None if i in pending else source.local(i)
        if piece is None:
            for j in range(i + 1, min(i + reach + 1, indices.stop)):
                if j not in pending and not source.held(j):
                    pending[j] = asyncio.ensure_future(_ahead(source, j, indices.stop))
            ahead = pending.pop(i, None)  # a failure after the head went out cuts the connection (daemon.cut_after_start)
            piece = await ahead if ahead is not None else None
            if piece is None:  # not asked yet, or stored since and left on disk
                piece = source.local(i) or await source.fetch(i, indices.stop)
        offset, length = m.piece_span(i)
        a = max(first, offset) - offset
        b = min(last + 1, offset + length) - offset
        if not resp.prepared or head:
            if not resp.prepared:
                await resp.prepare(request)
            if head:
                await resp.write(head)
                head = b""
            if not isinstance(piece, bytes):  # the store may have closed that descriptor meanwhile, its number reused
                piece = source.local(i) or await source.fetch(i, indices.stop)
        for lo in range(a, b, BOOK_BYTES):  # a piece over BOOK_BYTES (files over 8 GiB) is counted as its parts leave
            hi = min(b, lo + BOOK_BYTES)
            if lo > a and not isinstance(piece, bytes):  # after an await: that descriptor may be another file's now
                piece = source.local(i) or await source.fetch(i, indices.stop)
            await _send_part(request, resp, piece, lo, hi, offset, bucket, transform)
            count(hi - lo)


async def _send_part(
    request, resp, piece: int | bytes, a: int, b: int, offset: int, bucket: TokenBucket | None, transform: Transform | None
) -> None:
    """Bytes a..b of a piece (held in memory, or a descriptor of its file) that starts at ``offset`` in the file."""
    if transform is not None:
        data = memoryview(piece)[a:b] if isinstance(piece, bytes) else read_held(piece, b - a, a)
        data = transform(data, offset + a)
        await (write_throttled(resp, data, bucket) if bucket is not None and bucket.rate else resp.write(data))
    elif bucket is not None and bucket.rate:
        data = piece if isinstance(piece, bytes) else read_held(piece, b - a, a)
        await write_throttled(resp, memoryview(data)[a:b] if isinstance(piece, bytes) else data, bucket)
    elif isinstance(piece, bytes):
        await _chunked(memoryview(piece)[a:b], resp.write)  # a reader that stops reading holds a chunk, not the piece
    else:
        await _sendfile(request, resp, piece, a, b - a)


async def _ahead(source: PieceSource, index: int, stop: int) -> bytes | None:
    """A piece fetched ahead of the reader: its bytes only if the source could not keep it, else None (read from disk
    when its turn comes).  A connection that stops reading holds no piece fetched ahead in memory, however large, but
    for those its source could not keep as its disk filled: a source whose writes fail fetches none ahead."""
    data = await source.fetch(index, stop)
    return None if source.held(index) else data


async def _sendfile(request: web.Request, resp: web.StreamResponse, fd: int, offset: int, count: int) -> None:
    """Zero-copy straight to the socket while it has room; the rest through the transport's buffer, ``CHUNK``
    bytes at a time (each write waits until the buffer has drained: a whole piece's rest at once was held for each of
    400 clients that read nothing, 0.6 MB each, an adversarial session).

    asyncio's loop.sendfile costs several futures per call, which made a
    cache hit CPU-bound in Python rather than in the kernel.  Never under TLS:
    the socket beneath an SSL transport would carry the file in the clear.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    done = 0
    if transport.get_write_buffer_size() == 0 and transport.get_extra_info("sslcontext") is None:
        sock = transport.get_extra_info("socket").fileno()
        while done < count:
            try:
                n = os.sendfile(sock, fd, offset + done, count - done)
            except BlockingIOError:
                break
            except OSError as exc:
                transport.abort()  # the socket is dead: the transport says so too (daemon.client_gone)
                raise ConnectionResetError(f"client went away ({exc})") from exc
            if n == 0:
                break
            done += n
        request[SENT_ASIDE] = request.get(SENT_ASIDE, 0) + done  # for the access log and the cut line (daemon.py)
    if done == count:
        return
    try:  # the store's descriptor is not ours across an await: evicted meanwhile, it was closed and its number went to
        own = os.dup(fd)  # another piece's file, whose bytes then went out as this one's (a review)
    except OSError as exc:
        raise HttpError(503, f"out of file descriptors in the middle of an answer ({exc.strerror}): cut; retry") from None
    try:
        while done < count:  # a share at a time: a client that reads nothing holds one in the transport's buffer, not a piece
            step = min(count - done, CHUNK)
            await resp.write(read_held(own, step, offset + done))
            done += step
    finally:
        os.close(own)


def read_held(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes of a held piece's file, or an error that cuts the answer: a file cut short under the node (a
    truncated piece) was sent as what it held, every later byte at the wrong offset, and the client then waited for
    the rest until the idle timeout (an adversarial session).  The store drops such a piece on its next hit."""
    data = os.pread(fd, count, offset)
    if len(data) < count:
        raise HttpError(500, f"a cached piece's file is {count - len(data)} bytes short of what it held: changed under the node")
    return data


async def send_piece(
    request: web.Request,
    data: bytes,
    bucket: TokenBucket,
    headers: dict[str, str] | None = None,
    line: asyncio.Lock | None = None,
    delivered: bool = False,
) -> web.StreamResponse:
    """One piece to another node: at once when uncapped, else streamed under the cap.

    The body is written here, not by aiohttp after the handler returned, so the
    piece is held only while its handler runs (what an upload gate counts), and
    a reader that takes nothing for ``STALL`` seconds is cut rather than keeping
    the piece until its connection's idle timeout.
    ``line``: under a cap, the head goes at once and the body waits its turn
    (``in_line``): the edge's seed answers to whole-file downloads, a peer's background pieces.
    ``delivered``: return only once the kernel has sent it too (``wait_delivered``), for a gate that counts pieces in flight.
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data)), **(headers or {})})
    await resp.prepare(request)
    if request.method == "HEAD":  # its head only: the body went out after it (a review), which broke the connection,
        await resp.write_eof()  # and with --workers the next answer on the primary's pooled one, another client's
        return resp
    if not bucket.rate:
        await write_watched(request, resp, data)
    elif line is None:
        await write_throttled(resp, data, bucket, request)
    else:
        await in_line(line, write_throttled(resp, data, bucket, request), LINE_HOLD * len(data) / bucket.rate)
    await resp.write_eof()
    if delivered:
        await wait_delivered(request)
    return resp


STALL = 15.0  # seconds a piece's reader may take nothing (a 256 KiB write waits for its drain) before it is cut
WATCHED = 256 * 1024  # bytes per watched write: a slow but moving reader never meets STALL


async def write_watched(request: web.Request, resp: web.StreamResponse, data: bytes | memoryview) -> None:
    """Write ``data``, cutting the connection if a write does not drain within STALL seconds (the reader stopped)."""
    await _chunked(data, lambda chunk: _write_or_cut(request, resp, chunk))


async def _chunked(data: bytes | memoryview, write: Callable[[memoryview], Awaitable[None]]) -> None:
    """``data`` WATCHED bytes a write: each waits for the buffer to drain, which so holds a chunk, never all of it."""
    view = memoryview(data)
    for start in range(0, len(view), WATCHED):
        await write(view[start : start + WATCHED])


DELIVERED = 16 * 1024  # bytes of an answer that may still be queued when it counts as delivered (its last segments' ACK)
POLL = 0.01  # seconds between two looks at a socket's send queue


async def wait_delivered(request: web.Request) -> None:
    """Until the answer written is out of our buffers and the kernel's (within DELIVERED bytes); a reader that takes
    nothing for STALL seconds is cut, and so is one slower than MIN_RATE over the whole wait (a reader taking a byte
    a second held its place in the upload gate for days: a few such, from three addresses, took every place).

    A write returns once the kernel has queued the bytes, and on loopback or a
    fast link the kernel queues megabytes per socket: a requester that never
    reads had its piece "sent" at once, and could open as many as it has
    connections (+150 MB of kernel memory for 600).  Waiting for the queue to
    empty makes a piece count as in flight until it has really left.
    Linux's SIOCOUTQ; elsewhere this returns at once.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None or not hasattr(termios, "TIOCOUTQ"):
        return
    loop = asyncio.get_running_loop()
    least, since, deadline = math.inf, loop.time(), math.inf
    while not transport.is_closing():
        queued = _kernel_queued(sock.fileno())
        if queued is None:
            return
        queued += transport.get_write_buffer_size()
        if queued <= DELIVERED:
            return
        now = loop.time()
        deadline = min(deadline, now + STALL + queued / MIN_RATE)
        if queued < least:
            least, since = queued, now
        if now - since > STALL or now > deadline:
            transport.abort()
            slow = f"nothing for {STALL:g} s" if now - since > STALL else f"under {MIN_RATE} bytes a second"
            raise ConnectionResetError(f"the reader took {slow}")
        await asyncio.sleep(POLL)


def _kernel_queued(fd: int) -> int | None:
    """Bytes written to a TCP socket that the peer has not acknowledged yet (None: the socket cannot say)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return None


async def _write_or_cut(request: web.Request | None, resp: web.StreamResponse, chunk: bytes | memoryview) -> None:
    """One write that a reader stalled for STALL seconds ends with a cut connection (a ConnectionResetError)."""
    if request is None:
        await resp.write(chunk)
        return
    try:
        async with asyncio.timeout(STALL):
            await resp.write(chunk)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError(f"the reader took nothing for {STALL:g} s") from None


LINE_HOLD = 4  # a body keeps its line for at most this many times its own time alone at the cap


async def in_line(line: asyncio.Lock, write: Coroutine[Any, Any, None], hold: float) -> None:
    """Run ``write`` when ``line`` is free (asyncio.Lock wakes its waiters in order), one at a time.

    Bodies in line share the uplink one after the other instead of all at
    once, so the first lands after one piece time and can be traded while the
    others are sent.  A body that takes longer than ``hold`` (a slow reader)
    lets the next one start and finishes outside the line, so no asker can
    stall those behind it.
    """
    try:
        await line.acquire()
    except asyncio.CancelledError:
        write.close()  # the asker left while waiting: its body never starts
        raise
    try:
        task = asyncio.ensure_future(write)
        try:
            await asyncio.wait({task}, timeout=hold)
        except asyncio.CancelledError:
            task.cancel()
            raise
    finally:
        line.release()
    await task


async def write_throttled(
    resp: web.StreamResponse, data: bytes | memoryview, bucket: TokenBucket, request: web.Request | None = None
) -> None:
    """Write under an upload cap, in chunks so the rate is smooth rather than bursty; with ``request``, a reader
    that stalls a chunk for STALL seconds is cut (a piece's answer: it holds the piece meanwhile)."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        chunk = view[start : start + CHUNK]
        await bucket.throttle(len(chunk))
        await _write_or_cut(request, resp, chunk)
