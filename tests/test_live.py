"""Live HLS end to end: ffmpeg writes a stream into the origin's directory while players follow it through peer gateways.

Real daemons (origin, p2p edge, three peers of one region) and a real
ffmpeg.  The players are checked against the origin's disk, watched by the
test: every playlist they are handed was on disk and was outdated there for
less than one segment duration, and every segment they play is the bytes
ffmpeg wrote.  Concurrent playlist requests to the edge cost its parent one
manifest request.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from aiohttp import ClientSession, web
from conftest import DoubleServer, start_p2p_edge, start_peer, status

from edgeswarm.measure.livestream import SEGMENT_S, DiskWatch, ffmpeg_command, play_live

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (./dev installs it)"),
]

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
STREAM_S = 16
PLAYLIST = "live/live.m3u8"


@pytest.mark.alone  # freshness and segments played are timing-bound: ./dev test runs it by itself
async def test_players_follow_a_live_stream_through_their_gateways(tmp_path, nodes, http):
    published = tmp_path / "pub"
    (published / "live").mkdir(parents=True)
    origin = nodes.start("origin", "--publish", str(published))  # the default 1 s full scan: live publishing is the watcher's
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 2}", f"peer{i}", upload="2MB/s") for i in range(3)]
    ffmpeg = subprocess.Popen(ffmpeg_command(published / "live", STREAM_S, 400_000), stdin=subprocess.DEVNULL)
    disk = DiskWatch(published, PLAYLIST)
    watcher = asyncio.create_task(disk.run())
    try:
        await _concurrent_requests_cost_one_upstream_request(http, origin.url, edge.url)
        until = time.monotonic() + STREAM_S - 4
        views = await asyncio.gather(*(play_live(http, p.urls["gateway"], PLAYLIST, until) for p in peers))
    finally:
        watcher.cancel()
        await asyncio.to_thread(ffmpeg.wait, 30)

    for view in views:
        assert view.error is None, view.error
        assert len(view.segments) >= 3, "a player played at least three segments"
        for seq, (path, digest, _) in view.segments.items():
            assert digest == disk.digests[path], f"segment {seq} differs from what ffmpeg wrote"
        assert view.playlists, "the player got playlists"
        for asked, text in view.playlists:
            age = disk.age(text, asked)
            assert age is not None, "a player was handed a playlist that was never on the origin's disk"
            assert age <= SEGMENT_S, f"a playlist outdated for {age:.2f} s was handed out"

    held = (await status(http, edge.url))["events"].get("held_reload", 0)
    assert held >= len(peers), f"the gateways followed the playlist with {held} held reloads at the edge"


async def _concurrent_requests_cost_one_upstream_request(http, origin: str, edge: str) -> None:
    """Before any gateway follows the playlist (their held reloads reach the origin too): a cold edge asked 20 times
    at once asks the origin once."""
    for _ in range(100):  # the first version is published by the origin's full scan (every 1 s), then hashed
        async with http.get(f"{origin}/manifest/{PLAYLIST}") as resp:
            if resp.status == 200:
                break
        await asyncio.sleep(0.1)
    before = await status(http, origin)
    bodies = await asyncio.gather(*(_get(http, f"{edge}/{PLAYLIST}") for _ in range(20)))
    after = await status(http, origin)
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


def _playlist(sequence: int) -> str:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n#EXTINF:2.0,\nseg{sequence}.ts\n"


def _rewrite(live, sequence: int) -> None:
    """As ffmpeg does: the segment, then the playlist written aside and renamed."""
    (live / f"seg{sequence}.ts").write_bytes(bytes([sequence]) * 50_000)
    (live / "live.m3u8.tmp").write_text(_playlist(sequence))
    (live / "live.m3u8.tmp").rename(live / "live.m3u8")


async def _edge_with_playlist(tmp_path, nodes, parent: str, live, http):
    """An edge below ``parent`` holding the first version of a playlist ``live`` gets now; (edge, that version's ETag)."""
    live.mkdir()
    _rewrite(live, 1)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", parent)
    for _ in range(50):
        async with http.get(f"{edge.url}/manifest/{PLAYLIST}") as resp:
            if resp.status == 200:
                return edge, resp.headers["ETag"]
        await asyncio.sleep(0.2)
    raise AssertionError("the edge never had the playlist")


async def _reload(http, url: str, etag: str, wait: str) -> tuple[int, str, float]:
    started = time.monotonic()
    async with http.get(f"{url}/manifest/{PLAYLIST}?wait={wait}", headers={"If-None-Match": etag}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("ETag", ""), time.monotonic() - started


async def test_a_held_playlist_reload_is_answered_when_the_origin_publishes_the_next_version(tmp_path, nodes, origin, published, http):
    """LL-HLS's blocking playlist reload, as gateways follow a live playlist: ``?wait=S`` with the current ETag is held at
    the edge and the origin until the next version is published, the edge's held askers sharing one upstream reload."""
    live = published / "live"
    edge, first = await _edge_with_playlist(tmp_path, nodes, origin.url, live, http)

    before = _count(await status(http, origin.url), "manifest")
    held = [asyncio.create_task(_reload(http, edge.url, first, "20")) for _ in range(3)]
    await asyncio.sleep(1.5)
    assert not any(t.done() for t in held), "a reload of the current version was answered before the playlist changed"
    _rewrite(live, 2)
    answers = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert {(s, e != first) for s, e, _ in answers} == {(200, True)}, answers
    assert max(took for _, _, took in answers) < 10, "held reloads were answered at the end of their wait, not at the change"
    asked = _count(await status(http, origin.url), "manifest") - before
    assert asked == 1, f"3 held reloads cost the origin {asked} manifest requests"

    newest = answers[0][1]
    status_code, etag, took = await _reload(http, edge.url, newest, "1")
    assert (status_code, etag) == (304, newest) and took >= 0.9, "an unchanged playlist is a 304 after the wait"
    status_code, etag, took = await _reload(http, edge.url, first, "20")
    assert (status_code, etag) == (200, newest) and took < 5, "an asker with an older version is answered at once"
    async with http.get(f"{edge.url}/manifest/{PLAYLIST}?wait=soon", headers={"If-None-Match": newest}) as resp:
        assert resp.status == 400 and "wait" in await resp.text()

    held_at_stop = asyncio.create_task(_reload(http, edge.url, newest, "30"))
    await asyncio.sleep(0.5)
    stopped = time.monotonic()
    await asyncio.to_thread(edge.stop)
    assert time.monotonic() - stopped < 8, "a held reload kept the edge from stopping"
    await asyncio.wait_for(asyncio.gather(held_at_stop, return_exceptions=True), 5)  # answered (304) or cut off, not held


class NoHolding(DoubleServer):
    """A parent from before blocking reloads: it drops the query and answers at once; it counts manifest requests."""

    def __init__(self, upstream: str):
        self.upstream, self.manifests = upstream, 0

    async def handle(self, request: web.Request) -> web.Response:
        self.manifests += request.path.startswith("/manifest/")
        headers = {k: v for k, v in request.headers.items() if k != "Host"}
        async with ClientSession(auto_decompress=False) as s, s.get(self.upstream + request.path, headers=headers) as r:
            body = await r.read()
            kept = {k: v for k, v in r.headers.items() if k in ("ETag", "Content-Type")}
            return web.Response(status=r.status, body=body, headers=kept)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


async def test_held_reloads_behind_a_parent_that_does_not_hold_cost_it_two_requests_a_second(tmp_path, nodes, origin, published, http):
    async with NoHolding(origin.url) as parent:
        edge, etag = await _edge_with_playlist(tmp_path, nodes, parent.url, published / "live", http)
        before = parent.manifests
        answers = await asyncio.gather(*(_reload(http, edge.url, etag, "3") for _ in range(8)))
        asked = parent.manifests - before
    assert {(s, e) for s, e, _ in answers} == {(304, etag)}, answers
    assert min(took for _, _, took in answers) >= 2.9, "held for their wait"
    assert asked <= 3 / 0.5 + 2, f"8 held reloads for 3 s cost a parent that answers at once {asked} manifest requests"
