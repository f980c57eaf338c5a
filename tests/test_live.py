"""Live HLS end to end: ffmpeg writes a stream into the origin's directory while players follow it through peer gateways.

Real daemons (origin, p2p edge, three peers of one region) and a real
ffmpeg, writing whole segments, or (low latency) segments and parts with the
lab's packager writing the LL-HLS playlist and players playing parts.  The
players are checked against the origin's disk, watched by the test: every
playlist they are handed was on disk and was outdated there for less than
one segment duration, and every segment or part they play is the bytes
ffmpeg wrote.  Concurrent playlist requests to the edge cost its parent one
manifest request.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time

import aiohttp
import pytest
from conftest import start_p2p_edge, start_peer, status, until

from edgeswarm.measure.livestream import SEGMENT_S, DiskWatch, LowLatencyPackager, ffmpeg_command, play_live
from edgeswarm.policy.live import RETIRE_AFTER

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (./dev installs it)"),
]

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
STREAM_S = 16
PLAYLIST = "live/live.m3u8"


@pytest.mark.alone  # freshness and segments played are timing-bound: ./dev test runs it by itself
@pytest.mark.parametrize("part_s", [None, 0.5], ids=["segments", "low-latency"])
async def test_players_follow_a_live_stream_through_their_gateways(tmp_path, nodes, http, part_s):
    published = tmp_path / "pub"
    (published / "live").mkdir(parents=True)
    origin = nodes.start("origin", "--publish", str(published))  # the default 1 s full scan: live publishing is the watcher's
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 2}", f"peer{i}", upload="2MB/s") for i in range(3)]
    ffmpeg = subprocess.Popen(ffmpeg_command(published / "live", STREAM_S, 400_000, part_s=part_s), stdin=subprocess.DEVNULL)
    disk = DiskWatch(published, PLAYLIST)
    watchers = [asyncio.create_task(disk.run())]
    if part_s is not None:
        watchers.append(asyncio.create_task(LowLatencyPackager(published / "live", SEGMENT_S, part_s, 1.5).run()))
    try:
        until = time.monotonic() + STREAM_S - 1
        views = await asyncio.gather(*(play_live(http, p.urls["gateway"], PLAYLIST, until) for p in peers))
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.to_thread(ffmpeg.wait, 30)

    for view in views:
        assert view.error is None, view.error
        assert len(view.played) >= (12 if part_s else 3), "a player played at least three segments' worth"
        for path, (digest, _, _) in view.played.items():
            assert digest == disk.digests[path], f"{path} differs from what ffmpeg wrote"
        assert all((path in disk.parts) == bool(part_s) for path in view.played), "a low-latency player plays parts, another segments"
        assert view.playlists, "the player got playlists"
        for asked, text in view.playlists:
            age = disk.age(text, asked)
            assert age is not None, "a player was handed a playlist that was never on the origin's disk"
            assert age <= SEGMENT_S, f"a playlist outdated for {age:.2f} s was handed out"

    # the peers announce segments, never the playlist's versions, which come from the edge only: each announced made
    # the edge fetch a manifest the origin still kept (27 a minute, piling up) or ask for one it had forgotten (a 404)
    regions_now = (await status(http, edge.url))["p2p"]["regions"]
    tracked = {cid for region in regions_now.values() for cid in region.get("swarms", {})}
    assert tracked, "the peers announced the segments they fetched"
    for cid in tracked:
        async with http.get(f"{edge.url}/content/{cid}") as resp:
            if resp.status == 200:
                assert not (await resp.json())["manifest"]["path"].endswith(".m3u8"), "a playlist version was announced"

    # a content a gateway dropped (a segment that left the window) gives its metric series up: they filled the cap of
    # 256 within ten minutes, every file after them counted as "other" (a soak session)
    for i, peer in enumerate(peers):
        held = {d.name for d in (tmp_path / f"peer{i}" / "content").iterdir()}
        async with http.get(f"{peer.urls['gateway']}/metrics") as resp:
            counted = set(re.findall(r'edgeswarm_content_bytes_total\{[^}]*content="([0-9a-f]{64})"', await resp.text()))
        assert counted and counted <= held, f"series of {len(counted - held)} dropped contents"

    before = await status(http, origin.url)
    await asyncio.sleep(0.6)  # past the edge's hold of the playlist's manifest
    bodies = await asyncio.gather(*(_get(http, f"{edge.url}/{PLAYLIST}") for _ in range(20)))
    after = await status(http, origin.url)
    assert len(set(bodies)) == 1, "concurrent requests were handed one version"
    asked = _count(after, "manifest") - _count(before, "manifest")
    assert asked == 1, f"20 concurrent playlist requests cost the origin {asked} manifest requests"


async def _get(http, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


def _count(st: dict, endpoint: str) -> int:
    return sum(st["responses_by_endpoint"].get(endpoint, {}).values())


async def test_a_piece_of_a_deleted_segment_is_a_404_at_the_edge_not_its_failure(tmp_path, nodes, origin, published, http):
    """The encoder deletes old segments: an edge asked for one it did not cache says 404 (gone), not 502 (its fault)."""
    (published / "seg00001.ts").write_bytes(b"x" * 300_000)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    cid = None
    for _ in range(50):
        async with http.get(f"{edge.url}/manifest/seg00001.ts") as resp:
            if resp.status == 200:
                cid = resp.headers["ETag"].strip('"')  # the content id
                break
        await asyncio.sleep(0.2)
    assert cid is not None, "the edge never had the manifest"
    (published / "seg00001.ts").unlink()
    for _ in range(50):  # until the origin's scan withdrew it
        async with http.get(f"{origin.url}/manifest/seg00001.ts") as resp:
            if resp.status == 404:
                break
        await asyncio.sleep(0.2)
    async with http.get(f"{edge.url}/piece/{cid}/0") as resp:
        assert resp.status == 404, await resp.text()
        assert "no longer published" in await resp.text()


def _segment(live, i: int, t0: int, run: int = 0) -> None:
    """Segment i of a 2-second stream (of the encoder's ``run``), dated as an encoder writing in real time would date it."""
    tmp = live / f"seg{i:05d}.ts.tmp"
    tmp.write_bytes(bytes([(i + 100 * run) % 256]) * 20_000)
    tmp.rename(live / f"seg{i:05d}.ts")
    os.utime(live / f"seg{i:05d}.ts", (t0 + 2 * i, t0 + 2 * i))


def _window(live, last: int, size: int = 3) -> None:
    """The playlist of the last ``size`` segments (ffmpeg -hls_list_size), the one before them deleted (delete_segments)."""
    first = max(0, last - size + 1)
    body = "".join(f"#EXTINF:2.0,\nseg{i:05d}.ts\n" for i in range(first, last + 1))
    tmp = live / "live.m3u8.tmp"
    tmp.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n{body}")
    tmp.rename(live / "live.m3u8")
    (live / f"seg{first - 1:05d}.ts").unlink(missing_ok=True)


async def test_a_gateway_follows_an_encoder_started_again_through_the_swarm(tmp_path, nodes, origin, published, regions, http):
    """A restarted ffmpeg names its segments from 0 again, and the last run's are still on disk (delete_threshold), so
    they never left the window: the gateway took the names as fetched ahead already, and every player got the new
    run's first 24 s from the edge, none through the swarm (an adversarial session: region P2P share 0)."""
    live = published / "live"
    live.mkdir()
    t0 = int(time.time()) - 60
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    gateway = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "viewer").urls["gateway"]

    async def names(want: str) -> bool:  # the playlist the gateway hands its player
        async with http.get(f"{gateway}/{PLAYLIST}") as resp:
            return resp.status == 200 and want in (await resp.read()).decode()

    for i in range(6):  # the first run: its player follows it
        _segment(live, i, t0)
        _window(live, i)
        await until(lambda i=i: names(f"seg{i:05d}.ts"), 10, f"the gateway's playlist naming segment {i}")
    _segment(live, 0, t0 + 30, run=1)  # the encoder starts again
    _window(live, 0)
    new = ""

    async def published_again() -> bool:  # the origin's watcher publishes what the new playlist names
        nonlocal new
        async with http.get(f"{origin.url}/manifest/live/seg00000.ts") as resp:
            new = (await resp.json())["id"] if resp.status == 200 else ""
        return bool(new)

    await until(published_again, 10, "the origin publishing the new run's segment 0")

    async def followed() -> bool:  # the player reads the playlist; the gateway fetches its newest segment ahead
        await names("#EXT-X-MEDIA-SEQUENCE:0")
        return any(s["path"] == "live/seg00000.ts" and s["id"] == new for s in (await status(http, gateway))["swarms"])

    await until(followed, 10, "the gateway following the new run's segment 0 through its swarm")
    assert await _get(http, f"{gateway}/live/seg00000.ts") == bytes([100]) * 20_000


async def test_a_viewers_stop_for_a_segment_the_edge_dropped_is_taken_without_a_lookup(tmp_path, nodes, origin, published, regions, http):
    """Each viewer's ``stopped`` for a segment the edge had dropped as the window moved on was looked up at the origin
    (a 404 each: 400 in 4.5 min for 8 viewers of one stream), counted against the viewer's bucket of unknown contents,
    and refused, so its record stayed until its ttl (an adversarial session with live HLS across a region)."""
    live = published / "live"
    live.mkdir()
    t0 = int(time.time()) - 100
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    first = ""
    for i in range(12):
        _segment(live, i, t0)
        _window(live, i)

        async def names(want: bytes = f"seg{i:05d}.ts".encode()) -> bool:
            async with http.get(f"{edge.url}/{PLAYLIST}") as resp:
                return resp.status == 200 and want in await resp.read()

        await until(names, 10, f"the edge's playlist naming segment {i}")
        assert await _get(http, f"{edge.url}/live/seg{i:05d}.ts") == bytes([i]) * 20_000
        if i == 0:
            async with http.get(f"{edge.url}/manifest/live/seg00000.ts") as resp:
                first = (await resp.json())["id"]
    assert "live/seg00000.ts" not in await _held_segments(http, edge)  # dropped: over RETIRE_AFTER behind the window
    body = {"peer_id": "viewer", "port": 9000, "content": first, "pieces": 1, "have": "gA==", "uploaded": 0, "downloaded": 0}
    connector = aiohttp.TCPConnector(local_addr=("127.1.0.5", 0))
    async with aiohttp.ClientSession(connector=connector) as s, s.post(edge.url + "/announce", json={**body, "event": "stopped"}) as r:
        assert r.status == 200 and (await r.json())["peers"] == [], await r.text()
    assert f"/content/{first}" not in origin.log_text()


async def _held_segments(http, edge) -> set[str]:
    async with http.get(edge.url + "/status", params={"contents": "all"}) as resp:
        return {c["path"] for c in (await resp.json())["contents"] if c["path"].endswith(".ts")}


async def test_an_edge_drops_the_segments_that_left_the_live_window_also_those_held_before_a_restart(
    tmp_path, nodes, origin, published, http
):
    """With the default of no --max-cache an edge kept every segment it served: 8 GB and 200 000 files a day at
    800 kbit/s (an adversarial session).  Segments over RETIRE_AFTER behind the window go, and on the first playlist
    after a restart, those an earlier run held and the window left behind."""
    live = published / "live"
    live.mkdir()
    t0 = int(time.time()) - 200

    async def play(edge, first: int, last: int) -> None:
        for i in range(first, last + 1):
            _segment(live, i, t0)
            _window(live, i)

            async def names(want: bytes = f"seg{i:05d}.ts".encode()) -> bool:  # the edge's version naming segment i
                async with http.get(f"{edge.url}/{PLAYLIST}") as resp:  # a 404 until the origin's watcher publishes it
                    return resp.status == 200 and want in await resp.read()

            await until(names, 10, f"the edge's playlist naming segment {i}")
            assert await _get(http, f"{edge.url}/live/seg{i:05d}.ts") == bytes([i % 256]) * 20_000

    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    await play(edge, 0, 24)
    held = await _held_segments(http, edge)
    assert len(held) <= 3 + RETIRE_AFTER + 1 and "live/seg00024.ts" in held, sorted(held)
    assert "live/seg00005.ts" not in held
    edge.kill()  # a restart: what it held stays on disk
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    t0 += 100  # the stream resumes 100 s later, at segment 38: all the edge held before is far behind
    for i in (38, 39):
        _segment(live, i, t0)
    await play(edge, 40, 42)
    held = await _held_segments(http, edge)
    assert held and held <= {f"live/seg{i:05d}.ts" for i in range(38, 43)}, sorted(held)
