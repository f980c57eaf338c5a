"""TLS for the nodes: HTTPS on origin and edges, parents verified against a configured CA.

A provider runs its own CA for its nodes (or uses a public one); a child node
given ``--ca`` trusts only that CA's certificates for its parents, with host
name (or IP address) checking on, so a machine in the path can neither read a
content key in flight nor pose as a parent.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path

from edgeswarm.errors import EdgeswarmError

log = logging.getLogger("edgeswarm.trust.tls")
CERT_WARN_DAYS = 14  # a served certificate this close to its end is warned about, at start and every CERT_CHECK_S
CERT_CHECK_S = 12 * 3600.0  # how often a running node looks at the dates of the certificate it serves


@dataclass(frozen=True)
class Served:
    """The certificate a server context was made with, as read at start: what its clients are shown until a restart."""

    cert: Path
    not_before: datetime.datetime
    not_after: datetime.datetime

    def problem(self, now: datetime.datetime) -> str | None:
        """Why clients refuse it (or soon will) at ``now``, with what to do; None while it is good for CERT_WARN_DAYS."""
        if self.not_after < now:
            return f"certificate {self.cert} expired on {self.not_after}: clients will refuse it; {self._renew()}"
        if self.not_before > now:
            return f"certificate {self.cert} is valid only from {self.not_before}: clients will refuse it until then"
        left = self.not_after - now
        if left < datetime.timedelta(days=CERT_WARN_DAYS):
            return f"certificate {self.cert} expires on {self.not_after}, in {_days(left)}: {self._renew()}"
        return None

    def warn(self) -> None:
        """Log ``problem`` now, if there is one: at start (server_context) and as the node runs (watch_certificate)."""
        if (problem := self.problem(datetime.datetime.now(datetime.UTC))) is not None:
            log.warning("TLS: %s", problem)

    def _renew(self) -> str:
        """What to do: renew it and restart, or restart only, when the file on disk already holds a later one."""
        renewed = _read(self.cert)
        if renewed is not None and renewed.not_after > self.not_after:
            return f"{self.cert} on disk is renewed (until {renewed.not_after}): restart to serve it"
        return "renew it and restart"


_served: weakref.WeakKeyDictionary[ssl.SSLContext, Served] = weakref.WeakKeyDictionary()


def served_certificate(ctx: ssl.SSLContext | None) -> Served | None:
    """The certificate ``ctx`` (from server_context) serves, if its dates could be read."""
    return _served.get(ctx) if ctx is not None else None


async def watch_certificate(served: Served, every: float = CERT_CHECK_S) -> None:
    """Say, every ``every`` seconds, when the certificate a running node serves is about to expire or has: it was said
    at start only, and a node up for months passed its certificate's end in silence, every client then failing its
    handshake (an adversarial session)."""
    while True:
        await asyncio.sleep(every)
        served.warn()


def _days(left: datetime.timedelta) -> str:
    days = left.total_seconds() / 86400
    return f"{days:.0f} days" if days >= 2 else f"{left.total_seconds() / 3600:.0f} hours"


def _read(cert: Path) -> Served | None:
    """The dates of the first certificate in ``cert``; None if it cannot be read (OpenSSL took it: a form not read here)."""
    from cryptography import x509  # a server's only: get and peer start without loading it (tests/test_layers.py)

    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (ValueError, OSError):
        return None
    return Served(cert, leaf.not_valid_before_utc, leaf.not_valid_after_utc)


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
    served = _read(cert)
    if served is not None:
        _served[ctx] = served
        # said at start: the node serves it all the same (it may be renewed on disk, and is read again at the next
        # start), but every client fails its handshake; a running node says it again (watch_certificate)
        served.warn()
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
