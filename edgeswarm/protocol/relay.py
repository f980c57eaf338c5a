"""The relay channel: how a peer that cannot accept connections still uploads.

A peer behind a NAT or a firewall (``peer --unreachable``) holds one WebSocket
to each of its edges (``GET /relay``).  Its neighbours are handed its *relay
URL* (``http://EDGE/relay/<relay id>``) by the tracker and use it as any
peer's upload URL: ``GET <url>/piece/<cid>/<i>``, ``GET <url>/have/<cid>``.
The edge passes each such request down the WebSocket and the answer back up.
This module is the wire format both ends share; the edge's and the peer's
shells are ``edgeswarm.roles.relay``.

Frames (one WebSocket message each):

* edge -> peer, text: ``{"id": N, "path": "/piece/..", "headers": {..}, "remote": "ADDR"}``
  (a request; ``remote`` is the requester's address as the edge saw it), or
  ``{"id": N, "cancel": true}`` (the requester went away);
* peer -> edge, text: ``{"id": N, "status": S, "headers": {..}}`` (the answer's
  head), then binary frames of 4 bytes of ``id`` (big-endian) and a chunk of
  the body, then ``{"id": N, "end": true}``; or ``{"id": N, "end": true,
  "error": "why"}`` when the answer broke off.

Only the two upload endpoints cross a relay, with a short list of headers
each way, and only the statuses a peer's upload server answers them with
(``vet``): the relay passes a relayed peer's answer onto its requester's
kept-alive connection, so anything that would let a hostile peer's bytes be
read as another answer (a 204 or a 1xx with a body, a header with a line
break, a body longer than it said) is refused.  The relay never reads the pieces (the receiver verifies them
against the signed manifest, as any piece), so a relay can withhold pieces
but not forge them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from edgeswarm.policy.tracker import group_tag
from edgeswarm.protocol import jsondoc
from edgeswarm.protocol.units import ascii_decimal

RELAYED_FOR_HEADER = "X-Edgeswarm-Relayed-For"  # "<secret> <address>": set by the peer's own relay client only
REQUEST_HEADERS = ("Authorization", "Accept", "X-Edgeswarm-Peer", "X-Edgeswarm-Upload-Port", "X-Edgeswarm-Region")
RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Retry-After", "WWW-Authenticate")
# What a peer's upload server answers /piece and /have with (roles/peer.py get_piece, get_have; node/daemon.py):
# 200 a piece, a bitfield or a HAVE stream; 400 a bad index or header; 401/403 a ticket refused (managed mode) or a
# forged X-Edgeswarm-Relayed-For; 404 not held; 429 choked, or no room for a HAVE subscriber; 500 its internal error;
# 503 its store not open yet, or out of descriptors.  No 1xx, 204 or 304 (they have no body), no 206 (no ranges).
STATUSES = frozenset({200, 400, 401, 403, 404, 429, 500, 503})
MAX_SMALL_BODY = 64 * 1024  # the most bytes an answer that is not a piece may carry (an error's text, a /have bitfield)
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: what every header in RESPONSE_HEADERS holds
PATH = re.compile(r"/(piece/[0-9a-f]{64}/[0-9]{1,9}|have/[0-9a-f]{64})")  # what may cross a relay, nothing else
ID_BYTES = 4
MAX_FRAME = 1 << 20  # the largest WebSocket message either end takes: a 64 KiB chunk and its id, with room to spare


def relay_id(group: str, owner: str, peer_id: str) -> str:
    """The relay id of a peer: its address group's tag (``group_tag``), then a hash of its identity (owner and peer id).

    Derived by the edge from what it sees (the address, the token's user), so
    a peer can hold the relay of its own identity only.  The first half is
    the address's: a receiver that bans a relayed peer for a corrupt piece
    bans every id it may announce from that address, as it bans a direct
    peer's address (``policy.engine.host_of``).
    """
    return f"{group_tag(group)}-{_h(owner + '/' + peer_id)}"


def _h(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class Request:
    """A request the relay passes down to the relayed peer."""

    id: int
    path: str
    headers: dict[str, str]
    remote: str


@dataclass(frozen=True)
class Head:
    id: int
    status: int
    headers: dict[str, str]


@dataclass(frozen=True)
class End:
    id: int
    error: str | None = None


@dataclass(frozen=True)
class Cancel:
    id: int


Frame = Request | Head | End | Cancel


def pick(headers: object, names: tuple[str, ...]) -> dict[str, str]:
    """The listed headers of a mapping (case-insensitive names), values cut to 4 KiB: nothing else crosses."""
    out: dict[str, str] = {}
    get = getattr(headers, "get", None)
    if get is None:
        return out
    for name in names:
        value = get(name)
        if isinstance(value, str):
            out[name] = value[:4096]
    return out


def vet(head: Head) -> tuple[dict[str, str], int | None]:
    """The headers of a relayed answer to pass on, and the body length it declares; ValueError if it may not be passed.

    The answer goes onto the requester's kept-alive connection, which the
    requester also uses for the edge's own endpoints (``/swarm-key``,
    ``/announce``): a status the upload server never answers with (a 204 or a
    1xx, after which a body would be read as the next answer), or a header
    value that could break a line, must never reach it.  Checked before a
    byte of the answer is sent, so the requester gets a clean 502 instead.
    """
    if head.status not in STATUSES:
        raise ValueError(f"status {head.status}, which no peer's upload server answers")
    headers = pick(head.headers, RESPONSE_HEADERS)
    for name, value in headers.items():
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"a {name} header with control or non-ASCII characters")
    raw = headers.pop("Content-Length", None)
    if raw is None:
        return headers, None
    length = ascii_decimal(raw, max_digits=10)
    if length is None:
        raise ValueError(f"a Content-Length that is not a number: {raw[:20]!r}")
    return headers, length


def encode(frame: Frame) -> str:
    """A text frame."""
    if isinstance(frame, Request):
        return json.dumps({"id": frame.id, "path": frame.path, "headers": frame.headers, "remote": frame.remote})
    if isinstance(frame, Head):
        return json.dumps({"id": frame.id, "status": frame.status, "headers": frame.headers})
    if isinstance(frame, End):
        return json.dumps({"id": frame.id, "end": True, **({"error": frame.error} if frame.error else {})})
    return json.dumps({"id": frame.id, "cancel": True})


def decode(text: str) -> Frame:
    """A text frame read; ValueError for anything that is not one."""
    doc = jsondoc.loads(text)
    if not isinstance(doc, dict) or type(doc.get("id")) is not int or not 0 <= doc["id"] < 1 << 32:
        raise ValueError("a relay frame must be an object with an id (0..2^32)")
    fid = doc["id"]
    if doc.get("cancel") is True:
        return Cancel(fid)
    if doc.get("end") is True:
        error = doc.get("error")
        return End(fid, str(error)[:500] if error is not None else None)
    headers = doc.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("relay frame headers must map names to strings")
    if "status" in doc:
        if type(doc["status"]) is not int or not 100 <= doc["status"] < 600:
            raise ValueError("relay frame status must be an HTTP status")
        return Head(fid, doc["status"], headers)
    path, remote = doc.get("path"), doc.get("remote")
    if not isinstance(path, str) or not PATH.fullmatch(path.split("?", 1)[0]) or not isinstance(remote, str) or len(remote) > 64:
        raise ValueError("relay request frame must name an upload path (/piece/.. or /have/..) and the requester's address")
    return Request(fid, path, headers, remote)


def data_frame(fid: int, chunk: bytes) -> bytes:
    """A binary frame: the request's id, then a chunk of its body."""
    return fid.to_bytes(ID_BYTES, "big") + chunk


def split_data(message: bytes) -> tuple[int, bytes]:
    """A binary frame's id and chunk; ValueError if it is too short to hold an id."""
    if len(message) < ID_BYTES:
        raise ValueError("a relay data frame is shorter than its id")
    return int.from_bytes(message[:ID_BYTES], "big"), message[ID_BYTES:]
