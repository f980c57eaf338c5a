"""TLS for the nodes: HTTPS on origin and edges, parents verified against a configured CA.

A provider runs its own CA for its nodes (or uses a public one); a child node
given ``--ca`` trusts only that CA's certificates for its parents, with host
name (or IP address) checking on, so a machine in the path can neither read a
content key in flight nor pose as a parent.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An HTTPS context from PEM files; ValueError naming the file and the reason."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):
        if not path.is_file():
            raise ValueError(f"TLS: no such file {path}")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"TLS: cannot use certificate {cert} with key {key}: {exc}") from None
    return ctx


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
