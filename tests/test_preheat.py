"""``edgeswarm preheat`` and managed seeders with real daemons: a region's edges filled before the crowd."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest
from aiohttp import web
from conftest import curl, make_file, serve_app

from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.roles.config import EdgeConfig
from edgeswarm.roles.edge import Edge
from edgeswarm.roles.preheat import Plan, order_peers
from edgeswarm.roles.preheat import preheat as run_preheat
from edgeswarm.roles.preheatdesk import PreheatDesk

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n  - {name: west, isp: verizon, networks: [127.2.0.0/16]}\n"
PATH = "films/a.bin"


def status(node) -> dict:
    return json.loads(curl(node.url + "/status").stdout)


def preheat(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeswarm", "preheat", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def held(node, path: str = PATH) -> tuple[int, int] | None:
    """(held, pieces) of ``path`` in the edge's cache, or None when it has none of it."""
    row = next((c for c in status(node)["contents"] if c["path"].strip("/") == path), None)
    return (row["held"], row["pieces"]) if row else None


def origin_piece_answers(origin) -> int:
    return sum(n for k, row in status(origin)["responses_by_endpoint"].items() if "piece" in k for n in row.values())


@pytest.fixture
def region(nodes, tmp_path, origin, published):
    """Two edges in east, one in west, a router in front of them; a 3 MiB file the origin serves."""
    data = make_file(published / PATH, 3 * 1024 * 1024)
    edges = {
        name: nodes.start("edge", "--cache", str(tmp_path / name), "--parent", origin.url, host=host, name=name)
        for name, host in (("e1", "127.10.0.1"), ("e2", "127.10.0.2"), ("w1", "127.20.0.1"))
    }
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    args = ["--regions", str(regions), "--poll-interval", "0.5"]
    for name, node in edges.items():
        args += ["--edge", f"{node.url},{'west' if name == 'w1' else 'east'},10MB/s"]
    router = nodes.start("router", *args, name="router")
    deadline = time.monotonic() + 10
    while len(json.loads(curl(router.url + "/edges?region=east").stdout).get("edges", [])) < 2:
        assert time.monotonic() < deadline, "the router did not see the east edges up"
        time.sleep(0.2)
    while curl("-o", "/dev/null", "-w", "%{http_code}", origin.url + "/" + PATH).stdout != b"200":
        assert time.monotonic() < deadline, "origin did not publish the file"
        time.sleep(0.1)
    return {"data": data, "router": router, "origin": origin, **edges}


def test_preheat_fills_every_edge_of_the_region_and_they_then_answer_from_cache(region, tmp_path):
    e1, e2, w1, origin = region["e1"], region["e2"], region["w1"], region["origin"]
    assert held(e1) is None and held(e2) is None
    got = preheat(PATH, "--region", "east", "--router", region["router"].url)
    assert got.returncode == 0, got.stderr
    assert got.stdout.count("filled") == 2 and str(len(region["data"])) in got.stdout, got.stdout
    for edge in (e1, e2):
        have, pieces = held(edge) or (0, -1)
        assert have == pieces > 0
    assert held(w1) is None  # another region's edge is left alone
    asked = origin_piece_answers(origin)
    misses = [status(e)["cache_lookups"]["miss"] for e in (e1, e2)]
    for edge in (e1, e2):
        out = tmp_path / "out.bin"
        assert curl("-o", str(out), "-w", "%{http_code}", f"{edge.url}/{PATH}").stdout == b"200"
        assert out.read_bytes() == region["data"]
    assert [status(e)["cache_lookups"]["miss"] for e in (e1, e2)] == misses  # every piece from the cache
    assert origin_piece_answers(origin) == asked  # the origin sees nothing more
    again = preheat(PATH, "--region", "east", "--edge", e1.url, "--edge", e2.url)
    assert again.returncode == 0 and again.stdout.count("cached") == 2, again.stdout


def test_preheat_names_a_bad_region_an_unreachable_router_or_edge_and_a_missing_path(region, tmp_path):
    router = region["router"].url
    bad = preheat(PATH, "--region", "north", "--router", router)
    assert bad.returncode == 1 and "north" in bad.stderr and "east" in bad.stderr, bad.stderr
    gone = preheat(PATH, "--region", "east", "--router", "http://127.0.0.1:9")
    assert gone.returncode == 1 and "cannot reach router" in gone.stderr, gone.stderr
    dead = preheat(PATH, "--region", "east", "--edge", region["e1"].url, "--edge", "http://127.0.0.1:9")
    assert dead.returncode == 1 and "127.0.0.1:9" in dead.stderr and "unreachable" in dead.stderr, dead.stderr
    assert held(region["e1"]) is not None  # the reachable edge was filled all the same
    missing = preheat("films/none.bin", "--region", "east", "--router", router)
    assert missing.returncode == 1 and "404" in missing.stderr and "films/none.bin" in missing.stderr, missing.stderr


@pytest.mark.integration
def test_preheat_says_why_a_silent_server_failed_and_that_a_plain_web_server_is_no_edge(tmp_path):
    """A server that never answered failed "unreachable: " with no reason; a web server on the wrong port, holding a file
    of that name, was reported fetched and whole, exit 0 (an adversarial session)."""
    make_file(tmp_path / PATH, 1000)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    web_server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=web_server.serve_forever, daemon=True).start()
    try:
        hung = preheat(PATH, "--region", "east", "--edge", f"http://127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1")
        assert hung.returncode == 1 and "unreachable: TimeoutError" in hung.stderr, hung.stderr
        plain = preheat(PATH, "--region", "east", "--edge", f"http://127.0.0.1:{web_server.server_port}")
        assert plain.returncode == 1 and "not an edgeswarm edge" in plain.stderr, plain.stderr
    finally:
        web_server.shutdown()
        silent.close()


async def test_a_transfer_the_edge_cuts_is_said_as_a_cut_not_as_an_unreachable_edge_and_a_400():
    """An edge restarted, or the file published again, mid-read: "unreachable: Response payload is not completed:
    <ContentLengthError: 400, ...>", where no 400 was sent and the edge was reachable (an adversarial session)."""

    async def cut(request: web.Request) -> web.StreamResponse:
        if request.path != "/films/a.mp4":
            return web.Response(status=404)
        resp = web.StreamResponse(headers={"ETag": '"' + "a" * 64 + '"', "Content-Length": str(1 << 20)})
        await resp.prepare(request)
        await resp.write(b"x" * 65536)
        assert request.transport is not None
        request.transport.abort()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", cut)
    async with serve_app(app) as port:
        [result] = await run_preheat(Plan(["films/a.mp4"], [f"http://127.0.0.1:{port}"]))
    assert result.error is not None and result.error.startswith("the edge cut the transfer after "), result.error
    assert "of 1048576 bytes" in result.error and "400" not in result.error and "unreachable" not in result.error


def gateway_status(peer) -> dict:
    return json.loads(curl(peer.urls["gateway"] + "/status").stdout)


def wait_whole(peer, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = gateway_status(peer)
        if st["swarms"] and all(s["complete"] for s in st["swarms"]):
            return st
        assert time.monotonic() < deadline, st["swarms"]
        time.sleep(0.3)


def test_a_managed_seeder_holds_content_nobody_asked_for_and_its_region_gets_pieces_from_it(nodes, tmp_path, origin, published):
    data = make_file(published / PATH, 4 * 1024 * 1024)
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = nodes.start(
        "edge",
        *("--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p", "--regions", str(regions)),
        *("--announce-interval", "1", "--upload-limit", "1MB/s"),
        name="edge",
    )

    def peer(name: str, addr: str, *extra: str):
        return nodes.start(
            "peer",
            *("--cache", str(tmp_path / name), "--edge", edge.url, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0"),
            *("--upload-limit", "8MB/s", *extra),
            name=name,
        )

    seeder = peer("seeder", "127.1.0.1", "--seed", PATH, "--max-cache", "1MB")
    st = wait_whole(seeder)  # nobody asked: the seeder fetched it of its own accord
    assert [(s["path"].strip("/"), s["held"] == s["pieces"]) for s in st["swarms"]] == [(PATH, True)]
    time.sleep(1.5)  # an announce: the edge lists it as a seed of east
    viewer = peer("viewer", "127.1.0.50")
    out = tmp_path / "got.bin"
    got = curl("--max-time", "60", "-o", str(out), "-w", "%{http_code}", viewer.urls["gateway"] + "/" + PATH)
    assert got.stdout == b"200" and out.read_bytes() == data, got.stderr
    from_peers = gateway_status(viewer)["received_by_kind"].get("peer-same-region", 0)
    assert from_peers > 0, gateway_status(viewer)["received_by_kind"]
    assert gateway_status(seeder)["bytes_sent"].get("peer", 0) > 0, gateway_status(seeder)["bytes_sent"]
    pieces = gateway_status(seeder)["swarms"][0]["pieces"]
    assert len(list((tmp_path / "seeder").rglob("*.piece"))) == pieces  # all on disk: pinned, though over --max-cache
    # and said: a seed over the quota was taken silently, the cache over it for good (an adversarial session)
    assert "are more than --max-cache (1,000,000 bytes): they are kept whole, over the quota" in seeder.log_text()


@pytest.mark.integration
def test_bench_preheat_runs_small_and_the_preheated_crowd_takes_nothing_from_the_parent(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "edgeswarm", "bench", "preheat", "--clients", "4", "--size", "1MiB", "--json", str(out)]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert "cold" in got.stdout and "preheated" in got.stdout and "crowd time" in got.stdout, got.stdout
    cold, warm = json.loads(out.read_text())["runs"]
    assert cold["parent_bytes"] == 2 * 2**20  # each edge fetched the file once, while the crowd waited
    assert warm["parent_bytes"] == 0 and warm["preheat_parent_bytes"] == 2 * 2**20
    bad = subprocess.run([*cmd[:5], "--parent-rate", "garbage"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "argument --parent-rate: cannot read rate 'garbage'" in bad.stderr, bad.stderr  # before anything


@pytest.mark.integration
def test_bench_preheat_peers_runs_small_with_the_chosen_volunteers_seeding_before_the_crowd(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "edgeswarm", "bench", "preheat", "--peers", "50%", "--volunteers", "2", "--clients", "3"]
    got = subprocess.run([*cmd, "--size", "1MiB", "--json", str(out)], capture_output=True, text=True, timeout=180)
    assert got.returncode == 0, got.stderr
    assert "flash crowd of peers" in got.stdout and "edge egress during the crowd" in got.stdout, got.stdout
    doc = json.loads(out.read_text())
    cold, warm = doc["runs"]
    assert doc["setup"]["share"] == 0.5 and cold["seeders"] == 0 and warm["seeders"] == 1  # half of two volunteers
    assert warm["preheat_s"] > 0 and warm["preheat_edge_bytes"] >= 2**20  # the chosen volunteer's copy came through the edge
    assert cold["edge_bytes"] > 0 and cold["crowd_s"] > 0 and warm["crowd_s"] > 0
    assert cold["crowd_got"]["volunteers"] == 0  # cold, the volunteers held nothing to give
    for run in (cold, warm):  # three gateways each read the whole file once, and every byte came from somewhere
        assert sum(run["crowd_got"].values()) >= 3 * 2**20


async def test_peer_orders_to_an_edge_without_p2p_say_so_once():
    """Such an edge has no POST /preheat, and its file route answers 405: this said '405 405: Method Not Allowed'."""

    async def file(_: web.Request) -> web.Response:
        return web.Response(text="a file")

    app = make_app(Metrics("edge"))
    app.router.add_get("/{tail:.*}", file)  # what an edge without --p2p routes: GET (and HEAD) of any path
    async with serve_app(app) as port:
        edge = f"http://127.0.0.1:{port}"
        [answer] = await order_peers(Plan(["films/a.mp4"], [edge]), "east", 0.5, 3600)
    assert answer.error == "405: this edge takes no peer orders (it does not run --p2p, or is too old for them)"


async def test_preheat_orders_the_disk_refuses_are_one_warning_until_a_save_succeeds(tmp_path, caplog):
    """As the edge's torrent hashes (a line per torrent on a full disk: an adversarial session), a line per order taken."""
    desk = PreheatDesk(Edge(EdgeConfig(cache=tmp_path / "edge", parent="http://127.0.0.1:9", timeout=5.0, p2p=True)))
    desk.path.mkdir()  # in the way: every save fails, as on a full disk
    with caplog.at_level(logging.WARNING, logger="edgeswarm.roles.preheatdesk"):
        for _ in range(3):
            desk._save()  # three orders taken
        desk.path.rmdir()
        desk._save()  # saved: the episode is over
        desk.path.unlink()
        desk.path.mkdir()
        desk._save()
    said = [r.getMessage() for r in caplog.records]
    assert said == 2 * [f"preheat orders not saved to {desk.path} (Is a directory): a restart will forget them"]


def test_a_republished_path_is_preheated_again_not_said_cached(nodes, tmp_path, origin, published):
    """The edge held the old version whole, and `preheat` said "cached", 0 B read, exit 0: it matched by path only (an
    adversarial session).  It is cached only if the version the edge gives now is the one held whole."""
    make_file(published / PATH, 1024 * 1024)
    edge = nodes.start("edge", "--cache", str(tmp_path / "e"), "--parent", origin.url, name="e")
    deadline = time.monotonic() + 20
    while (first := preheat(PATH, "--region", "east", "--edge", edge.url)).returncode != 0:
        assert time.monotonic() < deadline, first.stderr  # the origin publishes within its scan interval
        time.sleep(0.3)
    assert "filled" in first.stdout or "fetched" in first.stdout, first.stdout
    newer = make_file(published / PATH, 2 * 1024 * 1024)
    while curl(f"{origin.url}/{PATH}", "-o", "/dev/null", "-w", "%{size_download}").stdout != str(len(newer)).encode():
        assert time.monotonic() < deadline + 20, "the origin did not publish the new version"
        time.sleep(0.2)
    time.sleep(1.2)  # the edge's --revalidate (1 s): until it asks again, the version it has is the one it serves (a CI run)
    again = preheat(PATH, "--region", "east", "--edge", edge.url)
    assert again.returncode == 0 and "cached" not in again.stdout and str(len(newer)) in again.stdout, again.stdout
    assert held(edge) == (8, 8)  # the new version's pieces, whole
