"""The origin's Ed25519 identity: create once, pin everywhere.

Every manifest is signed with this key, so an edge or a peer that pinned the
public key can take content from any source - a parent, a sibling, a stranger's
machine - and still know it is what the origin published.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeswarm.errors import EdgeswarmError
from edgeswarm.wholefile import write_whole

log = logging.getLogger(__name__)


class KeyFileError(EdgeswarmError):
    """A key file that cannot be used; the message names the file and the reason."""


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in the PEM file at ``path``; KeyFileError (naming the file and why) for anything else, a missing file too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key, or an encrypted one ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for some key types
        raise KeyFileError(f"{path}: unusable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The key at ``path``, created (mode 0600, whole or not at all) on first start; an existing file that is no usable
    key is never replaced, nor is one another process created meanwhile (that one is used)."""
    if path.exists():
        return load_private_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    if not write_whole(path, pem, mode=0o600, exclusive=True):
        return load_private_key(path)
    log.info("created signing key %s", path)
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A public key as a person compares two: ``SHA256:`` and the base64 of its raw bytes' hash, as ssh shows keys."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(data: bytes, source: str = "key") -> Ed25519PublicKey:
    """A public key from PEM (a private key file is accepted too, for convenience)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: not a PEM Ed25519 key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{source}: not an Ed25519 key")
    return key


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
