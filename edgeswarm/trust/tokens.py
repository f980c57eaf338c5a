"""Access tokens and swarm tickets: who may fetch what, as EdDSA-signed JWTs.

The origin signs **access tokens** (user, path prefix, optional region, expiry)
with its Ed25519 key; edges and peers already pin the origin's public key for
manifests, so they can check a token without asking anyone.  An edge signs
**swarm tickets** with its own key and hands them to its peers with the peer
list; a peer's upload server serves pieces only to a requester holding a
ticket from one of its edges for that content.  A ``use`` claim keeps the two
apart, so neither can ever pass for the other.

All the cryptography is PyJWT's (``algorithms=["EdDSA"]`` only, so ``none``
and HMAC forgeries with the public key as the secret are refused).  Time
checks are done here rather than by PyJWT so that tests can pass ``now``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeswarm.errors import HttpError
from edgeswarm.protocol.paths import path_problem
from edgeswarm.protocol.units import parse_duration
from edgeswarm.trust.signing import KeyFileError, load_private_key

ISSUER = "edgeswarm"
ALGORITHM = "EdDSA"
LEEWAY = 5.0  # seconds of clock skew tolerated between origin, edges and peers
MAX_TOKEN_LENGTH = 4096  # refused before parsing: no unauthenticated work on huge inputs
MAX_USER_LENGTH = 128
MAX_PEER_ID_LENGTH = 64  # as in an announce
MAX_CONTENT_LENGTH = 128
MAX_TTL = 100 * 365 * 86400.0  # what the CLI accepts: a longer "duration" is surely a typo
PUBLISH = "publish"  # the scope that lets a user upload under their own prefix (roles/publish.py)
SCOPES = frozenset({PUBLISH})  # what an access token's "scope" claim may grant beyond reading its path
USERS_PREFIX = "users"  # a publishing user's files live under /users/<subject>/
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}", re.ASCII)  # a subject usable as one path segment
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)  # JWS compact form, no padding
# Everything a hostile string can make PyJWT or json raise; anything else would be a bug worth a traceback.
_DECODE_ERRORS = (jwt.PyJWTError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError)


class TokenError(HttpError):
    """status is 401 (no/bad/expired token) or 403 (valid but not for this); message is a sentence for the client and the log."""


class OutOfDateError(TokenError):
    """401: expired, or not valid yet, by the clock it was judged by (beyond LEEWAY).  A peer says in its log when it
    refuses a neighbour's ticket so: a clock that is off (its own, or an edge's) is the usual cause."""

    def __init__(self, message: str):
        super().__init__(401, message)


@dataclass(frozen=True)
class Grant:
    """A verified access token."""

    user: str
    path: str  # scope: an absolute path prefix such as "/" or "/films/" or "/films/a.mp4"
    region: str | None
    expires: float  # epoch seconds
    token: str  # the raw token, so a peer can forward it to its edge
    scopes: frozenset[str] = frozenset()  # beyond reading: "publish" (the "scope" claim, RFC 8693 style)


@dataclass(frozen=True)
class Ticket:
    """A verified swarm ticket."""

    peer_id: str
    user: str
    content: str
    expires: float
    region: str | None = None  # the region the issuing edge placed its holder in (None: unmapped, or an older edge)


# ----- issuing ------------------------------------------------------------------------------------------------------------


def _name_problem(value: object, what: str, limit: int) -> str | None:
    """Why ``value`` cannot be a user, peer id or content id: these end up in logs and usage records."""
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty string"
    if len(value) > limit:
        return f"{what} must be at most {limit} characters"
    if not value.isprintable():
        return f"{what} must be printable"
    return None


def _check_issue(user: str, ttl: float) -> None:
    problem = _name_problem(user, "user", MAX_USER_LENGTH)
    if problem:
        raise ValueError(problem)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")


def _sign(key: Ed25519PrivateKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def issue(
    key: Ed25519PrivateKey,
    user: str,
    path: str,
    ttl: float,
    region: str | None = None,
    now: float | None = None,
    scopes: Sequence[str] = (),
) -> str:
    """An access token for ``user`` to fetch everything under ``path`` for ``ttl`` seconds (optionally only in ``region``).

    ``scopes`` adds rights beyond reading (SCOPES): "publish" lets the user
    upload under /users/<user>/, so the user must then be a path segment.
    """
    _check_issue(user, ttl)
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(sorted(SCOPES))})")
    if PUBLISH in scopes and publish_prefix_problem(user):
        raise ValueError(publish_prefix_problem(user))
    if not isinstance(path, str) or not path.startswith("/") or not path.isprintable():
        raise ValueError(f"path must be an absolute path prefix such as /films/, not {path!r}")
    inner = path.strip("/")
    if inner and path_problem(inner):  # /films/../x: no request path (clean, as nodes take them) ever matches it
        raise ValueError(f"path {path!r} can match no file: {path_problem(inner)}")
    if region is not None and _name_problem(region, "region", MAX_USER_LENGTH):
        raise ValueError(_name_problem(region, "region", MAX_USER_LENGTH))
    iat = time.time() if now is None else now
    claims: dict[str, Any] = {"iss": ISSUER, "sub": user, "iat": iat, "exp": iat + ttl, "use": "access", "path": path}
    if region is not None:
        claims["region"] = region
    if scopes:
        claims["scope"] = " ".join(sorted(set(scopes)))
    return _sign(key, claims)


def issue_ticket(
    edge_key: Ed25519PrivateKey, peer_id: str, user: str, content: str, ttl: float, now: float | None = None, region: str | None = None
) -> str:
    """A swarm ticket, signed by an edge, letting ``peer_id`` (acting for ``user``) fetch pieces of ``content`` from other peers;
    ``region``: the one the edge placed it in (a sub-tracker takes only its own region's peers)."""
    _check_issue(user, ttl)
    for value, what, limit in ((peer_id, "peer id", MAX_PEER_ID_LENGTH), (content, "content id", MAX_CONTENT_LENGTH)):
        problem = _name_problem(value, what, limit)
        if problem:
            raise ValueError(problem)
    iat = time.time() if now is None else now
    claims = {"iss": ISSUER, "sub": user, "iat": iat, "exp": iat + ttl, "use": "ticket", "peer": peer_id, "cid": content}
    return _sign(edge_key, claims if region is None else {**claims, "region": region})


# ----- verifying ----------------------------------------------------------------------------------------------------------


def _decode(token: object, key: Ed25519PublicKey, what: str) -> dict[str, Any]:
    """The claims of a token signed by ``key``; any flaw is a TokenError(401) naming it."""
    try:
        return jwt.decode(
            token,  # type: ignore[arg-type]
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["iss", "sub", "iat", "exp", "use"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError:
        raise
    except jwt.InvalidAlgorithmError:
        raise TokenError(401, f"{what} is not signed with EdDSA (Ed25519)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(401, f"{what} lacks the {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise TokenError(401, f"{what} is not issued by {ISSUER}") from None
    except jwt.exceptions.InvalidSubjectError:
        raise TokenError(401, f"{what} has an invalid 'sub' claim") from None
    except _DECODE_ERRORS as exc:
        raise TokenError(401, f"{what} is malformed ({str(exc)[:120]})") from None


def _precheck(token: object, what: str) -> str:
    """Refuse what can never be a token before any parsing."""
    if not isinstance(token, str) or not token:
        raise TokenError(401, f"no {what} given")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(401, f"{what} is too long ({len(token)} characters, at most {MAX_TOKEN_LENGTH})")
    if not _COMPACT.fullmatch(token):
        raise TokenError(401, f"{what} is malformed: expected three base64url parts separated by dots")
    return token


MAX_CLAIM = 2**53  # a time or a count past this is no real one (and an int past 1e308 overflows a float)


def _number(claims: dict[str, Any], name: str, what: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not -MAX_CLAIM <= value <= MAX_CLAIM:
        raise TokenError(401, f"{what} has an invalid {name!r} claim")  # NaN fails the comparison too
    return float(value)


def _text(claims: dict[str, Any], name: str, what: str, limit: int) -> str:
    value = claims.get(name)
    if _name_problem(value, name, limit):
        raise TokenError(401, f"{what} has an invalid {name!r} claim")
    return value  # type: ignore[return-value]


def _check_claims(claims: dict[str, Any], use: str, what: str, now: float | None) -> tuple[str, float]:
    """The user and expiry, after checking the kind of token and its validity period (with LEEWAY)."""
    if claims.get("use") != use:
        other = "a swarm ticket" if use == "access" else "an access token"
        raise TokenError(401, f"{what} is {other}" if claims.get("use") in ("access", "ticket") else f"{what} has an invalid 'use' claim")
    user = _text(claims, "sub", what, MAX_USER_LENGTH)
    issued = _number(claims, "iat", what)
    expires = _number(claims, "exp", what)
    now = time.time() if now is None else now
    if now > expires + LEEWAY:
        raise OutOfDateError(f"{what} expired {now - expires:.0f} s ago")
    if issued > now + LEEWAY:
        raise OutOfDateError(f"{what} is not valid yet (issued {issued - now:.0f} s in the future: check the clocks)")
    if "nbf" in claims:
        not_before = _number(claims, "nbf", what)
        if not_before > now + LEEWAY:
            raise OutOfDateError(f"{what} is not valid for another {not_before - now:.0f} s (its nbf; or the clocks disagree)")
    return user, expires


def verify(token: str, public_key: Ed25519PublicKey, now: float | None = None) -> Grant:
    """The grant of an access token signed by the origin key; TokenError(401) for anything else, whatever the input."""
    _precheck(token, "token")
    try:
        claims = _decode(token, public_key, "token")
    except jwt.InvalidSignatureError:
        raise TokenError(401, "token is not signed by the origin key") from None
    user, expires = _check_claims(claims, "access", "token", now)
    path = claims.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise TokenError(401, "token has an invalid 'path' claim")
    region = claims.get("region")
    if region is not None and _name_problem(region, "region", MAX_USER_LENGTH):
        raise TokenError(401, "token has an invalid 'region' claim")
    scope = claims.get("scope", "")
    if not isinstance(scope, str) or len(scope) > 256:
        raise TokenError(401, "token has an invalid 'scope' claim")
    scopes = frozenset(scope.split()) & SCOPES  # a scope this node does not know grants nothing here
    return Grant(user=user, path=path, region=region, expires=expires, token=token, scopes=scopes)


def verify_ticket(ticket: str, keys: Sequence[Ed25519PublicKey], content: str, now: float | None = None) -> Ticket:
    """The ticket, if one of ``keys`` (the edges this peer trusts) signed it: 401 if not valid, 403 if for other content."""
    _precheck(ticket, "ticket")
    claims = None
    for key in keys:
        try:
            claims = _decode(ticket, key, "ticket")
            break
        except jwt.InvalidSignatureError:
            continue
    if claims is None:
        raise TokenError(401, "ticket is not signed by any of this peer's edges" if keys else "no edge keys to check the ticket against")
    user, expires = _check_claims(claims, "ticket", "ticket", now)
    peer_id = _text(claims, "peer", "ticket", MAX_PEER_ID_LENGTH)
    cid = _text(claims, "cid", "ticket", MAX_CONTENT_LENGTH)
    if cid != content:
        raise TokenError(403, f"ticket is for content {cid[:12]}…, not {str(content)[:12]}…")
    region = claims.get("region")
    if region is not None and (not isinstance(region, str) or _name_problem(region, "region", MAX_USER_LENGTH)):
        raise TokenError(401, "ticket has an invalid 'region' claim")
    return Ticket(peer_id=peer_id, user=user, content=cid, expires=expires, region=region)


def issued_at(ticket: str, key: Ed25519PublicKey) -> float:
    """A ticket's ``iat``, its signer's clock as it signed it, if ``key`` signed it (else TokenError 401): how a peer
    reads its edge's clock off the tickets the edge issues to it (policy/edgeclocks.py)."""
    try:
        claims = _decode(_precheck(ticket, "ticket"), key, "ticket")
    except jwt.InvalidSignatureError:
        raise TokenError(401, "ticket is not signed by this key") from None
    return _number(claims, "iat", "ticket")


# ----- using a grant ------------------------------------------------------------------------------------------------------


def authorize(grant: Grant, rel_path: str, region: str | None = None) -> None:
    """Raise TokenError(403) unless ``grant`` covers the published path ``rel_path`` ("films/a.mp4") in ``region``.

    The scope matches whole segments ("/films" covers "films/a.mp4", never
    "filmsX/a"); region None means the node does not know regions, so no check.
    """
    shown = "/" + rel_path.lstrip("/")
    segments = rel_path.lstrip("/").split("/")
    if any(s in (".", "..") for s in segments):  # never let "films/../music/x" pass as under /films/
        raise TokenError(403, f"token for user {grant.user} does not cover {shown[:200]}: path has . or .. segments")
    scope = grant.path.strip("/")
    rel = "/".join(segments)
    if scope and rel != scope and not rel.startswith(scope + "/"):
        raise TokenError(403, f"token for user {grant.user} covers {grant.path}, not {shown[:200]}")
    if grant.region is not None and region is not None and region != grant.region:
        raise TokenError(403, f"token for user {grant.user} is for region {grant.region}, not {region}")


def publish_prefix_problem(user: str) -> str | None:
    """Why ``user`` cannot own a publishing prefix /users/<user>/ (it must be one safe path segment), or None."""
    if not _SEGMENT.fullmatch(user) or user.strip(".") == "":
        return f"user {user[:80]!r} cannot publish: a publishing user's name must be 1-64 of A-Z a-z 0-9 . _ @ + - (starting with a letter or digit)"
    return None


def publish_prefix(user: str) -> str:
    """The relative directory a publishing user's files live in: "users/<user>/"."""
    return f"{USERS_PREFIX}/{user}/"


def authorize_publish(grant: Grant, rel_path: str, region: str | None = None) -> None:
    """Raise TokenError(403) unless ``grant`` may upload the file ``rel_path`` ("users/alice/a.mp4").

    It needs the publish scope, and the path must lie under the user's own
    prefix, whatever the token's read ``path`` claim says: a user publishes
    only as themselves.
    """
    shown = "/" + rel_path.lstrip("/")
    if PUBLISH not in grant.scopes:
        raise TokenError(403, f"token for user {grant.user} has no publish scope: ask for one with --scope publish")
    problem = publish_prefix_problem(grant.user)
    if problem:
        raise TokenError(403, problem)
    prefix = publish_prefix(grant.user)
    segments = rel_path.split("/")
    if not rel_path.startswith(prefix) or len(rel_path) == len(prefix) or any(s in ("", ".", "..") for s in segments):
        raise TokenError(403, f"user {grant.user} may publish only under /{prefix}, not {shown[:200]}")
    if grant.region is not None and region is not None and region != grant.region:
        raise TokenError(403, f"token for user {grant.user} is for region {grant.region}, not {region}")


def unverified_subject(token: str) -> str:
    """The ``sub`` claim of a token, read without checking its signature: what a client needs to name its prefix.

    Never a basis for trust: the origin checks the token itself.  ValueError
    when it cannot be read.
    """
    try:
        claims = jwt.decode(_precheck(token, "token"), options={"verify_signature": False})
    except (TokenError, *_DECODE_ERRORS) as exc:
        raise ValueError(f"cannot read the token: {getattr(exc, 'message', exc)}") from None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str) or not sub:
        raise ValueError("the token names no user (no 'sub' claim)")
    return sub


def from_request(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: "Authorization: Bearer X", else the query parameter "token"; None if neither."""
    value = headers.get("Authorization")
    if value is None:  # a plain dict is not case-insensitive like aiohttp's headers
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    if value is not None:
        scheme, _, credentials = value.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials or " " in credentials:
            raise TokenError(401, "Authorization header must be 'Bearer <token>'")
        return credentials
    return query.get("token") or None


# ----- command line -------------------------------------------------------------------------------------------------------


def parse_ttl(text: str) -> float:
    """Seconds of a token's life from a duration (units.parse_duration): ValueError unless more than zero and at most MAX_TTL.

    A typo must not mint a year-long token, so the CLI refuses what is surely not meant.
    """
    seconds = parse_duration(text)
    if not seconds > 0:
        raise ValueError(f"invalid duration {text[:40]!r}: must be more than zero")
    if not seconds <= MAX_TTL:
        raise ValueError(f"invalid duration {text[:40]!r}: at most {MAX_TTL // 86400:.0f}d")
    return seconds


EPILOG = """\
examples:
  edgeswarm token issue --key films/.edgeswarm/origin.key --user alice --path /films/ --ttl 2h
  TOKEN=$(edgeswarm token issue --key films/.edgeswarm/origin.key --user bob --path / --ttl 7d --region east)
  curl -H "Authorization: Bearer $TOKEN" http://edge:8080/films/a.mp4
  edgeswarm token issue --key pub/.edgeswarm/origin.key --user alice --path /users/alice/ --ttl 1d --scope publish

The description of the grant goes to stderr and the token alone to stdout, so
$(...) captures just the token.  DURATION is seconds, or a number with s, m, h, d or w.
The origin keeps its key in STATE/origin.key (default PUBLISHED_DIR/.edgeswarm/origin.key).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `token` subcommand and its `issue` subcommand."""
    p = sub.add_parser(
        "token",
        help="issue access tokens signed by the origin key",
        description="Access tokens are JWTs signed (EdDSA) with the origin's Ed25519 key: edges (and the origin) check them "
        "against the origin public key they already pin, for a user, a path prefix, an expiry and optionally a region.",
    )
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    i = tsub.add_parser(
        "issue",
        help="sign a token for a user and a path prefix",
        description="Sign an access token with the origin key (which must exist: this command never creates a key).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("--key", type=Path, required=True, metavar="ORIGIN_KEY_FILE", help="the origin's Ed25519 private key (PEM, PKCS8)")
    i.add_argument("--user", required=True, metavar="USER", help="who the token is for (1-128 printable characters)")
    i.add_argument(
        "--path",
        required=True,
        metavar="PREFIX",
        help="what it covers: / for everything, /films/ for a directory, /films/a.mp4 for one file (whole segments only)",
    )
    i.add_argument("--ttl", required=True, metavar="DURATION", help="how long it is valid: 90, 90s, 15m, 2h, 7d, 2w")
    i.add_argument("--region", metavar="REGION", help="only valid at edges of this region (default: any region)")
    i.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=sorted(SCOPES),
        help="a right beyond reading (repeatable): publish lets the user upload under /users/USER/ (edgeswarm publish)",
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    """`edgeswarm token issue`: the description on stderr, the token alone on the last line of stdout."""
    if args.token_command != "issue":
        raise AssertionError(args.token_command)
    try:
        ttl = parse_ttl(args.ttl)
        key = load_private_key(args.key)
        now = time.time()
        expires = _iso(now + ttl)
        token = issue(key, args.user, args.path, ttl, args.region, now=now, scopes=args.scope)
    except (KeyFileError, ValueError) as exc:
        print(f"edgeswarm token: {exc}", file=sys.stderr)
        return 2
    region = f", region {args.region}" if args.region is not None else ""
    scope = f", scope {' '.join(sorted(set(args.scope)))}" if args.scope else ""
    print(f"token for user {args.user}, path {args.path}{region}{scope}, expires {expires}", file=sys.stderr)
    print(token)
    return 0
