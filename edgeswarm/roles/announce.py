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

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeswarm.errors import HttpError
from edgeswarm.policy.claims import DEFAULT_MAX_RATE, ClaimPolicy
from edgeswarm.policy.regions import Region, RegionMap, RegionMapError
from edgeswarm.policy.tracker import AnnounceRecord, Limits, PeerKey, PeerRecord, Refused, Tracker, address_group, owner_of, peer_url
from edgeswarm.policy.vocabulary import PEER_KINDS, SOURCE_KINDS, STAT_KEYS, STAT_KINDS, TRACKER_FIELDS, reported_share
from edgeswarm.protocol import bitfield
from edgeswarm.protocol.manifest import Manifest, is_content_id

EVENTS = {"started", "update", "completed", "stopped"}
ADDRESS_FIELDS = ("ip", "address", "url", "host")  # what a peer may not claim: the edge uses the address it sees
USAGE_KINDS = {"from_this_edge": "reported_from_edge", "from_peers": "reported_from_peers", "uploaded": "reported_uploaded"}
MAX_COUNT = 1 << 53  # byte counters beyond this are lies, and would overflow the ledger's 64-bit columns once summed
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


def _region_name(p: PeerRecord) -> str:
    return p.region.name if p.region else "unmapped"


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

    stats = doc.get("stats", {})
    if not isinstance(stats, dict) or not all(count(stats.get(k, 0)) for k in STAT_KINDS):
        raise HttpError(400, f"announce field 'stats' must map {'/'.join(STAT_KINDS)} to byte counts (0..2^53)")
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
        stats={k: stats.get(k, 0) for k in STAT_KINDS},
        usage=dict(usage),
    )


class TrackerService:
    """The tracker, the claim bounds and the per-peer report state of one edge; all per-peer state expires with the peer."""

    def __init__(
        self, regions: RegionMap | None, locality: str, interval: float, limits: Limits | None = None, max_peer_rate: float | None = None
    ):
        self.regions = regions
        self.interval = interval
        self.tracker = Tracker(locality=locality, ttl=interval * 3, limits=limits)  # type: ignore[arg-type]
        self.claims = ClaimPolicy(
            max_peer_rate or DEFAULT_MAX_RATE,
            window=interval * CLAIM_WINDOW,
            keep=self.tracker.ttl,
            ids_per_link=self.tracker.limits.ids_per_address,
        )
        self._reports: dict[tuple[PeerKey, str], tuple[str, dict[str, int]]] = {}  # (peer, cid) -> (region, bounded stats)
        self._retired: dict[str, Counter[str]] = {}  # region -> stats of peers that restarted, stopped or expired

    def region_of(self, address: str) -> Region | None:
        return self.regions.lookup(address) if self.regions else None

    def handle(self, doc: object, address: str, manifest: Manifest, user: str | None = None) -> tuple[dict, dict[str, int]]:
        """The answer for the peer, and what this announce adds to the usage ledger (bytes by ledger kind).

        The peer reports usage as deltas since its last announce that this
        edge acknowledged, so neither a restarted peer nor a restarted edge
        books anything twice, and a peer with several edges sends its P2P
        bytes to one of them only.  Claims are booked as ``ClaimPolicy``
        bounds them; what it cuts is booked as ``claim_excess``.  Every check
        comes before any change of state: a refused announce changes nothing
        (but counts against its sender's announce rate).
        """
        a = parse_announce(doc)
        piece_count = manifest.piece_count
        if a.pieces != piece_count:
            raise HttpError(400, f"content {a.cid[:12]} has {piece_count} pieces, not {a.pieces}")
        try:
            have = bitfield.decode(a.have_field, piece_count)
        except ValueError as exc:
            raise HttpError(400, f"announce field 'have': {exc}") from None
        region = self.region_of(address)
        now = time.monotonic()
        try:
            heard = AnnounceRecord(
                cid=a.cid,
                peer_id=a.peer_id,
                url=peer_url(address, a.port),
                address=address,
                region=region,
                have=have,
                piece_count=piece_count,
                uploaded=a.uploaded,
                downloaded=a.downloaded,
                event=a.event,
                user=user,
            )
            answer = self.tracker.announce(now, heard)
        except Refused as exc:
            raise HttpError(429, exc.message, {"Retry-After": str(math.ceil(exc.retry_after))}) from None
        key = (owner_of(address, user), a.peer_id)
        swarm = self.tracker.swarm(a.cid)
        cut = self.claims.bound(
            now,
            key,
            user or address_group(address),
            a.cid,
            manifest.size,
            min(manifest.size, len(have) * manifest.piece_size),
            max(1, sum(1 for p in swarm if p.key != key)),  # one more than none: a neighbour may have just left
            a.usage,
            a.stats,
        )
        self._report(a.cid, key, region, cut.stats, a.event == "stopped")
        booked = {USAGE_KINDS[k]: v for k, v in cut.usage.items() if v}
        if cut.excess:
            booked["claim_excess"] = cut.excess
        return {
            "interval": self.interval,
            "region": region.name if region else None,
            "peers": [
                {
                    "peer_id": self.tracker.label(a.cid, p),  # never the user's name: that is the edge's business
                    "url": p.url,
                    "have": bitfield.encode(p.have, piece_count),
                    "complete": p.complete,
                    "region": p.region.name if p.region else None,
                }
                for p in answer
            ],
        }, booked

    def _report(self, cid: str, peer: PeerKey, region: Region | None, stats: dict[str, int], stopped: bool) -> None:
        previous = self._reports.get((peer, cid))
        if previous is None and stopped:
            self.claims.forget(peer, cid)
            return  # a peer the tracker never knew, or forgot: ids are free, so its word adds nothing
        if previous is not None and any(stats[k] < previous[1][k] for k in STAT_KINDS):
            self._retire(peer, cid)  # the peer restarted: keep what it had, in its region's total
        self._reports[(peer, cid)] = (region.name if region else "unmapped", stats)
        if stopped:
            self._retire(peer, cid)
            self.claims.forget(peer, cid)

    def _retire(self, peer: PeerKey, cid: str) -> None:
        name, stats = self._reports.pop((peer, cid))
        self._retired.setdefault(name, Counter()).update(stats)

    def expire(self) -> int:
        """Forget silent peers, with every piece of state kept for them; how many records went."""
        now = time.monotonic()
        dropped = self.tracker.expire(now)
        for cid, rec in dropped:
            if (rec.key, cid) in self._reports:
                self._retire(rec.key, cid)
        self.claims.expire(now)
        return len(dropped)

    def status(self) -> dict:
        self.expire()  # count live peers only, whenever the expiry loop last ran
        by_region: dict[str, Counter[str]] = {name: Counter(c) for name, c in self._retired.items()}
        for name, stats in self._reports.values():
            by_region.setdefault(name, Counter()).update(stats)
        peers, memberships, users, swarms = self._counts()
        regions = {}
        for name in sorted(set(by_region) | set(memberships)):
            c = by_region.get(name, Counter())
            regions[name] = {
                "peers": peers[name],
                "swarm_memberships": memberships[name],
                "swarms": dict(sorted(swarms.get(name, {}).items())),
                **{TRACKER_FIELDS[kind]: c[STAT_KEYS[kind]] for kind in SOURCE_KINDS},
                "p2p_share": reported_share(sum(c[STAT_KEYS[k]] for k in PEER_KINDS), sum(c[k] for k in STAT_KINDS)),
            }
        return {
            "peers": self.tracker.peer_count(),
            "swarm_memberships": memberships.total(),
            "contents": len(self.tracker.contents()),
            "regions": regions,
            "users": dict(users),
            "state": self._state(),
        }

    def _counts(self) -> tuple[Counter[str], Counter[str], Counter[str], dict[str, Counter[str]]]:
        """Distinct live peers per region, (peer, content) records per region, distinct live peers per token user,
        and per region the live peers of each content: the region's swarms, as the dashboard lists them.

        A peer in five swarms is one peer and five memberships: "peers" counts
        it once everywhere, so a region's figure and the top-level one agree
        (a peer is placed by its most recent announce, should its address
        have moved between regions); "swarm_memberships" keeps the per-swarm
        tally, which is what the tracker's memory grows with.
        """
        latest: dict[PeerKey, PeerRecord] = {}
        memberships: Counter[str] = Counter()
        swarms: dict[str, Counter[str]] = {}
        for cid in self.tracker.contents():
            for key, p in self.tracker.records(cid):
                memberships[_region_name(p)] += 1
                swarms.setdefault(_region_name(p), Counter())[cid] += 1
                if key not in latest or p.last_seen > latest[key].last_seen:
                    latest[key] = p
        peers = Counter(_region_name(p) for p in latest.values())
        users = Counter(p.user or "-" for p in latest.values())  # who the tracked peers are, as their tokens say
        return peers, memberships, users, swarms

    def _state(self) -> dict[str, int]:
        """Entries of the per-peer tables: bounded by the live peers, and empty once they expire (per-address buckets aside)."""
        tracker, claims = self.tracker.state_size(), self.claims.state_size()
        return {
            "records": tracker["records"],
            "identities": tracker["identities"],
            "reports": len(self._reports),
            "claims": claims["claim_tallies"],
        }


def load_region_map(path: Path) -> RegionMap:
    """A region map file, YAML or JSON: read here so the region policy stays free of I/O and of yaml."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegionMapError(f"cannot read region map {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RegionMapError(f"region map {path} is not a text file (expected YAML or JSON in UTF-8)") from None
    except yaml.YAMLError as exc:
        hint = " (quote networks that start with ':', such as \"::1/128\")" if "found ':'" in str(exc) else ""
        raise RegionMapError(f"region map {path} is not valid YAML or JSON{hint}: {exc}") from None
    return RegionMap.from_doc(doc, str(path))
