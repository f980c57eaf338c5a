"""The upload protocol's wire format: what a ``PUT /<path>`` declares, and how its answers say where it stands.

A resumable scheme in the manner of Google Cloud Storage's resumable uploads
and tus (docs/protocol.md#publishing): every request declares the whole
file's length and SHA-256; a body is either the whole file (no
``Content-Range``) or the bytes ``START-END`` of it (``Content-Range: bytes
START-END/LENGTH``); ``Content-Range: bytes */LENGTH`` with no body asks how
many bytes the origin holds.  Unfinished answers are 202 with
``Upload-Offset``; the final one is 201 (or a refusal: a 4xx, or 507 for a
full disk).  Pure functions over header values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgeswarm.errors import HttpError
from edgeswarm.protocol.units import ascii_decimal

LENGTH_HEADER = "X-Edgeswarm-Length"  # the whole file's length in bytes (or ?length=)
SHA256_HEADER = "X-Edgeswarm-Sha256"  # the whole file's SHA-256, hex (or ?sha256=)
OFFSET_HEADER = "Upload-Offset"  # in 202 and 409 answers: bytes the origin holds (tus's name)
FULL_STATUS = 507  # Insufficient Storage: the origin's disk is full; final for a client (a retry in seconds sends it all again)
MAX_LENGTH = 1 << 44  # 16 TiB: a declared length beyond is a mistake, not a file
_HEX = re.compile(r"[0-9a-f]{64}")
_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})|bytes \*/([0-9]{1,19})", re.ASCII)


@dataclass(frozen=True)
class Declared:
    """What one upload request says: the whole file's length and hash, and where its body goes."""

    length: int
    sha256: str
    start: int | None  # the body's first byte in the file; None: the body is the whole file
    end: int | None  # its last byte (inclusive); None with start None, or for a status query
    query: bool = False  # ``Content-Range: bytes */LENGTH``: only asks the offset

    @property
    def whole(self) -> bool:
        """The body claims to be the whole file (no Content-Range)."""
        return self.start is None and not self.query


def _value(headers: Mapping[str, str], query: Mapping[str, str], header: str, param: str) -> str | None:
    value = headers.get(header)
    return value.strip() if value is not None else query.get(param)


def declared(headers: Mapping[str, str], query: Mapping[str, str]) -> Declared:
    """The request's declaration; HttpError 400 naming what is missing or malformed."""
    raw_length = _value(headers, query, LENGTH_HEADER, "length")
    raw_sha = _value(headers, query, SHA256_HEADER, "sha256")
    if raw_length is None or raw_sha is None:
        raise HttpError(
            400, f"an upload must declare the file's length and SHA-256: {LENGTH_HEADER} and {SHA256_HEADER} (or ?length=&sha256=)"
        )
    length = ascii_decimal(raw_length)
    if length is None or length > MAX_LENGTH:
        raise HttpError(400, f"{LENGTH_HEADER} must be a whole number of bytes up to {MAX_LENGTH}, not {raw_length[:40]!r}")
    sha = raw_sha.lower()
    if not _HEX.fullmatch(sha):
        raise HttpError(400, f"{SHA256_HEADER} must be 64 hex digits, not {raw_sha[:80]!r}")
    content_range = headers.get("Content-Range")
    if content_range is None:
        return Declared(length, sha, None, None)
    m = _RANGE.fullmatch(content_range.strip())
    if m is None:
        raise HttpError(400, f"Content-Range must be 'bytes START-END/LENGTH' or 'bytes */LENGTH', not {content_range[:80]!r}")
    total = int(m.group(3) or m.group(4))
    if total != length:
        raise HttpError(400, f"Content-Range says the file has {total} bytes, {LENGTH_HEADER} says {length}")
    if m.group(4) is not None:
        return Declared(length, sha, None, None, query=True)
    start, end = int(m.group(1)), int(m.group(2))
    if start > end or end >= length:
        raise HttpError(400, f"Content-Range bytes {start}-{end} is not within a file of {length} bytes")
    return Declared(length, sha, start, end)


def content_range(start: int, end_exclusive: int, length: int) -> str:
    """The ``Content-Range`` of a chunk [start, end_exclusive) of a file of ``length`` bytes."""
    return f"bytes {start}-{end_exclusive - 1}/{length}"


def status_query(length: int) -> str:
    """The ``Content-Range`` that asks how many bytes of a ``length``-byte upload the origin holds."""
    return f"bytes */{length}"
