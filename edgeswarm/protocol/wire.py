"""Wire helpers every role answers with: JSON bodies, manifests, piece indices, bitfields, and the /seed and announce fields.

They lived in the origin (and the daemon and the super-seeder), so the edge and
the peer imported them from there; a role now imports them from the protocol
layer, never from another role.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from urllib.parse import quote

from aiohttp import web

from edgeswarm.errors import HttpError
from edgeswarm.policy import bitfield
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.havefeed import MAX_LATENCY_S
from edgeswarm.protocol.httpspec import is_authority
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.protocol.torrent import TORRENT_TYPE, magnet, torrent_name, why_none
from edgeswarm.protocol.units import ascii_decimal

# rows each per-content list of a /status holds unless ?contents= says otherwise: an edge listing all of its 20 000
# cached contents took a second of its loop and 2.5 MB a poll, and the dashboard polls every 2 s (an HLS video is a
# content per segment); an origin listed every file it publishes, to anyone who asked
STATUS_CONTENTS = 100


def status_limit(request: web.Request) -> int | None:
    """``GET /status?contents=N``: rows each per-content list holds (STATUS_CONTENTS by default; ``all``: None, every one)."""
    asked = request.query.get("contents")
    if asked is None:
        return STATUS_CONTENTS
    if asked == "all":
        return None
    number = ascii_decimal(asked, max_digits=9)
    if number is None:
        raise HttpError(400, f"/status?contents= takes a number of rows or 'all', not {asked[:40]!r}")
    return number


def json_response(data: object, status: int = 200, *, compact: bool = False) -> web.Response:
    """``data`` as JSON, indented for a person reading it with curl; ``compact`` for what only programs read.

    Indented, Python's json writes in Python rather than in C: an announce
    answer of 30 peers took 124 µs so and 37 µs compact, as long as the
    tracker's ranking and more (timeit), on every announce an edge answers.
    """
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1)
    return web.Response(text=text + "\n", status=status, content_type="application/json")


def manifest_response(request: web.Request, etag: str, raw: bytes, link: str | None = None) -> web.Response:
    headers = {"ETag": etag, "Cache-Control": "no-cache", **({"Link": link} if link else {})}
    inm = request.headers.get("If-None-Match")
    if inm and etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=raw, content_type="application/json", headers=headers)


def piece_index(request: web.Request, count: int) -> int:
    """The piece a ``/piece/<cid>/<index>`` request names: 400 unless ASCII digits, 404 past the end."""
    raw = request.match_info["index"]
    index = ascii_decimal(raw, 9)
    if index is None or index >= count:
        raise HttpError(400 if index is None else 404, f"no piece {raw[:20]!r}: the content has {count} pieces (0..{count - 1})")
    return index


def have_response(cid: str, count: int, held: Collection[int]) -> web.Response:
    """The held pieces as a BitTorrent-style bitfield (MSB first), base64 in JSON."""
    return json_response({"id": cid, "pieces": count, "held": len(held), "bitfield": bitfield.encode(held, count)})


def parse_request(body: bytes, piece_count: int) -> tuple[set[int], int, bool, set[int]]:
    """A ``POST /seed`` body: ``{"have": "<bitfield>", "from": <optional piece index>, "whole": <optional bool>,
    "unseen": <optional bitfield: pieces the asker lacks and knows no neighbour to hold>}``.

    Returns (have, from, whole, unseen); ValueError says what is wrong.
    """
    try:
        doc = jsondoc.loads(body)
    except ValueError:
        raise ValueError("seed request body is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("seed request body must be a JSON object")
    try:
        have = bitfield.decode(doc.get("have"), piece_count)
    except ValueError as exc:
        raise ValueError(f"seed field 'have': {exc}") from None
    start = doc.get("from", 0)
    if type(start) is not int or not 0 <= start <= piece_count:  # piece_count: a reader at the end, nothing to seed
        raise ValueError(f"seed field 'from' must be an integer from 0 to {piece_count} (the piece count)")
    whole = doc.get("whole", False)
    if type(whole) is not bool:
        raise ValueError("seed field 'whole' must be true or false")
    try:
        unseen = bitfield.decode(doc["unseen"], piece_count) if "unseen" in doc else set()
    except ValueError as exc:
        raise ValueError(f"seed field 'unseen': {exc}") from None
    return have, start, whole, unseen


def parse_latency(value: object) -> tuple[float, float] | None:
    """An announce's optional ``have_latency``: ``{"p50": s, "p95": s}``, seconds, or null; ValueError if malformed."""
    if value is None:
        return None

    def seconds(name: str) -> float:
        v = value.get(name) if isinstance(value, dict) else None
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= MAX_LATENCY_S:
            raise ValueError(f"announce field 'have_latency' needs {name!r} in seconds, 0 to {MAX_LATENCY_S:g}")
        return float(v)

    p50, p95 = seconds("p50"), seconds("p95")
    if p50 > p95:
        raise ValueError("announce field 'have_latency': p50 is above p95")
    return p50, p95


def torrent_link(manifest: Manifest) -> str | None:
    """The ``Link`` header that points a manifest's reader at its torrent (RFC 8288); None if it has none.

    A header, not a manifest field: the signed bytes and every content id stay what they were.
    """
    if why_none(manifest):
        return None
    return f'</torrent/{quote(manifest.path, safe="/")}>; rel="alternate"; type="{TORRENT_TYPE}"'


def base_url(request: web.Request) -> str:
    """This node's URL as the client reached it: the web seed it names for itself (400 for a Host that is no host)."""
    if not is_authority(request.host):
        raise HttpError(400, f"the Host header {request.host[:100]!r} is not a host name or address with an optional port")
    return f"{request.scheme}://{request.host}"


def attachment(name: str) -> str:
    """A ``Content-Disposition`` saving the body as ``name`` (RFC 6266): ``filename*`` the exact name, ``filename`` an
    ASCII stand-in for clients that read only it.  Both held percent-escapes, which `curl -OJ` kept in the saved name
    (``hash%23x.bin.torrent``), and a ``"`` was dropped from the exact one (an adversarial session)."""
    plain = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def torrent_response(data: bytes, manifest: Manifest) -> web.Response:
    disposition = attachment(torrent_name(manifest) + ".torrent")
    return web.Response(body=data, content_type=TORRENT_TYPE, headers={"Cache-Control": "no-cache", "Content-Disposition": disposition})


def magnet_response(data: bytes) -> web.Response:
    return web.Response(text=magnet(data) + "\n", content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-cache"})
