"""A peer's RouterFollower against a router double: what it logs while the router fails and when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import pytest
from aiohttp import web
from conftest import DoubleServer

from edgeswarm.node import routerclient
from edgeswarm.node.upstream import Upstream


class FlakyRouter(DoubleServer):
    """A router whose ``/edges`` answers 503 while ``down``, then one edge."""

    down = True

    def routes(self, app: web.Application) -> None:
        async def edges(_: web.Request) -> web.Response:
            if self.down:
                return web.Response(status=503, text="no edge of your region is up")
            return web.json_response({"edges": [{"url": "http://127.0.0.1:9/"}]})

        app.router.add_get("/edges", edges)


async def test_a_router_down_for_a_while_is_said_once_and_its_return_once(caplog, monkeypatch):
    """One line every refresh (5 s) while the router failed: 720 lines an hour on each peer for a router down for
    maintenance (an adversarial session).  Now the first failure, again a minute later, and its return."""
    monkeypatch.setattr(routerclient, "SOON", 0.0)
    caplog.set_level(logging.INFO, logger="edgeswarm.node.routerclient")
    applied: list[list[str]] = []
    async with FlakyRouter() as router:
        follower = routerclient.RouterFollower(router.url, refresh=0.02)
        follower.fixed = ["http://127.0.0.2:9"]
        upstream = Upstream(5.0)
        await upstream.start()
        following = asyncio.create_task(follower.follow(upstream, applied.append))
        try:
            await asyncio.sleep(0.5)  # some 20 asks, each failed
            router.down = False
            while not applied:
                await asyncio.sleep(0.02)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await upstream.close()
    said = [r.getMessage() for r in caplog.records if r.name == "edgeswarm.node.routerclient"]
    failed = [line for line in said if "answered 503" in line]
    assert len(failed) == 1 and "said again in 60 s" in failed[0], said
    assert said[1:] == [f"router {router.url} answers again", f"router {router.url}: edges now http://127.0.0.1:9"], said
    assert applied == [["http://127.0.0.2:9", "http://127.0.0.1:9"]]


async def first_edges(router: str, patience: float = math.inf, role: str = "peer") -> list[str]:
    """What ``RouterFollower.first`` starts with, asking ``router`` as a peer (or, with ``patience`` 0, as `get`) does."""
    upstream = Upstream(5.0)
    await upstream.start()
    try:
        follower = routerclient.RouterFollower(router)
        follower.patience, follower.role = patience, role
        return await follower.first(upstream, [])
    finally:
        await upstream.close()


async def test_a_peer_waits_for_its_routers_first_edges_for_good_backing_off(caplog, monkeypatch):
    """A peer without --edge gave up after 60 s of a router down: a laptop that started its daemon offline had none once
    the network was back.  It asks again after 1 s, 2, 4 ... up to FIRST_RETRY_MAX, for as long as it takes (here 10
    minutes of the clock), in one line; `get` (patience 0) asks once."""
    caplog.set_level(logging.INFO, logger="edgeswarm.node.routerclient")
    clock = [1000.0]
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds
        if clock[0] > 1600:
            router.down = False
        await real_sleep(0)

    monkeypatch.setattr(routerclient.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(routerclient.asyncio, "sleep", sleep)
    async with FlakyRouter() as router:
        assert await first_edges(router.url) == ["http://127.0.0.1:9"]
        router.down = True
        with pytest.raises(SystemExit) as ended:
            await first_edges(router.url, 0.0, "get")
        assert str(ended.value).startswith(f"edgeswarm get: no edge from router {router.url}: router {router.url} answered 503")
    assert waits[:6] == [1, 2, 4, 8, 16, 30] and max(waits) == routerclient.FIRST_RETRY_MAX and sum(waits) > 600
    said = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert said == [f"router {router.url} answered 503: no edge of your region is up; asking again until it gives this peer edges"]


class NamingRouter(DoubleServer):
    """A router (or the proxy before it) whose 503 page names a request id: its words change at every ask."""

    asked = 0

    def routes(self, app: web.Application) -> None:
        async def edges(_: web.Request) -> web.Response:
            self.asked += 1
            return web.Response(status=503, text=f"service unavailable (request {self.asked})")

        app.router.add_get("/edges", edges)


async def test_a_routers_refusal_in_changing_words_is_said_once_a_minute_not_at_every_ask(caplog, monkeypatch):
    """One WARNING per reason was one per ask when the reason quoted a page naming a request id (a review)."""
    caplog.set_level(logging.INFO, logger="edgeswarm.node.routerclient")
    clock = [1000.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        if clock[0] > 1300:
            await real_sleep(seconds)  # five minutes of the clock were enough: others' sleeps are real again
            return
        clock[0] += seconds
        if clock[0] > 1300:
            raise TimeoutError
        await real_sleep(0)

    monkeypatch.setattr(routerclient.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(routerclient.asyncio, "sleep", sleep)
    async with NamingRouter() as router:
        with pytest.raises(TimeoutError):
            await first_edges(router.url)
    said = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    assert router.asked >= 12 and 1 < len(said) <= 300 / routerclient.SAY_AGAIN + 1, (router.asked, said)
    assert said[0] == f"router {router.url} answered 503: service unavailable (request 1); asking again until it gives this peer edges"
