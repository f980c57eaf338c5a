"""An edge registering itself with routers: ``edge --register-with URL --register-region R --register-capacity RATE``.

Once the edge listens, it sends ``POST /register`` (its URL, region and
capacity) to each router, and again every ``REREGISTER`` seconds: a router
keeps registrations in memory, so a restarted router has its edges back
within that time, and one that forgot a long-dead edge learns it is back.
A refused registration (a wrong secret, an unknown region) is logged as an
error with the router's reason and tried again at the same pace; the edge
serves all the while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from ssl import SSLContext

import aiohttp
from aiohttp import web

from edgeswarm.node.upstream import answer_text, client_error_text

log = logging.getLogger("edgeswarm.node.registrar")
REREGISTER = 30.0  # seconds between two registrations with one router
RETRY = 2.0  # seconds before trying a router that could not be reached


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

    def on_bound(self, scheme: str, host: str, port: int) -> None:
        """The edge listens: its URL is known (unless --register-url gave it)."""
        if self.url is None:
            self.url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
        self.bound.set()

    async def loop(self) -> None:
        await self.bound.wait()
        # identity: the answer is quoted, never decompressed (a gzipped refusal was logged as its compressed bytes)
        headers = {"Accept-Encoding": "identity"} | ({"Authorization": f"Bearer {self.secret}"} if self.secret else {})
        connector = aiohttp.TCPConnector(ssl=self.ssl or True)
        timeout = aiohttp.ClientTimeout(total=10)
        # the answer is only quoted (answer_text), never decompressed: a router's gzip bomb stays the few bytes it sent
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers, auto_decompress=False) as session:
            while True:
                delays = await asyncio.gather(*(self._register(session, r) for r in self.routers))
                await asyncio.sleep(min(delays))

    async def _register(self, session: aiohttp.ClientSession, router: str) -> float:
        """One registration; returns when to try this router again."""
        doc = {"url": self.url, "region": self.region, "capacity": self.capacity}
        try:
            async with session.post(router.rstrip("/") + "/register", json=doc) as resp:
                text = await answer_text(resp, 300)
                ok = resp.status in (200, 201)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._say(router, logging.WARNING, f"cannot register with router {router}: {client_error_text(exc, router)}")
            return RETRY
        if ok:
            self._say(router, logging.INFO, f"registered with router {router} as {self.url} ({self.region})")
        else:
            self._say(router, logging.ERROR, f"router {router} refused the registration: {resp.status} {text}")
        return REREGISTER

    def _say(self, router: str, level: int, line: str) -> None:
        if self._said.get(router) != line:
            self._said[router] = line
            log.log(level, "%s", line)

    def attach(self, app: web.Application) -> None:
        """Run the registrations for as long as the app runs."""

        async def lifecycle(_: web.Application):
            task = asyncio.create_task(self.loop())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(lifecycle)
