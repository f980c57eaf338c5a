"""A failure after an answer has started cuts the connection: never an error page inside a body (issue 9, defect 1).

The client must see a short transfer (curl exit 18) holding a prefix of the
right bytes, or the whole file, and ``curl -C -`` must then complete it
byte for byte.  Disk full is a real tmpfs (root only) and, anywhere, a file
size limit (``prlimit --fsize``) that makes every piece write fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import DoubleServer, Misbehaving, curl, fill, make_file, mounted_tmpfs, run_cli, serve_handler, start_peer

from edgeswarm.errors import HttpError
from edgeswarm.node.metrics import Metrics
from edgeswarm.store.cachelock import LOCK_NAME

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
PIECE = 256 * 1024  # the piece size of every file below 256 MiB


def edge(nodes, cache: Path, parent: str, *extra: str, prefix: list[str] | None = None):
    return nodes.start("edge", "--cache", str(cache), "--parent", parent, *extra, name="edge", prefix=prefix)


def is_prefix(got: bytes, data: bytes) -> bool:
    return len(got) <= len(data) and data[: len(got)] == got


def resume(url: str, out: Path) -> subprocess.CompletedProcess:
    return curl("-C", "-", "-o", str(out), url)


def no_tmp(cache: Path) -> list[Path]:
    return list((cache / "content").rglob("*.tmp"))


# -- the middleware, on its own --------------------------------------------------------------------


async def _raw_get(port: int, path: str) -> bytes:
    """Everything the server sends for one GET, until it closes the connection (bounded, so a hang fails)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("failure", [RuntimeError("boom"), HttpError(502, "piece 3 unavailable")], ids=["internal", "http-error"])
async def test_a_handler_failing_after_its_head_is_cut_not_followed_by_an_error_page(failure, caplog):
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        raise failure

    with caplog.at_level(logging.INFO, logger="edgeswarm"):
        async with serve_handler(handler, Metrics("test")) as port:
            raw = await _raw_get(port, "/f")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1000" in head
    assert body == b"x" * 100, body[100:200]  # cut short: nothing after the bytes that were right
    cuts = [r for r in caplog.records if re.search(r"after \d+ bytes", r.getMessage())]
    assert len(cuts) == 1, [r.getMessage() for r in caplog.records]
    assert (cuts[0].exc_info is not None) == isinstance(failure, RuntimeError)  # a traceback only for a bug


# -- a parent that fails in the middle of a file -------------------------------------------------------


class FailingParent(DoubleServer):
    """A parent that passes the origin through, but hangs up halfway through pieces ``>= fail_from`` while ``failing``."""

    def __init__(self, origin: str, fail_from: int):
        self.origin, self.fail_from, self.failing = origin, fail_from, True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        async with aiohttp.ClientSession() as s, s.get(self.origin + request.raw_path) as r:
            body, status, ctype = await r.read(), r.status, r.headers.get("Content-Type", "application/octet-stream")
        parts = request.path.split("/")
        if self.failing and request.path.startswith("/piece/") and int(parts[-1]) >= self.fail_from:
            resp = web.StreamResponse(headers={"Content-Length": str(len(body)), "Content-Type": ctype})
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.abort()
            return resp
        return web.Response(status=status, body=body, content_type=ctype.split(";")[0])

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self.handle)


async def test_parent_failing_mid_file_gives_a_short_body_that_resumes(tmp_path, nodes, origin, published):
    data = make_file(published / "f.bin", 12 * PIECE + 5)
    await asyncio.sleep(0.5)
    out = tmp_path / "out.bin"
    async with FailingParent(origin.url, fail_from=4) as parent:
        e = edge(nodes, tmp_path / "cache", parent.url)
        r = await asyncio.to_thread(curl, "-o", str(out), e.url + "/f.bin")
        assert r.returncode == 18, r.stderr  # "partial file": the client knows it is short
        got = out.read_bytes()
        assert is_prefix(got, data) and len(got) == 4 * PIECE
        parent.failing = False
        r = await asyncio.to_thread(resume, e.url + "/f.bin", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    log = e.log_text()
    assert "cut after" in log and "Traceback" not in log
    async with aiohttp.ClientSession() as http, http.get(e.url + "/metrics") as m:  # counted as a cut, not only as a 200
        assert 'edgeswarm_events_total{detail="",event="answer_cut",role="edge"} 1.0' in await m.text()


# -- disk full -------------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 20 MiB tmpfs: a disk that really fills."""
    with mounted_tmpfs(tmp_path / "tmpfs", "size=20m") as mnt:
        yield mnt


@pytest.fixture
def few_inodes(tmp_path: Path):
    """A tmpfs of 256 inodes: a disk with room for bytes but not for one more file or directory once filled."""
    with mounted_tmpfs(tmp_path / "inodes", "size=20m,nr_inodes=256") as mnt:
        yield mnt


async def test_disk_full_edge_serves_the_whole_file_and_a_resume_is_exact(tmp_path, tmpfs, nodes, origin, published):
    data = make_file(published / "big.bin", 64 * MiB + 77)  # three times the disk
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(curl, "-o", "/dev/null", "-w", "%{http_code}", "-r", "0-0", origin.url + "/big.bin")).stdout != b"206":
        assert time.monotonic() < deadline, "the origin did not publish the file"
        await asyncio.sleep(0.2)  # being hashed
    e = edge(nodes, tmpfs, origin.url)
    out = tmp_path / "out.bin"
    r = await asyncio.to_thread(curl, "-o", str(out), e.url + "/big.bin")
    got = out.read_bytes()
    assert is_prefix(got, data), "bytes that are not the file's went into the body"
    assert r.returncode == 0 and got == data, r.stderr  # the edge serves what it cannot cache from memory
    with open(out, "r+b") as f:  # as if an earlier transfer had been cut past the point where the disk filled
        f.truncate(40 * MiB + 3)
    r = await asyncio.to_thread(resume, e.url + "/big.bin", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    assert no_tmp(tmpfs) == []
    log = e.log_text()
    assert "No space left on device" in log and "Traceback" not in log
    assert shutil.disk_usage(tmpfs).free < 2 * PIECE  # the disk really was full
    st = json.loads((await asyncio.to_thread(curl, e.url + "/status")).stdout)  # said where the operator looks, not only in the log
    assert "No space left on device" in st.get("cache_error", ""), st.get("cache_error")
    assert st["cache_write_failures"] > 0  # and where an alert looks (an adversarial session: only /status said it)
    metrics = (await asyncio.to_thread(curl, e.url + "/metrics")).stdout.decode()
    failures = re.search(r"^edgeswarm_cache_write_failures_total (\S+)$", metrics, re.M)
    assert failures and float(failures.group(1)) > 0, metrics[:2000]


def fill_inodes(mnt: Path) -> int:
    """Create empty files until the filesystem has no inode left; how many it took."""
    n = 0
    try:
        while True:
            (mnt / f"filler-{n}").touch()
            n += 1
    except OSError:
        return n


async def test_an_edge_out_of_inodes_serves_a_new_file_and_caches_it_once_there_is_room(tmp_path, few_inodes, nodes, origin, published):
    """No directory can be made for a new content (inodes, read-only): its manifest and pieces are served, not a 500."""
    data = make_file(published / "new.bin", 3 * PIECE + 5)
    make_file(published / "warm.bin", 5)
    e = edge(nodes, few_inodes, origin.url)
    # its store open first (a probe file at start): filled before it, the cache was unusable, a 503 (a loaded CI run)
    while (await asyncio.to_thread(curl, "-f", "-o", "/dev/null", e.url + "/warm.bin")).returncode != 0:
        await asyncio.sleep(0.2)
    assert fill_inodes(few_inodes) > 0
    out = tmp_path / "out.bin"
    deadline = time.monotonic() + 60
    while (r := await asyncio.to_thread(curl, "-f", "-o", str(out), e.url + "/new.bin")).returncode != 0:
        assert b"500" not in r.stderr, r.stderr
        assert time.monotonic() < deadline, r.stderr  # the origin is still hashing it (404)
        await asyncio.sleep(0.2)
    assert out.read_bytes() == data
    for filler in few_inodes.glob("filler-*"):
        filler.unlink()
    r = await asyncio.to_thread(curl, "-f", "-o", str(out), e.url + "/new.bin")  # room again: its pieces are stored
    assert r.returncode == 0 and out.read_bytes() == data, r.stderr
    cached = [p.name for p in (few_inodes / "content").glob("*/*")]
    assert "manifest.json" in cached and any(n.endswith(".piece") for n in cached), cached
    log = e.log_text()
    assert "No space left on device" in log and "Traceback" not in log, log


async def test_a_gateway_whose_disk_is_full_still_serves_the_whole_file(tmp_path, tmpfs, nodes, origin, published, http):
    """Pieces it cannot store go to the reader waiting for them, and only those are fetched: before, the read stalled
    until a 504 while the gateway fetched the window's pieces again and again (9.7 MB from the edge for 1.8 MB read)."""
    data = make_file(published / "big.bin", 24 * MiB + 5)  # more than the disk
    await asyncio.sleep(0.5)
    e = edge(nodes, tmp_path / "edge", origin.url)
    peer = start_peer(nodes, tmpfs.parent, e.url, "127.0.0.1", tmpfs.name)  # its cache is the tmpfs
    out = tmp_path / "out.bin"
    deadline = time.monotonic() + 60
    while (r := await asyncio.to_thread(curl, "-o", str(out), "-w", "%{http_code}", peer.urls["gateway"] + "/big.bin")).stdout != b"200":
        assert time.monotonic() < deadline, r.stdout  # the origin publishes and hashes it
        await asyncio.sleep(0.5)
    assert r.returncode == 0 and out.read_bytes() == data, r.stderr
    assert shutil.disk_usage(tmpfs).free < 2 * PIECE  # the disk really was full
    async with http.get(e.url + "/status") as resp:
        sent = (await resp.json())["bytes_sent"]["node"]
    assert sent < 1.5 * len(data), f"the edge sent {sent} bytes for one read of {len(data)}"
    assert "No space left on device" in peer.log_text() and "Traceback" not in peer.log_text()
    # the user sees why in /status, and in the answer to a background fetch, which waits for room (only the log said)
    async with http.get(peer.urls["gateway"] + "/status") as resp:
        assert "No space left on device" in (await resp.json()).get("cache_error", "")
    async with http.post(peer.urls["gateway"] + "/big.bin") as resp:
        assert resp.status == 202 and "No space left on device" in (await resp.json()).get("cache_error", "")
    async with http.get(peer.urls["gateway"] + "/metrics") as resp:  # and Prometheus can alert on it (only /status said so)
        refused = re.search(r"^edgeswarm_cache_write_failures_total (\S+)$", await resp.text(), re.M)
    assert refused and float(refused[1]) > 0


async def get_when_published(cmd: list[str]) -> subprocess.CompletedProcess:
    for _ in range(50):  # the origin's scan publishes the file, then hashes it
        done = await asyncio.to_thread(run_cli, cmd, 60)
        if "no such file" not in done.stderr and "503" not in done.stderr:
            return done
        await asyncio.sleep(0.2)
    return done


async def test_get_with_a_cache_that_fills_stops_at_once_and_says_so(tmp_path, tmpfs, nodes, origin, published):
    """It went on fetching pieces it could not store, each thrown away and fetched again, until the stall timeout.
    The file fits when the get starts (it checks); another writer fills the disk meanwhile."""
    make_file(published / "big.bin", 16 * MiB)
    await asyncio.sleep(0.5)
    e = edge(nodes, tmp_path / "edge", origin.url, "--upload-limit", "2MB/s")  # 8 s: time to fill the disk meanwhile
    out = tmp_path / "out.bin"
    cmd = [sys.executable, "-m", "edgeswarm", "get", e.url + "/big.bin", "-o", str(out), "--cache", str(tmpfs), "--listen", "127.0.0.1:0"]
    getting = asyncio.create_task(get_when_published(cmd))
    while not any(tmpfs.glob("content/*/*.piece")):
        assert not getting.done(), getting.result().stderr
        await asyncio.sleep(0.05)
    with contextlib.suppress(OSError), open(tmpfs / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
    filled = time.monotonic()
    done = await getting
    assert done.returncode == 1 and f"cannot store pieces in the cache {tmpfs}" in done.stderr, done.stderr
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    needs = re.search(r"big\.bin needs ([\d.]+) MiB more", done.stderr)  # what is missing: "needs 16.0 MiB" held or not
    assert needs is not None and float(needs.group(1)) < 16, done.stderr
    assert time.monotonic() - filled < 30, "it waited for the stall timeout"
    assert not out.exists() and not list(out.parent.glob(".out.bin.*.part"))


async def test_get_of_a_file_larger_than_the_free_space_fetches_nothing_and_says_so(tmp_path, tmpfs, nodes, origin, published):
    """It filled the disk, then failed; its piece cache and its output each hold a copy until the end, so on one disk
    (a temporary cache in /tmp beside -o /tmp/x) a file needs twice its size (an adversarial session)."""
    make_file(published / "big.bin", 24 * MiB)  # more than the disk
    make_file(published / "half.bin", 12 * MiB)  # fits once, not twice
    await asyncio.sleep(0.5)
    e = edge(nodes, tmp_path / "edge", origin.url)
    for name, cache, out, said in [
        ("big.bin", tmpfs / "c", tmp_path / "big.bin", "the piece cache needs 24.0 MiB on the disk of"),
        ("half.bin", tmpfs / "c", tmpfs / "half.bin", "the piece cache and the output need 24.0 MiB on the disk of"),
        ("big.bin", tmp_path / "c", tmpfs / "d" / "big.bin", "the output needs 24.0 MiB on the disk of"),
    ]:
        get = [sys.executable, "-m", "edgeswarm", "get", f"{e.url}/{name}", "-o", str(out), "--cache", str(cache)]
        done = await get_when_published([*get, "--listen", "127.0.0.1:0"])
        assert done.returncode == 1 and f"edgeswarm get: {name}: {said}" in done.stderr, done.stderr
        assert "(--cache DIR and -o FILE choose the disks)" in done.stderr and "Traceback" not in done.stderr
        assert not any(cache.glob("content/*/*.piece")) and not out.exists()
    with open(tmpfs / "half.bin", "wb") as stdout:  # -o - > FILE, a review: standard output is a file on that disk
        cmd = [sys.executable, "-m", "edgeswarm", "get", f"{e.url}/half.bin", "-o", "-", "--cache", str(tmpfs / "c")]
        done = await asyncio.to_thread(subprocess.run, [*cmd, "--listen", "127.0.0.1:0"], stdout=stdout, stderr=subprocess.PIPE, text=True)
    said = "the piece cache and the output need 24.0 MiB on the disk of"
    assert done.returncode == 1 and said in done.stderr and (tmpfs / "half.bin").stat().st_size == 0, done.stderr
    sent = json.loads((await asyncio.to_thread(curl, e.url + "/status")).stdout)["bytes_sent"]
    assert sum(sent.values()) < MiB, sent  # manifests only


async def test_a_first_start_on_a_full_disk_leaves_no_torn_file_and_starts_once_there_is_room(tmp_path, tmpfs, nodes, origin, published):
    """A first start on a full disk left an empty swarm.key (an edge; origin.key at an origin, peer_id at a peer): every
    restart after it failed with "not a PEM private key" until someone deleted it (an adversarial session).  Small
    files are now written whole or not at all, and the error names the file."""
    data = make_file(published / "a.bin", 300_000)
    filler = fill(tmpfs)
    for role, where in (("edge", ("--parent", origin.url)), ("peer", ("--edge", origin.url))):
        cache = tmpfs / role
        done = await asyncio.to_thread(
            run_cli, [sys.executable, "-m", "edgeswarm", role, "--cache", str(cache), *where, "--listen", "127.0.0.1:0"], 60
        )
        assert done.returncode != 0 and "No space left on device" in done.stderr and str(cache) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        # nothing torn (the lock is empty when the disk had no room for its holder's name, which only a message reads)
        assert [f for f in cache.rglob("*") if f.is_file() and f.stat().st_size == 0 and f.name != LOCK_NAME] == [], role
    filler.unlink()
    e = edge(nodes, tmpfs / "edge", origin.url)  # the same cache, now with room: it starts
    peer = start_peer(nodes, tmpfs, e.url, "127.0.0.1", "peer")
    got = await asyncio.to_thread(curl, "-s", peer.urls["gateway"] + "/a.bin")
    assert got.stdout == data


@pytest.mark.parametrize("node", ["edge", "gateway"])
async def test_a_cached_piece_cut_short_under_the_node_is_fetched_again_not_served(tmp_path, nodes, origin, published, node):
    """A piece file truncated while the node held it open went out as what it held: every later byte at the wrong
    offset, and curl then waited 75 s for the rest (an adversarial session).  A hit now checks the file's size."""
    data = make_file(published / "f.bin", 8 * PIECE)
    await asyncio.sleep(0.5)
    e = edge(nodes, tmp_path / "edge", origin.url)
    peer = start_peer(nodes, tmp_path, e.url, "127.0.0.1", "peer")
    url, cache = (e.url, tmp_path / "edge") if node == "edge" else (peer.urls["gateway"], tmp_path / "peer")
    for _ in range(6):  # later reads are hits on descriptors the store keeps open (an edge's two workers, likely both)
        got = await asyncio.to_thread(curl, "-s", "-m", "20", url + "/f.bin")
        assert got.returncode == 0 and got.stdout == data
    piece = next(cache.rglob("3.piece"))
    os.truncate(piece, PIECE // 2)
    for _ in range(2):
        got = await asyncio.to_thread(curl, "-s", "-m", "20", url + "/f.bin")
        assert got.returncode == 0 and got.stdout == data, f"curl exit {got.returncode}, {len(got.stdout)} bytes"
    # fetched again and stored whole: a worker that held it open found its size wrong (and said so), one that had not
    # yet taken it up from the disk (an edge's other worker) did not take a piece of the wrong size
    assert piece.stat().st_size == PIECE
    log = e.log_text() if node == "edge" else peer.log_text()
    assert "Traceback" not in log


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) not installed")
async def test_failing_piece_writes_mid_file_do_not_reach_the_body(tmp_path, nodes, origin, published):
    """No root needed: a file size limit below one piece makes every piece write fail (EFBIG) once the edge restarts."""
    data = make_file(published / "f.bin", 8 * PIECE + 9)
    await asyncio.sleep(0.5)
    cache = tmp_path / "cache"
    e = edge(nodes, cache, origin.url)
    assert (await asyncio.to_thread(curl, "-o", "/dev/null", "-r", "0-0", e.url + "/f.bin")).returncode == 0  # piece 0 cached
    e.stop()
    e = edge(nodes, cache, origin.url, prefix=["prlimit", f"--fsize={PIECE - 4096}"])
    out = tmp_path / "out.bin"
    r = await asyncio.to_thread(curl, "-o", str(out), e.url + "/f.bin")
    got = out.read_bytes()
    assert is_prefix(got, data), "bytes that are not the file's went into the body"
    assert r.returncode == 0 and got == data, r.stderr
    assert no_tmp(cache) == []
    assert "File too large" in e.log_text()


async def test_peer_gateway_cuts_an_answer_whose_later_pieces_never_come(tmp_path, nodes, origin, published):
    data = make_file(published / "f.bin", 10 * PIECE + 1)
    await asyncio.sleep(0.5)
    out = tmp_path / "out.bin"
    async with FailingParent(origin.url, fail_from=3) as parent:
        e = edge(nodes, tmp_path / "cache", parent.url)
        peer = nodes.start(
            "peer",
            *("--cache", str(tmp_path / "peer"), "--edge", e.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"),
            *("--read-timeout", "2"),
            name="peer",
        )
        r = await asyncio.to_thread(curl, "-o", str(out), peer.urls["gateway"] + "/f.bin")
        assert r.returncode == 18, r.stderr
        got = out.read_bytes()
        assert is_prefix(got, data) and len(got) == 3 * PIECE
        parent.failing = False
        r = await asyncio.to_thread(resume, peer.urls["gateway"] + "/f.bin", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    log = peer.log_text()
    assert "cut after" in log and "Traceback" not in log


class WithdrawingEdge(DoubleServer):
    """An edge whose parent no longer publishes a file: it passes the origin through, but answers 404 for its pieces."""

    def __init__(self, origin: str):
        self.origin = origin
        self.withdrawn = 0  # piece requests answered 404

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/piece/"):
            self.withdrawn += 1
            return web.Response(status=404, text="content is no longer published\n")
        async with aiohttp.ClientSession() as s, s.request(request.method, self.origin + request.raw_path) as r:
            return web.Response(
                status=r.status, body=await r.read(), content_type=r.headers.get("Content-Type", "text/plain").split(";")[0]
            )

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


async def test_a_gateway_says_at_once_that_a_file_is_no_longer_published(tmp_path, nodes, origin, published):
    """The edge's 404 for a piece (its parent withdrew the file) held the player for the whole --read-timeout, then
    a 504 that could not be told from a slow edge."""
    make_file(published / "f.bin", 4 * PIECE)
    await asyncio.sleep(0.5)
    async with WithdrawingEdge(origin.url) as withdrawn:
        peer = nodes.start("peer", *("--cache", str(tmp_path / "peer"), "--edge", withdrawn.url, "--gateway", "127.0.0.1:0"), name="peer")
        started = time.monotonic()
        r = await asyncio.to_thread(curl, "-w", "\n%{http_code}", peer.urls["gateway"] + "/f.bin")
        took = time.monotonic() - started
        body, code = r.stdout.decode().rsplit("\n", 1)
        assert code == "404" and "/f.bin is no longer published" in body, r.stdout
        assert took < 10, took  # the default --read-timeout is 30 s
        asked = withdrawn.withdrawn
        await asyncio.sleep(4)  # the peer asked for a piece of the old version once a second, for minutes, reader or not
        assert withdrawn.withdrawn - asked <= 1, (asked, withdrawn.withdrawn)
    assert "Traceback" not in peer.log_text()


async def test_a_get_says_at_once_that_its_file_is_no_longer_published(tmp_path, origin, published):
    """It waited out its 60 s stall timeout and blamed the last 502 it had seen (an adversarial session)."""
    make_file(published / "f.bin", 4 * PIECE)
    await asyncio.sleep(0.5)
    async with WithdrawingEdge(origin.url) as withdrawn:
        cmd = [sys.executable, "-m", "edgeswarm", "get", withdrawn.url + "/f.bin", "-o", str(tmp_path / "f.bin")]
        started = time.monotonic()
        r = await asyncio.to_thread(run_cli, [*cmd, "--listen", "127.0.0.1:0"], timeout=60)
        took = time.monotonic() - started
    assert r.returncode == 1 and took < 20, (took, r.stderr)
    assert "/f.bin is no longer published (its edge answered 404): changed or deleted at the origin" in r.stderr
    assert not (tmp_path / "f.bin").exists()


class ErringEdge(WithdrawingEdge):
    """An edge that answers every piece ``status`` (500: say its disk fails; 504: its own sources time out), and the
    rest as the origin does; with ``then_hang``, only its first piece request, and it never answers the next ones."""

    def __init__(self, origin: str, status: int = 500, then_hang: bool = False):
        super().__init__(origin)
        self.status, self.then_hang, self.asked = status, then_hang, 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/piece/"):
            self.asked += 1
            if self.then_hang and self.asked > 1:
                await asyncio.sleep(3600)
            return web.Response(status=self.status, text="internal error; see the node's log\n")
        return await super().handle(request)


@pytest.mark.parametrize(
    ("fault", "code", "said"),
    [
        ("corrupt", "502", "; the last try: {url} sent piece 0 corrupt"),
        ("500", "502", "; the last try: {url} answered 500 for piece 0"),
        ("504", "504", "; the last try: {url} answered 504 for piece 0"),  # the edge's own timeout: slowness, said as such
        ("500 then slow", "504", "\n"),  # the try that failed is not the last: the one under way is only slow
    ],
)
async def test_a_gateway_whose_edge_sends_wrong_answers_says_so_in_a_502(tmp_path, nodes, origin, published, fault, code, said):
    """Corrupt pieces or 500s from the only edge were a 504 "no edge or peer delivered" after --read-timeout, as if it
    were slow: the player's user and the operator could not tell a broken edge from a congested one."""
    make_file(published / "f.bin", 4 * PIECE)
    await asyncio.sleep(0.5)
    doubles = {
        "corrupt": lambda: Misbehaving(origin.url, corrupt=True),
        "500": lambda: ErringEdge(origin.url),
        "504": lambda: ErringEdge(origin.url, 504),
        "500 then slow": lambda: ErringEdge(origin.url, then_hang=True),
    }
    async with doubles[fault]() as bad:
        timeout = "6" if fault == "500 then slow" else "3"  # room for the retry after the 2 s the failed edge is set aside
        peer = nodes.start(
            "peer",
            *("--cache", str(tmp_path / "peer"), "--edge", bad.url, "--gateway", "127.0.0.1:0", "--read-timeout", timeout),
            name="peer",
        )
        r = await asyncio.to_thread(curl, "-w", "\n%{http_code}", peer.urls["gateway"] + "/f.bin")
        if fault == "500 then slow":
            assert bad.asked >= 2, "the edge was not asked again: the test proves nothing"
    body, got = r.stdout.decode().rsplit("\n", 1)
    assert got == code and f"no edge or peer delivered piece 0 within {timeout} s{said.format(url=bad.url)}" in body + "\n", r.stdout
    assert "Traceback" not in peer.log_text()


async def test_get_from_an_edge_answering_500_says_so_when_it_gives_up(tmp_path, origin, published):
    """`get`'s stall message named only the edges: what they answered says whether to wait or to call the operator."""
    make_file(published / "f.bin", 4 * PIECE)
    await asyncio.sleep(0.5)
    async with ErringEdge(origin.url) as bad:
        cmd = [sys.executable, "-m", "edgeswarm", "get", bad.url + "/f.bin", "-o", str(tmp_path / "f.bin")]
        r = await asyncio.to_thread(run_cli, [*cmd, "--cache", str(tmp_path / "cache"), "--stall-timeout", "3"], 60)
    assert r.returncode != 0 and not (tmp_path / "f.bin").exists()
    assert f"no piece of f.bin arrived for 3 s from {bad.url} or any peer; the last try: {bad.url} answered 500 for piece" in r.stderr
    assert "Traceback" not in r.stderr


async def test_a_client_hanging_up_mid_file_is_one_line_without_a_traceback(tmp_path, nodes, origin, published):
    make_file(published / "f.bin", 32 * MiB)
    await asyncio.sleep(1)
    e = edge(nodes, tmp_path / "cache", origin.url)
    assert (await asyncio.to_thread(curl, "-o", "/dev/null", e.url + "/f.bin")).returncode == 0  # cached: the sendfile path
    port = int(e.url.rsplit(":", 1)[1])
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()  # gone, with most of the file still to come
    deadline = time.monotonic() + 10
    while True:
        metrics = await asyncio.to_thread(curl, e.url + "/metrics")
        if e.log_text().count("client went away") >= 3 and hangups(metrics) >= 3:
            break
        assert time.monotonic() < deadline, (e.log_text()[-3000:], metrics.stdout.decode())
        await asyncio.sleep(0.1)
    assert "Traceback" not in e.log_text()
    assert hangups(metrics) == 3 and b'status="500"' not in metrics.stdout, metrics.stdout.decode()  # counted as such, not as 500s


def hangups(metrics: subprocess.CompletedProcess) -> int:
    """``edgeswarm_events_total{event="client_hangup"}`` in a node's /metrics as curl got it."""
    m = re.search(rb'^edgeswarm_events_total\{[^}]*event="client_hangup"[^}]*\} ([0-9.e+]+)$', metrics.stdout, re.MULTILINE)
    return int(float(m.group(1))) if m else 0


class FarEdge(WithdrawingEdge):
    """An edge 100 ms away: each answer's head comes that much later; counts its piece requests in flight at once."""

    def __init__(self, origin: str):
        super().__init__(origin)
        self.in_flight = self.most = 0

    async def handle(self, request: web.Request) -> web.Response:
        piece = request.path.startswith("/piece/")
        self.in_flight += piece
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.1)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with aiohttp.ClientSession() as s, s.request(request.method, self.origin + request.raw_path, headers=headers) as r:
                kind = r.headers.get("Content-Type", "application/octet-stream").split(";")[0]
                return web.Response(status=r.status, body=await r.read(), content_type=kind)
        finally:
            self.in_flight -= piece


async def test_a_get_from_a_far_edge_keeps_several_pieces_in_flight(tmp_path, nodes, origin, published):
    """One request at a time paid the round trip for each piece: over a 200 ms path a get ran at a fifth of curl's
    rate (an adversarial session).  With no peer to count on, as many go at once as the round trip holds."""
    data = make_file(published / "f.bin", 32 * PIECE)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, name="edge")
    async with FarEdge(edge.url) as far:
        cmd = [sys.executable, "-m", "edgeswarm", "get", far.url + "/f.bin", "-o", str(tmp_path / "f.bin"), "--listen", "127.0.0.1:0"]
        r = await asyncio.to_thread(run_cli, cmd, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.bin").read_bytes() == data
    print(f"piece requests in flight at once: {far.most}")
    assert far.most >= 2, far.most  # one, before


class SheddingEdge(FarEdge):
    """A real edge behind a proxy that answers every announce 503 with Retry-After 5 (its loop late: a flood)."""

    def __init__(self, origin: str):
        super().__init__(origin)
        self.announces: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/announce" and request.method == "POST":
            self.announces.append(time.monotonic())
            return web.Response(status=503, text="this edge is too busy to take announces\n", headers={"Retry-After": "5"})
        return await super().handle(request)


async def test_a_peer_holds_its_announces_for_a_shed_answers_retry_after(tmp_path, nodes, origin, published, http):
    """A shed announce (503, Retry-After 5) was asked again after 1, 2, 4 s, and at once for any news: only a 429 held
    a peer back (the review of the announce shedding)."""
    make_file(published / "f.bin", 8 * PIECE)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p", name="edge")
    async with SheddingEdge(edge.url) as shedding:
        peer = start_peer(nodes, tmp_path, shedding.url, "127.0.0.1", "peer")
        async with http.post(peer.urls["gateway"] + "/f.bin") as r:  # a new content: news for the tracker
            assert r.status in (200, 202, 204), await r.text()
        await asyncio.sleep(4.5)
        asked = sorted(shedding.announces)
    assert asked and all(b - a >= 4.5 for a, b in itertools.pairwise(asked)), [round(t - asked[0], 2) for t in asked]


async def test_a_peer_hears_its_edges_504_when_the_origin_hangs(tmp_path, nodes, origin, published):
    """The edge waits its parent 10 s (--timeout) and the peer waited the edge 10 s: the peer's timeout fired in the
    millisecond of the edge's 504 naming the hung origin, and the peer set the edge aside as unreachable (an
    adversarial session).  Everything at its defaults."""
    make_file(published / "f.bin", 4 * PIECE)
    make_file(published / "g.bin", PIECE)  # its manifest asked for once the origin hangs
    await asyncio.sleep(0.5)
    async with Misbehaving(origin.url) as parent:
        e = edge(nodes, tmp_path / "edge", parent.url)
        peer = nodes.start("peer", "--cache", str(tmp_path / "peer"), "--edge", e.url, "--gateway", "127.0.0.1:0", name="peer")
        head = await asyncio.to_thread(curl, "-f", "-I", "--retry", "5", "--retry-all-errors", f"{peer.urls['gateway']}/f.bin")
        assert head.returncode == 0, head.stderr  # its manifest, through the edge
        parent.hang = True  # pieces from here on
        await asyncio.to_thread(curl, "-o", "/dev/null", "--max-time", "14", peer.urls["gateway"] + "/f.bin")
        new = await asyncio.to_thread(curl, "-w", "\n%{http_code}", "--max-time", "20", peer.urls["gateway"] + "/g.bin")
        log = peer.log_text()
    assert f"{e.url} answered 504 for piece" in log, log[-3000:]
    assert "did not answer /piece" not in log, log[-3000:]
    said = new.stdout.decode()  # the edge's words for a manifest too: its parent hangs
    assert f"edge {e.url} answered 504 for g.bin" in said and f"{parent.url} did not answer" in said, said
