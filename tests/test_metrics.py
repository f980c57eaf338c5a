"""Operators' metrics: endpoint classes from routes, bounded label sets, and `promtool check metrics` on real nodes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from conftest import make_file, serve_app, start_p2p_edge, start_peer, status_count

from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import ENDPOINTS, MAX_CONTENT_SERIES, MAX_SOURCE_SERIES, OTHER, Metrics, endpoint_class
from edgeswarm.policy.regions import RegionMap
from edgeswarm.policy.routing import RoutingTable
from edgeswarm.roles.config import EdgeConfig, PeerConfig
from edgeswarm.roles.edge import Edge
from edgeswarm.roles.origin import Origin
from edgeswarm.roles.peer import Peer
from edgeswarm.roles.router import Router, RouterConfig

# every route the nodes register (edge.py, origin.py, peer.py, daemon.py), with the class it must get
ROUTES = {
    "/healthz": "healthz",
    "/metrics": "metrics",
    "/status": "status",
    "/origin-key": "key",
    "/swarm-key": "key",
    "/key/{cid}": "key",
    "/manifest/{path}": "manifest",
    "/content/{cid}": "content",
    "/piece/{cid}/{index}": "piece",
    "/have/{cid}": "have",
    "/announce": "announce",
    "/scrape": "announce",
    "/seed/{cid}": "seed",
    "/dashboard": "dashboard",
    "/dashboard/": "dashboard",
    "/dashboard/{name}": "dashboard",
    "/torrent/{path}": "torrent",
    "/magnet/{path}": "torrent",
    "/relay": "relay",
    "/relay/{rid}/{tail}": "relay",
    "/preheat": "preheat",
    "/preheat/orders": "preheat",
    "/edges": "edges",
    "/register": "register",
    "/{path}": "file",
}


def test_every_route_template_has_its_class_and_anything_else_is_other():
    for template, expected in ROUTES.items():
        assert endpoint_class(template) == expected, template
    assert {endpoint_class(t) for t in ROUTES} | {OTHER} == set(ENDPOINTS)
    for unknown in (None, "", "/nosuch", "/films/a.mp4"):  # no route, or a route no node has: never the path itself
        assert endpoint_class(unknown) == OTHER


async def test_every_route_a_node_registers_is_in_the_table(tmp_path: Path):
    """A new route must be given its class here (and in metrics._BY_FIRST_SEGMENT), not fall into "other"."""
    (tmp_path / "pub").mkdir()
    origin = Origin(tmp_path / "pub", tmp_path / "state", tmp_path / "origin.key")
    edge = Edge(EdgeConfig(cache=tmp_path / "edge", parent="http://127.0.0.1:9", timeout=5.0, p2p=True))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=("http://127.0.0.1:9",)))
    router = Router(
        RegionMap.from_doc({"regions": [{"name": "r", "isp": "i", "networks": ["10.0.0.0/8"]}]}), RoutingTable(), RouterConfig()
    )
    apps = (origin.app(), edge.app(), peer.gateway_app(), peer.upload_app(), router.app())
    templates = {r.canonical for app in apps for r in app.router.resources()}
    assert templates == set(ROUTES)  # the router's /edges and /register were "other", with 404 scans (an adversarial session)


@asynccontextmanager
async def edge_like(metrics: Metrics):
    """make_app with routes registered as the edge registers them (a specific route before the catch-all)."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = make_app(metrics)
    app.router.add_get("/piece/{cid}/{index}", ok)
    app.router.add_post("/announce", ok)
    app.router.add_get("/{path:.*}", ok)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}"


async def test_responses_and_durations_are_labelled_by_the_matched_route_never_the_path():
    metrics = Metrics("edge")
    paths = {"/piece/abc/1": "piece", "/films/a.mp4": "file", "/piece/abc": "file", "/metrics": "metrics", "/healthz": "healthz"}
    async with edge_like(metrics) as url, aiohttp.ClientSession() as s:
        for path in paths:
            async with s.get(url + path) as r:
                assert r.status == 200
        async with s.post(url + "/announce") as r:
            assert r.status == 200
        async with s.post(url + "/films/a.mp4") as r:  # no POST route: aiohttp's 405
            assert r.status == 405
        async with s.get(url + "/metrics") as r:
            text = await r.text()
    expected = {(200, e) for e in paths.values()} | {(200, "announce"), (405, OTHER)}
    assert set(metrics.responses) == expected
    assert metrics.responses[(200, "file")] == 2 and status_count(metrics, 200) == len(paths) + 2  # + announce, + the last scrape
    assert 'edgeswarm_http_responses_total{endpoint="announce",role="edge",status="200"} 1.0' in text
    assert 'edgeswarm_http_request_duration_seconds_count{endpoint="file",role="edge"} 2.0' in text
    labels = set(re.findall(r'="([^"]*)"', text))
    assert not labels & {"/films/a.mp4", "a.mp4", "abc", "/piece/abc"}, "a path in a label"
    assert "process_cpu_seconds_total" in text and "python_info{" in text


def test_per_content_and_per_source_series_are_capped_and_keep_every_byte():
    metrics = Metrics("peer")
    extra = 5
    for n in range(MAX_CONTENT_SERIES + extra):
        metrics.count_content("sent", f"cid{n}", "peer", 10)
    metrics.count_content("sent", "cid0", "peer", 1)  # a known id keeps its own series
    ids = {cid for _, cid, _ in metrics.content}
    assert len(ids) == MAX_CONTENT_SERIES + 1 and OTHER in ids
    assert metrics.content[("sent", OTHER, "peer")] == 10 * extra and metrics.content[("sent", "cid0", "peer")] == 11
    assert sum(metrics.content.values()) == 10 * (MAX_CONTENT_SERIES + extra) + 1
    metrics.forget_content("cid1")  # dropped from the store: its series go, and a newcomer gets its place (a live stream's
    metrics.count_content("sent", "new", "peer", 7)  # segments took all 256 places within ten minutes: a soak session)
    assert ("sent", "cid1", "peer") not in metrics.content and metrics.content[("sent", "new", "peer")] == 7
    for n in range(MAX_SOURCE_SERIES + extra):
        metrics.count_received("peer", f"http://10.0.0.{n}:1", 3)
    assert len(metrics.received) == MAX_SOURCE_SERIES + 1 and metrics.received[("peer", OTHER)] == 3 * extra


def test_a_total_read_from_the_node_is_a_counter_and_a_level_a_gauge():
    """Both say their bare name in /status; /metrics types them, so that rate() of a total means something."""
    metrics = Metrics("origin")
    metrics.counter("hashed_bytes", "Bytes hashed since start", lambda: 3.0)
    metrics.gauge("published_files", "Files published", lambda: 2.0)
    text = metrics.prometheus().decode()
    assert "# TYPE edgeswarm_hashed_bytes_total counter\nedgeswarm_hashed_bytes_total 3.0" in text
    assert "# TYPE edgeswarm_published_files gauge\nedgeswarm_published_files 2.0" in text
    status = metrics.status()
    assert (status["hashed_bytes"], status["published_files"]) == (3.0, 2.0)


async def test_an_edges_and_a_peers_metrics_count_the_writes_their_cache_refused(tmp_path: Path):
    """A seeder whose disk was full said so in its /status only (cache_error): its /metrics had nothing to alert on (an
    adversarial session).  Both roles export the piece store's count."""
    edge = Edge(EdgeConfig(cache=tmp_path / "edge", parent="http://127.0.0.1:9", timeout=5.0))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=("http://127.0.0.1:9",)))
    for node in (edge, peer):
        assert "\nedgeswarm_cache_write_failures_total 0.0\n" in node.metrics.prometheus().decode()  # no store open yet
        node.pinned.store = SimpleNamespace(write_failures=3, used_bytes=0)  # type: ignore[assignment]
        assert "\nedgeswarm_cache_write_failures_total 3.0\n" in node.metrics.prometheus().decode(), node.metrics.role
        assert node.metrics.status()["cache_write_failures"] == 3


REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
PIECE = 256 * 1024
PIECES = 7


def promtool_check(text: str) -> None:
    done = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-4000:]


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus; ./dev test installs it)")
async def test_promtool_accepts_every_nodes_metrics_after_traffic(tmp_path: Path, nodes, origin, published, http):
    data = make_file(published / "films" / "f.bin", (PIECES - 1) * PIECE + 1000)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions, "--announce-interval", "1")
    async with http.get(edge.url + "/films/f.bin") as r:  # a cold read: misses, then hits below
        assert r.status == 200 and await r.read() == data
    async with http.get(edge.url + "/films/f.bin", headers={"Range": "bytes=0-99"}) as r:
        assert r.status == 206
    async with http.get(edge.url + "/manifest/films/f.bin") as r:
        cid = (await r.json())["id"]
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "p")
    async with http.get(peer.urls["gateway"] + "/films/f.bin") as r:  # the peer announces what it fetches
        assert r.status == 200 and await r.read() == data
    deadline = time.monotonic() + 20
    while 'endpoint="announce"' not in (edge_text := await scrape(http, edge.url)):
        assert time.monotonic() < deadline, "the peer never announced"
        await asyncio.sleep(0.2)
    edge_text = await scrape(http, edge.url)  # a scrape counts after it is answered: this one shows the last

    texts = {"origin": await scrape(http, origin.url), "edge": edge_text, "peer": await scrape(http, peer.urls["gateway"])}
    for text in texts.values():
        promtool_check(text)
        assert "process_resident_memory_bytes" in text and "python_info{" in text
        assert "edgeswarm_http_request_duration_seconds_bucket{" in text
        # promtool lets `_Bps` pass: Prometheus's names are lower-case snake_case, in base units (bytes_per_second)
        assert [n for n in re.findall(r"^# TYPE (\S+) ", text, re.M) if not re.fullmatch(r"[a-z_][a-z0-9_]*", n)] == []
        labels = set(re.findall(r'="([^"]*)"', text))
        assert not [v for v in labels if "f.bin" in v], "a path in a label"
    for endpoint in ("file", "manifest", "announce", "metrics"):
        assert f'edgeswarm_http_request_duration_seconds_count{{endpoint="{endpoint}",role="edge"}}' in edge_text, endpoint
    assert 'edgeswarm_http_responses_total{endpoint="piece",role="origin",status="200"}' in texts["origin"]
    assert "# TYPE edgeswarm_hashed_bytes_total counter" in texts["origin"]  # a total since start: rate() of it is meaningful
    assert "# TYPE edgeswarm_upload_limit_bytes_per_second gauge" in texts["peer"]
    hits = float(re.search(r'edgeswarm_cache_lookups_total\{result="hit",role="edge"\} (\S+)', edge_text)[1])
    misses = float(re.search(r'edgeswarm_cache_lookups_total\{result="miss",role="edge"\} (\S+)', edge_text)[1])
    assert misses == PIECES and hits >= PIECES + 1, (misses, hits)  # each piece fetched once; the range and the peer read held ones
    assert re.search(r'edgeswarm_region_peers\{region="east"\} 1\.0', edge_text)
    assert re.search(r'edgeswarm_edge_region_sent_bytes_total\{endpoint="file",region="unmapped"\} [1-9]', edge_text)
    regional = [line for line in edge_text.splitlines() if "region=" in line]
    assert regional and not [line for line in regional if cid in line], "a content id in a per-region metric"


def test_uptime_runs_on_the_monotonic_clock_whatever_the_wall_clock_does(monkeypatch):
    """A wall clock stepped back an hour (NTP, a VM restored) made /status's uptime -3590 s, and the dashboards took it
    for a restart and wiped their charts (an adversarial session)."""
    m = Metrics("edge")
    wall = time.time()
    monkeypatch.setattr(time, "time", lambda: wall - 3600)
    assert 0 <= m.status()["uptime_s"] < 60
    assert m.status()["started"] == m.started  # still Unix time: a merge of workers' tells a restart by it
