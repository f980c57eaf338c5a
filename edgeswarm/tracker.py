"""The regional tracker: who holds what, and whom each peer should trade with.

Sans-IO: the edge's announce handler feeds it, time is passed in.  Ranking,
in order: locality (under ``strict`` other regions are never handed out; under
``prefer`` they come last), usefulness (holds pieces the asker lacks), seeds
first, more useful pieces, measured upload.  The last tie-break is a hash of
(asker, candidate): deterministic, yet different askers get different first
peers, so nobody becomes a hot spot just by sorting first.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from edgeswarm.regions import Region

Locality = Literal["strict", "prefer"]
EVENTS = ("started", "update", "completed", "stopped")
ALPHA = 0.5  # weight of the newest upload-rate sample


@dataclass
class PeerRecord:
    peer_id: str
    url: str
    address: str
    region: Region | None
    have: set[int]
    piece_count: int
    uploaded: int = 0
    downloaded: int = 0
    upload_rate: float = 0.0
    last_seen: float = 0.0
    user: str | None = None
    first_seen: float = field(default=0.0, repr=False)

    @property
    def complete(self) -> bool:
        return len(self.have) >= self.piece_count


def url_matches_address(url: str, address: str) -> bool:
    """Does ``url`` point at ``address``, the address the edge saw the peer connect from?

    The address-claim rule: a peer may only advertise an upload URL on its own
    address, or it could send a swarm's traffic at someone else.  The host must
    be an IP literal (a name could resolve anywhere), the scheme http(s), no
    user info (``http://a@b/`` is parsed differently by different clients);
    IPv4-mapped IPv6 equals its IPv4 address.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        host = _ip(parts.hostname or "")
        seen = _ip(address)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and "@" not in parts.netloc and host == seen


def peer_url(address: str, port: int) -> str:
    """A peer's upload URL: the address its connection came from and the port it names."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def _spread(a: str, b: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{a}|{b}".encode(), digest_size=8).digest())


def rank(asker: PeerRecord, candidates: Iterable[PeerRecord], locality: Locality) -> list[PeerRecord]:
    home = asker.region.name if asker.region else None
    out = []
    for c in candidates:
        if c.peer_id == asker.peer_id:
            continue
        away = (c.region.name if c.region else None) != home
        if away and locality == "strict":
            continue
        useful = len(c.have - asker.have)
        out.append(((away, useful == 0, not c.complete, -useful, -c.upload_rate, _spread(asker.peer_id, c.peer_id)), c))
    out.sort(key=lambda t: t[0])
    return [c for _, c in out]


class Tracker:
    def __init__(self, locality: Locality = "prefer", ttl: float = 90.0, max_answer: int = 30):
        if locality not in ("strict", "prefer"):
            raise ValueError(f"locality must be strict or prefer, not {locality!r}")
        self.locality = locality
        self.ttl = ttl
        self.max_answer = max_answer
        self._swarms: dict[str, dict[str, PeerRecord]] = {}

    def announce(
        self,
        now: float,
        cid: str,
        peer_id: str,
        url: str,
        address: str,
        region: Region | None,
        have: set[int],
        piece_count: int,
        uploaded: int,
        downloaded: int,
        event: str,
        user: str | None = None,
    ) -> list[PeerRecord]:
        if event not in EVENTS:
            raise ValueError(f"unknown announce event {event!r}")
        swarm = self._swarms.setdefault(cid, {})
        if event == "stopped":
            swarm.pop(peer_id, None)
            if not swarm:
                del self._swarms[cid]
            return []
        rec = swarm.get(peer_id)
        if rec is None:
            rec = swarm[peer_id] = PeerRecord(peer_id, url, address, region, set(), piece_count, first_seen=now, last_seen=now)
        elif uploaded >= rec.uploaded and now > rec.last_seen:
            sample = (uploaded - rec.uploaded) / (now - rec.last_seen)
            rec.upload_rate = sample if rec.upload_rate == 0 else ALPHA * sample + (1 - ALPHA) * rec.upload_rate
        rec.url, rec.address, rec.region, rec.user = url, address, region, user
        rec.have, rec.piece_count = set(have), piece_count
        rec.uploaded, rec.downloaded, rec.last_seen = uploaded, downloaded, now
        return rank(rec, swarm.values(), self.locality)[: self.max_answer]

    def expire(self, now: float) -> int:
        dropped = 0
        for cid in list(self._swarms):
            swarm = self._swarms[cid]
            for pid in [p for p, r in swarm.items() if now - r.last_seen > self.ttl]:
                del swarm[pid]
                dropped += 1
            if not swarm:
                del self._swarms[cid]
        return dropped

    def swarm(self, cid: str) -> list[PeerRecord]:
        return list(self._swarms.get(cid, {}).values())

    def contents(self) -> list[str]:
        return list(self._swarms)

    def peer_count(self) -> int:
        return len({pid for swarm in self._swarms.values() for pid in swarm})
