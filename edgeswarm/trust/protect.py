"""Protected content: AES-128-CTR under a per-content key, as in Common Encryption ('cenc').

A protected file travels and rests as ciphertext: the origin encrypts as it
reads, the manifest hashes the ciphertext, and edges and peers verify, store
and trade ciphertext they cannot read.  CTR keeps the length (no padding, no
per-piece header), so pieces, ranges and sizes stay what they were, and any
byte range decrypts on its own: the counter of the 16-byte block at offset o
is the manifest's 8-byte nonce followed by o // 16.  Only the gateway of an
authorised peer, or an edge answering an authorised plain HTTP client,
decrypts, and only in memory.

The manifest also carries the SHA-256 of the key, so a node that is handed a
key (by its parent or edge) can tell a right one from a wrong one before it
decrypts a byte with it.  That reveals nothing useful: the key is 128 random
bits.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SCHEME = "aes-128-ctr"
KEY_BYTES = 16
NONCE_BYTES = 8


@dataclass(frozen=True)
class Protection:
    """What a manifest says about a protected file: how to decrypt it once the key is known."""

    nonce: bytes  # the counter block's upper half
    key_hash: str  # SHA-256 of the key, hex

    def to_dict(self) -> dict[str, str]:
        return {"scheme": SCHEME, "nonce": self.nonce.hex(), "key_sha256": self.key_hash}

    @classmethod
    def from_dict(cls, d: object) -> Protection:
        if not isinstance(d, dict) or d.get("scheme") != SCHEME:
            raise ValueError(f"protected content must use {SCHEME}")
        nonce, key_hash = d.get("nonce"), d.get("key_sha256")
        if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES or not _is_hex(nonce):
            raise ValueError(f"protection nonce must be {2 * NONCE_BYTES} hex digits")
        if not isinstance(key_hash, str) or len(key_hash) != 64 or not _is_hex(key_hash):
            raise ValueError("protection key_sha256 must be 64 hex digits")
        return cls(bytes.fromhex(nonce), key_hash)

    def key_matches(self, key: bytes) -> bool:
        return len(key) == KEY_BYTES and hmac.compare_digest(hashlib.sha256(key).hexdigest(), self.key_hash)


def new_protection() -> tuple[bytes, Protection]:
    """A fresh key and nonce for one published version of a file: never reused, so no keystream is either."""
    key = os.urandom(KEY_BYTES)
    return key, Protection(os.urandom(NONCE_BYTES), hashlib.sha256(key).hexdigest())


def crypt(key: bytes, nonce: bytes, offset: int, data: bytes | memoryview) -> bytes:
    """Encrypt or decrypt (CTR is its own inverse) data that sits at ``offset`` in the file."""
    block, skip = divmod(offset, 16)
    counter = nonce + block.to_bytes(8, "big")
    cipher = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    if skip:
        cipher.update(bytes(skip))
    return cipher.update(data) + cipher.finalize()


def cipher_for(key: bytes, protection: Protection) -> Callable[[bytes | memoryview, int], bytes]:
    """crypt bound to one content: (data, offset) -> data en- or decrypted."""
    return lambda data, offset: crypt(key, protection.nonce, offset, data)


def is_protected(path: str, globs: Iterable[str]) -> bool:
    """``--protect`` globs match the published path ("films/*", "*.mp4"); ``*`` crosses directories."""
    return any(fnmatch.fnmatchcase(path, g.lstrip("/")) for g in globs)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
