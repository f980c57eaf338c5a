"""An edge's registrations with its routers (node/registrar.py), against a router double."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from conftest import DoubleServer

from edgeswarm.node.registrar import MAX_DRAIN_S, Registration


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


class LeavingRouter(DoubleServer):
    """Answers an edge's leaving as ``answer`` says: a status, a body; counts the leavings and registrations."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        self.docs: list[dict] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/register", self.register)

    async def register(self, request: web.Request) -> web.Response:
        self.docs.append(await request.json())
        return web.Response(status=self.status, body=self.body, content_type="application/json")


async def draining(routers: list[str], monkeypatch, held: int | None = None) -> float:
    """An edge's drain at its stop, with its registrations' loop running: the seconds it would have served on."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    registration = Registration(routers, "west", 1_000_000, url="http://127.0.0.1:9")
    registration.bound.set()
    registration._held = set(routers[:held] if held is not None else routers)  # those that took its registration
    registration._task = asyncio.create_task(real_sleep(3600))  # the registrations' loop, as attach starts it
    monkeypatch.setattr("edgeswarm.node.registrar.asyncio.sleep", sleep)
    await registration.drain()
    assert registration._task.cancelled()
    return sum(slept)


async def test_a_stopping_edge_serves_on_for_the_longest_drain_its_routers_ask_and_no_longer_than_the_cap(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    async with LeavingRouter(200, b'{"drain_s": 1}') as a, LeavingRouter(200, b'{"drain_s": 3}') as b:
        assert await draining([a.url, b.url], monkeypatch) == 3
        assert a.docs == [{"url": "http://127.0.0.1:9", "region": "west", "capacity": 1_000_000, "leaving": True}]
    async with LeavingRouter(200, b'{"drain_s": 1e9}') as c:
        assert await draining([c.url], monkeypatch) == MAX_DRAIN_S
    assert sum("told router" in r.getMessage() for r in caplog.records) == 3


async def test_a_router_that_cannot_take_the_leaving_costs_the_stop_no_drain_and_says_so(monkeypatch, caplog):
    """A router from before leavings answers as to a registration; one refusing, one not JSON, one gone: each a
    warning naming it, and the edge stops at once, as it did before.  One that restarted since (404) sends nobody here,
    and one that never took the registration (a wrong secret) is not asked at all: neither is a warning (a review)."""
    caplog.set_level(logging.INFO)
    async with (
        LeavingRouter(200, b'{"url": "http://127.0.0.1:9", "state": "up"}') as old,
        LeavingRouter(403, b"wrong registration secret") as refusing,
        LeavingRouter(200, b"<html>") as odd,
        LeavingRouter(404, b"not registered here") as restarted,
        LeavingRouter(403, b"wrong registration secret") as never,
    ):
        gone = "http://127.0.0.1:9"
        assert await draining([old.url, refusing.url, odd.url, gone, restarted.url, never.url], monkeypatch, held=5) == 0
        assert never.docs == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and all("it sees the edge down at its next poll" in w for w in warned), warned
    assert any(old.url in w and "does not take leavings" in w for w in warned)
    assert any(refusing.url in w and "403 wrong registration secret" in w for w in warned)
    assert any(restarted.url in r.getMessage() and "nothing to leave" in r.getMessage() for r in caplog.records)


async def test_an_edge_no_router_took_stops_without_leaving_or_draining(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    async with LeavingRouter(200, b'{"drain_s": 5}') as router:
        assert await draining([router.url], monkeypatch, held=0) == 0
        assert router.docs == []
    assert [r.getMessage() for r in caplog.records if "leav" in r.getMessage()] == []


async def test_a_drain_is_taken_from_the_close_grace_and_a_second_stop_signal_cuts_it(monkeypatch):
    """Leaving, draining and then the requests' whole grace took 11 s, past a supervisor's 10 s SIGKILL (a review): the
    drain's time comes off the grace (MIN_CLOSE_GRACE at least); a stop signal a second or more in cuts the drain."""
    import os
    import signal
    from types import SimpleNamespace

    from edgeswarm.node import daemon

    servers = SimpleNamespace(shutdown_timeout=4.0)
    await daemon.drain_then(servers, lambda: asyncio.sleep(0.3))  # type: ignore[arg-type]
    assert 3.5 <= servers.shutdown_timeout <= 3.75
    servers.shutdown_timeout = 1.2
    await daemon.drain_then(servers, lambda: asyncio.sleep(0.3))  # type: ignore[arg-type]
    assert servers.shutdown_timeout == daemon.MIN_CLOSE_GRACE
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)  # the same stop sent twice: ignored
    loop.call_later(1.3, os.kill, os.getpid(), signal.SIGTERM)  # the operator again: the drain ends
    began = loop.time()
    await daemon.drain_then(SimpleNamespace(shutdown_timeout=4.0), lambda: asyncio.sleep(30))  # type: ignore[arg-type]
    assert 1.2 <= loop.time() - began < 3
    for sig in daemon.STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
