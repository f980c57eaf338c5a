"""Who may have what: the token checks that origin and edges make on requests.

A node verifies access tokens against the origin key it pinned, so no node
needs a secret to check one and a token works at every edge of the provider.
The answers follow RFC 6750: 401 with ``WWW-Authenticate: Bearer`` when the
token is missing, malformed or expired (the client should get a new one), 403
when it is valid but not for this path or region.
"""

from __future__ import annotations

import json
import time

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeswarm.errors import HttpError
from edgeswarm.node.upstream import Upstream, UpstreamError, said_in
from edgeswarm.policy.recent import Recent
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.trust import tokens
from edgeswarm.trust.protect import SCHEME, Protection

ANONYMOUS = "-"  # the ledger's user for requests without a token


def grant(
    request: web.Request, public_key: Ed25519PublicKey, rel_path: str, *, required: bool, region: str | None = None
) -> tokens.Grant | None:
    """The verified grant for ``rel_path``, None if there is no token and none is required; else HttpError 401/403."""
    g = authenticated(request, public_key, required=required)
    if g is None:
        return None
    try:
        authorize(g, rel_path, region)
        return g
    except tokens.TokenError as exc:
        raise denied(exc) from None


def authorize(g: tokens.Grant, rel_path: str, region: str | None) -> None:
    """``tokens.authorize`` for a client this node placed in ``region`` (None: it could not): TokenError 403 if not."""
    if g.region is not None and region is None:  # unknown is not "any": a region-bound token needs a placed client
        raise tokens.TokenError(403, f"this token is for region {g.region}, and this node cannot place you in a region")
    tokens.authorize(g, rel_path, region)


def authenticated(request: web.Request, public_key: Ed25519PublicKey, *, required: bool) -> tokens.Grant | None:
    """The request's verified token, whatever path it covers (``grant`` checks that): None if there is none and none
    is required; else HttpError 401.  What a node checks before it looks a content id up: a stranger then learns
    nothing of what is held and makes nothing be fetched."""
    try:
        raw = tokens.from_request(request.headers, request.query)
        if raw is None:
            if not required:
                return None
            raise tokens.TokenError(401, "a token is required: send Authorization: Bearer TOKEN, or ?token=TOKEN")
        return _verified(raw, public_key)
    except tokens.TokenError as exc:
        raise denied(exc) from None


CACHE_SIZE = 4096
_cache: Recent[tuple[bytes, str], tokens.Grant] = Recent(CACHE_SIZE)  # (origin key, token) -> its verified grant


def _verified(raw: str, public_key: Ed25519PublicKey) -> tokens.Grant:
    """tokens.verify, remembered: a player's every range request carries the same token, and an
    Ed25519 check costs about 0.16 ms, a third of what serving a cached 1 MiB range costs.  A
    remembered grant is used only until it expires; only tokens that verified are kept."""
    key = (public_key.public_bytes_raw(), raw)
    grant = _cache.touch(key)
    if grant is not None and grant.expires + tokens.LEEWAY >= time.time():
        return grant
    _cache.pop(key, None)
    grant = tokens.verify(raw, public_key)  # raises for anything wrong, expiry included
    _cache[key] = grant
    return grant


def denied(exc: tokens.TokenError) -> HttpError:
    headers = {"WWW-Authenticate": f'Bearer realm="edgeswarm", error="{"invalid_token" if exc.status == 401 else "insufficient_scope"}"'}
    return HttpError(exc.status, exc.message, headers)


def key_response(cid: str, key: bytes) -> web.Response:
    """A content key, for token holders only: never cached by anyone on the way."""
    body = json.dumps({"content": cid, "scheme": SCHEME, "key": key.hex()})
    return web.Response(text=body + "\n", content_type="application/json", headers={"Cache-Control": "no-store"})


class KeyRefused(HttpError):
    """The node asked answered, but not with the key: its status (401/403 and others) and reason."""


async def fetch_key(
    upstream: Upstream, base: str, signed: SignedManifest, headers: dict[str, str] | None = None, who: str | None = None
) -> bytes:
    """A protected file's key from ``base`` (a parent or an edge), checked against the manifest before anyone uses it.

    HttpError with the upstream's status when ``base`` cannot be reached,
    KeyRefused when it answers without the key, 502 for a wrong key;
    ``who`` names ``base`` in the messages.
    """
    who = who or base
    path = signed.manifest.path
    try:
        reply = await upstream.get(base, f"/key/{signed.content_id}", headers)
    except UpstreamError as exc:
        raise HttpError(exc.status, f"cannot get the key of {path}: {exc.message}") from None
    if reply.status != 200:
        raise KeyRefused(reply.status, f"{base} refused the key of {path}: {reply.status} {said_in(reply.body)}")
    protection = signed.manifest.protection
    assert protection is not None, "only a protected file has a key to fetch"  # callers check; a bug otherwise
    try:
        return parse_key(reply.body, protection)
    except (ValueError, KeyError, TypeError) as exc:
        raise HttpError(502, f"{who} sent a bad key for {path}: {exc}") from None


def parse_key(body: bytes, protection: Protection) -> bytes:
    """The key out of a ``/key`` answer, checked against the manifest's key hash; ValueError if it is not the right one."""
    doc = jsondoc.loads(body)
    key = bytes.fromhex(doc["key"]) if isinstance(doc, dict) and isinstance(doc.get("key"), str) else b""
    if not protection.key_matches(key):
        raise ValueError("the key does not match the manifest's key_sha256")
    return key


def publish_grant(
    request: web.Request, public_key: Ed25519PublicKey, rel_path: str, region: str | None = None, placed: bool = True
) -> tokens.Grant:
    """The verified grant of a request that uploads ``rel_path``: a token is always required, with the publish scope; else 401/403.

    ``placed`` false (the origin, which knows no regions) skips the region
    check: the edge the upload came through made it.
    """
    try:
        raw = tokens.from_request(request.headers, request.query)
        if raw is None:
            raise tokens.TokenError(401, "publishing needs a token with the publish scope: send Authorization: Bearer TOKEN")
        g = _verified(raw, public_key)
        if placed and g.region is not None and region is None:
            raise tokens.TokenError(
                403,
                f"this token is for region {g.region}, and this node cannot place you in a region (the upload came from "
                f"{request.remote}: through a tier of edges, the edge below, which is in no region; publish tokens for "
                "tiers are issued without --region)",
            )
        tokens.authorize_publish(g, rel_path, region if placed else None)
        return g
    except tokens.TokenError as exc:
        raise denied(exc) from None
