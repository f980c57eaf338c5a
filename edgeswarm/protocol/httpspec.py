"""RFC 9110 request semantics for serving a file: ranges and conditionals.

Pure functions over header values, shared by every node that serves files, so
that the origin, the edges and a peer's gateway answer a player identically.
"""

from __future__ import annotations

import functools
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime

from edgeswarm.errors import HttpError
from edgeswarm.protocol.units import ascii_decimal

_EXTRA_TYPES = {
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".m4s": "video/iso.segment",
    ".ts": "video/mp2t",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
}
_SPEC = re.compile(r"^([0-9]{0,100})-([0-9]{0,100})$")  # a last byte past the end is the end, however many digits (RFC 9110)
_CHARSET = re.compile(r';\s*charset\s*=\s*"?([^";]*)', re.IGNORECASE)


PEER_HEADER = "X-Edgeswarm-Peer"  # a peer names itself on piece requests (choker, accounting)
URGENCY_HEADER = "X-Edgeswarm-Urgency"  # a peer's /piece: "urgent" (a reader's deadline) or "background" (a peer sends those in line)
PIECE_HEADER = "X-Edgeswarm-Piece"  # the index of the piece an edge's /seed answer carries


def content_type(path: str) -> str:
    for ext, ctype in _EXTRA_TYPES.items():
        if path.lower().endswith(ext):
            return ctype
    return mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"


def served_type(ctype: str) -> str:
    """The Content-Type to send for a file of type ``ctype``: ``text/*`` without a charset gets ``charset=utf-8``.

    Without one a browser guesses (often windows-1252) and shows UTF-8 text
    garbled; nginx with ``charset utf-8`` does the same for its text types.
    The manifest keeps the bare type, so published manifests, their
    signatures and content ids do not change.  A text file in another
    encoding is declared UTF-8 too: publish it as UTF-8, as with nginx.
    """
    if ctype.split("/", 1)[0].strip().lower() == "text" and not _CHARSET.search(ctype):
        return f"{ctype}; charset=utf-8"
    return ctype


_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


def is_authority(host: str) -> bool:
    """Whether a ``Host`` header is a host and perhaps a port, as a URL built from it needs (a torrent's web seed): not
    ``edge@evil.example``, which a URL reads as user ``edge`` at host evil.example, nor a path, a space or port 99999."""
    found = _AUTHORITY.fullmatch(host)
    return found is not None and (found[1] is None or 0 < int(found[1]) <= 65535)


def host_name(host: str) -> str:
    """The name a ``Host`` header addresses: lower case, without its port or an absolute name's final dot
    (``cdn.example.com.`` is ``cdn.example.com``), an IPv6 address without its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


@functools.lru_cache(maxsize=4096)
def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


MAX_PARTS = 64  # ranges in one multipart answer, after coalescing; more and the whole file goes out (RFC 9110 14.2 allows it)
Span = tuple[int, int]  # inclusive (first, last) byte offsets


def parse_ranges(value: str | None, size: int) -> list[Span] | None:
    """The byte ranges to send, as inclusive (first, last) spans, or None for the whole file with 200.

    RFC 9110 14.2 and 15.3.7: unsatisfiable ranges are dropped, and 416 comes
    only when none is left; ranges that overlap or touch are coalesced (then
    sent in ascending order), otherwise the request's order is kept.  One span
    is a plain 206; several are a multipart/byteranges 206 (``byteranges``).
    Units other than bytes and more than MAX_PARTS ranges are ignored (200).
    A malformed range is a 400, as before: a player that sends one has a bug.
    """
    if value is None:
        return None
    unit, sep, specs = value.strip().partition("=")
    if not sep:
        raise HttpError(400, f"malformed Range header {value[:80]!r}: expected bytes=FIRST-LAST")
    if unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",") if p.strip()]
    if not parts:
        raise HttpError(400, "malformed Range header: no range given")
    wanted = [_span(p, size) for p in parts]  # every spec is checked, so a malformed one is a 400 wherever it is
    spans = [s for s in wanted if s is not None]
    if not spans:
        raise _unsatisfiable(", ".join(parts), size)
    merged = coalesce(spans)
    if len(merged) > MAX_PARTS:
        return None
    return merged if len(merged) < len(spans) else spans


def _span(spec: str, size: int) -> Span | None:
    """One range-spec as a span inside the file, None when unsatisfiable; a malformed one is a 400."""
    m = _SPEC.match(spec)
    if not m or m.groups() == ("", ""):
        raise HttpError(400, f"malformed byte range {spec[:80]!r}")
    first_s, last_s = m.groups()
    if not first_s:  # suffix: the last N bytes
        n = int(last_s)
        return None if n == 0 or size == 0 else (max(0, size - n), size - 1)
    first = int(first_s)
    if last_s and int(last_s) < first:
        raise HttpError(400, f"malformed byte range {spec[:80]!r}: last byte before first")
    if first >= size:
        return None
    return first, min(int(last_s), size - 1) if last_s else size - 1


def coalesce(spans: list[Span]) -> list[Span]:
    """Spans sorted, those that overlap or touch merged into one: a multipart answer never repeats a byte."""
    out: list[Span] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def byteranges(spans: list[Span], size: int, ctype: str, boundary: str) -> tuple[list[bytes], bytes]:
    """The framing of a multipart/byteranges body (RFC 9110 14.6), laid out as nginx does.

    Returns the head that goes before each span's bytes (delimiter,
    Content-Type, Content-Range) and the closing delimiter; the body is
    head, bytes, head, bytes, ..., close.  Its length is known before a byte
    is read, so the answer has a Content-Length.
    """
    heads = [
        f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {first}-{last}/{size}\r\n\r\n".encode("latin-1")
        for first, last in spans
    ]
    return heads, f"\r\n--{boundary}--\r\n".encode("latin-1")


def retry_after(headers: Mapping[str, str], max_digits: int) -> int | None:
    """A ``Retry-After`` in delay-seconds (RFC 9110 10.2.3) of at most ``max_digits`` ASCII digits; None for anything else
    (absent, an HTTP-date, "nan", which float() took)."""
    return ascii_decimal(headers.get("Retry-After", "").strip(), max_digits)


def check_json_body(headers: Mapping[str, str]) -> None:
    """Refuse a JSON request body we would misread, before reading it (RFC 8259: JSON on the wire is UTF-8).

    A compressed body is a 415, since we accept none (RFC 9110 15.5.16); a
    charset other than UTF-8 is a 400, whatever the body says.
    """
    encoding = headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise HttpError(
            415, f"Content-Encoding {encoding[:40]!r} is not accepted: send the JSON body uncompressed", {"Accept-Encoding": "identity"}
        )
    m = _CHARSET.search(headers.get("Content-Type", ""))
    if m and m.group(1).lower() not in ("utf-8", "utf8"):
        raise HttpError(400, f"charset {m.group(1)[:40]!r} is not accepted: JSON bodies are UTF-8")


def _unsatisfiable(spec: str, size: int) -> HttpError:
    return HttpError(416, f"range {spec[:80]} is outside the file ({size} bytes)", {"Content-Range": f"bytes */{size}"})


def _etags(value: str) -> list[tuple[bool, str]]:
    """(weak, opaque-tag) pairs of an If-None-Match / If-Range list."""
    tags = []
    for raw in value.split(","):
        raw = raw.strip()
        weak = raw.startswith("W/")
        tags.append((weak, raw[2:] if weak else raw))
    return tags


def _http_timestamp(value: str) -> int:
    """HTTP dates are GMT (RFC 9110), including the asctime form that parses without a zone."""
    dt = parsedate_to_datetime(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _same_date(value: str, modified: int) -> bool:
    try:
        return _http_timestamp(value) == modified
    except (TypeError, ValueError, IndexError, OverflowError):
        return False


@dataclass(frozen=True)
class Validators:
    etag: str  # strong, quoted
    modified: int | None  # epoch seconds; None: no date (conditions on one are ignored, RFC 9110 13.1.3-5)


def precondition_failed(headers: Mapping[str, str], v: Validators) -> bool:
    """If-Match (strong comparison), else If-Unmodified-Since: answer 412 (RFC 9110 13.2.2, before If-None-Match).

    A resume that says which version it holds (``If-Match: <etag>``) got the
    new version's bytes after a republish, spliced onto the old ones, where
    nginx answers 412 (an adversarial session with conditional requests).
    An If-Unmodified-Since that is no date is ignored, as the RFC says.
    """
    im = headers.get("If-Match")
    if im is not None:
        return im.strip() != "*" and not any(not weak and tag == v.etag for weak, tag in _etags(im))
    ius = headers.get("If-Unmodified-Since")
    if ius is not None and v.modified is not None:
        try:
            return v.modified > _http_timestamp(ius)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


def not_modified(headers: Mapping[str, str], v: Validators) -> bool:
    """If-None-Match (weak comparison), else If-Modified-Since: answer 304."""
    inm = headers.get("If-None-Match")
    if inm is not None:
        return inm.strip() == "*" or any(tag == v.etag for _, tag in _etags(inm))
    ims = headers.get("If-Modified-Since")
    if ims is not None and v.modified is not None:
        try:
            return v.modified <= _http_timestamp(ims)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


def range_applies(headers: Mapping[str, str], v: Validators) -> bool:
    """If-Range: the Range counts only if the representation is unchanged (strong match)."""
    value = headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        weak, tag = _etags(value)[0]
        return not weak and tag == v.etag
    return v.modified is not None and _same_date(value, v.modified)
