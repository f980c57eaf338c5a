"""``edgeswarm preheat``: fill a region's edges with content before a release, so the crowd finds it cached.

Each path is read through each edge of the region and the body thrown away:
the edge fetches the pieces it lacks from its parent once, now, instead of
while thousands of clients wait.  An edge whose ``/status`` already lists a
path whole is not asked again (its answer would cost egress for nothing).
The region's edges come from a router (``GET /edges?region=R``) or are given.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from edgeswarm.errors import EdgeswarmError, said
from edgeswarm.node.upstream import answer_text
from edgeswarm.protocol.manifest import is_content_id
from edgeswarm.trust import tls

CHUNK = 1 << 16
CACHED, FILLED, FETCHED, FAILED = "cached", "filled", "fetched", "failed"


class PreheatError(EdgeswarmError):
    """Preheat cannot start: the region or its edges cannot be learned."""


@dataclass
class Result:
    """One path through one edge: what it cost and how it ended."""

    edge: str
    path: str
    outcome: str = FAILED  # cached | filled (was not whole before) | fetched (the edge would not say) | failed
    nbytes: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class Plan:
    """The work: every path through every edge, at most ``concurrency`` transfers at once."""

    paths: list[str]
    edges: list[str]
    concurrency: int = 4
    token: str | None = None
    ca: Path | None = None
    timeout: float = 600.0
    down: list[str] = field(default_factory=list)  # edges of the region the router reports not up: each a failure


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@functools.cache
def ssl_for(ca: Path | None) -> ssl.SSLContext | bool:
    """The CA's context, read once; True (the system's CAs) without one.  ValueError naming the file if it cannot be read
    (``preheat`` asks at start, so that is one message, not a failure per edge saying only 'No such file or directory')."""
    return tls.client_context(ca) or True


async def region_edges(router: str, region: str, ca: Path | None = None) -> tuple[list[str], list[str]]:
    """The region's up edges and its edges that are not up, as the router knows them."""
    url = f"{router.rstrip('/')}/edges?region={quote(region, safe='')}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, session.get(url, ssl=ssl_for(ca)) as reply:
            if reply.status == 404:
                raise PreheatError(f"router {router}: {await answer_text(reply, 300)}")
            if reply.status != 200:
                raise PreheatError(f"router {router} answered {reply.status} to /edges?region= (too old to list a region?)")
            doc = await reply.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise PreheatError(f"cannot reach router {router}: {said(exc)}") from None
    return [str(e["url"]) for e in doc.get("edges", [])], [str(u) for u in doc.get("down", [])]


async def _whole_paths(session: aiohttp.ClientSession, edge: str, plan: Plan) -> dict[str, set[str]] | None:
    """The paths the edge holds every piece of (its ``/status``), each with the content ids held whole, or None when it
    will not say."""
    try:
        status = f"{edge.rstrip('/')}/status?contents=all"  # every content it holds, not the first 100 listed by default
        async with session.get(status, headers=_headers(plan.token), ssl=ssl_for(plan.ca)) as reply:
            if reply.status != 200:
                return None
            doc = await reply.json()
        whole: dict[str, set[str]] = {}
        for c in doc.get("contents", []):
            if c.get("pieces") == c.get("held"):
                whole.setdefault(str(c["path"]).strip("/"), set()).add(str(c.get("id")))
        return whole
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def _current_id(session: aiohttp.ClientSession, edge: str, path: str, plan: Plan) -> str | None:
    """The content id the edge gives for ``path`` now (its ``/manifest``, revalidated for an operator), or None.  A
    republished path was said "cached" while the edge held only its old version (an adversarial session)."""
    url = f"{edge.rstrip('/')}/manifest/{quote(path.lstrip('/'), safe='/')}"
    try:
        async with session.get(url, headers=_headers(plan.token), ssl=ssl_for(plan.ca)) as reply:
            doc = await reply.json() if reply.status == 200 else None
        return str(doc["id"]) if isinstance(doc, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return None


async def _warm(session: aiohttp.ClientSession, edge: str, path: str, plan: Plan, on_bytes: Callable[[int, int], None]) -> Result:
    """Read ``path`` through ``edge`` to the end; ``on_bytes(total, n)`` reports the length, then each chunk."""
    result = Result(edge, path)
    started = time.monotonic()
    url = f"{edge.rstrip('/')}/{quote(path.lstrip('/'), safe='/')}"
    try:
        async with session.get(url, headers=_headers(plan.token), ssl=ssl_for(plan.ca)) as reply:
            if reply.status != 200:
                result.error = f"{reply.status} {await answer_text(reply, 200)}"
                return result
            if not is_content_id(reply.headers.get("ETag", "").strip('"')):  # a web server on the wrong port was "fetched"
                result.error = "not an edgeswarm edge: its answer names no signed content (its ETag is no content id)"
                return result
            on_bytes(reply.content_length or 0, 0)
            async for chunk in reply.content.iter_chunked(CHUNK):
                result.nbytes += len(chunk)
                on_bytes(0, len(chunk))
        result.outcome = FETCHED
    except aiohttp.ClientPayloadError:  # the answer began, and stopped: aiohttp's words named a 400 nobody sent
        total = f" of {reply.content_length}" if reply.content_length else ""
        result.error = f"the edge cut the transfer after {result.nbytes}{total} bytes (it restarted, or the file was published again: run preheat again)"
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = f"unreachable: {said(exc)}"
    finally:
        result.seconds = time.monotonic() - started
    return result


async def preheat(plan: Plan, on_bytes: Callable[[int, int], None] = lambda t, n: None) -> list[Result]:
    """Every path through every edge, in (edge, path) order; each of the plan's down edges a failure per path."""
    results = [Result(edge, path, error="the router reports this edge not up") for edge in plan.down for path in plan.paths]
    limit = asyncio.Semaphore(plan.concurrency)
    timeout = aiohttp.ClientTimeout(total=plan.timeout, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        held = await asyncio.gather(*(_whole_paths(session, e, plan) for e in plan.edges))
        whole = dict(zip(plan.edges, held, strict=True))

        async def one(edge: str, path: str) -> Result:
            before = whole[edge]
            held = before.get(path.strip("/")) if before is not None else None
            if held and await _current_id(session, edge, path, plan) in held:  # the version published now, not any
                return Result(edge, path, CACHED)
            async with limit:
                r = await _warm(session, edge, path, plan, on_bytes)
            if r.outcome == FETCHED and before is not None:
                r.outcome = FILLED
            return r

        results += await asyncio.gather(*(one(e, p) for e in plan.edges for p in plan.paths))
    return results


@dataclass
class PeerOrders:
    """What one edge answered to ``POST /preheat``: per path, how many volunteers it has and whom it chose."""

    edge: str
    rows: list[dict] = field(default_factory=list)
    error: str = ""


async def order_peers(plan: Plan, region: str, share: float, ttl: float) -> list[PeerOrders]:
    """Ask each edge of the plan to have ``share`` of its region's volunteering peers fetch and seed the paths."""
    body = {"paths": plan.paths, "share": share, "region": region, "ttl": ttl}
    timeout = aiohttp.ClientTimeout(total=plan.timeout, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(edge: str) -> PeerOrders:
            out = PeerOrders(edge)
            try:
                async with session.post(f"{edge.rstrip('/')}/preheat", json=body, headers=_headers(plan.token), ssl=ssl_for(plan.ca)) as r:
                    if r.status != 200:
                        out.error = await _refusal(r)
                        return out
                    out.rows = list((await r.json()).get("orders", []))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                out.error = f"unreachable: {said(exc)}"
            return out

        return list(await asyncio.gather(*(one(e) for e in plan.edges)))


async def _refusal(r: aiohttp.ClientResponse) -> str:
    """Why an edge did not take peer orders.  Only a p2p edge has ``POST /preheat``: another answers 405 (its file
    route takes GET only: this said '405 405: Method Not Allowed') or, if it is no edge at all, 404.  A p2p edge's
    own 404 (a path it does not publish) says so, and is said as it is (it was taken for "takes no peer orders")."""
    text = await answer_text(r)
    if r.status == 405 or (r.status == 404 and text in ("", "404: Not Found")):
        return f"{r.status}: this edge takes no peer orders (it does not run --p2p, or is too old for them)"
    return f"{r.status} {text[:300]}"


def parse_share(text: str) -> float:
    """``25%`` or ``0.25``: a share more than 0 and at most 1; ValueError otherwise."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"expected a share such as 25% or 0.25 (more than 0, at most 100%), got {text!r}")
    return value
