"""A memory-store edge's swarms across its own restart: written as it stops, taken up as it starts again.

The default tracker store lives in the edge's memory (policy/peerstore.py).
A restarted edge (an upgrade, a changed flag) knew no swarm, and its seeds,
which need nothing from the edge between announces, stayed unknown to it for
up to an interval (300 s by default): every viewer who pressed play meanwhile
was handed no neighbour and took everything from the edge (an adversarial
session: two viewers, one seed, 1.5 s restart).  So a stopping edge writes its
records and the region's P2P-share totals to ``FILE`` in its cache, and the
next start takes up the records still live, each placed again by the region
map it starts with, and deletes the file: an edge that is later killed starts
empty, as before, not from an old picture.  SIGKILL writes nothing; a shared
store (``--tracker-store redis://…``) loses nothing either way.

Relayed peers (``/relay/`` URLs) are not kept: their relay at this edge ended
with it, and they announce again as they reconnect.

Times: the store's are the edge's monotonic clock, which means nothing to
the next process (nor after a reboot), so the file holds wall-clock times,
converted at the instant of the save and back at the load: a record's age
across the restart is its age at the stop plus the time the edge was down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeswarm.policy.peerstore import MemoryPeerStore
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerRecord
from edgeswarm.wholefile import write_whole

log = logging.getLogger("edgeswarm.store.trackersnapshot")
FILE = "tracker.jsonl"
VERSION = 1


def save(store: MemoryPeerStore, path: Path, now: float, wall: float) -> int:
    """Write the store's live records and share totals to ``path``, a row at a time (whole in memory, 300 000 records
    took 364 MiB more at stop: a review), whole or not at all (write_whole: a full disk left a torn ``.tmp`` kept
    across restarts, an adversarial session); how many records.  ``now``: the store's time; ``wall``: the wall clock's
    at that instant, which the file's times count in."""
    written, shift = 0, wall - now

    def rows() -> Iterator[bytes]:
        nonlocal written
        yield (json.dumps({"version": VERSION, "saved": wall, "shares": store.share_totals()}) + "\n").encode()
        for cid, rec, stats in store.records():
            if now - rec.last_seen <= store.ttl and "/relay/" not in rec.url:
                written += 1
                yield (json.dumps(_row(cid, rec, stats, shift), separators=(",", ":")) + "\n").encode()

    write_whole(path, rows(), mode=0o600)  # the edge's user's only: it names peers' addresses and token users, as the ledger
    return written


def load(store: MemoryPeerStore, path: Path, now: float, wall: float, region_of: Callable[[str], Region | None]) -> int | None:
    """Take up what ``save`` wrote to ``path`` into the (empty) store, then delete it; how many records, None without a file.

    ``now``: the store's time; ``wall``: the wall clock's at that instant (the
    file's times are taken back into the store's).  A record silent for the
    store's ttl by then stays out; a line that does not read is skipped and
    counted in the log line.
    """
    try:
        with open(path, encoding="utf-8") as lines:
            header = json.loads(lines.readline() or "{}")
            if not isinstance(header, dict) or header.get("version") != VERSION:
                log.warning("%s: not a tracker snapshot this version writes; ignored", path)
                return 0
            taken = stale = bad = 0
            for line in lines:
                try:
                    cid, rec, stats = _record(json.loads(line), region_of, now - wall)
                except (ValueError, KeyError, TypeError, AttributeError):
                    bad += 1
                    continue
                if now - rec.last_seen > store.ttl:
                    stale += 1
                    continue
                # saved by a clock ahead of this one (a host booted with a wrong clock, set right since): seen now at the
                # latest, so kept a ttl at most, not the gap too (a review: a dead peer counted and handed out an hour)
                rec.last_seen, rec.first_seen = min(rec.last_seen, now), min(rec.first_seen, now)
                store.restore(cid, rec, stats)
                taken += 1
            store.restore_shares(_shares(header.get("shares")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read it (%s); the swarms are rebuilt as peers announce", path, exc)
        return 0
    finally:
        path.unlink(missing_ok=True)
    saved = header.get("saved")
    ago = f", saved {wall - saved:.0f} s ago" if isinstance(saved, (int, float)) else ""
    log.info("tracker: %d peer records taken up from %s%s (%d silent too long, %d unreadable)", taken, path.name, ago, stale, bad)
    return taken


def _row(cid: str, rec: PeerRecord, stats: tuple[int, ...] | None, shift: float) -> dict:
    """A record as a row, its times moved by ``shift`` (from the store's clock to the wall clock)."""
    return {
        "content": cid,
        "peer_id": rec.peer_id,
        "url": rec.url,
        "address": rec.address,
        "owner": rec.owner,
        "group": rec.group,
        "user": rec.user,
        "pieces": rec.piece_count,
        "have": format(rec.mask, "x"),
        "uploaded": rec.uploaded,
        "downloaded": rec.downloaded,
        "rate": rec.upload_rate,
        "seen": rec.last_seen + shift,
        "first_seen": rec.first_seen + shift,
        "stats": None if stats is None else list(stats),
    }


def _record(row: dict, region_of: Callable[[str], Region | None], shift: float) -> tuple[str, PeerRecord, tuple[int, ...] | None]:
    """A row back as (content, record, report state), its times moved by ``shift`` (from the wall clock to the store's);
    ValueError (or a KeyError, TypeError) for one that does not read."""
    pieces = _int(row["pieces"])
    mask = int(row["have"], 16)
    if pieces < 1 or mask < 0 or mask.bit_length() > 8 * ((pieces + 7) // 8):
        raise ValueError("a bitfield wider than its pieces")
    user = row["user"]
    stats = row["stats"]
    rec = PeerRecord.from_mask(
        mask,
        peer_id=_text(row["peer_id"]),
        url=_text(row["url"]),
        address=_text(row["address"]),
        region=region_of(row["address"]),
        piece_count=pieces,
    )
    rec.uploaded, rec.downloaded = _int(row["uploaded"]), _int(row["downloaded"])
    rec.upload_rate, rec.last_seen, rec.first_seen = float(row["rate"]), float(row["seen"]) + shift, float(row["first_seen"]) + shift
    rec.owner, rec.group, rec.user = _text(row["owner"]), _text(row["group"]), None if user is None else _text(user)
    return _text(row["content"]), rec, None if stats is None else tuple(_int(v) for v in stats)


def _shares(doc: object) -> dict[str, dict[str, int]]:
    if not isinstance(doc, dict):
        return {}
    return {
        str(region): {str(k): v for k, v in kinds.items() if isinstance(v, int) and not isinstance(v, bool)}
        for region, kinds in doc.items()
        if isinstance(kinds, dict)
    }


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a count")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value
