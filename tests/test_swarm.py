"""The P2P half end to end: real peers and edges on loopback, regions as 127.x addresses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import http.server
import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import DoubleServer, complete, make_file, post, run_cli, sha, start_p2p_edge, start_peer, status, until

from edgeswarm.measure.process import ProcessGroup
from edgeswarm.policy.engine import STARTUP_BYTES
from edgeswarm.policy.vocabulary import TRACKER_FIELDS

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses

REGIONS = """\
regions:
  - {name: east, isp: att, networks: [127.1.0.0/16]}
  - {name: west, isp: verizon, networks: [127.2.0.0/16]}
"""
SIZE = 8 * 1024 * 1024  # 32 pieces of 256 KiB


def start_edge(nodes: ProcessGroup, tmp_path: Path, parent: str, regions: Path, name: str, *extra: str):
    return nodes.start(
        "edge",
        *("--cache", str(tmp_path / name), "--parent", parent, "--p2p", "--regions", str(regions)),
        *("--announce-interval", "1", *extra),
        name=name,
    )


async def wait_complete(http: aiohttp.ClientSession, peers, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        sts = [await status(http, p.urls["gateway"]) for p in peers]
        if all(s["swarms"] and all(w["complete"] for w in s["swarms"]) for s in sts):
            return sts
        assert time.monotonic() < deadline, [(s["swarms"][0]["held"] if s["swarms"] else 0) for s in sts]
        await asyncio.sleep(0.5)


async def body_sha(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200
        return sha(await resp.read())


@pytest.mark.timeout(240)  # 15 daemons to start first: on a loaded machine that alone took over 100 s
async def test_flash_crowd_two_regions_strict(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "update.img", SIZE)
    edges = {
        r: start_edge(nodes, tmp_path, origin.url, regions, f"edge-{r}", "--locality", "strict", "--upload-limit", "1MB/s")
        for r in ("east", "west")
    }
    peers = [
        start_peer(nodes, tmp_path, edges[r].url, f"127.{n}.0.{i + 1}", f"{r}{i}") for r, n in (("east", 1), ("west", 2)) for i in range(6)
    ]
    await asyncio.gather(*(post(http, p, "/update.img") for p in peers))
    sts = await wait_complete(http, peers)
    for p in peers:
        assert await body_sha(http, p.urls["gateway"] + "/update.img") == sha(data)
    assert all(s["received_by_kind"].get("peer-other-region", 0) == 0 for s in sts), "strict locality leaked"
    edge_sent = sum([(await status(http, e.url))["bytes_sent"].get("node", 0) for e in edges.values()])
    peer_bytes = sum(s["received_by_kind"].get("peer-same-region", 0) for s in sts)
    total = sum(sum(s["received_by_kind"].values()) for s in sts)
    assert peer_bytes / total >= 0.5, (peer_bytes, total)
    assert edge_sent <= 0.5 * len(peers) * SIZE
    east = (await status(http, edges["east"].url))["p2p"]["regions"]["east"]
    assert east["bytes_from_peers_other_region"] == 0 and east["p2p_share"] >= 0.5
    assert "west" not in (await status(http, edges["east"].url))["p2p"]["regions"]


class CorruptingPeer(DoubleServer):
    """A test double: announces that it holds everything, then serves flipped bytes (under a new id each time: ``fresh_ids``)."""

    def __init__(self, origin: str, addr: str, fresh_ids: bool = False):
        self.origin, self.addr, self.fresh_ids = origin, addr, fresh_ids
        self.host = addr
        self.served = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/piece/{cid}/{i}", self.piece)

    async def piece(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.get(f"{self.origin}/piece/{request.match_info['cid']}/{request.match_info['i']}") as r:
            body = bytearray(await r.read())
        body[len(body) // 2] ^= 0xFF
        self.served += 1
        return web.Response(body=bytes(body))

    async def start(self, edge: str, cid: str, pieces: int) -> None:
        await self.__aenter__()
        bits = bytearray(b"\xff" * ((pieces + 7) // 8))
        doc = {"peer_id": "evil", "port": self.port, "content": cid, "pieces": pieces, "uploaded": 10**9, "downloaded": 0}
        doc |= {"have": base64.b64encode(bits).decode(), "event": "started"}
        self.announcer = asyncio.create_task(self._announce(edge, doc))

    async def _announce(self, edge: str, doc: dict) -> None:
        connector = aiohttp.TCPConnector(local_addr=(self.addr, 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            for n in itertools.count():
                async with s.post(edge + "/announce", json=doc) as r:
                    assert r.status == 200, await r.text()
                doc["event"] = "update"
                doc["peer_id"] = f"evil{n}" if self.fresh_ids else doc["peer_id"]
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        self.announcer.cancel()
        await self.__aexit__()


async def test_corrupting_peer_is_banned_and_nobody_keeps_bad_data(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "2MB/s")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    evil = CorruptingPeer(origin.url, "127.1.0.99")
    await evil.start(edge.url, cid, SIZE // (256 * 1024))
    try:
        peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}") for i in range(3)]
        await asyncio.gather(*(post(http, p, "/f.bin") for p in peers))
        sts = await wait_complete(http, peers)
    finally:
        await evil.stop()
    assert evil.served > 0, "the double was never asked: the test proves nothing"
    banned = [s for s in sts if "127.1.0.99" in s["swarms"][0]["banned"]]  # its address
    assert banned, "nobody banned the corrupting peer"
    for p in peers:
        assert await body_sha(http, p.urls["gateway"] + "/f.bin") == sha(data)
    for i in range(3):  # and what is on disk is right too
        for piece in (tmp_path / f"p{i}" / "content" / cid).glob("*.piece"):
            index = int(piece.stem)
            assert piece.read_bytes() == data[index * 262144 : (index + 1) * 262144]


async def test_a_corrupting_peer_under_ever_new_ids_is_banned_once_by_address(tmp_path, nodes, origin, published, regions, http):
    """Issue 9: bans were per peer id, so a new id every second was banned 6-8 times per victim."""
    data = make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "2MB/s")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    evil = CorruptingPeer(origin.url, "127.1.0.99", fresh_ids=True)
    await evil.start(edge.url, cid, SIZE // (256 * 1024))
    try:
        peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}") for i in range(3)]
        await asyncio.gather(*(post(http, p, "/f.bin") for p in peers))
        sts = await wait_complete(http, peers)
    finally:
        await evil.stop()
    assert evil.served > 0, "the double was never asked: the test proves nothing"
    bans = [p.log_text().count("banned for this content") for p in peers]
    assert max(bans) == 1 and all(s["swarms"][0]["banned"] in ([], ["127.1.0.99"]) for s in sts), bans
    for p in peers:
        assert await body_sha(http, p.urls["gateway"] + "/f.bin") == sha(data)


async def test_killed_peers_do_not_stop_the_others(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "1MB/s")
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}") for i in range(6)]
    await asyncio.gather(*(post(http, p, "/f.bin") for p in peers))
    await asyncio.sleep(3)
    for p in peers[:2]:
        p.kill()
    survivors = peers[2:]
    await wait_complete(http, survivors)
    for p in survivors:
        assert await body_sha(http, p.urls["gateway"] + "/f.bin") == sha(data)


async def test_streaming_read_of_a_file_held_by_peers(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "film.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "4MB/s")
    seeds = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"seed{i}", upload="4MB/s") for i in range(3)]
    await asyncio.gather(*(post(http, p, "/film.bin") for p in seeds))
    await wait_complete(http, seeds)
    edge_before = (await status(http, edge.url))["bytes_sent"].get("node", 0)
    viewer = start_peer(nodes, tmp_path, edge.url, "127.1.0.50", "viewer")
    await asyncio.sleep(1.5)  # one announce: it knows the seeds
    proc = subprocess.run(["curl", "-sS", "--max-time", "60", viewer.urls["gateway"] + "/film.bin"], capture_output=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data  # correct bytes, in order
    st = await status(http, viewer.urls["gateway"])
    from_peers = st["received_by_kind"].get("peer-same-region", 0)
    edge_after = (await status(http, edge.url))["bytes_sent"].get("node", 0)
    assert from_peers > SIZE // 2, st["received_by_kind"]
    assert edge_after - edge_before < SIZE // 2
    # a late viewer: its start (--startup-window, 2.5 MiB by default) came from the edge, the rest from the seeds
    assert st["received_by_kind"].get("edge", 0) >= STARTUP_BYTES, st["received_by_kind"]
    patient = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "patient"), "--edge", edge.url, "--listen", "127.1.0.51:0", "--gateway", "127.0.0.1:0"),
        *("--upload-limit", "1MB/s", "--startup-window", "0"),
        name="patient",
    )
    await asyncio.sleep(1.5)
    proc = subprocess.run(["curl", "-sS", "--max-time", "60", patient.urls["gateway"] + "/film.bin"], capture_output=True, timeout=90)
    assert proc.returncode == 0 and proc.stdout == data, proc.stderr
    got = (await status(http, patient.urls["gateway"]))["received_by_kind"]
    # no window: the idle seeds send the start too, once the tracker's answer has named them; until then the edge is
    # the one source there is (a loaded CI took 1.25 MiB so: half a window), never the window's 2.5 MiB
    assert got.get("edge", 0) < STARTUP_BYTES, got
    # a bounded probe (64 KiB within one piece, as a tile or index reader sends) takes no startup window from the edge
    prober = start_peer(nodes, tmp_path, edge.url, "127.1.0.52", "prober")
    await asyncio.sleep(1.5)
    start = 20 * 256 * 1024 + 1000
    async with http.get(prober.urls["gateway"] + "/film.bin", headers={"Range": f"bytes={start}-{start + 65535}"}) as r:
        assert r.status == 206 and await r.read() == data[start : start + 65536]
    await asyncio.sleep(1.5)  # what was fetched for the read and was still on its way when it ended is in too
    got = (await status(http, prober.urls["gateway"]))["received_by_kind"]
    # its one piece, and the edge may race a late peer for a piece of the read-ahead; 10 pieces (2.5 MiB) before the
    # read's end was known
    assert got.get("edge", 0) < STARTUP_BYTES // 2, got


async def test_a_segmented_downloader_through_a_gateway_takes_the_file_from_a_complete_neighbour(
    tmp_path, nodes, origin, published, regions, http
):
    """aria2c -x8 reads eight parts of a file at once: each read looked like a player's, and whenever the one complete
    neighbour was busy with the others' pieces the edge stepped in: 42 % of a 64 MiB file came from the edge (one
    connection: its 2.5 MiB startup).  Reads of one file waiting at once past a player's two or three are a download."""
    if shutil.which("aria2c") is None:
        pytest.skip("aria2c is not installed (Debian package aria2; ./dev test installs it)")
    size = 32 << 20
    data = make_file(published / "big.img", size)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    seed = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "seed", upload="8MB/s")
    await post(http, seed, "/big.img")
    await wait_complete(http, [seed])
    downloader = start_peer(nodes, tmp_path, edge.url, "127.1.0.50", "downloader")
    await asyncio.sleep(1.5)  # one announce: it knows the seed
    out = tmp_path / "out"
    cmd = ["aria2c", "-q", "-x8", "-s8", "-k1M", "--allow-overwrite=true", "-d", str(out), "-o", "big.img"]
    proc = subprocess.run([*cmd, downloader.urls["gateway"] + "/big.img"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sha((out / "big.img").read_bytes()) == sha(data)
    got = (await status(http, downloader.urls["gateway"]))["received_by_kind"]
    assert got.get("edge", 0) < STARTUP_BYTES, got  # before: 13.5 MiB of this 32 MiB


async def test_gateway_ranges_and_restart_resume(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "p")
    gw = peer.urls["gateway"]
    async with http.get(gw + "/f.bin", headers={"Range": "bytes=1000000-1999999"}) as r:
        assert r.status == 206 and r.headers["Content-Range"] == f"bytes 1000000-1999999/{SIZE}"
        assert await r.read() == data[1000000:2000000]
        etag = r.headers["ETag"]
    async with http.head(gw + "/f.bin") as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == SIZE
    async with http.get(gw + "/f.bin", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    held_before = (await status(http, gw))["swarms"][0]["held"]
    assert 0 < held_before < SIZE // 262144, "a range must not pull the whole file"
    peer.kill()
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "p")
    gw = peer.urls["gateway"]
    edge_before = (await status(http, edge.url))["bytes_sent"].get("node", 0)
    async with http.get(gw + "/f.bin", headers={"Range": "bytes=1000000-1999999"}) as r:
        assert await r.read() == data[1000000:2000000]
    assert (await status(http, edge.url))["bytes_sent"].get("node", 0) == edge_before, "a restarted peer refetched what it held"


async def test_status_says_complete_however_the_file_came(tmp_path, nodes, origin, published, regions, http):
    """Every piece held is ``complete`` in the gateway's /status: read whole through it, POSTed, or fetched by ``edgeswarm get``."""
    data = {name: make_file(published / name, 5 * 262144 + 7) for name in ("read.bin", "posted.bin", "got.bin")}
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    got = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/got.bin", "-o", str(tmp_path / "got.out")]
    proc = subprocess.run([*got, "--cache", str(tmp_path / "p"), "--listen", "127.1.0.7:0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "p")  # on the cache `edgeswarm get` filled
    gw = peer.urls["gateway"]

    async def swarm_of(path: str) -> dict:
        return next(s for s in (await status(http, gw))["swarms"] if s["path"] == path)

    async with http.get(gw + "/read.bin", headers={"Range": "bytes=0-0"}) as r:
        assert r.status == 206
    assert not (await swarm_of("read.bin"))["complete"]  # one piece of six is not the file
    async with http.get(gw + "/read.bin") as r:  # a player reading it all: no POST, no whole-file want
        assert r.status == 200 and await r.read() == data["read.bin"]
    st = await swarm_of("read.bin")
    assert st["complete"] and st["held"] == st["pieces"], st
    await post(http, peer, "/posted.bin")
    await wait_complete(http, [peer])
    async with http.get(gw + "/got.bin", headers={"Range": "bytes=0-0"}) as r:  # its swarm starts on a full store
        assert r.status == 206
    assert all(s["complete"] and s["held"] == s["pieces"] for s in (await status(http, gw))["swarms"])
    assert {s["path"] for s in (await status(http, gw))["swarms"]} == set(data)


async def test_edge_restart_rebuilds_the_swarm(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}", upload="8MB/s") for i in range(3)]
    await asyncio.gather(*(post(http, p, "/f.bin") for p in peers))
    await wait_complete(http, peers)
    port = edge.url.rsplit(":", 1)[1]
    edge.kill()
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--listen", f"127.0.0.1:{port}")
    deadline = time.monotonic() + 3  # one interval (1 s) and slack
    while (await status(http, edge.url))["p2p"]["peers"] < 3:
        assert time.monotonic() < deadline, "peers did not re-announce to the restarted edge"
        await asyncio.sleep(0.2)


async def test_announce_bad_input(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    good = {"peer_id": "x", "port": 1234, "content": cid, "pieces": 32, "have": base64.b64encode(bytes(4)).decode()}
    good |= {"uploaded": 0, "downloaded": 0, "event": "started"}
    for bad, word in [
        ({"port": 0}, "port"),
        ({"have": "%%%"}, "have"),
        ({"have": base64.b64encode(bytes(9)).decode()}, "have"),
        ({"pieces": 31}, "pieces"),
        ({"event": "party"}, "event"),
        ({"content": "0" * 64}, "content"),
    ]:
        async with http.post(edge.url + "/announce", json=good | bad) as r:
            assert 400 <= r.status < 500, (bad, r.status)
            assert word in (await r.text()) or r.status == 404
    async with http.post(edge.url + "/announce", data=b"{not json") as r:
        assert r.status == 400
    async with http.post(edge.url + "/announce", data=b"x" * 200_000) as r:
        assert r.status == 413
    assert (await status(http, edge.url))["p2p"]["peers"] == 0, "a bad announce changed the swarm"


def test_get_downloads_verified_file_and_fails_clearly(tmp_path, nodes, origin, published, regions):
    data = make_file(published / "dir/app.bin", 3 * 1024 * 1024 + 17)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    out = tmp_path / "out.bin"
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/dir/app.bin", "-o", str(out), "--listen", "127.1.0.7:0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert "verified" in proc.stdout
    (published / "dir/empty.bin").write_bytes(b"")  # no piece at all: the output is still created, empty
    empty = tmp_path / "empty.out"
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/dir/empty.bin", "-o", str(empty), "--listen", "127.1.0.7:0"]
    for _ in range(50):  # the origin's next scan publishes it
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 or "no such file" not in done.stderr:
            break
        time.sleep(0.2)
    assert done.returncode == 0 and empty.read_bytes() == b"", done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "get", edge.url + "/nope.bin", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    junk = subprocess.run([sys.executable, "-m", "edgeswarm", "get", "ftp://x/y"], capture_output=True, text=True, timeout=30)
    assert junk.returncode == 2 and "not an http(s) URL" in junk.stderr
    # an output it cannot write (its "directory" is a file): said before the download (it was at the first piece, as
    # mkdir's "File exists"), nothing half-written left behind
    (tmp_path / "plain").write_text("not a directory")
    unwritable = tmp_path / "plain" / "out.bin"
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/dir/app.bin", "-o", str(unwritable), "--listen", "127.1.0.7:0"]
    stuck = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    said = f"{tmp_path / 'plain'} is not a directory"
    assert stuck.returncode == 2 and said in stuck.stderr and "Traceback" not in stuck.stderr, stuck.stderr
    assert (tmp_path / "plain").read_text() == "not a directory"


def test_a_get_whose_token_the_edge_refuses_stops_at_once_with_the_edges_reason(tmp_path, nodes, origin, published, regions):
    """It retried the edge once a second until the stall timeout (60 s) and never said why; a file smaller than the 401's
    message was reported as "sent more than 6 bytes ... refusing" (an adversarial session)."""
    make_file(published / "tiny.txt", 6)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    for token in ("abc", "\u00fc"):
        cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/tiny.txt", "-o", str(tmp_path / "t"), "--token", token]
        got = subprocess.run([*cmd, "--stall-timeout", "600"], capture_output=True, text=True, timeout=60)
        assert got.returncode == 1 and "answered 401 for piece 0 of tiny.txt: token is malformed" in got.stderr, got.stderr
        assert not (tmp_path / "t").exists()


class _EveryPathAPage(http.server.BaseHTTPRequestHandler):
    """A web application that answers every path with its page."""

    def __init__(self, *args, directory: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        body = b"<!doctype html><title>app</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (http.server.SimpleHTTPRequestHandler, "answered 404 for /origin-key: it is no edgeswarm edge nor origin"),
        (_EveryPathAPage, "/origin-key: not a PEM Ed25519 key: it is no edgeswarm edge nor origin"),
    ],
    ids=["web server", "page for every path"],
)
def test_a_get_from_a_server_that_is_no_edge_says_so_at_once(tmp_path, handler, said):
    """It said the peer was "still learning the origin key", never that the server was no edgeswarm edge, and said so
    after 10 s of retries that could change nothing (adversarial sessions): one try, then the server's answer."""
    (tmp_path / "a.txt").write_text("hi")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [sys.executable, "-m", "edgeswarm", "get", f"http://127.0.0.1:{server.server_port}/a.txt", "-o", str(tmp_path / "out")]
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert got.returncode == 1 and said in got.stderr, got.stderr
    assert (
        got.stderr.count("cannot learn the origin key") == 0
    )  # one try, said once: in the error line and "still learning" not in got.stderr, got.stderr


def needs_ipv6_loopback() -> None:
    """Skip the test where ::1 cannot be bound (a host or container without IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_a_get_listening_on_ipv6_says_it_cannot_reach_an_ipv4_edge(tmp_path):
    """It retried for 10 s, then said "Cannot connect to host 127.0.0.1:PORT ssl:default [None]" (an adversarial
    session): connections leave from the --listen address, and an IPv6 one reaches no IPv4 host."""
    needs_ipv6_loopback()
    cmd = [sys.executable, "-m", "edgeswarm", "get", "http://127.0.0.1:9/a.bin", "-o", str(tmp_path / "a"), "--listen", "[::1]:0"]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert got.returncode == 1, got.stderr
    assert "unreachable: connections leave from ::1 (the --listen address), an IPv6 one, which reaches no IPv4 host" in got.stderr
    assert got.stderr.count("cannot learn the origin key") == 0  # one try, said once: in the error line, got.stderr


def test_a_get_listening_on_every_ipv4_address_says_it_cannot_use_an_ipv6_edge(tmp_path):
    """With the default --listen 0.0.0.0 a peer reached an IPv6 edge over IPv6 and was handed out at an address
    nothing listened on: its neighbours never reached it, 0 % P2P without a word (an adversarial session).  It keeps
    to its listener's family and says so, as with an IPv6 --listen address and an IPv4 edge."""
    needs_ipv6_loopback()
    cmd = [sys.executable, "-m", "edgeswarm", "get", "http://[::1]:9/a.bin", "-o", str(tmp_path / "a"), "--listen", "0.0.0.0:0"]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert got.returncode == 1, got.stderr
    assert "this node listens on IPv4 only (--listen 0.0.0.0:PORT)" in got.stderr and "listen on [::]:PORT" in got.stderr
    assert "Traceback" not in got.stderr, got.stderr


def test_a_get_of_an_ipv6_url_listens_on_ipv6_by_default(tmp_path, nodes, origin, published):
    """`get http://[::1]:PORT/f` with the default --listen 0.0.0.0:0 refused to start, "this node listens on IPv4 only"
    (an adversarial session): the default is the wildcard of the URL's IP version."""
    needs_ipv6_loopback()
    data = make_file(published / "six.bin", SIZE)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, host="[::1]")
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/six.bin", "-o", str(tmp_path / "six.bin")]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert sha((tmp_path / "six.bin").read_bytes()) == sha(data)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_get_stopped_by_sigterm_or_sighup_leaves_nothing_behind(tmp_path, nodes, origin, published, regions, sig):
    """As Ctrl-C: exit 128 + the signal, no partial output and no temporary cache.  The default action ended the
    process at once, leaving both (a soak session: 26 MB a run under TMPDIR, and a .part no rerun reuses)."""
    make_file(published / "slow.bin", 8 * 1024 * 1024)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "1MB/s")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "out").mkdir()
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/slow.bin", "-o", str(tmp_path / "out" / "slow.bin")]
    with subprocess.Popen(cmd, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as get:
        deadline = time.monotonic() + 30
        while not list((tmp_path / "out").iterdir()):  # its partial output: the download has begun
            assert time.monotonic() < deadline and get.poll() is None, "the get never began writing"
            time.sleep(0.1)
        get.send_signal(sig)
        _, err = get.communicate(timeout=30)
    assert get.returncode == 128 + sig, err
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
    assert b"Traceback" not in err, err


def test_a_get_into_a_published_folder_is_not_published_before_it_is_whole(tmp_path, nodes, origin, published, regions):
    """`get -o` into an origin's folder (filling a mirror): its partial file, zeros where pieces had not come, was
    signed, served and hashed again at every scan (an adversarial session).  It is hidden now, as the origin skips."""
    make_file(published / "src.bin", 8 * 1024 * 1024)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "2MB/s")
    cmd = [sys.executable, "-m", "edgeswarm", "get", edge.url + "/src.bin", "-o", str(published / "copy.bin")]
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as get:
        deadline = time.monotonic() + 30
        while not list(published.glob("*copy.bin*")):  # its partial output: the download has begun
            assert time.monotonic() < deadline and get.poll() is None, "the get never began writing"
            time.sleep(0.1)
        time.sleep(1.0)  # five of the origin's scans
        partial = [p.name for p in published.glob("*copy.bin*")]
        get.send_signal(signal.SIGTERM)
        get.communicate(timeout=30)
    assert partial and all(name.startswith(".copy.bin.") and name.endswith(".part") for name in partial), partial
    assert "copy.bin" not in origin.log_text()


def test_get_writes_to_standard_output_pipes_and_links_without_replacing_them(tmp_path, nodes, origin, published, regions):
    """`-o /dev/null` (as root) replaced the device with a regular file, `-o -` wrote a file named "-", a link was
    replaced by the file, two gets of one output wrote one `.part` (the second truncated what the first had written,
    and the first renamed a corrupt file into place, "every piece verified"), and a name of 251-255 bytes failed."""
    data = make_file(published / "app.bin", 2 * 1024 * 1024 + 5)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")

    def command(output: str) -> list[str]:
        return [sys.executable, "-m", "edgeswarm", "get", edge.url + "/app.bin", "-o", output, "--listen", "127.1.0.7:0"]

    def get(output: str) -> subprocess.CompletedProcess:
        return subprocess.run(command(output), capture_output=True, timeout=60)

    out = get("-")
    assert out.returncode == 0 and out.stdout == data, out.stderr
    assert b"verified" in out.stderr and not (Path.cwd() / "-").exists()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(fifo.read_bytes)
        assert get(str(fifo)).returncode == 0
        assert read.result(timeout=60) == data
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the pipe is still a pipe"
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to(target)
    assert get(str(tmp_path / "link.bin")).returncode == 0
    assert (tmp_path / "link.bin").is_symlink() and target.read_bytes() == data
    long = tmp_path / ("x" * 251)
    assert get(str(long)).returncode == 0 and long.read_bytes() == data
    same = tmp_path / "same.bin"
    both = [subprocess.Popen(command(str(same)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=60) for p in both] == [0, 0]
    assert same.read_bytes() == data and not list(tmp_path.glob("*.part"))


class SlowTracker(DoubleServer):
    """An edge's address whose announces other than "stopped" take ``hold`` seconds to reach it (a busy edge)."""

    def __init__(self, upstream: str, hold: float):
        self.upstream, self.hold = upstream, hold

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/announce" and b'"stopped"' not in body:
            await asyncio.sleep(self.hold)  # forwarded even if the asker has gone: the edge may still be reading it
        headers = {k: v for k, v in request.headers.items() if k not in ("Host", "Content-Length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.request(request.method, self.upstream + request.raw_path, headers=headers, data=body) as r,
        ):
            got, ctype = await r.read(), r.headers.get("Content-Type", "application/octet-stream")
            keep = {k: r.headers[k] for k in ("ETag", "X-Edgeswarm-Piece") if k in r.headers}
        return web.Response(status=r.status, body=got, headers={"Content-Type": ctype, **keep})

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


async def test_a_get_that_stops_during_an_announce_is_counted_once_and_forgotten(tmp_path, nodes, origin, published, regions, http):
    """A get's last announce is answered before its "stopped" is sent.  Cut off, it reached a busy edge after the
    "stopped": the gone get stayed in the swarm for a ttl, and the region's totals ended at 0 bytes for it."""
    size = 2 * 1024 * 1024
    data = make_file(published / "app.bin", size)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)  # the default announce interval
    out = tmp_path / "app.out"
    async with SlowTracker(edge.url, hold=1.0) as slow:
        cmd = [sys.executable, "-m", "edgeswarm", "get", slow.url + "/app.bin", "-o", str(out), "--cache", str(tmp_path / "c")]
        for _ in range(50):  # the origin's scan publishes the file
            done = await asyncio.to_thread(run_cli, [*cmd, "--listen", "127.1.0.9:0"], 60)
            if done.returncode == 0 or "no such file" not in done.stderr:
                break
            await asyncio.sleep(0.2)
        assert done.returncode == 0, done.stderr
        await asyncio.sleep(2.0)  # any announce still held reaches the edge
    assert sha(out.read_bytes()) == sha(data)
    p2p = (await status(http, edge.url))["p2p"]
    print("MEMBERS", p2p["swarm_memberships"], p2p["regions"])
    reported = sum(row.get(field, 0) for row in p2p["regions"].values() for field in TRACKER_FIELDS.values())
    assert reported == size, f"the region's totals count {reported} bytes for one get of {size}"


@pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed (./dev test installs them as root)",
)
async def test_ffprobe_reads_media_through_the_gateway(tmp_path, nodes, origin, published, regions, http):
    media = published / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=4:size=320x240:rate=25", "-pix_fmt", "yuv420p", str(media)],
        check=True,
        timeout=60,
    )
    await asyncio.sleep(0.5)  # the origin publishes it
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "p")
    proc = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width",
            "-of",
            "csv=p=0",
            peer.urls["gateway"] + "/clip.mp4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "320" in proc.stdout and "4.0" in proc.stdout


async def test_several_edges_fastest_preferred_and_failed_one_replaced(tmp_path, nodes, origin, published, regions, http):
    """p2pd scenario 2: independent servers, client-side choice of the fastest and failover."""
    data = make_file(published / "f.bin", SIZE)
    slow = start_edge(nodes, tmp_path, origin.url, regions, "slow", "--upload-limit", "300KB/s")
    fast = start_edge(nodes, tmp_path, origin.url, regions, "fast", "--upload-limit", "3MB/s")
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--edge", slow.url, "--edge", fast.url, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"),
        name="p2",
    )
    await post(http, peer, "/f.bin")
    await asyncio.sleep(2.5)
    before = await edge_bytes(http, peer)
    assert before.get(fast.url, 0) > 2 * before.get(slow.url, 0), before  # the fastest is preferred
    fast.kill()  # and fails mid-download: the slow one must finish it
    await wait_complete(http, [peer], timeout=60)
    assert await body_sha(http, peer.urls["gateway"] + "/f.bin") == sha(data)
    after = await edge_bytes(http, peer)
    assert after[slow.url] > before.get(slow.url, 0) and after[fast.url] <= before[fast.url] + 262144, (before, after)


@contextlib.contextmanager
def frozen(node) -> Iterator[None]:
    """``node`` wedged meanwhile: SIGSTOP to its process and workers (the kernel still takes its connections, nothing
    answers them), SIGCONT after, whatever happened."""
    assert node.proc is not None
    pids = [node.proc.pid, *(int(p) for p in Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split())]
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:  # workers first: a supervisor woken first killed a worker it found silent for 15 s (a CI run)
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_a_wedged_edge_among_two_does_not_stall_a_players_reads_for_its_timeout(tmp_path, nodes, origin, published, http):
    """The faster of a peer's two edges frozen (SIGSTOP: the kernel takes its connections, nothing answers): a new
    read through the gateway waited 12 s for the first byte, and about every other one after its back-off (an
    adversarial session).  Now the late pieces are raced on the other edge after the deadline (2 s), and the wedged
    edge is set aside, its back-off doubling while it stays wedged."""
    files = {f"v{i}.bin": make_file(published / f"v{i}.bin", 1024 * 1024) for i in range(4)}
    edges = [nodes.start("edge", "--cache", str(tmp_path / f"e{n}"), "--parent", origin.url, name=f"e{n}") for n in (1, 2)]
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--edge", edges[0].url, "--edge", edges[1].url, "--gateway", "127.0.0.1:0"),
        name="p",
    )
    gateway = peer.urls["gateway"]
    for name in files:  # every manifest known (a new file's manifest from a wedged edge is another matter)
        async with http.head(f"{gateway}/{name}") as resp:
            assert resp.status == 200
    for name in ("v0.bin", "v1.bin"):  # both edges measured
        assert await body_sha(http, f"{gateway}/{name}") == sha(files[name])
    rates = {e["url"]: e["rate_Bps"] or 0 for e in (await status(http, gateway))["edges"]}
    assert all(rates.values()), rates
    with frozen(max(edges, key=lambda e: rates[e.url])):
        for name in ("v2.bin", "v3.bin"):
            started = time.monotonic()
            assert await body_sha(http, f"{gateway}/{name}") == sha(files[name])
            assert time.monotonic() - started < 7.0, f"{name}: a read waited for the wedged edge's timeout"
            await asyncio.sleep(4.5)  # its back-off over: it is not first again


@pytest.mark.parametrize("wedged_is", ["--edge", "the URL's"])
async def test_a_wedged_edge_among_two_holds_edgeswarm_get_for_seconds_not_its_timeout(tmp_path, nodes, origin, published, wedged_is):
    """`edgeswarm get` with a second --edge that is wedged (SIGSTOP): once the first edge was measured, the unmeasured
    one was asked a piece, and with nobody reading, nothing raced it: the download waited for its 12 s timeout (an
    adversarial session).  Now a piece overdue at an edge (3 s at least) is raced on the other one.  With the URL's
    edge wedged, `get` failed: its HEAD took 5 s and the origin key was asked of the edges in turn, the wedged one's
    10 s timeout ending get's wait for the key (another one)."""
    data = make_file(published / "w.bin", 2 * 1024 * 1024)
    good, wedged = (nodes.start("edge", "--cache", str(tmp_path / f"e{n}"), "--parent", origin.url, name=f"e{n}") for n in (1, 2))
    out = tmp_path / "w.out"
    first, other = (good, wedged) if wedged_is == "--edge" else (wedged, good)
    cmd = [
        sys.executable,
        "-m",
        "edgeswarm",
        "get",
        f"{first.url}/w.bin",
        "--edge",
        other.url,
        "-o",
        str(out),
        "--cache",
        str(tmp_path / "g"),
    ]
    with frozen(wedged):
        started = time.monotonic()
        got = run_cli(cmd, timeout=60)
        took = time.monotonic() - started
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == data
    assert "answered in its place" in got.stderr, got.stderr  # raced on the other edge, not waited for
    assert took < 12.0, f"get took {took:.1f} s: it waited for the wedged edge's timeout (12 s)"


async def edge_bytes(http: aiohttp.ClientSession, peer) -> dict[str, int]:
    st = await status(http, peer.urls["gateway"])
    return {row["source"]: row["bytes"] for row in st["bytes_received"] if row["kind"] == "edge"}


async def test_upload_cap_and_choking(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    seed = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "seed"), "--edge", edge.url, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"),
        *("--upload-limit", "1MB/s", "--upload-slots", "1"),
        name="seed",
    )
    await post(http, seed, "/f.bin")
    await wait_complete(http, [seed])
    cid = (await status(http, seed.urls["gateway"]))["swarms"][0]["id"]
    upload = seed.urls["upload"]

    async def piece(who: str, i: int) -> aiohttp.ClientResponse:
        async with http.get(f"{upload}/piece/{cid}/{i}", headers={"X-Edgeswarm-Peer": who}) as r:
            await r.read()
            return r

    started = time.monotonic()
    # 2 MiB through a 1 MB/s cap, four at a time: a requester may have no more in flight (policy/uploadgate.py)
    first = [r for batch in (range(4), range(4, 8)) for r in await asyncio.gather(*(piece("a", i) for i in batch))]
    assert all(r.status == 200 for r in first)
    assert time.monotonic() - started >= 1.5, "the upload cap was not applied"
    choked = await piece("b", 0)  # the only slot is a's
    assert choked.status == 429 and int(choked.headers["Retry-After"]) >= 1
    async with http.get(f"{upload}/piece/{cid}/999") as r:
        assert r.status == 404
    async with http.get(f"{upload}/piece/{cid}/x") as r:
        assert r.status == 400
    async with http.get(seed.urls["gateway"] + "/metrics") as r:
        text = await r.text()
    assert f'edgeswarm_content_bytes_total{{content="{cid}",direction="sent",kind="peer",role="peer"}}' in text


async def test_a_gateway_with_a_small_cache_serves_concurrent_readers_whole(tmp_path, nodes, origin, published, http):
    """--max-cache 1MiB, 8 readers of 4 files at once: a piece was read back from the store after it was stored, and
    another reader's pieces had pushed it out meanwhile (503 "evicted before it could be sent", or a cut body)."""
    files = {f"/f{n}.bin": make_file(published / f"f{n}.bin", 3_000_000 + n) for n in range(4)}
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    gateway = nodes.start(
        "peer", "--cache", str(tmp_path / "peer"), "--edge", edge.url, "--gateway", "127.0.0.1:0", "--max-cache", "1MiB"
    ).urls["gateway"]

    async def read(n: int) -> tuple[int, bool]:
        path = list(files)[n % 4]
        want = files[path] if n % 2 else files[path][1000:2_500_000]
        headers = {} if n % 2 else {"Range": "bytes=1000-2499999"}
        async with http.get(gateway + path, headers=headers) as resp:
            try:
                return resp.status, await resp.read() == want
            except aiohttp.ClientPayloadError:
                return resp.status, False

    for _ in range(2):
        got = await asyncio.gather(*(read(n) for n in range(8)))
        assert got == [(200 if n % 2 else 206, True) for n in range(8)]


async def test_slow_readers_of_a_small_cache_get_every_byte_right(tmp_path, nodes, origin, published, http):
    """A hit sent through the transport a chunk at a time kept the store's descriptor across its awaits: evicted
    meanwhile, it was closed and its number went to another piece's file, whose bytes went out in a 200 (or the read
    was cut with EBADF): 17 of 21 reads of three 30 MB/s readers behind a 1 MB cache (a review)."""
    data = make_file(published / "big.bin", 24 * 1024 * 1024)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    gateway = nodes.start(
        "peer", "--cache", str(tmp_path / "peer"), "--edge", edge.url, "--gateway", "127.0.0.1:0", "--max-cache", "1MB"
    ).urls["gateway"]

    def read(n: int) -> bytes:
        out = tmp_path / f"read{n}.bin"
        proc = subprocess.run(["curl", "-sS", "--limit-rate", "20M", "--max-time", "60", "-o", str(out), gateway + "/big.bin"])
        assert proc.returncode == 0, proc.returncode
        return out.read_bytes()

    for _ in range(2):
        got = await asyncio.gather(*(asyncio.to_thread(read, n) for n in range(3)))
        assert all(g == data for g in got), [len(g) for g in got]


async def test_a_read_through_a_small_cache_fetches_the_file_about_once(tmp_path, nodes, origin, published, http):
    """A reader's window of 16 pieces behind a 2 MB cache (7 pieces): the pieces fetched ahead were evicted before the
    reader came to them and fetched again, 53-82 MB for a 40 MB file (an adversarial session).  The window is at most
    half of what the cache keeps."""
    data = make_file(published / "long.bin", 16 * 1024 * 1024)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p")
    for n in range(3):  # neighbours holding the file: pieces of the window come from several at once
        seed = nodes.start(
            "peer",
            "--cache",
            str(tmp_path / f"s{n}"),
            "--edge",
            edge.url,
            "--listen",
            f"127.0.0.{n + 2}:0",
            "--gateway",
            "127.0.0.1:0",
            name=f"s{n}",
        )
        await until(lambda seed=seed: _posted(http, seed.urls["gateway"] + "/long.bin"), 20, "the file published")
        await until(lambda seed=seed: complete(http, seed), 60, "a neighbour's download")
    peer = nodes.start("peer", "--cache", str(tmp_path / "peer"), "--edge", edge.url, "--gateway", "127.0.0.1:0", "--max-cache", "2MB")
    gateway = peer.urls["gateway"]
    async with http.get(gateway + "/long.bin") as resp:
        assert resp.status == 200 and await resp.read() == data
    st = await status(http, gateway)
    got = sum(row["bytes"] for row in st["bytes_received"])
    # 2.5 x on the code before; about once now, the pieces raced in the endgame counted too (1.2 failed in CI at 1.203)
    assert got <= 1.35 * len(data), (got, len(data))


async def _posted(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.post(url) as resp:
        return resp.status == 202


async def test_an_edge_that_is_down_is_said_without_a_swarm_ticket_key_once(tmp_path, nodes, origin, published, regions, http):
    """The announce loop asks an edge without a known swarm-ticket key for it at every round: while the edge was down,
    each round logged "no swarm-ticket key from EDGE yet" (8 lines in 40 s, one per retry, for the whole outage)."""
    make_file(published / "k.bin", 512 * 1024)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    with socket.socket() as s:  # a port nobody listens on: an edge that is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "p"), "--edge", edge.url, "--edge", dead, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"),
        name="p",
    )
    await post(http, peer, "/k.bin")
    deadline = time.monotonic() + 60
    while peer.log_text().count(f"announce to {dead} failed") < 3:  # rounds at 1, 2 and 4 s: each asked it for its key
        assert time.monotonic() < deadline, peer.log_text()[-2000:]
        await asyncio.sleep(0.2)
    assert peer.log_text().count(f"no swarm-ticket key from {dead} yet") == 1, peer.log_text()[-3000:]


async def test_a_peer_the_tracker_refuses_says_why_in_its_status(tmp_path, nodes, origin, published, regions, http):
    """A peer whose announces an edge refused (429: its address's --max-peer-ids) showed `tracker: true` and no
    neighbour, the reason only in a log line (an adversarial session with many users behind one address)."""
    make_file(published / "r.bin", 512 * 1024)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--max-peer-ids", "1")

    def start(name: str):
        args = ("--cache", str(tmp_path / name), "--edge", edge.url, "--listen", "127.1.0.9:0", "--gateway", "127.0.0.1:0")
        return nodes.start("peer", *args, name=name)

    first = start("one")
    await post(http, first, "/r.bin")
    deadline = time.monotonic() + 30
    while (await status(http, edge.url))["p2p"].get("peers") != 1:  # the address's one place is the first peer's
        assert time.monotonic() < deadline, first.log_text()[-2000:]
        await asyncio.sleep(0.3)
    second = start("two")
    await post(http, second, "/r.bin")
    while not any("announce_refused" in e for e in (await status(http, second.urls["gateway"]))["edges"]):
        assert time.monotonic() < deadline, second.log_text()[-2000:]
        await asyncio.sleep(0.3)
    (row,) = (await status(http, second.urls["gateway"]))["edges"]
    assert row["announce_refused"].startswith("429") and "live peer ids" in row["announce_refused"], row
    assert all("announce_refused" not in e for e in (await status(http, first.urls["gateway"]))["edges"])
