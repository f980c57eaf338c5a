"""An edge's registrations with its routers (node/registrar.py), against a router double."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from conftest import DoubleServer

from edgeswarm.node.registrar import Registration


async def registering(router: str, done: Callable[[], bool]) -> bool:
    """An edge's registrations with ``router`` until ``done()`` (5 s at most); whether they were still going on then."""
    registration = Registration([router], "west", 1_000_000, url="http://127.0.0.1:9")
    registration.bound.set()
    task = asyncio.create_task(registration.loop())
    for _ in range(100):
        if done():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    going = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return going


class FloodingRouter(DoubleServer):
    """Refuses every registration with an endless body, and counts what it got to send."""

    sent = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/register", self.register)

    async def register(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=500)
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            while self.sent < 1 << 30:
                await resp.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp


async def test_a_routers_answer_is_read_no_further_than_what_the_log_line_quotes(caplog):
    """The edge read its router's answer to each registration whole (1.5 GiB, or a gzip bomb, took it to 4.2 GB, again
    every 30 s: an adversarial session); it reads what its log line quotes and drops the connection."""
    caplog.set_level(logging.INFO)
    async with FloodingRouter() as router:
        await registering(router.url, lambda: any("refused the registration" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(0.2)  # the double's writes fail once the connection is gone
        assert router.sent < 64 << 20, router.sent
    [line] = [r.getMessage() for r in caplog.records if "refused the registration" in r.getMessage()]
    assert line.endswith("500 " + "x" * 300), line[-80:]


class OddRouter(DoubleServer):
    """Refuses with a charset nobody knows, and notes the Accept-Encoding the edge sent."""

    def __init__(self) -> None:
        self.encodings: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/register", self.register)

    async def register(self, request: web.Request) -> web.Response:
        self.encodings.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(status=403, body=b"wrong secret", headers={"Content-Type": "text/plain; charset=bogus"})


async def test_a_refusal_in_an_unknown_charset_is_quoted_and_the_registrations_go_on(caplog):
    """An answer naming an unknown charset raised out of the registrar, which stopped registering with every router,
    saying nothing (a review); a gzipped refusal was logged as its compressed bytes: the edge asks for no encoding."""
    caplog.set_level(logging.INFO)
    async with OddRouter() as router:
        assert await registering(router.url, lambda: bool(router.encodings)), "the registrar stopped"
    assert router.encodings[0] == "identity"
    assert any(r.getMessage().endswith("refused the registration: 403 wrong secret") for r in caplog.records)
