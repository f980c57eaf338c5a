"""What counts as a publishable path, decided in one place.

Request paths are never joined to a directory: nodes look them up in the
catalogue of published files.  This check only makes hostile paths fail early
and loudly (400) instead of as a puzzling 404.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from edgeswarm.errors import HttpError

# First path segments that name node endpoints; files there are not published.
RESERVED = frozenset(
    {"manifest", "content", "piece", "have", "announce", "key", "origin-key", "swarm-key", "healthz", "status", "metrics", "dashboard"}
)
RESERVED |= {"torrent", "magnet", "scrape"}  # BitTorrent clients' endpoints (protocol/torrent.py, roles/bttracker.py)
RESERVED |= {"preheat"}  # an edge's preheat orders (roles/preheatdesk.py)
RESERVED |= {"relay"}  # the edge's relay for peers that cannot accept connections (protocol/relay.py)

# aiohttp route patterns for "the rest of the path": [\s\S], not ".", so a path with a newline (%0A) reaches the
# handler and its 400 for a control character, instead of aiohttp's bare 404
PATH = r"{path:[\s\S]*}"
TAIL = r"{tail:[\s\S]*}"

# What a published path may be (an upload's, or a file's in the origin's tree): deeper or longer paths gain nothing and
# cost recursion (Path.mkdir, os.walk), ENAMETOOLONG after a whole body, and log lines by the megabyte
MAX_SEGMENTS = 32
MAX_SEGMENT_BYTES = 255  # NAME_MAX of the common file systems
MAX_PATH_BYTES = 1024


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decoded(target: str) -> str:
    """A percent-encoded path (a request's target, a playlist's URI), decoded; ValueError if it is no valid encoding."""
    if _BAD_ESCAPE.search(target):  # unquote keeps it as it is: a 404 for a name that cannot be a published one's URL
        raise ValueError("a '%' not followed by two hex digits (a literal '%' is %25)")
    try:
        return unquote(target, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("percent-encoding is not UTF-8") from None


def clean_request_path(raw_path: str) -> str:
    """The relative path a request names, from its raw (still percent-encoded) target."""
    try:
        path = decoded(raw_path.split("?", 1)[0])
    except ValueError as exc:
        raise HttpError(400, f"invalid path: {exc}") from None
    if not path.startswith("/"):
        raise HttpError(400, "request target must be an absolute path")
    rel = path[1:]
    problem = path_problem(rel)
    if problem:
        raise HttpError(400, f"invalid path: {problem}")
    return rel


def manifest_url(path: str) -> str:
    """The request target of ``GET /manifest/<path>`` for a published path."""
    return "/manifest/" + quote(path, safe="/")


def manifest_request_path(raw_path: str) -> str:
    """The published path a ``GET /manifest/<path>`` (or ``/torrent/<path>``, ``/magnet/<path>``) names, from its raw target (400 if it is no valid path)."""
    return clean_request_path("/" + raw_path.split("/", 2)[2] if raw_path.count("/") >= 2 else "/")


def reserved_segment(rel: str) -> str | None:
    """The first segment of ``rel`` if it names a node endpoint (never a published file), else None."""
    first = rel.split("/", 1)[0]
    return first if first in RESERVED else None


def file_request_path(raw_path: str) -> str:
    """The published path a ``GET /<path>`` names: 400 if it can be no path, 404 if it is a node endpoint's."""
    rel = clean_request_path(raw_path)
    reserved = reserved_segment(rel)
    if reserved is not None:
        raise HttpError(404, f"no such endpoint /{reserved}")
    return rel


def publish_problem(rel: str) -> str | None:
    """Why ``rel`` may not be published (too deep or too long: docs/protocol.md#publishing), or None.

    Apart from path_problem, which any request path meets: these limits are
    checked where a path becomes a file (an upload's headers, the origin's
    scan), so a GET of a longer path is still a plain 404.
    """
    segments = rel.split("/")
    if len(segments) > MAX_SEGMENTS:
        return f"{len(segments)} path segments, more than the {MAX_SEGMENTS} allowed"
    total = _bytes(rel)
    if total > MAX_PATH_BYTES:
        return f"path of {total} bytes, more than the {MAX_PATH_BYTES} allowed"
    longest = max(segments, key=_bytes)
    if _bytes(longest) > MAX_SEGMENT_BYTES:
        return f"path segment {longest[:40]!r}... of {_bytes(longest)} bytes, more than the {MAX_SEGMENT_BYTES} allowed"
    return None


def _bytes(text: str) -> int:
    """Length in bytes as the file system sees it (a name read from disk may hold undecodable bytes)."""
    return len(text.encode("utf-8", "surrogateescape"))


def path_problem(rel: str) -> str | None:
    """Why ``rel`` can never be a published path, or None if it could be one."""
    if not rel:
        return "empty path"
    if len(rel) > 4096:
        return "path too long"
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in rel):
        return "control character or backslash in path"
    if rel.startswith("/"):
        return "absolute path"
    for seg in rel.split("/"):
        if seg in ("", ".", ".."):
            return f"path segment {seg!r} is not allowed"
    return None
