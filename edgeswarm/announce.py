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

import time
from collections import Counter
from dataclasses import dataclass, field

from edgeswarm import bitfield
from edgeswarm.httpspec import HttpError
from edgeswarm.manifest import is_content_id
from edgeswarm.regions import Region, RegionMap
from edgeswarm.tracker import Tracker, peer_url

EVENTS = {"started", "update", "completed", "stopped"}
STAT_KINDS = ("edge", "peer_same_region", "peer_other_region")
ADDRESS_FIELDS = ("ip", "address", "url", "host")  # what a peer may not claim: the edge uses the address it sees
USAGE_KINDS = {"from_this_edge": "reported_from_edge", "from_peers": "reported_from_peers", "uploaded": "reported_uploaded"}
MAX_COUNT = 1 << 53  # byte counters beyond this are lies, and would overflow the ledger's 64-bit columns once summed


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
    def __init__(self, regions: RegionMap | None, locality: str, interval: float):
        self.regions = regions
        self.interval = interval
        self.tracker = Tracker(locality=locality, ttl=interval * 3)  # type: ignore[arg-type]
        self._reports: dict[tuple[str, str], tuple[str, dict[str, int]]] = {}  # (peer, cid) -> (region, stats)
        self._retired: dict[str, Counter[str]] = {}  # region -> stats of peers that restarted

    def region_of(self, address: str) -> Region | None:
        return self.regions.lookup(address) if self.regions else None

    def handle(self, doc: object, address: str, piece_count: int, user: str | None = None) -> tuple[dict, dict[str, int]]:
        """The answer for the peer, and what this announce adds to the usage ledger (bytes by ledger kind).

        The peer reports usage as deltas since its last announce that this
        edge acknowledged, so neither a restarted peer nor a restarted edge
        books anything twice, and a peer with several edges sends its P2P
        bytes to one of them only.  Every check comes before any change of
        state: a refused announce changes nothing.
        """
        a = parse_announce(doc)
        if a.pieces != piece_count:
            raise HttpError(400, f"content {a.cid[:12]} has {piece_count} pieces, not {a.pieces}")
        try:
            have = bitfield.decode(a.have_field, piece_count)
        except ValueError as exc:
            raise HttpError(400, f"announce field 'have': {exc}") from None
        key = f"{user}/{a.peer_id}" if user else a.peer_id  # one user cannot squat another's peer id
        self._check_address(a, key, address, user)
        region = self.region_of(address)
        answer = self.tracker.announce(
            time.monotonic(),
            a.cid,
            key,
            peer_url(address, a.port),
            address,
            region,
            have,
            piece_count,
            a.uploaded,
            a.downloaded,
            a.event,
            user,
        )
        self._report(a, key, region)
        return {
            "interval": self.interval,
            "region": region.name if region else None,
            "peers": [
                {
                    "peer_id": p.peer_id[len(p.user) + 1 :] if p.user else p.peer_id,  # not the user's name: that is the edge's business
                    "url": p.url,
                    "have": bitfield.encode(p.have, piece_count),
                    "complete": p.complete,
                    "region": p.region.name if p.region else None,
                }
                for p in answer
            ],
        }, {USAGE_KINDS[k]: v for k, v in a.usage.items() if v}

    def _check_address(self, a: Announce, key: str, address: str, user: str | None) -> None:
        """Without tokens a live peer id stays at its address: nobody takes over another peer's place in the swarm."""
        rec = next((p for p in self.tracker.swarm(a.cid) if p.peer_id == key), None)
        if rec is not None and rec.address != address and user is None:
            wait = max(0.0, self.tracker.ttl - (time.monotonic() - rec.last_seen))
            raise HttpError(409, f"peer id {a.peer_id} is announced from another address; it expires in {wait:.0f} s")

    def _report(self, a: Announce, peer_key: str, region: Region | None) -> None:
        name = region.name if region else "unmapped"
        key = (peer_key, a.cid)
        previous = self._reports.get(key)
        if previous is not None and any(a.stats[k] < previous[1][k] for k in STAT_KINDS):
            self._retired.setdefault(previous[0], Counter()).update(previous[1])  # the peer restarted: keep what it had
        self._reports[key] = (name, a.stats)

    def expire(self) -> int:
        return self.tracker.expire(time.monotonic())

    def status(self) -> dict:
        by_region: dict[str, Counter[str]] = {name: Counter(c) for name, c in self._retired.items()}
        for name, stats in self._reports.values():
            by_region.setdefault(name, Counter()).update(stats)
        peers: Counter[str] = Counter()
        users: Counter[str] = Counter()  # who the tracked peers are, as their tokens say
        for cid in self.tracker.contents():
            for p in self.tracker.swarm(cid):
                peers[p.region.name if p.region else "unmapped"] += 1
                users[p.user or "-"] += 1
        regions = {}
        for name in sorted(set(by_region) | set(peers)):
            c = by_region.get(name, Counter())
            peer_bytes = c["peer_same_region"] + c["peer_other_region"]
            total = peer_bytes + c["edge"]
            regions[name] = {
                "peers": peers[name],
                "bytes_from_edge": c["edge"],
                "bytes_from_peers_same_region": c["peer_same_region"],
                "bytes_from_peers_other_region": c["peer_other_region"],
                "p2p_share": round(peer_bytes / total, 4) if total else None,
            }
        return {"peers": self.tracker.peer_count(), "contents": len(self.tracker.contents()), "regions": regions, "users": dict(users)}
