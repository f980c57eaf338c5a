"""A memory-store edge keeps its swarms across its own restart (store/trackersnapshot.py).

The unit tests write and read a MemoryPeerStore directly; the integration
test restarts a real edge, with its defaults, between raw announces bound to
127.1.0.x source addresses (region "east"), as test_tracker_redis.py does for
the Redis store.
"""

from __future__ import annotations

import errno
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_file, status
from test_tracker_redis import PIECE, PIECES, STATS, announce, doc, handed, three_peers

from edgeswarm.policy.peerstore import MemoryPeerStore
from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerRecord
from edgeswarm.store import trackersnapshot

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
EAST, WEST = Region("east", "att"), Region("west", "att")


def record(peer_id: str, seen: float, url: str = "", have: int = 0b1010, address: str = "10.0.0.1") -> PeerRecord:
    rec = PeerRecord.from_mask(have, peer_id=peer_id, url=url or f"http://{address}:9000", address=address, region=WEST, piece_count=4)
    rec.uploaded, rec.downloaded, rec.upload_rate, rec.last_seen, rec.first_seen = 10, 20, 1.5, seen, seen - 5
    rec.owner, rec.group = address, address
    return rec


async def stocked(now: float) -> MemoryPeerStore:
    store = MemoryPeerStore(ttl=90)
    for i, cid in enumerate(("a" * 64, "b" * 64)):
        for n in range(3):
            await store.put(now - 10 + n, cid, record(f"p{n}", now - 10 + n, address=f"10.0.0.{n}"), 50)
            await store.report(now, cid, (f"10.0.0.{n}", f"p{n}"), "west", {"edge": 100 * (i + 1), "peer_same_region": n}, False)
    return store


async def test_a_saved_store_is_taken_up_whole_placed_by_the_new_region_map_and_the_file_deleted(tmp_path: Path):
    now = 1_000_000.0
    store = await stocked(now)
    path = tmp_path / trackersnapshot.FILE
    assert trackersnapshot.save(store, path, now, now) == 6
    assert path.stat().st_mode & 0o777 == 0o600  # peers' addresses and token users

    again = MemoryPeerStore(ttl=90)
    assert trackersnapshot.load(again, path, now + 5, now + 5, lambda address: EAST) == 6
    assert not path.exists()  # a later crash starts empty, not from this picture
    for cid in ("a" * 64, "b" * 64):
        before, after = await store.swarm(cid), await again.swarm(cid)
        assert [r.key for r in after] == [r.key for r in before]  # the order of last announce: expiry reads it oldest first
        for b, a in zip(before, after, strict=True):
            assert (a.mask, a.uploaded, a.downloaded, a.upload_rate, a.last_seen, a.first_seen, a.url) == (
                b.mask,
                b.uploaded,
                b.downloaded,
                b.upload_rate,
                b.last_seen,
                b.first_seen,
                b.url,
            )
            assert a.region == EAST  # the map the edge starts with, not the one the record was made under
    assert await again.shares() == await store.shares()
    counts = await again.counts()
    assert counts.identities == 3 and counts.memberships == {"east": 6} and counts.reports == 6
    # a peer's next report adds only what is new since the one before the restart
    await again.report(now + 5, "a" * 64, ("10.0.0.2", "p2"), "east", {"edge": 100, "peer_same_region": 7}, False)
    assert (await again.shares())["east"] == Counter(peer_same_region=5)  # a Counter: a kind that grew by 0 is 0


async def test_ages_survive_the_restart_though_the_store_runs_on_a_monotonic_clock(tmp_path: Path, caplog):
    """A memory store's times are the edge's monotonic clock, which starts again with the machine: the file holds wall
    times, so a record is as old after the restart as it was at the stop plus the time the edge was down."""
    store = MemoryPeerStore(ttl=90)
    await store.put(1000, "a" * 64, record("old", 1000, address="10.0.0.7"), 50)  # 80 s before the stop
    await store.put(1070, "a" * 64, record("live", 1070, address="10.0.0.8"), 50)  # 10 s before
    path = tmp_path / trackersnapshot.FILE
    assert trackersnapshot.save(store, path, 1080, 1_700_000_000.0) == 2
    assert json.loads(path.read_text().splitlines()[2])["seen"] == 1_699_999_990.0  # the wall clock's time of it

    again = MemoryPeerStore(ttl=90)  # the machine rebooted: its monotonic clock reads 20, the wall clock 30 s on
    with caplog.at_level("INFO"):
        assert trackersnapshot.load(again, path, 20, 1_700_000_030.0, lambda address: EAST) == 1
    (live,) = await again.swarm("a" * 64)
    assert (live.peer_id, live.last_seen, live.first_seen) == ("live", 20 - 40, 20 - 45)  # 40 s old, as it is
    assert "saved 30 s ago (1 silent too long, 0 unreadable)" in caplog.text  # "old" is 110 s silent: past the ttl


async def test_a_file_saved_by_a_clock_ahead_of_this_one_keeps_its_records_a_ttl_at_most(tmp_path: Path):
    """Saved, then taken up with the wall clock an hour behind the one that saved it (a host booted with a wrong clock):
    a dead peer was counted and handed out for the hour too (a review).  Its records are seen now at the latest."""
    store = MemoryPeerStore(ttl=90)
    await store.put(1070, "a" * 64, record("p", 1070), 50)
    path = tmp_path / trackersnapshot.FILE
    trackersnapshot.save(store, path, 1080, 1_700_003_600.0)
    again = MemoryPeerStore(ttl=90)
    assert trackersnapshot.load(again, path, 20, 1_700_000_000.0, lambda address: EAST) == 1
    (rec,) = await again.swarm("a" * 64)
    assert rec.last_seen <= 20 and rec.first_seen <= 20
    assert [r.peer_id for _, r in await again.expire(20 + 91)] == ["p"]  # silent a ttl after the restart: gone


async def test_silent_records_relayed_peers_and_bad_lines_stay_out(tmp_path: Path, caplog):
    now = 1_000_000.0
    store = MemoryPeerStore(ttl=90)
    await store.put(now - 80, "a" * 64, record("old", now - 80), 50)
    await store.put(now, "a" * 64, record("relayed", now, url="http://edge:8080/relay/abc", address="10.0.0.7"), 50)
    await store.put(now, "a" * 64, record("live", now, address="10.0.0.8"), 50)
    path = tmp_path / trackersnapshot.FILE
    assert trackersnapshot.save(store, path, now, now) == 2  # a relay ended with the edge: its peer announces as it reconnects
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    lines += [json.dumps({**row, "have": "ff" * 9}), json.dumps({**row, "pieces": "4"}), "{not json"]
    path.write_text("\n".join(lines) + "\n")

    again = MemoryPeerStore(ttl=90)
    with caplog.at_level("INFO"):
        assert trackersnapshot.load(again, path, now + 20, now + 20, lambda address: EAST) == 1  # "old" fell silent meanwhile
    assert [r.peer_id for r in await again.swarm("a" * 64)] == ["live"]
    assert "1 peer records taken up" in caplog.text and "(1 silent too long, 3 unreadable)" in caplog.text


async def test_no_file_a_foreign_file_and_an_unreadable_one(tmp_path: Path):
    store = MemoryPeerStore(ttl=90)
    path = tmp_path / trackersnapshot.FILE
    assert trackersnapshot.load(store, path, 0.0, 0.0, lambda address: None) is None
    path.write_text("hello\n")
    assert trackersnapshot.load(store, path, 0.0, 0.0, lambda address: None) == 0 and not path.exists()
    path.write_text(json.dumps({"version": 99}) + "\n")
    assert trackersnapshot.load(store, path, 0.0, 0.0, lambda address: None) == 0 and not path.exists()
    assert await store.contents() == []


async def test_a_save_on_a_full_disk_leaves_no_file_behind(tmp_path: Path, monkeypatch):
    """The writes of a full disk fail, or its flush: a stopping edge left a torn ``tracker.jsonl.tmp`` in its cache,
    kept across restarts (an adversarial session)."""
    store = await stocked(1_000_000.0)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        trackersnapshot.save(store, tmp_path / trackersnapshot.FILE, 1_000_000.0, 1_000_000.0)
    assert raised.value.strerror == "No space left on device"  # what the edge's warning says
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
async def test_an_edge_stopped_and_started_again_hands_out_the_same_swarm_at_once(tmp_path, nodes, origin, published, regions, http):
    """An upgrade's restart, with the edge's defaults (memory store, a worker per core): a viewer who presses play
    right after it is handed the seeds at once, not after their next announce (an interval, 300 s), and the
    region's P2P share goes on from where it was."""
    make_file(published / "f.bin", PIECES * PIECE)
    cache = tmp_path / "edge"
    args = ("--cache", str(cache), "--parent", origin.url, "--p2p", "--regions", str(regions))
    edge = nodes.start("edge", *args, name="edge")
    port = edge.url.rsplit(":", 1)[1]
    cid, swarm, before = await three_peers(http, edge.url)

    edge.stop()  # SIGTERM, as systemd or an operator stops it
    assert "3 peer records written" in edge.log_text()
    edge = nodes.start("edge", *args, "--listen", f"127.0.0.1:{port}", name="edge-again")
    code, answer, _ = await announce(edge.url, "127.1.0.9", doc(cid, "newcomer", "started"))  # the first announce it takes
    assert code == 200 and handed(answer) == swarm, answer
    after = (await status(http, edge.url))["p2p"]["regions"]["east"]
    assert (after["bytes_from_edge"], after["p2p_share"], after["peers"]) == (before["bytes_from_edge"], before["p2p_share"], 4)
    code, _, _ = await announce(edge.url, "127.1.0.1", doc(cid, "p1", stats=STATS))  # the same cumulative figures again
    assert code == 200 and (await status(http, edge.url))["p2p"]["regions"]["east"]["bytes_from_edge"] == before["bytes_from_edge"]
    assert not (cache / trackersnapshot.FILE).exists()

    edge.kill()  # a crash writes nothing: the next start knows only what is announced to it
    edge = nodes.start("edge", *args, "--listen", f"127.0.0.1:{port}", name="edge-after-crash")
    code, answer, _ = await announce(edge.url, "127.1.0.9", doc(cid, "newcomer", "started"))
    assert code == 200 and handed(answer) == set(), answer
