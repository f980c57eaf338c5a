"""The content model: one published file, described and signed once.

A manifest carries everything a node needs to serve and verify a file without
trusting whoever handed it the bytes: size, type, piece size and the SHA-256 of
every piece.  Its id is the SHA-256 of its canonical JSON, so the id changes
whenever the content (or its metadata) does, and doubles as a strong ETag.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeswarm.errors import EdgeswarmError
from edgeswarm.protocol import jsondoc
from edgeswarm.trust.protect import Protection
from edgeswarm.trust.signing import verify

MIN_PIECE = 256 * 1024
SEGMENT_PIECE = 64 * 1024  # the floor for a live stream's media segments, and the smallest piece a manifest may have
MAX_PIECES = 2048
MAX_PIECE = 256 * 1024 * 1024  # no node reads a piece past this, whatever its manifest says
MAX_FILE = MAX_PIECE * MAX_PIECES  # 512 GiB: the largest file the origin publishes (MAX_PIECES pieces of MAX_PIECE)
FORMAT = 1


_HEX = re.compile(r"[0-9a-f]{64}")
# a media type as the manifest carries it: type/subtype, RFC 9110 tokens of at most 127 characters (RFC 6838), no
# parameters; it becomes each answer's Content-Type header, and a hostile parent's CR/LF made every answer a 500
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,127}/[!#$%&'*+.^_`|~0-9A-Za-z-]{1,127}")


class ManifestError(EdgeswarmError, ValueError):
    """A manifest that is malformed or not signed by the pinned origin key."""


def is_content_id(text: str) -> bool:
    return len(text) == 64 and _HEX.fullmatch(text) is not None


def piece_size_for(size: int, segment: bool = False) -> int:
    """Smallest power of two >= 256 KiB (64 KiB for a media segment) that keeps a file within 2048 pieces.

    BitTorrent's rule of thumb: pieces small enough to spread quickly, few
    enough that the piece list and bitfields stay small.  A live segment
    (about 1 MB) must cross its whole region within a few seconds, and a peer
    passes a piece on only once it holds all of it: in 256 KiB pieces each
    hop of the region's tree held it back a quarter of the segment, at a slow
    uplink a second.
    """
    piece = SEGMENT_PIECE if segment else MIN_PIECE
    while size > piece * MAX_PIECES:
        piece *= 2
    return piece


def hash_pieces(path: Path, piece_size: int, transform: Callable[[bytes, int], bytes] | None = None) -> tuple[str, ...]:
    """SHA-256 of each piece of a file, read once (blocking: run it in a thread).

    ``transform(data, offset)`` is applied first: a protected file's pieces are
    hashed as the ciphertext that nodes will hold.
    """
    digests = []
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(piece_size):
            digests.append(hashlib.sha256(transform(chunk, offset) if transform else chunk).hexdigest())
            offset += len(chunk)
    return tuple(digests)


@dataclass(frozen=True)
class Manifest:
    path: str
    size: int
    content_type: str
    piece_size: int
    pieces: tuple[str, ...]
    modified: int  # seconds since the epoch; gives Last-Modified
    protection: Protection | None = None  # set: the pieces are ciphertext (see protect.py)

    @property
    def piece_count(self) -> int:
        return len(self.pieces)

    def piece_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of a piece in the file."""
        start = index * self.piece_size
        return start, min(self.piece_size, self.size - start)

    def pieces_for(self, first: int, last: int) -> range:
        """Indices of the pieces that hold bytes first..last (inclusive)."""
        return range(first // self.piece_size, last // self.piece_size + 1)

    def check_piece(self, index: int, data: bytes) -> bool:
        return (
            0 <= index < self.piece_count
            and len(data) == self.piece_span(index)[1]
            and hashlib.sha256(data).hexdigest() == self.pieces[index]
        )

    def to_dict(self) -> dict[str, Any]:
        d = {
            "format": FORMAT,
            "path": self.path,
            "size": self.size,
            "content_type": self.content_type,
            "piece_size": self.piece_size,
            "pieces": list(self.pieces),
            "modified": self.modified,
        }
        if self.protection is not None:  # absent otherwise: unprotected content ids stay what they were
            d["protected"] = self.protection.to_dict()
        return d

    def canonical(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @cached_property
    def content_id(self) -> str:
        """Computed once: every request for the file needs it (ETag, store key)."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_dict(cls, d: object) -> Manifest:
        """Validate a decoded manifest; anything off raises ManifestError (real checks, not asserts: -O must not skip them)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ManifestError("malformed manifest: not a manifest of this format")
        try:
            m = cls(
                path=d["path"],
                size=d["size"],
                content_type=d["content_type"],
                piece_size=d["piece_size"],
                pieces=tuple(d["pieces"]),
                modified=d["modified"],
                protection=Protection.from_dict(d["protected"]) if "protected" in d else None,
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: missing or bad field {exc}") from exc
        except ValueError as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc
        checks: list[tuple[Callable[[], bool], str]] = [
            (lambda: isinstance(m.path, str) and isinstance(m.content_type, str), "path and content_type must be strings"),
            (lambda: _MEDIA_TYPE.fullmatch(m.content_type) is not None, "content_type must be a media type (type/subtype)"),
            (
                lambda: all(type(v) is int and v >= 0 for v in (m.size, m.modified, m.piece_size)),
                "size, modified, piece_size must be integers ≥ 0",
            ),
            (
                lambda: m.piece_size >= SEGMENT_PIECE and m.piece_size & (m.piece_size - 1) == 0,
                "piece_size must be a power of two ≥ 64 KiB",
            ),
            (lambda: len(m.pieces) == -(-m.size // max(m.piece_size, 1)), "piece count does not match size"),
            (
                lambda: all(isinstance(p, str) and len(p) == 64 and _HEX.fullmatch(p) for p in m.pieces),
                "piece hashes must be 64 hex digits",
            ),
        ]
        for ok, why in checks:  # in order: later checks assume the earlier ones passed
            if not ok():
                raise ManifestError(f"malformed manifest: {why}")
        return m


@dataclass(frozen=True)
class SignedManifest:
    manifest: Manifest
    signature: bytes

    @property
    def content_id(self) -> str:
        return self.manifest.content_id

    @cached_property
    def etag(self) -> str:
        return f'"{self.content_id}"'

    @classmethod
    def sign(cls, manifest: Manifest, key: Ed25519PrivateKey) -> SignedManifest:
        return cls(manifest, key.sign(manifest.canonical()))

    def to_json(self) -> bytes:
        doc = {
            "id": self.content_id,
            "manifest": self.manifest.to_dict(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, key: Ed25519PublicKey) -> SignedManifest:
        """Decode and check the signature against the pinned origin key."""
        try:
            doc = jsondoc.loads(data)
            manifest = Manifest.from_dict(doc["manifest"])
            signature = base64.b64decode(doc["signature"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"malformed signed manifest ({exc})") from exc
        if not verify(key, signature, manifest.canonical()):
            raise ManifestError(f"manifest for {manifest.path!r} is not signed by the pinned origin key")
        return cls(manifest, signature)
