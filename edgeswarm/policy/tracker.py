"""The regional tracker: who holds what, and whom each peer should trade with.

Sans-IO: the edge's announce handler feeds it, time is passed in.  Ranking,
in order: locality (under ``strict`` other regions are never handed out; under
``prefer`` they come last), usefulness (holds pieces the asker lacks), seeds
first, more useful pieces, measured upload.  The last tie-break is a hash of
(asker, candidate): deterministic, yet different askers get different first
peers, so nobody becomes a hot spot just by sorting first.

Identity: a peer id means something only with its *owner* - the token's user,
or without tokens the address the peer announces from - because a peer mints
ids for free but not users or addresses.  So nobody can take over another
owner's id (not even after its owner sent ``stopped``), and ``Limits`` count
per address (an IPv6 /64) and per user: live ids, announces per second, and
places in one answer, so a flood from one address cannot crowd others out.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal

from edgeswarm.errors import EdgeswarmError
from edgeswarm.policy.regions import Region

PER_ADDRESS = 2  # peers of one address (group) in a tracker answer, and among a peer's neighbours
ANNOUNCE_INTERVAL = 300.0  # until a tracker says otherwise: neighbours' HAVE streams, not announces, carry availability

Locality = Literal["strict", "prefer"]
EVENTS = ("started", "update", "completed", "stopped")
ALPHA = 0.5  # weight of the newest upload-rate sample
PeerKey = tuple[str, str]  # (owner, peer id)


@dataclass(frozen=True)
class Limits:
    """What one address or one token user may take of a tracker (defaults: docs/security.md#tracker-limits).

    16 live ids per address leaves room for a household or small office
    behind one NAT address, each machine running one peer daemon (a daemon
    uses one id for all its contents); carrier-grade NAT needs more, or
    tokens, whose users are counted apart.  The rate lets such an address
    announce a few thousand contents per default 300 s interval, with a burst
    for daemons that start together.
    """

    ids_per_address: int = 16
    ids_per_user: int = 16
    announces_per_s: float = 20.0
    announce_burst: float = 200.0
    answer_per_address: int = PER_ADDRESS  # one address's share of any answer: never the whole of it


class Refused(EdgeswarmError):
    """Over a limit: the edge answers 429 with ``retry_after`` and this message."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def owner_of(address: str, user: str | None) -> str:
    """Who a peer id belongs to: the token's user, else the address the edge sees."""
    return f"user:{user}" if user is not None else f"addr:{address}"


def address_group(address: str) -> str:
    """What per-address limits count: the IPv4 address, or the /64 of an IPv6 one (a host gets a whole /64)."""
    try:
        ip = _ip(address)
    except ValueError:
        return address
    return str(ip) if ip.version == 4 else str(ipaddress.ip_network(f"{ip}/64", strict=False))


@dataclass(frozen=True, kw_only=True)
class AnnounceRecord:
    """One announce as the tracker takes it: what the peer said, and where the edge saw it come from."""

    cid: str
    """The content announced."""
    peer_id: str
    """The id the peer gave (an identity only with its owner: see the module's docstring)."""
    url: str
    """The peer's upload server, built from the address the edge saw and the port the peer named."""
    address: str
    """The address the announce came from."""
    region: Region | None
    """The region of that address; None: unmapped."""
    have: AbstractSet[int]
    """Indexes of the pieces the peer holds."""
    piece_count: int
    """Pieces in the content."""
    event: str
    """started, update, completed or stopped."""
    uploaded: int = 0
    """Bytes the peer says it has sent to peers (upload-rate samples)."""
    downloaded: int = 0
    """Bytes the peer says it has received."""
    user: str | None = None
    """The verified token's user, if the announce carried one: then the owner of the peer id."""


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
    owner: str = ""
    group: str = ""

    @property
    def complete(self) -> bool:
        return len(self.have) >= self.piece_count

    @property
    def key(self) -> PeerKey:
        return (self.owner, self.peer_id)


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
        if c.key == asker.key:
            continue
        away = (c.region.name if c.region else None) != home
        if away and locality == "strict":
            continue
        useful = len(c.have - asker.have)
        out.append(((away, useful == 0, not c.complete, -useful, -c.upload_rate, _spread("/".join(asker.key), "/".join(c.key))), c))
    out.sort(key=lambda t: t[0])
    return [c for _, c in out]


class Tracker:
    def __init__(self, locality: Locality = "prefer", ttl: float = 90.0, max_answer: int = 30, limits: Limits | None = None):
        if locality not in ("strict", "prefer"):
            raise ValueError(f"locality must be strict or prefer, not {locality!r}")
        self.locality = locality
        self.ttl = ttl
        self.max_answer = max_answer
        self.limits = limits or Limits()
        self._swarms: dict[str, dict[PeerKey, PeerRecord]] = {}
        self._names: dict[str, Counter[str]] = {}  # cid -> how many owners use each bare id there
        self._joined: dict[PeerKey, set[str]] = {}  # live identities -> their swarms
        self._counted: dict[PeerKey, tuple[str, ...]] = {}  # live identity -> the limit keys it counts against
        self._ids: dict[str, set[PeerKey]] = {}  # limit key (address group, "user:NAME") -> its live identities
        self._buckets: dict[str, tuple[float, float]] = {}  # rate key -> (announce tokens, when)

    def announce(self, now: float, ann: AnnounceRecord) -> list[PeerRecord]:
        """Record the announce and rank the swarm for the asker; ``Refused`` (changing nothing) when over a limit."""
        cid, peer_id, url, address, region, have, user = ann.cid, ann.peer_id, ann.url, ann.address, ann.region, ann.have, ann.user
        piece_count, uploaded, downloaded, event = ann.piece_count, ann.uploaded, ann.downloaded, ann.event
        if event not in EVENTS:
            raise ValueError(f"unknown announce event {event!r}")
        key, group = (owner_of(address, user), peer_id), address_group(address)
        counted = (group, owner_of(address, user)) if user is not None else (group,)
        self._admit(now, key, counted, event == "stopped")
        if event == "stopped":
            self.drop(cid, key)
            return []
        swarm = self._swarms.setdefault(cid, {})
        rec = swarm.get(key)
        if rec is None:
            rec = swarm[key] = PeerRecord(peer_id, url, address, region, set(), piece_count, first_seen=now, last_seen=now, owner=key[0])
            self._names.setdefault(cid, Counter())[peer_id] += 1
        elif uploaded >= rec.uploaded and now > rec.last_seen:
            sample = (uploaded - rec.uploaded) / (now - rec.last_seen)
            rec.upload_rate = sample if rec.upload_rate == 0 else ALPHA * sample + (1 - ALPHA) * rec.upload_rate
        rec.url, rec.address, rec.region, rec.user, rec.group = url, address, region, user, group
        rec.have, rec.piece_count = set(have), piece_count
        rec.uploaded, rec.downloaded, rec.last_seen = uploaded, downloaded, now
        self._join(key, cid, counted)
        return self._answer(rec, swarm.values())

    def _admit(self, now: float, key: PeerKey, counted: tuple[str, ...], leaving: bool) -> None:
        """The rate per user (tokens) or address, then the live ids of each limit key this identity would join."""
        rate_key = counted[-1]
        wait = self._take(now, rate_key)
        if wait:
            raise Refused(f"too many announces from {rate_key}: at most {self.limits.announces_per_s:g} a second", wait)
        if leaving:
            return
        for limit_key in counted:
            ids = self._ids.get(limit_key, set())
            limit = self.limits.ids_per_user if limit_key.startswith("user:") else self.limits.ids_per_address
            if key not in ids and len(ids) >= limit:
                wait = max(1.0, min(self.ttl - (now - self._last_seen(k)) for k in ids))  # expiry runs every interval
                raise Refused(f"{limit_key} already has {limit} live peer ids; the oldest expires in {wait:.0f} s", wait)

    def _take(self, now: float, rate_key: str) -> float:
        """One announce from the key's bucket: 0, or the seconds until one is there (refusals are not charged)."""
        rate, burst = self.limits.announces_per_s, self.limits.announce_burst
        tokens, then = self._buckets.get(rate_key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - then) * rate)
        if tokens < 1:
            self._buckets[rate_key] = (tokens, now)
            return (1 - tokens) / rate
        self._buckets[rate_key] = (tokens - 1, now)
        return 0.0

    def _last_seen(self, key: PeerKey) -> float:
        return max(self._swarms[cid][key].last_seen for cid in self._joined[key])

    def _join(self, key: PeerKey, cid: str, counted: tuple[str, ...]) -> None:
        self._joined.setdefault(key, set()).add(cid)
        old = self._counted.get(key, ())
        if old != counted:  # new, or a token user's peer that moved address
            self._uncount(key)
            for limit_key in counted:
                self._ids.setdefault(limit_key, set()).add(key)
            self._counted[key] = counted

    def _uncount(self, key: PeerKey) -> None:
        for limit_key in self._counted.pop(key, ()):
            ids = self._ids[limit_key]
            ids.discard(key)
            if not ids:
                del self._ids[limit_key]

    def _answer(self, asker: PeerRecord, swarm: Iterable[PeerRecord]) -> list[PeerRecord]:
        """The best-ranked peers, at most ``answer_per_address`` of any one address."""
        taken: Counter[str] = Counter()
        out = []
        for c in rank(asker, swarm, self.locality):
            if taken[c.group] < self.limits.answer_per_address:
                taken[c.group] += 1
                out.append(c)
                if len(out) == self.max_answer:
                    break
        return out

    def label(self, cid: str, rec: PeerRecord) -> str:
        """The name an answer gives ``rec``: its own id, or id@address while another owner uses the same id here."""
        return rec.peer_id if self._names.get(cid, Counter())[rec.peer_id] <= 1 else f"{rec.peer_id}@{rec.address}"

    def drop(self, cid: str, key: PeerKey) -> PeerRecord | None:
        """Forget one record (``stopped``, or expired); an identity in no swarm any more stops counting anywhere."""
        swarm = self._swarms.get(cid, {})
        rec = swarm.pop(key, None)
        if rec is None:
            return None
        names = self._names[cid]
        names[key[1]] -= 1
        if not names[key[1]]:
            del names[key[1]]
        if not swarm:
            del self._swarms[cid], self._names[cid]
        joined = self._joined[key]
        joined.discard(cid)
        if not joined:
            del self._joined[key]
            self._uncount(key)
        return rec

    def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """Drop records silent for longer than the ttl, and rate state that has refilled; the dropped (cid, record)."""
        dropped = [(cid, r) for cid, swarm in self._swarms.items() for r in swarm.values() if now - r.last_seen > self.ttl]
        for cid, r in dropped:
            self.drop(cid, r.key)
        rate, burst = self.limits.announces_per_s, self.limits.announce_burst
        for rate_key in [k for k, (tokens, then) in self._buckets.items() if tokens + (now - then) * rate >= burst]:
            del self._buckets[rate_key]
        return dropped

    def swarm(self, cid: str) -> list[PeerRecord]:
        return list(self._swarms.get(cid, {}).values())

    def records(self, cid: str) -> list[tuple[PeerKey, PeerRecord]]:
        """The swarm of ``cid`` with each record's identity: one peer is one key across all its swarms."""
        return list(self._swarms.get(cid, {}).items())

    def contents(self) -> list[str]:
        return list(self._swarms)

    def peer_count(self) -> int:
        return len(self._joined)

    def state_size(self) -> dict[str, int]:
        """How many entries each per-peer table holds: bounded by the live peers (a test and /status watch it)."""
        return {
            "records": sum(len(s) for s in self._swarms.values()),
            "identities": len(self._joined),
            "limit_keys": len(self._ids),
            "rate_keys": len(self._buckets),
        }
