"""Cross-origin access (CORS) for browsers: which headers an edge's or gateway's answer carries.

A web player on another origin (hls.js, dash.js, Shaka, a ``<video
crossorigin>``) reads media with ``fetch``/XHR and a ``Range`` header; the
browser lets it see the answer only if the node says so.  This is the one
rule, with no I/O: daemon.py applies it to every answer of the apps that take
a policy (the edge's, and the peer's gateway), errors included, so a page sees
a 404 or a 416 as what it is rather than as a network error.

``--cors-origin`` (repeatable) lists who may read: ``*`` (the default) is
anyone, for public content; an origin such as ``https://player.example`` is
echoed back to that origin only (with ``Vary: Origin``); ``none`` turns CORS
off.  An answer the node marks *private* (the gateway's decrypted protected
content and its ``/status``, which it serves with the user's own token and
history) goes only to listed origins, never to ``*``: the gateway is on the
user's machine, so any page the user visits could otherwise read through it.
Credentials (cookies) are never allowed: edgeswarm has none, and a token
travels in ``Authorization``, which the page must hold and send itself.

CORS hides answers, not what a request did: a browser sends a page's form or
``fetch`` POST to any address without asking first (a "simple request"), so
a page the user visits could make the gateway on the user's machine download
files.  A request that changes what a node holds (any method but GET, HEAD
and OPTIONS) from a page of another origin is taken only from origins listed
by name (``may_change``), never through ``*``.

Nor does CORS hold when the page *is* of the gateway's origin.  A page of
``evil.example`` whose name its DNS later points at 127.0.0.1 (DNS
rebinding) reads the gateway as its own origin, private answers and all, so
the gateway answers only requests addressed to an IP address, ``localhost``
or a name the user lists (``gateway_host``), as Transmission's RPC host
whitelist does.  And a file the gateway serves is never a page of its
origin: a user's HTML uploaded to the CDN, opened there, would be (the
gateway sends what could be such a document, all but media, with
``Content-Security-Policy: sandbox``: ``sandboxed``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edgeswarm.protocol.httpspec import host_name

ANY = "*"
OFF = "none"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # what only reads: any page may send these (may_change)
# what a page of another origin may send after a preflight: reading media; announces and POSTs stay same-origin
ALLOW_METHODS = SAFE_METHODS
ALLOW_HEADERS = ("Authorization", "Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")
EXPOSE_HEADERS = ("Accept-Ranges", "Content-Length", "Content-Range", "ETag", "Retry-After", "WWW-Authenticate")
MAX_AGE = 7200  # seconds a browser may keep a preflight's answer (Chromium's own cap is 2 h)
NOSNIFF = {"X-Content-Type-Options": "nosniff"}  # a served file's type is what it says, never guessed
SANDBOX = {"Content-Security-Policy": "sandbox"}  # a document of an origin of its own, with no scripts


def sandboxed(content_type: str) -> bool:
    """Whether an answer of ``content_type`` could be a document that runs script (HTML, SVG, XML, PDF, anything
    unknown): sandboxed.  Not media: a film opened in the browser plays by itself only outside a sandbox; nor an HLS
    playlist, which a browser plays as media or not at all (opened at a gateway, Chromium's player stayed at 0 s)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    media = kind.startswith(("video/", "audio/")) or kind in PLAYLIST_TYPES
    return not (media or (kind.startswith("image/") and "svg" not in kind))


PLAYLIST_TYPES = ("application/vnd.apple.mpegurl", "application/x-mpegurl")  # HLS (RFC 8216 4; the older name)


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s]+$", re.IGNORECASE)  # scheme://host[:port], nothing after


def parse_origin(text: str) -> str:
    """One ``--cors-origin`` value: ``*``, ``none``, or an origin (scheme, host and port; no path); ValueError otherwise."""
    value = text.strip()
    if value in (ANY, OFF):
        return value
    if not _ORIGIN.match(value):
        raise ValueError(f"{text!r} is not an origin: give scheme://host[:port] (no path), '*' for anyone, or 'none'")
    scheme, rest = value.split("://", 1)
    return f"{scheme.lower()}://{rest.lower()}"  # browsers send origins in lower case (RFC 6454 serialisation)


def addressed_directly(host: str) -> bool:
    """Whether a request's Host header names this machine by an IP address, ``localhost`` or a name under it.

    Never a name a stranger's DNS can point here: a page of a web site whose name
    is rebound to 127.0.0.1 (DNS rebinding) is same-origin with whatever answers
    under that name, so what trusts a client by its address (the gateway, an
    edge's operator endpoints, the router's registrations) asks this too."""
    name = host_name(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def gateway_host(host: str, names: tuple[str, ...] = ()) -> bool:
    """Whether a request addressed to ``host`` (its Host header) is one the user's gateway answers: addressed
    directly, or under one of ``names`` (lower case, the user's ``--gateway-host``)."""
    return host_name(host) in names or addressed_directly(host)


@dataclass(frozen=True)
class CorsPolicy:
    """Who may read a node's answers from another origin: ``*``, listed origins, or nobody (empty)."""

    origins: tuple[str, ...] = (ANY,)

    @classmethod
    def from_flags(cls, values: list[str] | None) -> CorsPolicy:
        """The policy of repeated ``--cors-origin`` values (already parsed); none given: ``*``; ``none``: off."""
        if not values:
            return cls()
        if OFF in values:
            if len(set(values)) > 1:
                raise ValueError("--cors-origin none turns CORS off: it cannot be combined with origins")
            return cls(())
        return cls(tuple(dict.fromkeys(values)))

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    @property
    def varies(self) -> bool:
        """Whether the answer depends on the request's Origin: then caches must key on it (``Vary: Origin``)."""
        return any(o != ANY for o in self.origins)

    def allowed(self, origin: str | None, private: bool = False) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None to send none.

        ``*`` goes out whether or not the request names an origin, so that a
        shared cache never hands a CORS request an answer without it.
        """
        if origin is not None and origin.lower() in self.origins:
            return origin
        if ANY in self.origins and not private:
            return ANY
        return None

    def may_change(self, origin: str | None, own: str) -> bool:
        """Whether a request that changes what the node holds may come from a page on ``origin`` (module docstring).

        ``own``: the node's own origin (scheme://host:port as the request
        reached it), whose pages may.  No ``Origin`` at all: not a browser's
        request from another page (curl, a node, a player).
        """
        if origin is None:
            return True
        origin = origin.lower()
        return origin == own.lower() or (origin != ANY and origin in self.origins)

    def headers(self, origin: str | None, private: bool = False) -> dict[str, str]:
        """The CORS headers of an ordinary answer (any status)."""
        out = {"Vary": "Origin"} if self.varies else {}
        allow = self.allowed(origin, private)
        if allow is not None:
            out["Access-Control-Allow-Origin"] = allow
            out["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)
        return out

    def preflight(self, origin: str | None) -> dict[str, str]:
        """The headers of the 204 to a preflight ``OPTIONS``: what a page on ``origin`` may send, for how long.

        The handler has not run, so nothing is known to be private yet: a
        private answer itself then goes without Allow-Origin, and the browser
        refuses it there.
        """
        out = self.headers(origin)
        if "Access-Control-Allow-Origin" in out:
            out.pop("Access-Control-Expose-Headers")  # meaningful on the real answer only
            out["Access-Control-Allow-Methods"] = ", ".join(ALLOW_METHODS)
            out["Access-Control-Allow-Headers"] = ", ".join(ALLOW_HEADERS)
            out["Access-Control-Max-Age"] = str(MAX_AGE)
        return out


PUBLIC = CorsPolicy()  # the default: anyone may read public answers


def merge_vary(existing: str | None, name: str) -> str:
    """A ``Vary`` value with ``name`` added once (case-insensitive), keeping what was there."""
    if not existing:
        return name
    present = {v.strip().lower() for v in existing.split(",")}
    return existing if name.lower() in present or "*" in present else f"{existing}, {name}"
