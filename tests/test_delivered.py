"""serving.wait_delivered against real sockets: a reader that keeps taking a trickle does not hold a piece for ever."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest
from aiohttp import web
from conftest import serve_app

from edgeswarm.node import serving
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.policy.ratelimit import TokenBucket

PIECE = 256 * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="wait_delivered reads Linux's TIOCOUTQ")
async def test_a_reader_taking_a_trickle_is_cut_once_below_the_minimum_rate(monkeypatch):
    """A tester's reader took 1 byte a second: never 'nothing for STALL s', so it held its upload place for days."""
    monkeypatch.setattr(serving, "STALL", 3.0)
    monkeypatch.setattr(serving, "MIN_RATE", 256 * 1024)  # the piece's 256 KiB: 3 + 1 s allowed
    ended: list[str] = []

    async def piece(request: web.Request) -> web.StreamResponse:
        try:
            return await serving.send_piece(request, b"x" * PIECE, TokenBucket(None), delivered=True)
        except ConnectionResetError as exc:
            ended.append(str(exc))
            raise

    app = make_app(Metrics("peer"))
    app.router.add_get("/piece", piece)
    async with serve_app(app) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # as the tester's: the kernel holds little for it
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        sock.sendall(b"GET /piece HTTP/1.1\r\nHost: x\r\n\r\n")
        loop, started, got = asyncio.get_running_loop(), time.monotonic(), 0
        try:
            while not ended and time.monotonic() - started < 15:
                await asyncio.sleep(0.1)
                try:
                    async with asyncio.timeout(0.05):
                        got += len(await loop.sock_recv(sock, 1024))  # 10 kB a second: always moving, slowly
                except (TimeoutError, BlockingIOError):
                    pass
                except ConnectionError:
                    break
        finally:
            sock.close()
    assert ended == ["the reader took under 262144 bytes a second"], (ended, got)
    assert time.monotonic() - started < 10 and got < PIECE
