"""The live dashboard: one HTML page and its assets, served by the node itself (issue 12).

``GET /dashboard`` is a static page; its script polls the node's ``/status``
every 2 s and keeps the history for its charts in the browser, so the node
holds no state for it and the page costs what a ``/status`` poll costs.  The
chart library (uPlot, pinned, MIT) is vendored in ``static/`` and served from
here: no build step, no CDN, nothing fetched from elsewhere.

The page is written for a strict Content-Security-Policy (sent with it): no
inline script or style, no eval, and every string from ``/status`` (region
names, paths, content ids) reaches the DOM as ``textContent`` only.

``mount`` adds the routes to any aiohttp app: edges mount their page
(dashboard.html), the router its own (router.html, its edges per region);
both load common.js (the shared helpers) and their own script.  Every URL in the page is relative to the page.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.protocol.cors import NOSNIFF
from edgeswarm.protocol.httpspec import Validators, http_date, not_modified

STATIC = Path(__file__).parent / "static"
UPLOT = "uplot-1.6.32"  # the vendored uPlot release (static/README.md: source, checksums, licence)
PAGE = "dashboard.html"  # the edge's page
ROUTER_PAGE = "router.html"  # the router's: its edges per region (same helpers, its own script)
STATUS_PLACEHOLDER = "@@STATUS@@"  # in the page's <meta name="edgeswarm-status">: the URL it polls
BASE_PLACEHOLDER = "@@BASE@@"  # the page's assets are at BASE/NAME, relative to the page: BASE is its own last segment
# Our own files change with edgeswarm under a fixed name: browsers revalidate them (a cheap 304).
# The vendored release has its version in its name: cached for a year, never asked again.
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
ASSETS = {
    "common.js": ("text/javascript; charset=utf-8", REVALIDATE),  # helpers both pages share
    "dashboard.js": ("text/javascript; charset=utf-8", REVALIDATE),
    "router.js": ("text/javascript; charset=utf-8", REVALIDATE),
    "dashboard.css": ("text/css; charset=utf-8", REVALIDATE),
    f"{UPLOT}.iife.min.js": ("text/javascript; charset=utf-8", IMMUTABLE),
    f"{UPLOT}.min.css": ("text/css; charset=utf-8", IMMUTABLE),
    f"{UPLOT}.LICENSE": ("text/plain; charset=utf-8", IMMUTABLE),
}
# Scripts, styles and fetches from this node only; nothing inline, no eval, no frames, no plugins.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    **NOSNIFF,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    """One file of the page, read once: its bytes, type, caching rule and validators."""

    body: bytes
    content_type: str
    cache_control: str
    validators: Validators

    @classmethod
    def of(cls, body: bytes, content_type: str, cache_control: str, modified: float) -> Asset:
        return cls(body, content_type, cache_control, Validators(f'"{hashlib.sha256(body).hexdigest()[:32]}"', int(modified)))

    def response(self, request: web.Request) -> web.Response:
        """The asset, or 304 when the client holds this version (If-None-Match, If-Modified-Since)."""
        headers = {
            "Cache-Control": self.cache_control,
            "ETag": self.validators.etag,
            "Last-Modified": http_date(self.validators.modified),
            **SECURITY_HEADERS,
        }
        if not_modified(request.headers, self.validators):
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body, headers={**headers, "Content-Type": self.content_type})


def load(status_url: str = "status", base: str = "dashboard", page_name: str = PAGE) -> dict[str, Asset]:
    """The page and its assets, by the name they are served at ("" for the page).

    The page (``page_name`` in static/) polls ``status_url`` and loads its
    assets from ``base/NAME``, both relative to the page's own URL.
    """
    page_path = STATIC / page_name
    page = page_path.read_text(encoding="utf-8")
    page = page.replace(STATUS_PLACEHOLDER, html.escape(status_url, quote=True)).replace(BASE_PLACEHOLDER, html.escape(base, quote=True))
    assets = {"": Asset.of(page.encode(), "text/html; charset=utf-8", REVALIDATE, page_path.stat().st_mtime)}
    for name, (ctype, cache) in ASSETS.items():
        path = STATIC / name
        assets[name] = Asset.of(path.read_bytes(), ctype, cache, path.stat().st_mtime)
    return assets


def mount(app: web.Application, prefix: str = "/dashboard", status_url: str = "status", page: str = PAGE) -> None:
    """Serve the dashboard at ``prefix`` and its assets at ``prefix/NAME`` on ``app``.

    ``status_url`` is what the page polls, relative to ``prefix`` (the
    default is the node's own ``/status`` for a page at ``/dashboard``).
    ``page`` is the HTML file: the edge's (PAGE) or the router's (ROUTER_PAGE).
    The first path segment of ``prefix`` must be reserved (paths.RESERVED)
    on nodes that serve a file namespace, or it would hide published files.
    """
    assets = load(status_url, prefix.rstrip("/").rsplit("/", 1)[-1], page)

    async def serve_page(request: web.Request) -> web.Response:
        return assets[""].response(request)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not name or name not in assets:  # "" is the page, served at the prefix itself
            raise HttpError(404, f"the dashboard has no file {name[:80]!r}")
        return assets[name].response(request)

    here = "../" + prefix.rstrip("/").rsplit("/", 1)[-1]  # relative: behind a proxy under a prefix, /dashboard left it

    async def slash(request: web.Request) -> web.Response:
        """``prefix/``, as people type it and proxies write it: the page's own address (its links are relative to it).
        It was a 400, "path segment '' is not allowed" (an adversarial session); an absolute redirect left a proxy's
        prefix, or looped with a proxy that adds the slash (a review)."""
        query = request.rel_url.raw_query_string
        raise web.HTTPMovedPermanently(f"{here}?{query}" if query else here)

    app.router.add_get(prefix, serve_page)
    app.router.add_get(prefix + "/", slash)
    app.router.add_get(prefix + "/{name}", asset)
