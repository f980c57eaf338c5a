"""The edge's p2p mode: ``POST /announce``, the regional tracker on the wire.

Parses and checks an announce, places the peer in its region from the address
the edge sees (never from what the peer claims), hands the request to the
sans-IO ``Tracker`` and turns its ranking into the answer.  It also keeps
what peers report having received, by source kind, so the edge can state its
region's P2P share - the figure its operator pays for.

An announce names the upload *port* only; the peer's URL is built from the
connection's address, so a peer cannot point others at someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgeswarm.errors import HttpError
from edgeswarm.policy import bitfield
from edgeswarm.policy.claims import DEFAULT_MAX_RATE, ClaimPolicy
from edgeswarm.policy.peerstore import Counts, PeerStore, StoreUnavailable
from edgeswarm.policy.regions import Region, RegionMap, RegionMapError
from edgeswarm.policy.tracker import (
    AnnounceRecord,
    Full,
    Limits,
    OutOfOrder,
    PeerRecord,
    Refused,
    Tracker,
    address_group,
    answer_peers,
    owner_of,
    peer_url,
)
from edgeswarm.policy.vocabulary import PEER_KINDS, SOURCE_KINDS, STAT_KEYS, STAT_KINDS, TRACKER_FIELDS, reported_share
from edgeswarm.protocol.manifest import Manifest, is_content_id
from edgeswarm.protocol.yamlfile import YamlFileError, read_yaml

EVENTS = {"started", "update", "completed", "stopped"}
MAX_BATCH = 100  # contents in one announce: a peer holding more sends several (64 KiB bodies hold ~200)
ADDRESS_FIELDS = ("ip", "address", "url", "host")  # what a peer may not claim: the edge uses the address it sees
USAGE_KINDS = {"from_this_edge": "reported_from_edge", "from_peers": "reported_from_peers", "uploaded": "reported_uploaded"}
log = logging.getLogger("edgeswarm.roles.announce")
MAX_COUNT = 1 << 53  # byte counters beyond this are lies, and would overflow the ledger's 64-bit columns once summed
STATUS_STORE_WAIT = 0.5  # seconds /status waits for the tracker store (a router polls it with a 1 s timeout by default)
STORE_QUIET_S = 5.0  # seconds after the store failed a /status that the next ones do not wait for it (status)
REFUSED_SHOWN_S = 60.0  # seconds /status says the store refused an announce's write (a full Redis still answers reads)
ROOM = 0.9  # of Limits.records: below it a full tracker says it has room again (not at each record that comes and goes)
CLAIM_WINDOW = 1.2  # announce intervals of link capacity a claim may draw on: one at full rate, and a late announce


@dataclass
class Announce:
    peer_id: str
    port: int
    cid: str
    pieces: int
    have_field: str
    uploaded: int
    downloaded: int
    event: str
    stats: dict[str, int]
    usage: dict[str, int] = field(default_factory=dict)  # bytes since the peer's last acknowledged announce here (USAGE_KINDS)
    stats_base: dict[str, int] | None = None  # the stats a tracker took already (with "started"): booked from there on


def parse_announce(doc: object) -> Announce:
    """Check every field; anything off is a 400 naming the field."""
    if not isinstance(doc, dict):
        raise HttpError(400, "announce must be a JSON object")
    claimed = [f for f in ADDRESS_FIELDS if f in doc]
    if claimed:
        raise HttpError(400, f"announce may not name an address ({', '.join(claimed)}): the edge uses the one it sees the peer at")

    def field(name: str, kind: type, check=lambda v: True, why: str = ""):
        value = doc.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            raise HttpError(400, f"announce field {name!r} is missing or invalid{': ' + why if why else ''}")
        return value

    def count(v: object) -> bool:
        return type(v) is int and 0 <= v <= MAX_COUNT

    def stat_counts(name: str, value: object) -> dict[str, int]:
        """``stats`` or ``stats_base``: each of STAT_KINDS a byte count (0 if missing), else a 400 naming the field."""
        if not isinstance(value, dict) or not all(count(value.get(k, 0)) for k in STAT_KINDS):
            raise HttpError(400, f"announce field {name!r} must map {'/'.join(STAT_KINDS)} to byte counts (0..2^53)")
        return {k: value.get(k, 0) for k in STAT_KINDS}

    stats = stat_counts("stats", doc.get("stats", {}))
    base = doc.get("stats_base")
    stats_base = None if base is None else stat_counts("stats_base", base)
    if not isinstance(doc.get("relay", False), bool):
        raise HttpError(400, "announce field 'relay' must be true or false")
    usage = doc.get("usage", {})
    if not isinstance(usage, dict) or not set(usage) <= set(USAGE_KINDS) or not all(count(v) for v in usage.values()):
        raise HttpError(400, f"announce field 'usage' must map some of {'/'.join(USAGE_KINDS)} to byte counts (0..2^53)")
    return Announce(
        peer_id=field("peer_id", str, lambda v: 0 < len(v) <= 64 and v.isprintable(), "1-64 printable characters"),
        port=field("port", int, lambda v: 0 < v < 65536, "a TCP port"),
        cid=field("content", str, is_content_id, "a content id"),
        pieces=field("pieces", int, lambda v: 0 <= v <= 1 << 20),
        have_field=field("have", str),
        uploaded=field("uploaded", int, lambda v: 0 <= v <= MAX_COUNT, "a byte count (0..2^53)"),
        downloaded=field("downloaded", int, lambda v: 0 <= v <= MAX_COUNT, "a byte count (0..2^53)"),
        event=field("event", str, lambda v: v in EVENTS, "one of " + ", ".join(sorted(EVENTS))),
        stats=stats,
        usage=dict(usage),
        stats_base=stats_base,
    )


def announced_content(doc: object) -> tuple[dict, str]:
    """An announce (or a batch's item) and its content id, checked first: else a 400."""
    cid = doc.get("content") if isinstance(doc, dict) else None
    if not isinstance(cid, str) or not is_content_id(cid):
        raise HttpError(400, "announce field 'content' is missing or not a content id")
    assert isinstance(doc, dict)
    return doc, cid


def batch_items(doc: dict) -> list[dict]:
    """A batch's ``contents``: 1 to MAX_BATCH objects, each content at most once, else a 400.

    A batch counts as one announce against the sender's rate, so a content
    named a hundred times was a hundred announces' work for the price of one
    (44 % of a promoted peer's core from one address, an adversarial session).
    """
    items = doc["contents"]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH or not all(isinstance(i, dict) for i in items):
        raise HttpError(400, f"announce field 'contents' must list 1 to {MAX_BATCH} objects")
    named = [i.get("content") for i in items if isinstance(i.get("content"), str)]
    if len(set(named)) < len(named):
        twice = next(c for c in named if named.count(c) > 1)
        raise HttpError(400, f"announce field 'contents' names content {twice[:64]!r} more than once")
    return items


def check_announce(doc: object, manifest: Manifest) -> tuple[Announce, int]:
    """The announce's fields (``parse_announce``) and its pieces as a mask, checked against the manifest; else a 400."""
    a = parse_announce(doc)
    piece_count = manifest.piece_count
    if a.pieces != piece_count:
        raise HttpError(400, f"content {a.cid[:12]} has {piece_count} pieces, not {a.pieces}")
    try:
        have = bitfield.decode_mask(a.have_field, piece_count)
    except ValueError as exc:
        raise HttpError(400, f"announce field 'have': {exc}") from None
    return a, have


@contextlib.contextmanager
def tracker_refusals() -> Iterator[None]:
    """A tracker's refusals as HTTP: over a limit 429 with Retry-After in whole seconds, rounded up (never before the
    limit allows); a tracker full (``Limits.records``) 503, as the edge's limit, not the sender's; after ``stopped``
    409.  The edge and a sub-tracker answer alike."""
    try:
        yield
    except (Refused, Full) as exc:
        status = 503 if isinstance(exc, Full) else 429
        raise HttpError(status, exc.message, {"Retry-After": str(math.ceil(exc.retry_after))}) from None
    except OutOfOrder as exc:
        raise HttpError(409, str(exc)) from None


class TrackerService:
    """The tracker, the claim bounds and the per-peer report state of one edge; all per-peer state expires with the peer.

    The swarms and the per-region share totals live in the tracker's store
    (peerstore.py): this edge's memory, or Redis shared by the region's
    edges.  A store that cannot be reached makes announces 503 (logged once
    per outage), never a crash; files are served as ever.
    """

    def __init__(
        self,
        regions: RegionMap | None,
        locality: str,
        interval: float,
        limits: Limits | None = None,
        max_peer_rate: float | None = None,
        store: PeerStore | None = None,
    ):
        self.regions = regions
        self.interval = interval
        self.tracker = Tracker(locality=locality, ttl=interval * 3, limits=limits, store=store)  # type: ignore[arg-type]
        self.claims = ClaimPolicy(
            max_peer_rate or DEFAULT_MAX_RATE,
            window=interval * CLAIM_WINDOW,
            keep=self.tracker.ttl,
            ids_per_link=self.tracker.limits.ids_per_address,
        )
        # the tracker's and the claims' tables: monotonic, so a step of the wall clock neither forgets every live peer
        # nor keeps dead ones for its size; a store shared by edges stamps its records by the wall clock (PeerStore.at)
        self.clock = time.monotonic
        self._down: str | None = None  # what fails (StoreUnavailable.kind) while the store is unreachable
        self.store_failures: Counter[str] = Counter()  # announces the store failed, by how ("unreachable", "refuses")
        self._refusal: tuple[str, float] | None = None  # why an announce's write last failed, and when (monotonic)
        self._full = False  # at Limits.records, until it is down to ROOM of it again: said once each way
        self._figures: asyncio.Task | None = None  # the store's figures for /status, asked and not yet answered (status)
        self._figures_asked = 0.0  # when (monotonic)
        self._store_quiet_until = 0.0  # /status does not wait for the store before this (monotonic): it failed lately
        self._figures_failed: str | None = None  # why the last /status ask of the store failed, until one answers
        # (content, complete record) -> whether the operator placed that seed (a preheat order): answers say so
        self.placed: Callable[[str, PeerRecord], bool] | None = None

    @property
    def store(self) -> PeerStore:
        return self.tracker.store

    @property
    def locality(self) -> str:
        return self.tracker.locality

    def unknown_wait(self, address: str, user: str | None) -> float:
        """``Tracker.unknown_wait`` now."""
        return self.tracker.unknown_wait(self.clock(), address, user)

    def unknown_found(self, address: str, user: str | None) -> None:
        """``Tracker.unknown_found`` now."""
        self.tracker.unknown_found(self.clock(), address, user)

    def region_of(self, address: str) -> Region | None:
        return self.regions.lookup(address) if self.regions else None

    async def handle(
        self,
        doc: object,
        address: str,
        manifest: Manifest,
        user: str | None = None,
        charge: bool = True,
        relay_url: str | None = None,
    ) -> tuple[dict, dict[str, int]]:
        """The answer for the peer, and what this announce adds to the usage ledger (bytes by ledger kind).

        The peer reports usage as deltas since its last announce that this
        edge acknowledged, so neither a restarted peer nor a restarted edge
        books anything twice, and a peer with several edges sends its P2P
        bytes to one of them only.  Claims are booked as ``ClaimPolicy``
        bounds them; what it cuts is booked as ``claim_excess``.  Every check
        comes before any change of state: a refused announce changes nothing
        (but counts against its sender's announce rate).  ``charge``: count
        it against that rate (a batch is charged once).  ``relay_url``: the
        peer cannot be reached (``"relay": true``) and is handed out at this
        URL, its relay at this edge, instead of its address and port.
        ``stats`` go to the region's P2P share from the peer's last report
        here, or its ``stats_base`` (what a tracker took already) if higher
        (peerstore.added).
        """
        a, have = check_announce(doc, manifest)
        piece_count = manifest.piece_count
        region = self.region_of(address)
        now = self.clock()
        key = (owner_of(address, user), a.peer_id)
        url = relay_url or peer_url(address, a.port)
        async with self._reaching():
            with tracker_refusals():
                heard = AnnounceRecord(
                    cid=a.cid,
                    peer_id=a.peer_id,
                    url=url,
                    address=address,
                    region=region,
                    have=have,
                    piece_count=piece_count,
                    uploaded=a.uploaded,
                    downloaded=a.downloaded,
                    event=a.event,
                    user=user,
                )
                try:
                    answer, size = await self.tracker.announce_sized(now, heard, charge)
                finally:
                    self._say_full()
            cut = self.claims.bound(
                now,
                key,
                user or address_group(address),
                a.cid,
                manifest.size,
                min(manifest.size, have.bit_count() * manifest.piece_size),
                max(1, size - 1),  # one more than none: a neighbour may have just left
                a.usage,
                a.stats,
                leaving=a.event == "stopped",
            )
            at, stopped = self.store.at(now), a.event == "stopped"
            region_name = region.name if region else "unmapped"
            await self.store.report(at, a.cid, key, region_name, cut.stats, stopped, a.stats_base)
        if a.event == "stopped":
            self.claims.forget(key, a.cid)
        booked = {USAGE_KINDS[k]: v for k, v in cut.usage.items() if v}
        if cut.excess:
            booked["claim_excess"] = cut.excess
        placed = self.placed
        # peer_id: never the user's name (that is the edge's business); then url, have, complete and region
        # seeds the operator placed say so: a crowd behind one trades its first pieces, not from the edge (picker.py, "Startup")
        return self._answer(region, answer_peers(answer, a.peer_id, None if placed is None else functools.partial(placed, a.cid))), booked

    def _answer(self, region: Region | None, peers: list[dict[str, object]]) -> dict:
        """An announce's answer: when to announce again, where the peer is, the locality and its neighbours."""
        # strict locality: peers take a subscriber as a neighbour once an answer names it
        return {"interval": self.interval, "region": region.name if region else None, "locality": self.locality, "peers": peers}

    async def stop_unknown(self, doc: object, address: str, user: str | None, charge: bool = True) -> dict:
        """A ``stopped`` for a content this edge does not know, such as a live segment it dropped as the window moved
        on: the peer's record goes, with no lookup upstream (each was a 404 at the origin, counted against the peer's
        bucket of unknown contents, and the stop refused: 400 of them in 4.5 min for 8 viewers of one live stream, an
        adversarial session).  Nothing is booked: what the content was is not known here."""
        a = parse_announce(doc)
        async with self._reaching():
            with tracker_refusals():
                await self.tracker.stop(self.clock(), a.cid, a.peer_id, address, user, charge)
        self.claims.forget((owner_of(address, user), a.peer_id), a.cid)
        return self._answer(self.region_of(address), [])

    def _answered(self, task: asyncio.Task) -> None:
        """A /status ask of the store ended: an answer ends the quiet (the next /status waits for the store again); an
        error is read here, as a /status may have given up on it (asyncio would log it as never retrieved)."""
        if task.cancelled():
            return
        exc = task.exception()
        self._figures_failed = exc.message if isinstance(exc, HttpError) else None
        if exc is None:
            self._store_quiet_until = 0.0

    async def _store_figures(self) -> tuple[Counts, dict[str, Counter[str]], int]:
        """What /status reads of the store: its counts (live peers only, whenever the expiry loop last ran), the
        share totals by region and how many contents."""
        await self.expire()
        async with self._reaching(recovers=False):
            counts = await self.store.counts(self.store.at(self.clock()))
            return counts, await self.store.shares(), len(await self.store.contents())

    @contextlib.asynccontextmanager
    async def _reaching(self, recovers: bool = True) -> AsyncIterator[None]:
        """Store calls: unreachable is a 503 with Retry-After, logged once per outage, and its end logged too.
        ``recovers``: a success here ends the outage (not a read for /status: a full Redis still serves reads)."""
        try:
            yield
        except StoreUnavailable as exc:
            if recovers:  # an announce's: a flap that a scrape of store_up misses is counted (an adversarial session)
                self.store_failures[exc.how] += 1
            if self._down is None:
                log.warning("%s: answering announces 503 until it is back (files are served as ever)", exc)
            elif exc.kind != self._down:  # said again as it changes: a blip's "connection closed" hid "wrong password"
                log.warning("%s: still answering announces 503", exc)
            self._down = exc.kind
            if recovers:
                self._refusal = (str(exc), time.monotonic())
            raise HttpError(503, f"{exc}; try again later", {"Retry-After": str(math.ceil(min(self.interval, 10)))}) from None
        if self._down is not None and recovers:
            log.warning("tracker store %s is reachable again", self.store.describe())
            self._down = None
        if recovers:
            self._refusal = None

    async def expire(self) -> int:
        """Forget silent peers, with every piece of state kept for them; how many records went."""
        now = self.clock()
        async with self._reaching(recovers=False):  # deleting: a full Redis allows it, and is not back
            dropped = await self.tracker.expire(now)
        for cid, rec in dropped:
            self.claims.forget(rec.key, cid)
        self.claims.expire(now)
        self._say_full()
        return len(dropped)

    def _say_full(self) -> None:
        """A line when the tracker fills up (Limits.records), and one when it has room again (below ROOM of it)."""
        records, most = self.tracker.records, self.tracker.limits.records
        if not self._full and records >= most:
            log.warning(
                "the tracker holds %d records, its most (--max-peer-records): a new one takes the place of one of the sender "
                "holding the most, or is refused (503) when that is the new one's sender",
                records,
            )
        elif self._full and records < ROOM * most:
            log.warning("the tracker has room again: it holds %d of at most %d records", records, most)
        else:
            return
        self._full = not self._full

    async def status(self) -> dict:
        """The tracker's figures per region; with the store down or slow (``STATUS_STORE_WAIT``), what this edge knows
        without it and the reason: a hung Redis held the edge's /status past a router's poll timeout, and the router
        took the edge out of rotation while it served every file.  While an earlier ask is unanswered, or within
        ``STORE_QUIET_S`` of one that failed, /status does not wait again (a new ask goes on behind it): a router
        polling every second (a 0.5 s timeout) found every /status 0.51 s late for as long as Redis hung, and sent the
        region's clients to another (an adversarial session; then, with the first rule only, 3 polls in 4: a review)."""
        now = time.monotonic()
        pending = self._figures
        if pending is None or pending.done():
            pending = self._figures = asyncio.ensure_future(self._store_figures())
            pending.add_done_callback(self._answered)
            self._figures_asked = now
        wait = 0.0 if now < self._store_quiet_until else max(0.0, STATUS_STORE_WAIT - (now - self._figures_asked))
        try:  # callers at once share one ask, each until STATUS_STORE_WAIT after it (a router's poll beside a dashboard's)
            async with asyncio.timeout(wait):
                counts, by_region, contents = await asyncio.shield(pending)
        except (HttpError, TimeoutError) as exc:
            self._store_quiet_until = max(self._store_quiet_until, time.monotonic() + STORE_QUIET_S)
            if isinstance(exc, HttpError):
                why = exc.message
            elif wait == 0 and self._figures_failed is not None:  # not waited for: the last ask's failure (a refusal), not a hang
                why = self._figures_failed
            else:
                why = f"tracker store {self.store.describe()}: no answer within {max(STATUS_STORE_WAIT, now - self._figures_asked):.2g} s"
            return {"store": self.store.describe(), "store_error": why, "regions": {}, **self._room(), "state": self._state(None)}
        refused = self._refused()
        peers, memberships = counts.peers, counts.memberships
        regions = {}
        for name in sorted(set(by_region) | set(memberships)):
            c = by_region.get(name, Counter())
            regions[name] = {
                "peers": peers[name],
                "swarm_memberships": memberships[name],
                "swarms": dict(sorted(counts.swarms.get(name, {}).items())),
                **{TRACKER_FIELDS[kind]: c[STAT_KEYS[kind]] for kind in SOURCE_KINDS},
                "p2p_share": reported_share(sum(c[STAT_KEYS[k]] for k in PEER_KINDS), sum(c[k] for k in STAT_KINDS)),
            }
        return {
            "store": self.store.describe(),
            "peers": counts.identities,
            "swarm_memberships": memberships.total(),
            "contents": contents,
            "regions": regions,
            "users": dict(counts.users),
            **self._room(),
            "state": self._state(counts),
            **({"store_error": refused} if refused else {}),
        }

    def _refused(self) -> str | None:
        """Why the store failed this edge's last announce, if that is recent and no announce got through since: a full
        Redis (noeviction), or a read-only one after a failover, refuses every announce's write and still answers
        /status's reads, which said the store was fine, and the metric read 1, while the P2P half was down (an
        adversarial session).  Said for ``REFUSED_SHOWN_S`` after the last refusal: announces retry well within it."""
        if self._refusal is None:
            return None
        why, when = self._refusal
        ago = time.monotonic() - when
        return (
            None
            if ago > REFUSED_SHOWN_S
            else f"{why} (an announce {ago:.0f} s ago; announces are answered 503 until it takes writes again)"
        )

    def _room(self) -> dict[str, object]:
        """The tracker's bound on records (Limits.records) and what it dropped to stay within it; the announces its
        store failed."""
        return {
            "max_records": self.tracker.limits.records,
            "crowded_out": self.tracker.crowded_out,
            "store_failures": dict(self.store_failures),
        }

    def _state(self, counts: Counts | None) -> dict[str, int]:
        """Entries of the per-peer tables: bounded by the live peers, and empty once they expire (per-address buckets aside).

        ``records`` and ``identities`` are this edge's own tables (its
        announcers); ``reports`` the store's per-peer stats.
        """
        tracker, claims = self.tracker.state_size(), self.claims.state_size()
        return {
            "records": tracker["records"],
            "identities": tracker["identities"],
            "reports": counts.reports if counts else 0,
            "claims": claims["claim_tallies"],
        }


def load_region_map(path: Path) -> RegionMap:
    """A region map file, YAML or JSON: read here so the region policy stays free of I/O and of yaml."""
    try:
        doc = read_yaml(path, "region map")
    except YamlFileError as exc:
        hint = " (quote networks that start with ':', such as \"::1/128\")" if "found ':'" in str(exc) else ""
        raise RegionMapError(f"{exc}{hint}") from None
    return RegionMap.from_doc(doc, str(path))
