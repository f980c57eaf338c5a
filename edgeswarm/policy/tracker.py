"""The regional tracker: who holds what, and whom each peer should trade with.

Sans-IO: the edge's announce handler feeds it, time is passed in.  Ranking,
in order: locality (under ``strict`` other regions are never handed out; under
``prefer`` they come last), usefulness (holds pieces the asker lacks), seeds
first (to a seed, leechers first), more useful pieces, measured upload.  The
last tie-break is a hash of (asker, candidate): deterministic, yet different
askers get different first peers, so nobody becomes a hot spot just by
sorting first.

Identity: a peer id means something only with its *owner* - the token's user,
or without tokens the address the peer announces from - because a peer mints
ids for free but not users or addresses.  So nobody can take over another
owner's id (not even after its owner sent ``stopped``), and ``Limits`` count
per address (an IPv6 /64) and per user: live ids, announces per second, and
places in one answer, so a flood from one address cannot crowd others out.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import random
import struct
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from edgeswarm.errors import EdgeswarmError
from edgeswarm.policy import bitfield
from edgeswarm.policy.candidates import Pool
from edgeswarm.policy.heaviest import Heaviest
from edgeswarm.policy.regions import Region, ipv4_value, url_host

if TYPE_CHECKING:
    from edgeswarm.policy.peerstore import PeerStore

T = TypeVar("T")
PER_ADDRESS = 2  # peers of one address (group) in a tracker answer, and among a peer's neighbours
ANNOUNCE_INTERVAL = 300.0  # until a tracker says otherwise: neighbours' HAVE streams, not announces, carry availability

Locality = Literal["strict", "prefer"]
EVENTS = ("started", "update", "completed", "stopped")
ALPHA = 0.5  # weight of the newest upload-rate sample
PeerKey = tuple[str, str]  # (owner, peer id)
RankPart = tuple[float, int, str | None, bytes, int]  # (rate it was made for, static key bits, region name, identity, mask): _rank_part


@dataclass(frozen=True)
class Limits:
    """What one address or one token user may take of a tracker (defaults: docs/security.md#tracker-limits).

    16 live ids per address leaves room for a household or small office
    behind one NAT address, each machine running one peer daemon (a daemon
    uses one id for all its contents); carrier-grade NAT needs more, or
    tokens, whose users are counted apart.  The rate lets such an address
    announce a few thousand contents per default 300 s interval, with a burst
    for daemons that start together.  An id is in at most ``swarms_per_id``
    swarms here: past them it leaves its least recently announced one, so one
    address holds at most 16 x 4 096 records (about 140 MB in the memory
    store), however many contents it claims: 16 ids of 20 000 contents each
    took an edge from 92 to 758 MB without one refusal (an adversarial session).

    ``records`` bounds them all together, as addresses are many: 2 000 of
    them took an edge from 48 to 326 MB in 25 s (an adversarial session).
    Past it, a new record takes the place of one of whoever holds the most
    (a sender: an address, or a token user), so a flood crowds out its own
    senders first; when the sender holds as many as anyone, it is refused.
    """

    ids_per_address: int = 16
    ids_per_user: int = 16
    announces_per_s: float = 20.0
    announce_burst: float = 200.0
    swarms_per_id: int = 4096  # a peer's cache of 4 096 contents (an hour of 1 s live segments) is handed out for all
    answer_per_address: int = PER_ADDRESS  # one address's share of any answer: never the whole of it
    records: int = 1_000_000  # (content, peer) announced here, in all: about 3-5 KB each with its claims (docs/security.md)


class OutOfOrder(EdgeswarmError):
    """An ``update`` or ``completed`` of a content from a peer that has said ``stopped`` for it: the edge answers 409.

    It was sent before the ``stopped`` and reached us after it (a peer that
    stops while an announce is in flight).  Taken, it put a gone peer back in
    the swarm for a ttl, and its counts and usage were booked a second time.
    """


class Full(EdgeswarmError):
    """The tracker holds ``Limits.records`` and the sender holds as many as anyone: the edge answers 503 with ``retry_after``."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Refused(EdgeswarmError):
    """Over a limit: the edge answers 429 with ``retry_after`` and this message."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def limit_key(address: str, user: str | None) -> str:
    """What per-address limits count an identity as: its token's user if it has one, else its address group.

    Token users are counted apart (Limits): counted against their address too, 24 users behind one carrier-grade NAT
    address, each with a token of their own, got 16 places between them, and one of them holding 16 ids locked the
    others out (an adversarial session).  Its announce rate and its unknown contents are counted by it too, and
    the edge's relay counts its relayed peers so.
    """
    return owner_of(address, user) if user is not None else address_group(address)


def owner_of(address: str, user: str | None) -> str:
    """Who a peer id belongs to: the token's user, else the address the edge sees."""
    return f"user:{user}" if user is not None else f"addr:{address}"


@functools.lru_cache(maxsize=1 << 16)
def address_group(address: str) -> str:
    """What per-address limits count: the IPv4 address, or the /64 of an IPv6 one (a host gets a whole /64).

    Remembered for recent addresses: an announce needs it twice (the tracker's limits, the claim bounds).
    """
    if ipv4_value(address) is not None:
        return address  # canonical already: what str(ip) would give
    try:
        ip = _ip(address)
    except ValueError:
        return address
    return str(ip) if ip.version == 4 else str(ipaddress.ip_network(f"{ip}/64", strict=False))


@functools.lru_cache(maxsize=1 << 16)
def sender_of(limit_key: str) -> str:
    """Whom ``Limits.records`` weighs a record against: a token user, an IPv4 address, or the /48 of an IPv6 /64 (a
    site's allocation).  By /64, one /48 was 65 536 senders, each holding a few records, and at the bound honest seeds
    with fifty records each were crowded out down to one (a review)."""
    if ":" not in limit_key or limit_key.startswith("user:"):
        return limit_key
    try:
        return str(ipaddress.ip_network(limit_key, strict=False).supernet(new_prefix=48))
    except ValueError:  # an address group that is no network (address_group's fallback): itself
        return limit_key


def group_tag(group: str) -> str:
    """A short hash of an address group (``address_group``): how a relay URL names its peer's address without showing
    it (protocol/relay.py), and so how an uploader names a requester's address (choker.requester), the two alike."""
    return hashlib.blake2b(group.encode(), digest_size=6).hexdigest()


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
    have: AbstractSet[int] | int
    """Indexes of the pieces the peer holds, or their bit mask (bit i: piece i)."""
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
    """One peer in one swarm.  ``have`` and ``mask`` are the same pieces: a set for people, an integer for ranking."""

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
    if TYPE_CHECKING:  # set on the class below, never fields: what the type checker should know of them
        _have: set[int] | None = field(init=False, default=None)
        _mask: int | None = field(init=False, default=None)
        _field: str | None = field(init=False, default=None)
        _complete: bool | None = field(init=False, default=None)
        _ident: bytes | None = field(init=False, default=None)
        _rank: RankPart | None = field(init=False, default=None)
        _wire: dict[str, object] | None = field(init=False, default=None)

    @property
    def complete(self) -> bool:
        """A seed; cached like the mask (a record is in many answers, each of which says it)."""
        if self._complete is None:
            self._complete = self.mask.bit_count() >= self.piece_count
        return self._complete

    @property
    def key(self) -> PeerKey:
        return (self.owner, self.peer_id)

    @property
    def mask(self) -> int:
        """The held pieces as the wire's bits in one integer, so usefulness is a popcount, not a set difference."""
        if self._mask is None:
            self._mask = bitfield.to_mask(self._have or (), self.piece_count)
        return self._mask

    def have_field(self) -> str:
        """The wire bitfield of ``have`` (bitfield.encode), built once per record: a record is in many answers."""
        if self._field is None:
            self._field = bitfield.encode_mask(self.mask, self.piece_count)
        return self._field

    def wire(self) -> dict[str, object]:
        """The record as an answer lists it under its bare id: built once, a record is in many answers; never changed after."""
        if self._wire is None:
            region = self.region.name if self.region else None
            self._wire = {"peer_id": self.peer_id, "url": self.url, "have": self.have_field(), "complete": self.complete, "region": region}
        return self._wire

    @classmethod
    def from_mask(cls, mask: int, **fields: object) -> PeerRecord:
        """A record read from a store: its set of pieces is built only if someone asks for it."""
        rec = cls(have=None, **fields)  # type: ignore[arg-type]
        rec._mask = mask
        return rec


def asker_record(ann: AnnounceRecord, now: float, owner: str, group: str) -> PeerRecord:
    """The announcing peer's record, as a tracker keeps and ranks it (a sub-tracker ranks its asker the same way)."""
    if isinstance(ann.have, int):
        rec = PeerRecord.from_mask(
            ann.have, peer_id=ann.peer_id, url=ann.url, address=ann.address, region=ann.region, piece_count=ann.piece_count
        )
    else:
        rec = PeerRecord(ann.peer_id, ann.url, ann.address, ann.region, set(ann.have), ann.piece_count)
    rec.uploaded, rec.downloaded, rec.last_seen, rec.first_seen = ann.uploaded, ann.downloaded, now, now
    rec.user, rec.owner, rec.group = ann.user, owner, group
    return rec


def _get_have(rec: PeerRecord) -> set[int]:
    if rec._have is None:
        rec._have = bitfield.from_mask(rec._mask or 0, rec.piece_count)
    return rec._have


def _set_have(rec: PeerRecord, have: set[int] | None) -> None:
    rec._have = None if have is None else set(have)
    rec._mask = rec._field = rec._rank = rec._complete = rec._wire = None


PeerRecord._have = None
PeerRecord._mask = None
PeerRecord._field = None
PeerRecord._complete = None
PeerRecord._ident = None
PeerRecord._rank = None
PeerRecord._wire = None
PeerRecord.have = property(_get_have, _set_have)  # type: ignore[assignment]


def peer_url(address: str, port: int) -> str:
    """A peer's upload URL: the address its connection came from and the port it names."""
    return f"http://{url_host(address)}:{port}"


def peer_url_problem(url: str) -> str | None:
    """Why ``url`` in a tracker answer is no URL a tracker builds (``peer_url``, or a relay's
    ``http(s)://EDGE/relay/<id>``), or None.

    A peer connects to what an answer lists: an edge that listed any URL
    made every peer of its swarm a request source against a service of its
    choosing, any host, port and path, 27 requests a second per peer at the
    default interval (an adversarial session).  So: http or https, no user,
    query or fragment; a peer at an address (a tracker builds its URL from the
    address it saw) and a port, with no path; or a relay, the one path, at any
    host (an edge's ``--register-url`` may be a name without a port, of an
    edge the peer does not know: one sharing its region's tracker store).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not http(s)://HOST"
    if parts.username is not None or parts.query or parts.fragment or "?" in url or "#" in url:
        return "user info, a query or a fragment"
    segments = parts.path.split("/")
    if len(segments) == 3 and segments[1] == "relay" and segments[2]:
        return None
    if parts.path:
        return "a path"
    try:
        ipaddress.ip_address(parts.hostname.split("%", 1)[0])
    except ValueError:
        return "a host name, not an address"
    return None if port is not None else "no port"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip


def rank(asker: PeerRecord, candidates: Iterable[PeerRecord], locality: Locality) -> list[PeerRecord]:
    """The handout order (module docstring), whole."""
    return list(_ranked(asker, candidates, locality))


def rank_part(rec: PeerRecord) -> RankPart:
    """What ranking needs of ``rec`` whatever the asker: cached on the record until its rate or pieces change."""
    part = rec._rank
    if part is None or part[0] is not rec.upload_rate:
        part = _rank_part(rec)
    return part


def _ranked(asker: PeerRecord, candidates: Iterable[PeerRecord], locality: Locality) -> Iterator[PeerRecord]:
    """The handout order of any candidates (``ranked`` with their parts looked up)."""
    cands = candidates if isinstance(candidates, list) else list(candidates)
    return ranked(asker, cands, [rank_part(c) for c in cands], locality)


def ranked(asker: PeerRecord, cands: list[PeerRecord], parts: list[RankPart], locality: Locality) -> Iterator[PeerRecord]:
    """The handout order (module docstring) of ``cands``, whose ``rank_part``s are ``parts``; usefulness is a popcount.

    Each candidate's order is one integer: (away, not a seed, fewer useful
    pieces) above the negated upload rate above the tie-break hash; a stable
    sort of their positions by it keeps equal keys in input order.  Integers
    sort several times faster than tuples, and what does not depend on the
    asker (seed, rate, region, identity) is in ``parts``, computed once per
    record (a swarm's pool keeps them: candidates.py), with the most a count
    of useful pieces can be, from which the asker's count is subtracted: a
    key costs a popcount, a shift, a subtraction and the hash.  Being useless
    needs no bit of its own: a useless candidate has the fewest useful pieces
    (none), and a seed is useless only to an asker that lacks nothing, to
    whom every candidate is: such an asker (a seed itself) gets leechers
    first, who want what it has (the not-a-seed bit flipped; a seed handed 30
    seeds and no leecher was an adversarial session's finding, with
    BitTorrent clients).  The asker's missing pieces are a non-negative
    mask: ``&`` with a negative integer copies both operands first.
    """
    home = asker.region.name if asker.region else None
    lacks = ((1 << bitfield.width(asker.piece_count)) - 1) ^ asker.mask
    base = zlib.crc32(_ident(asker) + b"|")
    crc, low, away = zlib.crc32, _LOW, _AWAY
    seeding = 0 if lacks else _LEECH  # an asker that lacks nothing wants those who lack: leechers first, not seeds
    keys = [
        (static ^ seeding) - ((mask & lacks).bit_count() << low) | crc(ident, base) | (region != home and away)
        for _, static, region, ident, mask in parts
    ]
    # the asker itself and, under strict, other regions (sorted last) are left out here: one check per place handed out
    owner, pid, strict = asker.owner, asker.peer_id, locality == "strict"
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        if strict and keys[i] >= away:
            return
        c = cands[i]
        if c.peer_id != pid or c.owner != owner:
            yield c


_LOW = 96  # bits below the first three criteria: 64 of rate, 32 of tie-break hash
_USEFUL = 1 << (40 + _LOW)  # above every count of useful pieces (2^20 at most): what a key starts from
_AWAY = 1 << (62 + _LOW)
_LEECH = 1 << (60 + _LOW)  # the not-a-seed bit of a key (_rank_part)
_U64 = (1 << 64) - 1
_DOUBLE = struct.Struct(">Q")


def _rank_part(rec: PeerRecord) -> RankPart:
    """What ``rank`` needs of a record whatever the asker, cached on it until its rate or pieces change.

    ``static`` holds the not-a-seed bit, the most useful pieces there can be
    (``ranked`` subtracts the asker's count) and the upload rate as an
    integer that sorts the highest rate first: an IEEE double's bits order
    like the number once the sign is folded in (-0.0 is made 0.0, as they
    compare equal).
    """
    rate = rec.upload_rate
    bits = _DOUBLE.unpack(struct.pack(">d", rate + 0.0))[0]
    ordered = (bits ^ _U64) if bits >> 63 else (bits | (1 << 63))
    mask = rec.mask
    static = (_LEECH if mask.bit_count() < rec.piece_count else 0) | _USEFUL | ((_U64 - ordered) << 32)
    ident = rec._ident if rec._ident is not None else _ident(rec)
    rec._rank = part = (rate, static, rec.region.name if rec.region else None, ident, mask)
    return part


def _ident(rec: PeerRecord) -> bytes:
    """The record's identity as the tie-break hashes it, cached on the record (memory-store records are ranked again and again)."""
    rec._ident = f"{rec.owner}/{rec.peer_id}".encode()
    return rec._ident


def handout(
    asker: PeerRecord,
    candidates: Iterable[PeerRecord],
    locality: Locality,
    max_answer: int,
    per_address: int,
    parts: list[RankPart] | None = None,
) -> list[PeerRecord]:
    """The best-ranked candidates, at most ``per_address`` of any one address (group); ``parts``: their ``rank_part``s, if known."""
    taken: dict[str, int] = {}
    out = []
    order = _ranked(asker, candidates, locality) if parts is None else ranked(asker, list(candidates), parts, locality)
    for c in order:
        n = taken.get(c.group, 0)
        if n < per_address:
            taken[c.group] = n + 1
            out.append(c)
            if len(out) == max_answer:
                break
    return out


def labels(answer: list[PeerRecord], asker: str | None = None) -> list[str]:
    """The names an answer gives its peers: the bare id, or id@address where another owner in it (or the asker) uses the same id.

    Shared ids are rare: a set tells there are none, and only then are they counted.
    """
    bare = [r.peer_id for r in answer]
    unique = set(bare)
    if len(unique) == len(bare) and asker not in unique:
        return bare
    names = Counter(bare)
    if asker is not None:
        names[asker] += 1
    return [r.peer_id if names[r.peer_id] <= 1 else f"{r.peer_id}@{r.address}" for r in answer]


def answer_peers(answer: list[PeerRecord], asker: str, placed: Callable[[PeerRecord], bool] | None = None) -> list[dict[str, object]]:
    """The answer's ``peers`` as the wire lists them (``wire``), each under its label (``labels``); a complete record
    ``placed`` says the operator put there (a preheat order) says ``"placed": true`` (picker.py, "Startup").

    A record's entry is built once and shared by every answer it is in (the
    common case: no shared id); only a relabelled or placed peer gets a copy.
    Nobody changes an entry: an answer is encoded and sent.
    """
    peers = [
        p.wire() if label == p.peer_id else {**p.wire(), "peer_id": label} for p, label in zip(answer, labels(answer, asker), strict=True)
    ]
    if placed is None:
        return peers
    return [{**p, "placed": True} if rec.complete and placed(rec) else p for p, rec in zip(peers, answer, strict=True)]


def next_rate(previous: PeerRecord | None, uploaded: int, now: float) -> float:
    """A peer's upload rate: an average of the deltas between its announces (a counter that went back is a restart: no sample).

    The Redis store computes the same in its announce script (peerstore.py), next to the record it reads.
    """
    if previous is None:
        return 0.0
    if uploaded >= previous.uploaded and now > previous.last_seen:
        sample = (uploaded - previous.uploaded) / (now - previous.last_seen)
        return sample if previous.upload_rate == 0 else ALPHA * sample + (1 - ALPHA) * previous.upload_rate
    return previous.upload_rate


def settle(step: Coroutine[object, None, T]) -> T:
    """Run a tracker call over the memory store, which never waits, to its end without an event loop (the simulator's clock is its own)."""
    try:
        step.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    step.close()
    raise RuntimeError("the tracker's store waited: settle() is for the memory store only")


SAMPLE_PER_ANSWER = 2  # candidates ranked per place in an answer
POOL_PER_SAMPLE = 2  # a swarm's pool holds this many samples; each announce ranks one, a random window of it (candidates.py)
ROTATION = 16  # announces of its swarm a drawn candidate is ranked for, about: each draws 1/ROTATION of the pool anew (candidates.py)
POOL_REFRESH = 1.0  # seconds: a pool read whole longer ago is read whole again (what other edges sharing the store changed)
MAX_LEFT = 65536  # (content, peer) that said stopped, kept for a ttl so a late announce of theirs is known; the oldest go first
_UNKNOWN = "unknown contents from "  # the prefix of a sender's bucket for contents that proved unknown upstream (unknown_wait)


class Tracker:
    """Admission and handout policy over a ``PeerStore`` (peerstore.py), which holds the swarms.

    The store may be shared by several edges of a region (Redis); what this
    class keeps itself is per edge: the announce-rate buckets and the live
    ids per address or user *announced here*, and which (address, peer id)
    of each swarm announced here (the super-seeder's copies are this edge's).
    An announce ranks at most ``sample`` candidates, whatever the swarm's
    size: the handout is the best of a random sample once the swarm is
    larger.  That sample is a random window of the swarm's pool
    (candidates.py), twice its size, which each announce renews by ``draws``
    records read from the store.

    Time: every ``now`` is the caller's clock, which this class's own tables
    run on (an edge's monotonic clock); the store's records are stamped and
    judged in the store's time for it (``PeerStore.at``): the same for the
    memory store, the wall clock for a store shared by several edges.
    """

    def __init__(
        self,
        locality: Locality = "prefer",
        ttl: float = 90.0,
        max_answer: int = 30,
        limits: Limits | None = None,
        store: PeerStore | None = None,
        sample: int | None = None,
    ):
        if locality not in ("strict", "prefer"):
            raise ValueError(f"locality must be strict or prefer, not {locality!r}")
        from edgeswarm.policy.peerstore import MemoryPeerStore  # the store module builds on this one's records

        self.locality = locality
        self.ttl = ttl
        self.max_answer = max_answer
        self.limits = limits or Limits()
        self.sample = sample if sample is not None else SAMPLE_PER_ANSWER * max_answer
        self.pool_size = POOL_PER_SAMPLE * (self.sample + 1)
        self.draws = max(1, math.ceil(self.pool_size / ROTATION))
        self._windows = random.Random(0)  # which run of a pool each announce ranks: uncorrelated with the store's draws
        self.refresh = POOL_REFRESH
        self.store: PeerStore = store or MemoryPeerStore()
        self.store.ttl = ttl
        self._here: dict[str, dict[PeerKey, tuple[float, str]]] = {}  # cid -> identity -> (last announce here, its address)
        # identities live here -> their swarms, the most recently announced last (a dict of strings, as an ordered set:
        # one object per peer fewer for the garbage collector to walk; it does not track a dict of strings, nor a tuple
        # of them, see claims._Tally)
        self._joined: dict[PeerKey, dict[str, None]] = {}
        self._counted: dict[PeerKey, str] = {}  # live identity -> the limit key it counts against (limit_key)
        self._ids: dict[str, tuple[PeerKey, ...]] = {}  # limit key (address group, "user:NAME") -> its live identities (a few)
        self._buckets: dict[str, tuple[float, float]] = {}  # rate key -> (announce tokens, when)
        self._left: dict[tuple[str, PeerKey], float] = {}  # (cid, identity) that said stopped here -> when, oldest first
        self._pools: dict[str, Pool] = {}  # cid -> the candidates its announces rank here
        self._held = Heaviest()  # sender (sender_of an identity's last limit key) -> its records here
        self._by_sender: dict[str, dict[PeerKey, None]] = {}  # sender -> its live identities here, the oldest first
        self.records = 0  # memberships in this edge's tables (the sum of _held): Limits.records bounds it
        self.crowded_out = 0  # records dropped to make room for another sender's (Limits.records)
        self.departures = 0  # memberships this edge's tables dropped (stopped, expired): what its tables hold changed

    async def announce(self, now: float, ann: AnnounceRecord, charge: bool = True) -> list[PeerRecord]:
        """Record the announce and hand the asker the best of its swarm; ``Refused`` (changing nothing) when over a limit."""
        answer, _ = await self.announce_sized(now, ann, charge)
        return answer

    async def announce_sized(self, now: float, ann: AnnounceRecord, charge: bool = True) -> tuple[list[PeerRecord], int]:
        """``announce``, and the swarm's size after it.  ``charge``: count it against the sender's rate (once per batch)."""
        cid, peer_id, address, user, event = ann.cid, ann.peer_id, ann.address, ann.user, ann.event
        if event not in EVENTS:
            raise ValueError(f"unknown announce event {event!r}")
        if event == "stopped":
            await self.stop(now, cid, peer_id, address, user, charge)
            return [], 0
        key, group = (owner_of(address, user), peer_id), address_group(address)
        counted = limit_key(address, user)
        self._admit(now, key, counted, False, charge)
        if event in ("update", "completed") and (cid, key) in self._left:  # after a "stopped": "started" joins again
            raise OutOfOrder(f"peer {peer_id} said stopped for content {cid[:12]}: announce 'started' to join again")
        self._left.pop((cid, key), None)
        if self.records >= self.limits.records and cid not in self._joined.get(key, ()):
            await self._make_room(sender_of(counted))
        at = self.store.at(now)
        rec = asker_record(ann, at, key[0], group)
        pool, size = await self._place(now, at, cid, rec)
        self._join(now, key, cid, counted, address)
        joined = self._joined[key]
        while len(joined) > self.limits.swarms_per_id:
            await self.drop(next(iter(joined)), key)  # its least recently announced swarm
        records, parts = pool.window(self._windows, self.sample + 1)
        return handout(rec, records, self.locality, self.max_answer, self.limits.answer_per_address, parts), size

    async def stop(self, now: float, cid: str, peer_id: str, address: str, user: str | None, charge: bool = True) -> None:
        """A ``stopped``: the record goes (a content the edge no longer knows included); charged as any announce."""
        key = (owner_of(address, user), peer_id)
        self._admit(now, key, limit_key(address, user), True, charge)
        self._stopped(now, cid, key)
        await self.drop(cid, key)

    async def _place(self, now: float, at: float, cid: str, rec: PeerRecord) -> tuple[Pool, int]:
        """Store the asker's record and renew its swarm's pool (a few fresh draws, or a whole read when due); the pool, and the swarm's size.

        ``at``: ``now`` in the store's time, which its records' ``last_seen``
        count in.  The pool is looked up again after the store's answer:
        announces of the same swarm run concurrently over a shared store.
        """
        pool = self._pools.get(cid)
        whole = pool is None or not 0 <= now - pool.filled <= self.refresh
        placed = await self.store.put(at, cid, rec, self.pool_size - 1, None if whole else self.draws)
        pool = self._pools.get(cid)
        if pool is None:
            pool = self._pools[cid] = Pool(self.pool_size, now, rank_part)
        if whole or placed.size <= self.pool_size:  # the store read a whole pool, or a small swarm whole
            pool.whole(now, placed.candidates)
        else:
            pool.add(placed.candidates)
        pool.update(rec)
        pool.used = now
        pool.prune(at - self.store.behind() - self.ttl)  # as the store judges its records' silence
        return pool, placed.size

    async def _make_room(self, sender: str) -> None:
        """At ``Limits.records``: drop the oldest swarm of the oldest identity of whoever holds the most (an identity
        of its first), or ``Full`` when that is as many as ``sender`` holds (with one more, it would be the most)."""
        heaviest = self._held.top()
        if heaviest is None or heaviest[1] <= self._held.get(sender) + 1:
            wait = self.ttl / 3  # an announce interval: records leave as their peers stop or fall silent
            raise Full(f"this tracker holds {self.records} records, its most, and {sender} holds as many as anyone", wait)
        holder = heaviest[0]
        key = next(iter(self._by_sender[holder]))
        self.crowded_out += 1
        await self.drop(next(iter(self._joined[key])), key)

    def _stopped(self, now: float, cid: str, key: PeerKey) -> None:
        """Remember that ``key`` left ``cid`` (OutOfOrder), for a ttl and at most MAX_LEFT of them."""
        self._left.pop((cid, key), None)
        self._left[(cid, key)] = now
        while len(self._left) > MAX_LEFT:
            del self._left[next(iter(self._left))]

    def unknown_wait(self, now: float, address: str, user: str | None) -> float:
        """Seconds before the sender may have another content it announces looked up upstream, 0 if it may now.

        Each content that proves unknown upstream (a 404: no one publishes
        it) costs a token of a bucket of the sender's own, as large and as
        quick as its announce rate: announces of made-up content ids were each
        a 404, never charged, and each made the edge ask its parent, 50 a
        request (an adversarial session saw 5 800 requests a second reach the
        origin from one address).  Contents that exist cost nothing, so a
        peer holding thousands of them announces them all to a restarted edge.
        """
        return self._wait(self._tokens(now, _UNKNOWN + limit_key(address, user)))

    def unknown_found(self, now: float, address: str, user: str | None) -> None:
        """A content the sender announced proved unknown upstream: one token of its bucket (``unknown_wait``)."""
        self._take(now, _UNKNOWN + limit_key(address, user))

    def _admit(self, now: float, key: PeerKey, counted: str, leaving: bool, charge: bool = True) -> None:
        """The rate of the identity's ``limit_key`` (a token's user, or its address), then its live ids there."""
        wait = self._take(now, counted) if charge else 0.0
        if wait:
            raise Refused(f"too many announces from {counted}: at most {self.limits.announces_per_s:g} a second", wait)
        if leaving:
            return
        ids = self._ids.get(counted, ())
        limit = self.limits.ids_per_user if counted.startswith("user:") else self.limits.ids_per_address
        if key not in ids and len(ids) >= limit:
            # expiry runs every interval; at most a ttl, should a caller's clock go back
            wait = max(1.0, min(self.ttl - max(0.0, now - self._last_seen(k)) for k in ids))
            raise Refused(f"{counted} already has {limit} live peer ids; the oldest expires in {wait:.0f} s", wait)

    def _take(self, now: float, rate_key: str) -> float:
        """One announce from the key's bucket: 0, or the seconds until one is there (refusals are not charged)."""
        tokens = self._tokens(now, rate_key)
        wait = self._wait(tokens)
        self._buckets[rate_key] = (tokens - (0 if wait else 1), now)
        return wait

    def _tokens(self, now: float, rate_key: str) -> float:
        """The announces the key's bucket holds at ``now``: what it held, refilled at the rate since, up to the burst."""
        tokens, then = self._buckets.get(rate_key, (self.limits.announce_burst, now))
        return min(self.limits.announce_burst, tokens + max(0.0, now - then) * self.limits.announces_per_s)

    def _wait(self, tokens: float) -> float:
        """Seconds until a bucket holding ``tokens`` holds a whole announce: 0 if it does."""
        return 0.0 if tokens >= 1 else (1 - tokens) / self.limits.announces_per_s

    def _last_seen(self, key: PeerKey) -> float:
        """The identity's last announce here: its last swarm's.  Read for every refusal over an id limit, so O(1): a max
        over its swarms cost 0.3 s of the edge's loop for 16 ids of 20 000 contents each (an adversarial session)."""
        return self._here[next(reversed(self._joined[key]))][key][0]

    def _join(self, now: float, key: PeerKey, cid: str, counted: str, address: str) -> None:
        here = self._here.setdefault(cid, {})
        new = here.pop(key, None) is None  # re-inserted last: each swarm's table stays in order of last announce, for expiry
        here[key] = (now, address)
        joined = self._joined.setdefault(key, {})
        joined.pop(cid, None)  # re-inserted last, as in the swarm's table: _last_seen reads the last
        joined[cid] = None
        if self._counted.get(key) != counted:  # new here
            self._uncount(key)
            self._ids[counted] = (*self._ids.get(counted, ()), key)
            self._counted[key] = counted
            self._by_sender.setdefault(sender_of(counted), {})[key] = None
        if new:
            self.records += 1
            self._held.add(sender_of(counted), 1)

    def _uncount(self, key: PeerKey) -> None:
        counted = self._counted.pop(key, None)
        if counted is None:
            return
        sender = sender_of(counted)
        identities = self._by_sender[sender]
        del identities[key]
        if not identities:
            del self._by_sender[sender]
        ids = tuple(k for k in self._ids[counted] if k != key)
        if ids:
            self._ids[counted] = ids
        else:
            del self._ids[counted]

    def _leave(self, cid: str, key: PeerKey) -> None:
        """This edge forgets one membership; an identity in no swarm here any more stops counting against limits."""
        here = self._here.get(cid, {})
        if here.pop(key, None) is None:
            return
        self.departures += 1
        self.records -= 1
        self._held.add(sender_of(self._counted[key]), -1)
        if not here:
            del self._here[cid]
        joined = self._joined[key]
        joined.pop(cid, None)
        if not joined:
            del self._joined[key]
            self._uncount(key)

    async def drop(self, cid: str, key: PeerKey) -> PeerRecord | None:
        """Forget one record (``stopped``, or expired), here and in the store."""
        self._leave(cid, key)
        self._unpool(cid, key)
        return await self.store.remove(cid, key)

    def _unpool(self, cid: str, key: PeerKey) -> None:
        """A peer left a swarm: out of its pool, and an empty pool goes (the next announce reads the swarm whole)."""
        pool = self._pools.get(cid)
        if pool is not None:
            pool.discard(key)
            if not pool:
                del self._pools[cid]

    async def expire(self, now: float) -> list[tuple[str, PeerRecord]]:
        """Drop records silent for longer than the ttl, and rate state that has refilled; the dropped (cid, record).

        This edge's own tables go by this edge's announces; the store's by
        any edge's (a peer that announces to another edge of the region stays
        in the store, and comes back here with its next announce).
        """
        dropped = await self.store.expire(self.store.at(now))
        for cid, rec in dropped:
            self._unpool(cid, rec.key)
        for cid in [cid for cid, pool in self._pools.items() if now - pool.used > self.ttl]:
            del self._pools[cid]  # a swarm nobody announced to here for a ttl
        while self._left and now - next(iter(self._left.values())) > self.ttl:
            del self._left[next(iter(self._left))]
        for cid in list(self._here):
            here = self._here[cid]
            silent = []
            for key, (seen, _) in here.items():  # oldest first: stops at the first live one
                if now - seen <= self.ttl:
                    break
                silent.append(key)
            for key in silent:
                self._leave(cid, key)
        for rate_key in [k for k in self._buckets if self._tokens(now, k) >= self.limits.announce_burst]:  # full: as if new
            del self._buckets[rate_key]
        return dropped

    async def swarm(self, cid: str) -> list[PeerRecord]:
        """Every live record of ``cid`` (a full read: for status and tests, never per announce)."""
        return await self.store.swarm(cid)

    async def contents(self) -> list[str]:
        return await self.store.contents()

    async def peer_count(self, now: float | None = None) -> int:
        return (await self.store.counts(None if now is None else self.store.at(now))).identities

    def local(self, cid: str) -> set[tuple[str, str]]:
        """(address, peer id) of the peers of ``cid`` that announce to this edge: the super-seeder's live copies."""
        return {(address, key[1]) for key, (_, address) in self._here.get(cid, {}).items()}

    def local_contents(self) -> list[str]:
        return list(self._here)

    def state_size(self) -> dict[str, int]:
        """How many entries each of this edge's per-peer tables holds: bounded by the live peers (a test and /status watch it)."""
        return {
            "records": self.records,
            "identities": len(self._joined),
            "limit_keys": len(self._ids),
            "rate_keys": len(self._buckets),
            "left": len(self._left),
            "pools": len(self._pools),
        }
