"""An edge registering itself with routers: ``edge --register-with URL --register-region R --register-capacity RATE``.

Once the edge listens, it sends ``POST /register`` (its URL, region and
capacity) to each router, and again every ``REREGISTER`` seconds: a router
keeps registrations in memory, so a restarted router has its edges back
within that time, and one that forgot a long-dead edge learns it is back.
A refused registration (a wrong secret, an unknown region) is logged as an
error with the router's reason and tried again at the same pace; the edge
serves all the while.

At a stop the edge tells each router it is leaving (the same document with
``"leaving": true``), so that it is out of rotation at once, and goes on
serving for as long as the routers say clients they sent may still arrive
(``drain``): a restart that fit between two health polls was not seen by a
router, and the clients it sent there meanwhile were refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from ssl import SSLContext

import aiohttp
from aiohttp import web

from edgeswarm.node.upstream import UpstreamError, answer_text, client_error_text, read_bounded
from edgeswarm.protocol import jsondoc

log = logging.getLogger("edgeswarm.node.registrar")
REREGISTER = 30.0  # seconds between two registrations with one router
RETRY = 2.0  # seconds before trying a router that could not be reached
LEAVE_TIMEOUT = 1.0  # seconds a stopping edge waits for a router to take its leaving (a hung one costs the stop that)
MAX_ANSWER = 64 * 1024  # bytes of a router's answer to a leaving: its row of the edge
MAX_DRAIN_S = 5.0  # seconds a stopping edge serves on at most for clients sent before it left (a router's DNS TTL)


@dataclass
class Registration:
    routers: list[str]
    region: str
    capacity: int  # bytes per second
    url: str | None = None  # the edge's public URL; None: the address it listens on
    secret: str | None = None
    ssl: SSLContext | None = None  # the edge's --ca, for routers over HTTPS (None: the system's trust store)
    bound: asyncio.Event = field(default_factory=asyncio.Event)
    _said: dict[str, str] = field(default_factory=dict)  # router -> what was last logged, to log changes only
    _task: asyncio.Task | None = None  # the registrations' loop, while the app runs
    _held: set[str] = field(default_factory=set)  # routers whose last answer took a registration: those a stop leaves

    def on_bound(self, scheme: str, host: str, port: int) -> None:
        """The edge listens: its URL is known (unless --register-url gave it)."""
        if self.url is None:
            self.url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        self.bound.set()

    async def loop(self) -> None:
        await self.bound.wait()
        async with self._session(10.0) as session:
            while True:
                delays = await asyncio.gather(*(self._register(session, r) for r in self.routers))
                await asyncio.sleep(min(delays))

    def _session(self, timeout: float) -> aiohttp.ClientSession:
        # identity: the answer is quoted, never decompressed (a gzipped refusal was logged as its compressed bytes)
        headers = {"Accept-Encoding": "identity"} | ({"Authorization": f"Bearer {self.secret}"} if self.secret else {})
        connector = aiohttp.TCPConnector(ssl=self.ssl or True)
        # the answer is only quoted (answer_text), never decompressed: a router's gzip bomb stays the few bytes it sent
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), headers=headers, auto_decompress=False
        )

    def _doc(self) -> dict:
        return {"url": self.url, "region": self.region, "capacity": self.capacity}

    async def drain(self) -> None:
        """At a stop, before the edge closes its port: tell every router this edge is leaving, then serve on for the
        longest time one says its clients may still come (its DNS TTL, or a redirect's follow; MAX_DRAIN_S at most)."""
        if self._task is not None:
            self._task.cancel()  # no registration may follow the leaving
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.bound.is_set():
            return
        if not self._held:  # none took a registration: none sends clients here (a review: "leaving" a router that
            return  # refused the secret warned that it "sees the edge down at its next poll")
        async with self._session(LEAVE_TIMEOUT) as session:
            drains = await asyncio.gather(*(self._leave(session, r) for r in self.routers if r in self._held))
        wait = min(max(drains), MAX_DRAIN_S)
        if wait > 0:
            log.info("serving %g s more for the clients the routers sent here before it left", wait)
            await asyncio.sleep(wait)

    async def _leave(self, session: aiohttp.ClientSession, router: str) -> float:
        """Tell one router this edge is stopping; returns how long its clients may still come (0: it did not say)."""
        unheard = "it sees the edge down at its next poll"
        try:
            async with session.post(router.rstrip("/") + "/register", json=self._doc() | {"leaving": True}) as resp:
                if resp.status == 404:  # restarted since, and not yet registered again: it sends nobody here
                    log.info("router %s does not hold this edge (restarted since?): nothing to leave", router)
                    return 0.0
                if resp.status != 200:
                    log.warning(
                        "router %s refused this edge's leaving: %d %s; %s", router, resp.status, await answer_text(resp, 300), unheard
                    )
                    return 0.0
                body = await read_bounded(resp, MAX_ANSWER, router, "/register")
        except UpstreamError as exc:
            log.warning("%s; %s", exc.message, unheard)
            return 0.0
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = f"no answer within {LEAVE_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else client_error_text(exc, router)
            log.warning("cannot tell router %s that this edge is leaving: %s; %s", router, why, unheard)
            return 0.0
        try:
            drain = jsondoc.loads(body).get("drain_s")
        except (ValueError, AttributeError):
            drain = None
        if isinstance(drain, bool) or not isinstance(drain, int | float) or not drain >= 0:
            log.warning("router %s does not take leavings (one from before 2026-12-08?): %s", router, unheard)
            return 0.0
        log.info("told router %s that this edge is leaving: it is out of rotation", router)
        return float(drain)

    async def _register(self, session: aiohttp.ClientSession, router: str) -> float:
        """One registration; returns when to try this router again."""
        doc = self._doc()
        try:
            async with session.post(router.rstrip("/") + "/register", json=doc) as resp:
                text = await answer_text(resp, 300)
                ok = resp.status in (200, 201)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._say(router, logging.WARNING, f"cannot register with router {router}: {client_error_text(exc, router)}")
            return RETRY
        if ok:
            self._held.add(router)
            self._say(router, logging.INFO, f"registered with router {router} as {self.url} ({self.region})")
        else:
            self._held.discard(router)
            self._say(router, logging.ERROR, f"router {router} refused the registration: {resp.status} {text}")
        return REREGISTER

    def _say(self, router: str, level: int, line: str) -> None:
        if self._said.get(router) != line:
            self._said[router] = line
            log.log(level, "%s", line)

    def attach(self, app: web.Application) -> None:
        """Run the registrations for as long as the app runs."""

        async def lifecycle(_: web.Application):
            self._task = asyncio.create_task(self.loop())
            yield
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

        app.cleanup_ctx.append(lifecycle)
