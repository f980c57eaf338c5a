"""TLS for the nodes: HTTPS on origin and edges, parents verified against a configured CA.

A provider runs its own CA for its nodes (or uses a public one); a child node
given ``--ca`` trusts only that CA's certificates for its parents, with host
name (or IP address) checking on, so a machine in the path can neither read a
content key in flight nor pose as a parent.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

from edgeswarm.errors import EdgeswarmError

log = logging.getLogger("edgeswarm.trust.tls")


class _Encrypted(EdgeswarmError):
    """The key file asks for a passphrase (OpenSSL would prompt on a terminal, and fail with EINVAL without one)."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An HTTPS context from PEM files; ValueError naming the file and the reason."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):
        if not path.is_file():
            raise ValueError(f"TLS: {path} is a directory, not a PEM file" if path.is_dir() else f"TLS: no such file {path}")
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ValueError(
            f"TLS: the key {key} is encrypted with a passphrase: give a key without one (openssl pkey -in KEY -out NEW)"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: cannot use certificate {cert} with key {key}: {exc}") from None
    _warn_if_out_of_date(cert)
    return ctx


def _warn_if_out_of_date(cert: Path) -> None:
    """A certificate that clients refuse today (expired, or not valid yet) is said at start: the node serves it all the
    same (it may be renewed on disk, and is read again at the next start), but every client fails its handshake."""
    from cryptography import x509  # a server's only: get and peer start without loading it (tests/test_layers.py)

    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (ValueError, OSError):
        return  # OpenSSL took it: a form this check does not read
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        log.warning("TLS: certificate %s expired on %s: clients will refuse it; renew it and restart", cert, leaf.not_valid_after_utc)
    elif leaf.not_valid_before_utc > now:
        log.warning("TLS: certificate %s is valid only from %s: clients will refuse it until then", cert, leaf.not_valid_before_utc)


def client_context(ca: Path | None) -> ssl.SSLContext | None:
    """Verification of parents' certificates against ``ca`` (PEM); None for the system's trust store."""
    if ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except FileNotFoundError:
        raise ValueError(f"TLS: no such CA file {ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: cannot read CA file {ca}: {exc}") from None


def server_options(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """``--tls-cert`` and ``--tls-key`` go together; neither means plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS: give both --tls-cert and --tls-key")
    return server_context(cert, key)
