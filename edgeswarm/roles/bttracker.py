"""BitTorrent HTTP announces (BEP 3, compact answers of BEP 23 and BEP 7) on the edge's ``GET /announce``.

The same sans-IO ``Tracker`` ranks the swarm, with the same locality: the
client's region is the one of the address the edge sees, and under
``strict`` a client is never handed a peer of another region.  BitTorrent
clients get only BitTorrent clients (a swarm per info hash, apart from the
edgeswarm swarms keyed by content id): edgeswarm peers speak HTTP, not the
peer wire protocol.  A client's ``ip`` parameter is ignored for the same
reason as an edgeswarm announce's address fields.  Answers are bencoded by
libtorrent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgeswarm.policy.tracker import PeerRecord
from edgeswarm.protocol.torrent import encode
from edgeswarm.protocol.units import ascii_decimal

EVENTS = {"": "update", "started": "started", "completed": "completed", "stopped": "stopped", "paused": "update"}  # BEP 3, BEP 21
MAX_COUNT = 1 << 62
# seconds: libtorrent (so qBittorrent, Deluge) announces no more often than this, whatever interval a tracker asks for
CLIENT_MIN_INTERVAL = 300.0
MAX_SCRAPE = 64  # info hashes one scrape may ask about (BEP 48)


def ttl(interval: float) -> float:
    """How long a BitTorrent client is kept after its last announce: three of the intervals it keeps.  The peers'
    ttl (three ``--announce-interval``) dropped libtorrent clients that were still downloading, under an interval
    below 100 s (an adversarial session)."""
    return 3 * max(interval, CLIENT_MIN_INTERVAL)


@dataclass(frozen=True)
class BtAnnounce:
    info_hash: bytes  # 20 bytes: a v1 hash, or a v2 hash cut to 20 (BEP 52)
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str  # the Tracker's vocabulary: started, update, completed, stopped
    numwant: int


def _params(query: str) -> dict[str, list[str]]:
    """A query string's parameters, their values' bytes as latin-1 text (an info hash is 20 raw bytes)."""
    try:
        return parse_qs(query, keep_blank_values=True, strict_parsing=False, encoding="latin-1", errors="strict")
    except ValueError:
        raise ValueError("the query string is not URL-encoded") from None


def parse(query: str, max_answer: int) -> BtAnnounce:
    """A GET /announce query string; ValueError naming the parameter that is missing or wrong."""
    params = _params(query)

    def one(name: str, default: str | None = None) -> str:
        values = params.get(name)
        if not values:
            if default is None:
                raise ValueError(f"missing parameter {name!r}")
            return default
        return values[0]

    def number(name: str, low: int, high: int, default: str | None = None) -> int:
        value = ascii_decimal(one(name, default), len(str(high)))  # int() of 5 000 digits said Python's own limit
        if value is None or not low <= value <= high:
            raise ValueError(f"parameter {name!r} must be an integer {low}..{high}")
        return value

    info_hash, peer_id = one("info_hash").encode("latin-1"), one("peer_id").encode("latin-1")
    if len(info_hash) != 20:
        raise ValueError("parameter 'info_hash' must be 20 bytes")
    if len(peer_id) != 20:
        raise ValueError("parameter 'peer_id' must be 20 bytes")
    event = one("event", "")
    if event not in EVENTS:
        raise ValueError(f"parameter 'event' must be one of {', '.join(repr(e) for e in EVENTS)}")
    return BtAnnounce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=number("port", 1, 65535),
        uploaded=number("uploaded", 0, MAX_COUNT, "0"),
        downloaded=number("downloaded", 0, MAX_COUNT, "0"),
        left=number("left", 0, MAX_COUNT, "0"),
        event=EVENTS[event],
        numwant=min(number("numwant", 0, 1 << 16, str(max_answer)), max_answer),
    )


def parse_scrape(query: str) -> list[bytes]:
    """A GET /scrape query's info hashes (BEP 48); ValueError if there are none (the whole tracker is never listed: it
    names every torrent the edge keeps), more than MAX_SCRAPE, or one is not 20 bytes."""
    hashes = [h.encode("latin-1") for h in _params(query).get("info_hash", [])]
    if not hashes:
        raise ValueError("a scrape names the torrents it asks about: parameter 'info_hash'")
    if len(hashes) > MAX_SCRAPE:
        raise ValueError(f"at most {MAX_SCRAPE} info hashes a scrape")
    if any(len(h) != 20 for h in hashes):
        raise ValueError("parameter 'info_hash' must be 20 bytes")
    return hashes


def scrape_answer(counts: dict[bytes, tuple[int, int]]) -> bytes:
    """BEP 48's ``files``: ``complete`` (seeds) and ``incomplete`` (the others) of each torrent in ``counts``; the
    torrents this edge does not know are left out, as BEP 48 has it.  No ``downloaded``: completions are not counted."""
    files = {h: {b"complete": seeds, b"incomplete": others} for h, (seeds, others) in counts.items()}
    return encode({b"files": files})


def compact(records: list[PeerRecord]) -> tuple[bytes, bytes]:
    """Peers as BEP 23 (IPv4) and BEP 7 (IPv6) compact strings: address then port, network byte order."""
    v4, v6 = bytearray(), bytearray()
    for rec in records:
        port = urlsplit(rec.url).port
        try:
            ip = ipaddress.ip_address(rec.address)
        except ValueError:
            continue
        if port is None:
            continue
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        (v4 if ip.version == 4 else v6).extend(ip.packed + port.to_bytes(2, "big"))
    return bytes(v4), bytes(v6)


def answer(interval: float, records: list[PeerRecord], seeds: int, leechers: int) -> bytes:
    """A successful announce answer, compact whatever the client asked (BEP 23 lets a tracker do so)."""
    v4, v6 = compact(records)
    doc: dict[bytes, Any] = {
        b"interval": max(1, round(interval)),
        b"min interval": max(1, round(interval / 2)),
        b"complete": seeds,
        b"incomplete": leechers,
        b"peers": v4,
    }
    if v6:
        doc[b"peers6"] = v6
    return encode(doc)


def failure(reason: str, retry_in: float | None = None) -> bytes:
    """A refusal as BitTorrent clients read one: 200 with ``failure reason`` (and BEP 31's ``retry in``, minutes)."""
    doc: dict[bytes, Any] = {b"failure reason": reason.encode()}
    if retry_in is not None:
        doc[b"retry in"] = max(1, round(retry_in / 60))
    return encode(doc)
