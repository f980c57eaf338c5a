"""A peer's side of the router: its region's edges, learnt from ``GET /edges`` and kept current.

``peer --router URL`` and ``get --router URL``.  The router sees the peer
at its source address (the peer's ``--listen`` host), so it answers with
the edges of the peer's region, best first.  The peer uses all of them: its
own measurements pick the fastest (SourceRanking) and move off one that
fails.  Every ``REFRESH`` seconds, and soon after an edge fails a request,
the list is asked again: edges the router reports down leave the peer's
list, new ones join it.  Edges given with ``--edge`` always stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import NamedTuple
from urllib.parse import quote, urljoin

from edgeswarm.node.upstream import Hopeless, Upstream, UpstreamError, said_in
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.registration import base_url_problem

log = logging.getLogger("edgeswarm.node.routerclient")
REFRESH = 5.0  # seconds between two asks of the router; an edge failure asks sooner
SOON = 0.5  # seconds after an edge failure before the router is asked (its poll may need that long to see it)
SAY_AGAIN = 60.0  # seconds between two lines saying the router fails the same way
FIRST_RETRY_MAX = 30.0  # seconds between two asks at most, while a peer without --edge waits for a router's first edges


async def region_edges(upstream: Upstream, router: str, path: str = "") -> list[str]:
    """The router's ranked edges for this host's region (and ``path``, for its hash); UpstreamError if it gives none."""
    query = f"/edges?path={quote(path, safe='/')}" if path else "/edges"
    reply = await upstream.get(router, query, timeout=5.0)
    if reply.status == 404:  # an edge's URL (/edges is a file there), or no edgeswarm node: asking again changes nothing
        raise Hopeless(502, f"router {router} answered 404 for /edges: it is no edgeswarm router (an edge goes in --edge)")
    if reply.status != 200:
        why = f"router {router} answered {reply.status}: {said_in(reply.body)}"
        raise UpstreamError(403 if reply.status == 403 else 502, why)  # 403: this client is in no region, and will not be
    try:
        rows = jsondoc.loads(reply.body)["edges"]
        urls = [str(r["url"]).rstrip("/") for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(502, f"router {router} sent no edge list: {exc}") from None
    urls = [u for u in urls if base_url_problem(u) is None]  # one malformed entry left us learning the origin key forever
    if not urls:
        raise UpstreamError(502, f"router {router} listed no edge")
    return urls


class RouterFollower:
    """Keeps a peer's edge list to what the router says (the ``--edge`` ones stay whatever it says).

    ``https_only``: a client set up for HTTPS (an ``https://`` router or
    ``--edge``, or ``--ca``) takes no plain-HTTP edge from the router.  A
    router's answer is only as trusted as the link it came over, and the
    client sends its token to the edges it names: a fake router naming
    itself as ``http://`` edge collected a peer's token in clear, and with
    it the key of a protected film (an adversarial session).
    """

    def __init__(self, router: str, path: str = "", refresh: float = REFRESH, https_only: bool = False):
        self.router = router.rstrip("/")
        self.path = path
        self.refresh = refresh
        self.https_only = https_only
        self.fixed: list[str] = []  # --edge: kept
        self.wake = asyncio.Event()
        self.routed: list[str] = []
        self._refused: set[str] = set()  # plain-HTTP edges the router named and this client would not take (logged once)
        self._failing: tuple[str, float] | None = None  # why the router fails lately, and when that was said (_failed)
        self.patience = math.inf  # how long ``first`` asks again: `get` sets 0, as it tries its edges once
        self.role = "peer"  # who says, when it gives up

    async def _ask(self, upstream: Upstream) -> list[str]:
        """The router's edges this client takes; UpstreamError if none."""
        routed = await region_edges(upstream, self.router, self.path)
        if not self.https_only:
            return routed
        plain = [u for u in routed if not u.startswith("https://")]
        for url in set(plain) - self._refused:
            log.warning("router %s named %s: a plain-HTTP edge, which this client, set up for HTTPS, does not use", self.router, url)
        self._refused.update(plain)
        kept = [u for u in routed if u.startswith("https://")]
        if not kept:
            raise UpstreamError(
                502, f"router {self.router} listed only plain-HTTP edges ({', '.join(plain)}), and this client uses HTTPS ones"
            )
        return kept

    def merged(self, routed: list[str]) -> list[str]:
        return [*self.fixed, *(u for u in routed if u not in self.fixed)]

    async def first(self, upstream: Upstream, fixed: list[str]) -> list[str]:
        """The edges to start with: the router's (and ``fixed``); without ``fixed``, waits for the router, for ``patience``.

        A peer waits for good, asking again after 1 s, then 2, up to
        FIRST_RETRY_MAX: it gave up after 60 s, so a laptop that started its
        daemon offline, or a router down a few minutes, left the user with no
        daemon once the network was back (a peer with a dead ``--edge`` waits).
        """
        self.fixed = list(fixed)
        deadline = time.monotonic() + self.patience
        said, said_at, delay = None, -math.inf, 1.0
        while True:
            try:
                self.routed = await self._ask(upstream)
                log.info("router %s: edges %s", self.router, ", ".join(self.routed))
                return self.merged(self.routed)
            except UpstreamError as exc:
                if self.fixed:
                    log.warning("router %s: %s; starting with --edge %s", self.router, exc.message, ", ".join(self.fixed))
                    return list(self.fixed)
                # a client of no region, a certificate that does not verify: asking again changes nothing (a 60 s wait
                if time.monotonic() >= deadline or exc.status == 403 or isinstance(exc, Hopeless):  # for the latter before)
                    raise SystemExit(f"edgeswarm {self.role}: no edge from router {self.router}: {exc.message}") from None
                # once, not each second (60 lines for a router down a minute: an adversarial session), and again only
                # SAY_AGAIN on while its words change (a 503 page naming a request id was a line at every ask: a review)
                why = exc.message if exc.message.startswith("router ") else f"router {self.router}: {exc.message}"
                if said is None or (why != said and time.monotonic() - said_at >= SAY_AGAIN):
                    log.warning("%s; asking again until it gives this %s edges", why, self.role)
                    said, said_at = why, time.monotonic()
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(2 * delay, FIRST_RETRY_MAX)

    def _failed(self, why: str) -> None:
        """A line when the router starts failing, and again only every SAY_AGAIN while it goes on failing the same way:
        one every 5 s was 720 lines an hour on each peer for a router down for maintenance (an adversarial session)."""
        now = time.monotonic()
        if self._failing is not None and self._failing[0] == why and now - self._failing[1] < SAY_AGAIN:
            return
        self._failing = (why, now)
        kept = ", ".join(self.routed or self.fixed)
        log.info("router %s: %s; keeping edges %s (said again in %.0f s while it lasts)", self.router, why, kept, SAY_AGAIN)

    def edge_failed(self) -> None:
        """An edge did not answer: ask the router soon, for it may know."""
        self.wake.set()

    async def follow(self, upstream: Upstream, apply) -> None:
        """Ask the router every ``refresh`` s (or soon after a wake) and ``apply(edges)`` when its answer changes."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh):
                    await self.wake.wait()
                await asyncio.sleep(SOON)
            self.wake.clear()
            try:
                routed = await self._ask(upstream)
            except UpstreamError as exc:
                self._failed(exc.message)
                continue
            if self._failing is not None:
                log.info("router %s answers again", self.router)
                self._failing = None
            if routed != self.routed:
                gone = [u for u in self.routed if u not in routed]
                log.info("router %s: edges now %s%s", self.router, ", ".join(routed), f" ({', '.join(gone)} left)" if gone else "")
                self.routed = routed
                apply(self.merged(routed))


REDIRECTS = (301, 302, 303, 307, 308)
PROBE_WAIT = 5.0  # seconds find_edge's HEAD may take: a router answers it at once, an edge from its cache or its parent's


ROUTER_REFUSALS = (403, 503)  # a router's answer to a client of no region, or when no edge is up: its /edges says why


async def _refused_by_router(upstream: Upstream, base: str) -> None:
    """``base`` refused a file with a status a router gives: if its ``/edges`` gives it too (an edge's is a file it
    does not have: 404), that is a router saying why (a HEAD's answer has no body), and the download stops with it;
    otherwise nothing (a download from the edge reports its own refusal).  Before, a router's reason showed only as
    "still learning the origin key ... answered 403 for /origin-key"."""
    try:
        probe = await upstream.get(base, "/edges", timeout=5.0)
    except UpstreamError:
        return
    # a router checks no token: a token's refusal is the edge's own, which checked the user's token against the path
    # /edges ("token for user alice covers /music/, not /edges", an adversarial session)
    if probe.status in ROUTER_REFUSALS and "WWW-Authenticate" not in probe.headers:
        raise UpstreamError(probe.status, f"{base} answered {probe.status}: {said_in(probe.body, 300)}")


class Found(NamedTuple):
    """What ``find_edge`` found: the router (if ``base`` is one), the edge, and whether ``base`` answered the probe."""

    router: str | None
    edge: str
    answered: bool = True


async def find_edge(upstream: Upstream, base: str, path: str, wait: float = PROBE_WAIT) -> Found:
    """The router and edge for a file named as ``base`` + ``path``: a router's URL is taken as ``--router``, an edge's as ``--edge``.

    One HEAD of the file, redirects not followed: an edge (or anything that
    is not a redirect, errors included: the download reports them) is the
    edge, as before.  A redirect comes from a router when ``base`` answers
    its ``/edges`` list: then the client learns the region's edges and
    fails over like ``--router`` (the router may be given as the file's URL,
    ``http://router/path``).  Any other redirect to the same path on
    another host is followed once, to that host as the edge.  ``wait``: how
    long the HEAD may take (a caller with other edges to go to waits less).
    """
    target = "/" + quote(path, safe="/")
    try:
        reply = await upstream.request("HEAD", base, target, None, wait)
    except UpstreamError:
        return Found(None, base, answered=False)
    location = reply.headers.get("Location", "")
    if reply.status in ROUTER_REFUSALS:
        await _refused_by_router(upstream, base)
    if reply.status not in REDIRECTS or not location:
        return Found(None, base)
    try:
        await region_edges(upstream, base, path)
    except UpstreamError:
        pass
    else:
        return Found(base, base)
    moved = urljoin(base + target, location).split("?", 1)[0]
    if base.startswith("https://") and moved.startswith("http://"):  # its token would go in the clear (a review)
        raise UpstreamError(502, f"{base}{target} redirects to {location}: plain HTTP, which a client of an https:// URL does not follow")
    if moved.startswith(("http://", "https://")) and moved.endswith(target) and moved != base + target:
        return Found(None, moved[: -len(target)])
    raise UpstreamError(502, f"{base}{target} redirects to {location}, which is neither a router nor the same file on another host")
