"""A client that hangs up is a normal event, never a 500 (issue 12, item 5): the middleware on its own, in process.

A player that seeks, or a curl that times out, closes its connection in the
middle of a body, or before the first byte while the node still waits for a
piece.  Either way the node logs one line without a traceback and counts
``edgeswarm_events_total{event="client_hangup"}``; ``/metrics`` shows no 500.
A ConnectionError of an upstream, with the client still there, stays a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import serve_handler, status_count

from edgeswarm.node.daemon import HANGUP, client_gone
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.serving import _sendfile

BODY = 1 << 30  # far more than loopback's socket buffers hold: the server is still writing when the client leaves
READ = 4 * 1024 * 1024
CHUNK = 64 * 1024


async def hang_up_after(port: int, nbytes: int) -> None:
    """GET /f, read ``nbytes`` of the answer (head included), then close the connection with the rest unread."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    if nbytes:
        await reader.readexactly(nbytes)
    writer.transport.abort()


async def wait_gone(request: web.Request) -> None:
    for _ in range(500):
        if client_gone(request):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the client never went away")


def tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None]


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return await r.text()


async def test_a_client_leaving_mid_body_is_counted_as_a_hangup_not_a_500(caplog):
    metrics, done = Metrics("test"), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(BODY)})
        await resp.prepare(request)
        try:
            for _ in range(BODY // CHUNK):
                await resp.write(b"x" * CHUNK)
            return resp
        finally:
            done.set()

    with caplog.at_level(logging.DEBUG):
        async with serve_handler(handler, metrics) as port:
            await hang_up_after(port, READ)
            await asyncio.wait_for(done.wait(), 10)
            text = await metrics_text(port)
    assert metrics.events[(HANGUP, "")] == 1 and status_count(metrics, 500) == 0, (metrics.events, metrics.responses)
    assert 'edgeswarm_events_total{detail="",event="client_hangup",role="test"} 1.0' in text
    assert 'status="500"' not in text
    assert not tracebacks(caplog)
    assert any("client went away after" in r.getMessage() and r.levelno <= logging.INFO for r in caplog.records)


async def test_a_client_gone_before_its_piece_came_is_a_hangup_not_a_500(caplog, tmp_path: Path):
    """A cold read: the piece comes after the player has seeked elsewhere; the cached path then finds the client gone."""
    metrics, done = Metrics("test"), asyncio.Event()
    piece = tmp_path / "piece"
    piece.write_bytes(os.urandom(CHUNK))

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            await wait_gone(request)
            resp = web.StreamResponse(headers={"Content-Length": str(CHUNK)})
            await resp.prepare(request)
            fd = os.open(piece, os.O_RDONLY)
            try:
                await _sendfile(request, resp, fd, 0, CHUNK)
            finally:
                os.close(fd)
            return resp
        finally:
            done.set()

    with caplog.at_level(logging.DEBUG):
        async with serve_handler(handler, metrics) as port:
            await hang_up_after(port, 0)
            await asyncio.wait_for(done.wait(), 10)
            text = await metrics_text(port)
    assert metrics.events[(HANGUP, "")] == 1, metrics.events
    assert status_count(metrics, 500) == 0 and 'status="500"' not in text, metrics.responses
    assert not tracebacks(caplog), tracebacks(caplog)


async def test_a_hangup_before_the_answer_started_is_one_line_and_no_response(caplog):
    """Say, a request body that stops coming: nothing was answered, so nothing is counted but the hang-up."""
    metrics, done = Metrics("test"), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            await wait_gone(request)
            raise ConnectionResetError("Connection lost")
        finally:
            done.set()

    with caplog.at_level(logging.DEBUG):
        async with serve_handler(handler, metrics) as port:
            await hang_up_after(port, 0)
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.1)  # aiohttp finishes the request after the handler
    assert metrics.events[(HANGUP, "")] == 1 and not metrics.responses, (metrics.events, metrics.responses)
    assert not tracebacks(caplog), tracebacks(caplog)
    assert any("client went away before the answer" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("failure", [ConnectionRefusedError("parent refused"), ConnectionResetError("parent reset")])
async def test_an_upstreams_connection_error_with_the_client_still_there_stays_a_500(failure, caplog):
    metrics = Metrics("test")

    async def handler(_: web.Request) -> web.StreamResponse:
        raise failure

    with caplog.at_level(logging.INFO):
        async with serve_handler(handler, metrics) as port, aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/f") as r:
            assert r.status == 500
    assert status_count(metrics, 500) == 1 and not any(e == HANGUP for e, _ in metrics.events)
    assert tracebacks(caplog)  # a bug of ours: it must be seen


@pytest.mark.parametrize("started", [False, True])
async def test_running_out_of_memory_is_a_503_to_retry_or_a_cut_with_one_line_not_a_500_and_a_traceback(started, caplog):
    """An edge under prlimit --as: every request that found no memory was a 500 "internal error", or an answer cut with
    a traceback, 27 tracebacks for 40 requests (an adversarial session).  A resource, as descriptors are: a 503 with
    Retry-After before the answer starts, a cut after, and one line each."""
    metrics = Metrics("test")

    async def handler(request: web.Request) -> web.StreamResponse:
        if started:
            resp = web.StreamResponse(headers={"Content-Length": str(2 * CHUNK)})
            await resp.prepare(request)
            await resp.write(b"x" * CHUNK)
        raise MemoryError

    with caplog.at_level(logging.INFO):
        async with serve_handler(handler, metrics) as port, aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/f") as r:
            if started:
                with pytest.raises(aiohttp.ClientPayloadError):  # cut: the client resumes with a range
                    await r.read()
            else:
                assert (r.status, r.headers.get("Retry-After"), await r.text()) == (503, "1", "out of memory; retry\n")
    assert status_count(metrics, 500) == 0 and not tracebacks(caplog), tracebacks(caplog)
    said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(said) == 1 and re.fullmatch(r"GET /f(: cut after \d+ bytes:| ->) 503 out of memory; retry", said[0]), said


async def test_a_connections_read_that_finds_no_memory_is_a_line_without_a_traceback(caplog):
    """The same session: an upstream connection's read found no memory, and asyncio's handler wrote a traceback each."""
    from edgeswarm.node.connlimit import ConnectionPolicy
    from edgeswarm.node.daemon import Connections

    conns, loop = Connections(ConnectionPolicy(10, 5.0, 60.0)), asyncio.get_running_loop()
    with caplog.at_level(logging.INFO):
        for _ in range(8):
            conns.loop_error(loop, {"message": "Fatal read error on socket transport", "exception": MemoryError()})
    assert not tracebacks(caplog), tracebacks(caplog)
    assert [r.getMessage() for r in caplog.records] == ["Fatal read error on socket transport: out of memory"] * 5  # then a count


async def test_many_clients_gone_mid_answer_write_a_few_lines_not_one_each(caplog):
    """400 clients that read nothing wrote 400 lines at once, and a live edge 1 750 in a few minutes (an adversarial
    session): hang-ups are counted in full, and logged at most 5 a minute a node."""
    from edgeswarm.node.daemon import Servers, make_app

    metrics = Metrics("test")

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(BODY)})
        await resp.prepare(request)
        for _ in range(BODY // CHUNK):
            await resp.write(b"x" * CHUNK)
        return resp

    app = make_app(metrics)
    app.router.add_get("/f", handler)
    servers = Servers("test")
    port = (await servers.start([(app, "127.0.0.1", 0, "")]))[""][1]
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(12):
                await hang_up_after(port, 1024)
            for _ in range(100):
                if metrics.events[(HANGUP, "")] == 12:
                    break
                await asyncio.sleep(0.05)
    finally:
        await servers.close()
    assert metrics.events[(HANGUP, "")] == 12
    assert sum("client went away after" in r.getMessage() for r in caplog.records) == 5


async def test_a_hit_for_a_client_that_reads_nothing_holds_a_chunk_not_the_rest_of_its_piece(tmp_path: Path):
    """The rest of a piece went into the transport's buffer at once: each of 400 clients that read nothing held 0.6 MB
    of an edge's memory (an adversarial session).  It goes a chunk at a time, each write waiting for the last to drain."""
    piece = tmp_path / "piece"
    piece.write_bytes(os.urandom(8 * 1024 * 1024))
    seen: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(piece.stat().st_size)})
        await resp.prepare(request)
        fd = os.open(piece, os.O_RDONLY)
        sending = asyncio.ensure_future(_sendfile(request, resp, fd, 0, piece.stat().st_size))
        try:
            await asyncio.wait({sending}, timeout=1.0)  # the client reads nothing: the socket fills, then the buffer
            assert request.transport is not None
            seen.append(request.transport.get_write_buffer_size())
        finally:
            sending.cancel()
            os.close(fd)
        return resp

    async with serve_handler(handler, Metrics("test")) as port:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        writer.transport.abort()
    assert seen and seen[0] <= 4 * CHUNK, seen  # aiohttp drains past 64 KiB: a few chunks at most (4.4 MB before)


async def test_a_connection_whose_client_acknowledges_nothing_is_given_up_after_unacked_s():
    """A vanished downloader's HAVE stream lived on in the kernel's retransmissions, its heartbeats queued, its place among
    a content's 64 subscribers held (an adversarial session on network impairment): TCP_USER_TIMEOUT on every connection,
    of --idle-timeout, as Linux counts a window kept shut against it (30 s cut paused players sooner: a review)."""
    import socket

    from edgeswarm.node.daemon import ServerLimits, Servers, make_app

    async def handler(request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("socket")
        return web.Response(text=str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)))

    app = make_app(Metrics("test"))
    app.router.add_get("/t", handler)
    servers = Servers("test", limits=ServerLimits(idle_timeout=42.0))
    port = (await servers.start([(app, "127.0.0.1", 0, "")]))[""][1]
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/t") as r:
            assert await r.text() == "57000"  # --idle-timeout and 15 s: Linux counts a window kept shut (a paused player) too
    finally:
        await servers.close()
