"""Users publish through their edge, with real daemons: a publish then served and swarmed, a resumed upload, refusals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import DoubleServer, fill, make_file, mounted_tmpfs, post, serve_app, sha, start_p2p_edge, start_peer, status, until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.policy.quota import QuotaPolicy
from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.protocol.paths import MAX_PATH_BYTES, MAX_SEGMENT_BYTES, MAX_SEGMENTS, PATH, publish_problem
from edgeswarm.roles.origin import Origin
from edgeswarm.roles.publish import MAX_UNFINISHED, Publisher
from edgeswarm.store.catalog import Catalog
from edgeswarm.store.uploads import Staging
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_private_key

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
QUOTA = 4_000_000
SIZE = 3 * 1024 * 1024


@pytest.fixture
def site(nodes, tmp_path: Path, published: Path):
    """An origin taking uploads (alice: QUOTA bytes), a p2p edge before it, and alice's publishing token."""
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2", "--user-quota", str(QUOTA))
    regions = tmp_path / "regions.yaml"
    regions.write_text(REGIONS)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions, "--announce-interval", "1")
    key = load_private_key(published / ".edgeswarm" / "origin.key")
    return {
        "origin": origin,
        "edge": edge,
        "pub": published,
        "uploads": published / ".edgeswarm" / "uploads",
        "alice": tokens.issue(key, "alice", "/users/alice/", 3600, scopes=["publish"]),
        "reader": tokens.issue(key, "alice", "/", 3600),
        "key": key,
    }


def publish(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeswarm", "publish", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def left_behind(site: dict) -> list[str]:
    """Every file under the published directory and the staging area, hidden state apart."""
    pub, uploads = site["pub"], site["uploads"]
    files = [p for p in pub.rglob("*") if p.is_file() and ".edgeswarm" not in p.parts]
    files += list(uploads.iterdir()) if uploads.exists() else []
    return sorted(str(p.relative_to(pub)) for p in files)


async def put(http, url: str, token: str | None, body: bytes, length: int, digest: str, extra: dict | None = None) -> tuple[int, str]:
    headers = {"X-Edgeswarm-Length": str(length), "X-Edgeswarm-Sha256": digest, **(extra or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.put(url, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def fetched(http, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def test_a_published_file_is_served_and_swarmed_byte_identical(site, nodes, tmp_path, http):
    data = make_file(tmp_path / "talk.bin", SIZE)
    edge = site["edge"]
    got = publish(str(tmp_path / "talk.bin"), "--edge", edge.url, "--token", site["alice"], "--chunk-size", "1MiB")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == f"{edge.url}/users/alice/talk.bin"
    assert (site["pub"] / "users/alice/talk.bin").read_bytes() == data
    assert left_behind(site) == ["users/alice/talk.bin"]  # the staging area is empty again
    async with http.get(edge.url + "/manifest/users/alice/talk.bin") as resp:
        signed = SignedManifest.parse(await resp.read(), site["key"].public_key())  # signed by the origin's key
    assert signed.manifest.size == SIZE and signed.manifest.path == "users/alice/talk.bin"
    assert await fetched(http, edge.url + "/users/alice/talk.bin") == data
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}", upload="8MB/s") for i in range(2)]
    await post(http, peers[0], "/users/alice/talk.bin")
    deadline = time.monotonic() + 60
    while not (s := await status(http, peers[0].urls["gateway"]))["swarms"] or not s["swarms"][0]["complete"]:
        assert time.monotonic() < deadline, "the first peer never completed"
        await asyncio.sleep(0.3)
    for peer in peers:
        assert sha(await fetched(http, peer.urls["gateway"] + "/users/alice/talk.bin")) == sha(data)


def interrupt(edge_url: str, path: str, token: str, data: bytes, cut: int) -> None:
    """A whole-file PUT through the edge whose client dies after ``cut`` bytes of the body."""
    host, port = edge_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nX-Edgeswarm-Length: {len(data)}\r\n"
            f"X-Edgeswarm-Sha256: {sha(data)}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        s.sendall(head.encode() + data[:cut])
        time.sleep(0.5)


async def test_an_interrupted_upload_resumes_where_it_stopped(site, tmp_path, http):
    data = make_file(tmp_path / "big.bin", SIZE)
    edge, cut = site["edge"], SIZE // 2
    interrupt(edge.url, "/users/alice/big.bin", site["alice"], data, cut)
    deadline = time.monotonic() + 10
    while True:  # the origin holds what reached it; ask as the client would
        status_code, body = await put(
            http, edge.url + "/users/alice/big.bin", site["alice"], b"", SIZE, sha(data), {"Content-Range": f"bytes */{SIZE}"}
        )
        assert status_code == 202, body
        held = json.loads(body)["offset"]
        if held == cut or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert 0 < held <= cut
    assert not (site["pub"] / "users/alice/big.bin").exists()  # not published while partial
    got = publish(str(tmp_path / "big.bin"), "--edge", edge.url, "--token", site["alice"], "--chunk-size", "512KiB")
    assert got.returncode == 0, got.stderr
    assert f"resumed at byte {held}" in got.stderr and f"{SIZE - held} B sent" in got.stderr, got.stderr
    assert await fetched(http, edge.url + "/users/alice/big.bin") == data
    assert left_behind(site) == ["users/alice/big.bin"]


async def test_refused_uploads_get_a_clear_4xx_and_leave_nothing_behind(site, tmp_path, http):
    edge, origin = site["edge"], site["origin"]
    data = make_file(tmp_path / "f.bin", 1_000_000)
    digest = sha(data)
    url = edge.url + "/users/alice/f.bin"
    cases = {
        "no token": (url, None, data, len(data), digest, 401, "publish scope"),
        "no publish scope": (url, site["reader"], data, len(data), digest, 403, "no publish scope"),
        "outside the prefix": (edge.url + "/users/bob/f.bin", site["alice"], data, len(data), digest, 403, "only under /users/alice/"),
        "hidden name": (edge.url + "/users/alice/.f.bin", site["alice"], data, len(data), digest, 400, "hidden"),
        # published, and withdrawn half a second later: the origin takes such names for files still being written
        "partial name": (edge.url + "/users/alice/f.tmp", site["alice"], data, len(data), digest, 400, "still being written"),
        "reserved name": (edge.url + "/manifest/f.bin", site["alice"], data, len(data), digest, 404, "endpoint"),
        "over quota": (url, site["alice"], data, QUOTA + 1, digest, 413, "quota exceeded"),
        "truncated": (url, site["alice"], data[:600_000], len(data), digest, 400, "truncated"),
        "wrong hash": (url, site["alice"], data, len(data), hashlib.sha256(b"other").hexdigest(), 400, "SHA-256 mismatch"),
        "longer than declared": (url, site["alice"], data, len(data) - 1, digest, 400, "more than"),
    }
    for name, (target, token, body, length, declared, expected, words) in cases.items():
        code, message = await put(http, target, token, body, length, declared)
        assert code == expected and words in message, (name, code, message)
        assert left_behind(site) == [], name
    st = await status(http, origin.url)
    assert st["files"] == {} and st["uploads_published"] == 0
    async with http.get(edge.url + "/manifest/users/alice/f.bin") as resp:
        assert resp.status == 404
    code, message = await put(http, url, site["alice"], data, len(data), digest)  # the same upload, well formed, goes through
    assert code == 201, message
    query = {"Content-Range": f"bytes */{len(data)}"}  # a client that missed that answer asks, and hears it again
    again, answer = await put(http, url, site["alice"], b"", len(data), digest, query)
    assert again == 201 and json.loads(answer)["content_id"] == json.loads(message)["content_id"]


# ----- limits: unfinished uploads per user, path depth and length, a lying edge --------------------------------------------


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    """An origin's Publisher in this process (no daemon), its own key, the default cap of unfinished uploads."""
    key = Ed25519PrivateKey.generate()
    catalog = Catalog(tmp_path / "pub", tmp_path / "catalog.json", key)
    (tmp_path / "pub").mkdir()
    return Publisher(key.public_key(), catalog, Staging(tmp_path / "uploads"), QuotaPolicy(QUOTA))


def token_for(publisher: Publisher, user: str) -> str:
    key = publisher.catalog.key
    return tokens.issue(key, user, f"/users/{user}/", 3600, scopes=["publish"])


async def test_unfinished_uploads_are_capped_per_user_and_counted_without_reading_the_others(publisher, monkeypatch, http):
    sweeps = []
    monkeypatch.setattr(publisher.staging, "sweep", lambda now=None: sweeps.append(now) or 0)
    app = make_app(Metrics("origin"))
    app.router.add_put("/" + PATH, publisher.put)
    alice, bob = token_for(publisher, "alice"), token_for(publisher, "bob")
    digest = sha(b"xy")
    async with serve_app(app) as port:
        base = f"http://127.0.0.1:{port}/users"
        for i in range(MAX_UNFINISHED):  # 1 byte of 2 sent: unfinished
            code, text = await put(http, f"{base}/alice/s{i}", alice, b"x", 2, digest, {"Content-Range": "bytes 0-0/2"})
            assert code == 202, text
        code, text = await put(http, f"{base}/alice/one-more", alice, b"x", 2, digest, {"Content-Range": "bytes 0-0/2"})
        assert code == 429 and f"{MAX_UNFINISHED} unfinished uploads" in text, text
        assert "bytes */LENGTH" in text and "expires" in text, text  # how to resume, and that they expire
        assert publisher.staging.count("alice") == MAX_UNFINISHED and "users/alice/one-more" not in publisher.staging.pending("alice")
        code, text = await put(http, f"{base}/alice/s0", alice, b"x", 2, digest, {"Content-Range": "bytes 0-0/2"})
        assert code == 409 and "resume there" in text, text  # one of them, at a wrong offset: told where, not refused
        alices = set(publisher.staging.dir.glob("*.json"))
        reads: list[Path] = []
        read_text = Path.read_text
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or read_text(self, *a, **k))
        code, text = await put(http, f"{base}/bob/f", bob, b"xy", 2, digest)
        assert code == 201, text  # another user is not refused, and his request read none of alice's declarations
        assert alices and not alices & set(reads), reads
        code, text = await put(http, f"{base}/alice/s1", alice, b"y", 2, digest, {"Content-Range": "bytes 1-1/2"})
        assert code == 201, text  # a finished upload frees its place
        code, text = await put(http, f"{base}/alice/one-more", alice, b"x", 2, digest, {"Content-Range": "bytes 0-0/2"})
        assert code == 202, text
    assert sweeps == []  # no request swept the staging directory: the origin does so on a timer
    assert publisher.staging.pending("bob") == {}
    monkeypatch.undo()
    again = Staging(publisher.staging.dir)  # the index is rebuilt from disk at start
    assert again.pending("alice") == publisher.staging.pending("alice") and again.count("alice") == MAX_UNFINISHED


def test_a_users_usage_is_read_off_the_catalogue_once_per_change_of_it(publisher):
    """Not a pass over every published file per upload request: once per user and catalogue generation."""
    first = publisher._published_by("alice")
    assert publisher._published_by("alice") is first  # no change: the same reading
    publisher.catalog.generation += 1  # what every publish or removal does (Catalog._add, _remove)
    assert publisher._published_by("alice") is not first


def test_publish_problem_limits_depth_and_length():
    assert publish_problem("/".join(["d"] * MAX_SEGMENTS)) is None
    assert "segments" in (publish_problem("/".join(["d"] * (MAX_SEGMENTS + 1))) or "")
    assert publish_problem("users/alice/" + "n" * MAX_SEGMENT_BYTES) is None
    assert "bytes" in (publish_problem("users/alice/" + "n" * (MAX_SEGMENT_BYTES + 1)) or "")
    assert publish_problem("users/alice/" + "é" * 128) is not None  # bytes, not characters
    long = "/".join(["n" * 200] * 6)
    assert len(long) > MAX_PATH_BYTES and "bytes" in (publish_problem(long) or "")


async def test_publish_staged_refusing_a_path_leaves_nothing_behind(publisher, tmp_path, monkeypatch):
    def staged(rel: str):
        upload = publisher.staging.open("alice", rel, 2, sha(b"xy"), fresh=True)
        upload.part.write_bytes(b"xy")
        return upload

    deep = "users/alice/" + "d/" * 1500 + "x"  # what upload_path refuses: here it reaches publish_staged all the same
    with pytest.raises(HttpError) as err:
        await publisher._finish("alice", deep, staged(deep))
    assert err.value.status == 400
    assert list(publisher.staging.dir.iterdir()) == [] and list((tmp_path / "pub").iterdir()) == []

    def recursing(rel: str, part: Path):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(publisher.catalog, "publish_staged", recursing)
    with pytest.raises(HttpError) as err:
        await publisher._finish("alice", "users/alice/x", staged("users/alice/x"))
    assert err.value.status == 400 and "RecursionError" in err.value.message
    assert list(publisher.staging.dir.iterdir()) == [] and publisher.staging.pending("alice") == {}


async def test_an_upload_is_placed_and_applied_with_no_scan_between(tmp_path, caplog):
    """An upload renamed into place was not yet in the catalogue when the live watcher or a scan looked: the watcher saw
    a rewritten playlist and published what it named (the adversarial session had .edgeswarm/origin.key published so)."""
    origin = Origin(tmp_path / "pub", tmp_path / "state", tmp_path / "origin.key")
    rel, publisher = "users/alice/p.m3u8", origin.publisher

    def staged(body: bytes):
        upload = publisher.staging.open("alice", rel, len(body), sha(body), fresh=True)
        upload.part.write_bytes(body)
        return upload

    await publisher._finish("alice", rel, staged(b"#EXTM3U\n"))  # v1: the live watcher now watches it
    placed, go = threading.Event(), threading.Event()
    place = origin.catalog.publish_staged

    def place_then_wait(rel: str, part: Path):
        entry = place(rel, part)
        placed.set()
        go.wait(10)
        return entry

    origin.catalog.publish_staged = place_then_wait  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    try:
        upload = asyncio.create_task(publisher._finish("alice", rel, staged(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n")))
        while not placed.is_set():
            await asyncio.sleep(0.01)
        looks = [asyncio.create_task(origin.scan()), asyncio.create_task(origin.live.check())]
        await asyncio.sleep(0.3)
        done_meanwhile = [t.done() for t in looks]
    finally:
        go.set()
    await upload
    await asyncio.gather(*looks)
    assert done_meanwhile == [False, False], "a scan or the live watcher ran between the upload's rename and its apply"
    assert origin.live.published == 0
    published = [r.getMessage() for r in caplog.records if rel in r.getMessage()]
    assert published == [f"republished {rel} (32 bytes) (uploaded by alice)"], published


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB file system (a tmpfs) at tmp_path/small, to be filled: a full disk."""
    with mounted_tmpfs(tmp_path / "small", "size=1m") as small:
        yield small


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def put_on(publisher: Publisher, http, body: bytes, name: str = "f") -> tuple[int, str]:
    """PUT ``body`` whole to ``publisher`` (served in this process) as alice's ``name``."""
    app = make_app(Metrics("origin"))
    app.router.add_put("/" + PATH, publisher.put)
    async with serve_app(app) as port:
        url = f"http://127.0.0.1:{port}/users/alice/{name}"
        return await put(http, url, token_for(publisher, "alice"), body, len(body), sha(body))


def full_disk_lines(caplog) -> list[logging.LogRecord]:
    """What the full disk logged: warnings and errors, with or without a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_full_staging_disk_is_a_507_saying_so_and_keeps_nothing(tmp_path, small_disk, http, caplog):
    """It was a 500 with a traceback, the partial part held the full disk for 24 h, and each later attempt left an empty
    part and declaration behind."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "pub").mkdir()
    catalog = Catalog(tmp_path / "pub", small_disk / "catalog.json", key)
    publisher = Publisher(key.public_key(), catalog, Staging(small_disk / "uploads"), QuotaPolicy(QUOTA))
    caplog.set_level(logging.INFO)
    code, text = await put_on(publisher, http, os.urandom(2_000_000))
    assert code == 507 and "staging area for uploads in progress is full" in text and "nothing was kept" in text, text
    assert files_under(small_disk) == []
    lines = full_disk_lines(caplog)
    assert [(r.levelname, r.exc_info) for r in lines] == [("WARNING", None)] and "is full" in lines[0].getMessage(), lines
    filler = fill(small_disk)
    code, text = await put_on(publisher, http, b"small")  # no room left for even its declaration
    assert code == 507 and "is full" in text, text
    assert files_under(small_disk) == ["filler"] and publisher.staging.pending("alice") == {}
    caplog.clear()
    for name in ("a", "b"):  # the catalogue's state beside the staging area: a scan publishes, and warns once it cannot save
        (tmp_path / "pub" / name).write_bytes(b"x")
        _, lines = await catalog.change(catalog.scan_changes)
        assert lines == [f"published {name} (1 bytes)"]
    warned = [r.getMessage() for r in full_disk_lines(caplog)]
    assert len(warned) == 1 and warned[0].startswith(f"cannot save the catalogue state {small_disk / 'catalog.json'}"), warned
    assert files_under(small_disk) == ["filler"]
    filler.unlink()
    code, text = await put_on(publisher, http, b"small")
    assert code == 201, text


async def test_a_full_published_directory_is_a_507_and_leaves_no_hidden_copy(tmp_path, small_disk, http, caplog):
    """Across file systems the upload is copied to a hidden name beside its place: on a full disk that copy stayed for
    ever (the walk never sweeps a hidden file), and the answer was a 409 that said nothing was kept."""
    key = Ed25519PrivateKey.generate()
    catalog = Catalog(small_disk, tmp_path / "catalog.json", key)
    publisher = Publisher(key.public_key(), catalog, Staging(tmp_path / "uploads"), QuotaPolicy(QUOTA))
    caplog.set_level(logging.INFO)
    code, text = await put_on(publisher, http, os.urandom(2_000_000))
    assert code == 507 and "published directory is full" in text and "nothing was kept" in text, text
    assert files_under(small_disk) == [] and files_under(tmp_path / "uploads") == []
    assert [(r.levelname, r.exc_info) for r in full_disk_lines(caplog)] == [("WARNING", None)]
    assert catalog.by_path == {}


def test_a_deep_tree_is_scanned_without_recursion(tmp_path, monkeypatch):
    root = tmp_path / "pub"
    deep = root / Path(*["d"] * 100)
    deep.mkdir(parents=True)
    (deep / "x").write_bytes(b"x")
    (root / "a.txt").write_bytes(b"a")
    catalog = Catalog(root, tmp_path / "catalog.json", Ed25519PrivateKey.generate())
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)  # os.walk recursed a frame per level: 100 levels did not fit
    try:
        changes = catalog.scan_changes({})
    finally:
        sys.setrecursionlimit(limit)
    assert sorted(changes) == ["a.txt"]  # the file 101 segments deep is not published (and the walk stopped at 32)


def raw_put(url: str, path: str, token: str, length: int = 50_000_000) -> bytes:
    """Send a PUT's headers only, declaring ``length`` body bytes, and return what came back without any of them."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            (
                f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nX-Edgeswarm-Length: {length}\r\n"
                f"X-Edgeswarm-Sha256: {'0' * 64}\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
        )
        return s.recv(65536)  # a timeout (socket.timeout) if the node waits for the body


def test_a_too_deep_or_too_long_upload_path_is_refused_before_its_body(site):
    paths = {
        "too deep": "/users/alice/" + "d/" * MAX_SEGMENTS + "x",
        "segment too long": "/users/alice/" + "n" * (MAX_SEGMENT_BYTES + 1),
        "path too long": "/users/alice/" + "/".join(["n" * 200] * 6),
    }
    for node in ("edge", "origin"):
        for name, path in paths.items():
            answer = raw_put(site[node].url, path, site["alice"])
            assert answer.startswith(b"HTTP/1.1 400") and b"nothing was read" in answer, (node, name, answer[:300])
    assert left_behind(site) == []


def test_a_path_a_folder_holds_is_refused_once_and_printed_urls_serve_what_was_published(site, tmp_path):
    """`--as d1` where d1 is a folder: the origin read the whole body, then refused, and publish sent it six times;
    `--as x/../y.bin` replaced y.bin (the client's URL handling resolved it); the printed URL of `a%2Fb.bin` served
    a/b.bin, and those of names with '?', '#' or a space nothing (an adversarial session)."""
    edge, alice = site["edge"], site["alice"]
    data = make_file(tmp_path / "a.bin", 200_000)
    assert publish(str(tmp_path / "a.bin"), "--edge", edge.url, "--token", alice, "--as", "d1/x.bin").returncode == 0
    answer = raw_put(site["origin"].url, "/users/alice/d1", alice, 100_000)  # before the body
    assert answer.startswith(b"HTTP/1.1 409") and b"users/alice/d1 is a directory" in answer, answer[:300]
    got = publish(str(tmp_path / "a.bin"), "--edge", edge.url, "--token", alice, "--as", "d1")
    assert got.returncode == 1 and "users/alice/d1 is a directory" in got.stderr and "retries" not in got.stderr, got.stderr
    got = publish(str(tmp_path / "a.bin"), "--edge", edge.url, "--token", alice, "--as", "x/../y.bin")
    assert got.returncode == 2 and "'x/../y.bin' names no file: path segment '..' is not allowed" in got.stderr, got.stderr
    for name in ("a%2Fb.bin", "q?x #1.bin"):
        got = publish(str(tmp_path / "a.bin"), "--edge", edge.url, "--token", alice, "--as", name)
        assert got.returncode == 0, got.stderr
        fetched = subprocess.run(["curl", "-sS", "--fail", got.stdout.strip()], capture_output=True, timeout=30)
        assert fetched.returncode == 0 and fetched.stdout == data, (name, got.stdout, fetched.stderr)


class LyingEdge(DoubleServer):
    """An edge that answers every upload request 202 with the same made-up ``Upload-Offset`` (or ``refusal``, a status
    and its text)."""

    def __init__(self, offset: str, refusal: tuple[int, str] | None = None):
        self.offset = offset
        self.refusal = refusal
        self.puts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.puts += 1
        await request.read()
        if self.refusal is not None:
            return web.Response(status=self.refusal[0], text=self.refusal[1])
        return web.json_response({"offset": 0, "length": 0}, status=202, headers={"Upload-Offset": self.offset})

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/{tail:.*}", self.handle)


async def publish_to_liar(tmp_path: Path, offset: str, *extra: str, refusal: tuple[int, str] | None = None) -> tuple[int, str, float, int]:
    """Run ``edgeswarm publish`` against a LyingEdge: exit status, stderr, seconds taken, requests seen."""
    make_file(tmp_path / "a.bin", 300_000)
    token = tokens.issue(Ed25519PrivateKey.generate(), "alice", "/users/alice/", 3600, scopes=["publish"])
    async with LyingEdge(offset, refusal) as edge:
        t0 = time.monotonic()
        cmd = ["-m", "edgeswarm", "publish", "--no-progress", str(tmp_path / "a.bin"), "--edge", edge.url, "--token", token, *extra]
        proc = await asyncio.create_subprocess_exec(sys.executable, *cmd, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(40):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"edgeswarm publish still running after 40 s and {edge.puts} requests")
        return proc.returncode or 0, err.decode(), time.monotonic() - t0, edge.puts


@pytest.mark.integration
async def test_publish_gives_up_on_an_edge_whose_offset_never_moves(tmp_path):
    code, err, _, puts = await publish_to_liar(tmp_path, "0", "--retries", "2")
    assert code == 1 and "gave up after 2 retries" in err and "no progress" in err, err
    assert puts <= 2 * 3 + 1  # a status query and a chunk per try


@pytest.mark.integration
async def test_publish_stops_at_once_on_a_full_origin(tmp_path):
    """A 507 is final: the disk does not empty in the seconds of a retry, and each retry sent the file again."""
    full = "cannot store /users/alice/a.bin: the origin's published directory is full (No space left on device); nothing was kept"
    code, err, took, puts = await publish_to_liar(tmp_path, "0", refusal=(507, full))
    assert code == 1 and err.strip() == f"edgeswarm publish: 507 {full}", err
    assert puts == 1 and took < 20


@pytest.mark.integration
async def test_publish_stops_at_once_at_an_offset_beyond_the_file(tmp_path):
    code, err, took, puts = await publish_to_liar(tmp_path, "999999999")
    assert code == 1 and "protocol error" in err and "beyond the file's 300000 bytes" in err, err
    assert puts == 1 and took < 20


@pytest.mark.integration
def test_publish_to_a_web_server_that_is_no_edge_says_so_at_once(tmp_path):
    """The server's HTML error page was printed as the reason, after five retries of a 501 (an adversarial session)."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "up.bin").write_bytes(b"x")
    token = tokens.issue(Ed25519PrivateKey.generate(), "alice", "/", 3600, scopes=["publish"])
    edge = f"http://127.0.0.1:{server.server_port}"
    try:
        cmd = [sys.executable, "-m", "edgeswarm", "publish", str(tmp_path / "up.bin"), "--edge", edge, "--token", token, "--no-progress"]
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    finally:
        server.shutdown()
    assert got.returncode == 1 and "as an HTML page: no edgeswarm edge answers with one" in got.stderr, got.stderr
    assert "<html" not in got.stderr.lower() and "retries" not in got.stderr


def slowed(monkeypatch, obj, name: str, seconds: float) -> None:
    """``obj.name`` (run in a thread by the publisher) made slower: the window two requests at once met in, widened."""
    real = getattr(obj, name)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, slow)


async def test_two_uploads_of_one_path_at_once_never_share_a_part(publisher, monkeypatch, http):
    """Both got past the in-progress check while the first's check_placeable ran in a thread: their bodies went into
    one part (400 SHA-256 mismatch for a client that sent the right bytes, or a 500 with a traceback; a review)."""
    slowed(monkeypatch, publisher.catalog, "check_placeable", 0.3)
    a, b = os.urandom(300_000), os.urandom(300_000)
    app = make_app(Metrics("origin"))
    app.router.add_put("/" + PATH, publisher.put)
    async with serve_app(app) as port:
        url, alice = f"http://127.0.0.1:{port}/users/alice/same.bin", token_for(publisher, "alice")
        got = await asyncio.gather(*(put(http, url, alice, body, len(body), sha(body)) for body in (a, b)))
    assert sorted(code for code, _ in got) == [201, 409], got
    assert "already in progress" in next(text for code, text in got if code == 409)
    won = a if got[0][0] == 201 else b
    assert (publisher.catalog.root / "users/alice/same.bin").read_bytes() == won


async def test_two_status_queries_of_a_whole_part_at_once_publish_it_once(publisher, monkeypatch, http):
    """A part the origin held whole when it stopped is finished by the next status query; two at once both finished
    it, and the second's 409 "No such file or directory; nothing was kept" ended its publish, the file published."""
    body = os.urandom(300_000)
    held = publisher.staging.open("alice", "users/alice/whole.bin", len(body), sha(body), True)
    held.part.write_bytes(body)
    slowed(monkeypatch, publisher.staging, "find", 0.3)
    app = make_app(Metrics("origin"))
    app.router.add_put("/" + PATH, publisher.put)
    async with serve_app(app) as port:
        url, alice = f"http://127.0.0.1:{port}/users/alice/whole.bin", token_for(publisher, "alice")
        query = {"Content-Range": f"bytes */{len(body)}"}
        got = await asyncio.gather(*(put(http, url, alice, b"", len(body), sha(body), query) for _ in range(2)))
    # the other: all bytes held, being checked (202: ask again), or published by then (201), never a 409
    assert sorted(code for code, _ in got) in ([201, 202], [201, 201]), got
    assert (publisher.catalog.root / "users/alice/whole.bin").read_bytes() == body


async def test_a_status_query_while_the_part_is_put_in_place_is_told_it_is_whole(publisher, monkeypatch, http):
    """Between the part's move into place and the end of its finish, a status query found the declaration, no part,
    and answered offset 0: the client sent the whole file again (a review, read in the code)."""
    body = os.urandom(300_000)
    held = publisher.staging.open("alice", "users/alice/moved.bin", len(body), sha(body), True)
    held.part.write_bytes(body)
    slowed(monkeypatch, publisher.staging, "discard", 1.0)  # the step after the move
    app = make_app(Metrics("origin"))
    app.router.add_put("/" + PATH, publisher.put)
    async with serve_app(app) as port:
        url, alice = f"http://127.0.0.1:{port}/users/alice/moved.bin", token_for(publisher, "alice")
        query = {"Content-Range": f"bytes */{len(body)}"}
        first = asyncio.ensure_future(put(http, url, alice, b"", len(body), sha(body), query))
        placed = publisher.catalog.root / "users/alice/moved.bin"
        await until(lambda: asyncio.to_thread(placed.exists), 10, "the part moved into place")
        code, text = await put(http, url, alice, b"", len(body), sha(body), query)
        assert (await first)[0] == 201
    assert code == 202 and json.loads(text)["offset"] == len(body), (code, text)


async def test_a_name_of_255_bytes_publishes_across_file_systems(tmp_path, small_disk, http):
    """Across file systems the upload is copied to a hidden name beside its place, which was 12 bytes longer than the
    name: every byte sent, then 409 "File name too long; nothing was kept" (an adversarial session)."""
    key = Ed25519PrivateKey.generate()
    catalog = Catalog(small_disk, tmp_path / "catalog.json", key)
    publisher = Publisher(key.public_key(), catalog, Staging(tmp_path / "uploads"), QuotaPolicy(QUOTA))
    name = "é" * 126 + "x.b"  # 255 bytes
    assert len(name.encode()) == MAX_SEGMENT_BYTES == 255
    code, text = await put_on(publisher, http, b"long", name)
    assert code == 201, text
    assert (small_disk / "users/alice" / name).read_bytes() == b"long" and files_under(small_disk) == [f"users/alice/{name}"]


HUNG = web.AppKey("hung", set)


@contextlib.asynccontextmanager
async def edge_double(tmp_path: Path, answer, retries: int) -> AsyncIterator:
    """An edge played by ``answer`` (a PUT handler; the answers it holds are cancelled at the end), and a publish job
    of a 1000-byte file to it, with a 1 s timeout."""
    from edgeswarm.roles import uploader

    app = web.Application()
    app[HUNG] = set()
    app.router.add_put("/{tail:.*}", answer)
    (tmp_path / "up.bin").write_bytes(b"x" * 1000)
    token = tokens.issue(Ed25519PrivateKey.generate(), "alice", "/", 3600, scopes=["publish"])
    async with serve_app(app) as port:
        try:
            yield uploader.Job(tmp_path / "up.bin", f"http://127.0.0.1:{port}", "users/alice/up.bin", token, retries=retries, timeout=1.0)
        finally:
            for hung in list(app[HUNG]):  # the server's shutdown waits for them
                hung.cancel()


async def hold(request: web.Request) -> web.Response:
    """An answer that never comes."""
    request.app[HUNG].add(asyncio.current_task())
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def test_publish_through_a_hung_edge_says_so_and_gives_up_within_its_timeouts(tmp_path):
    """Every answer was waited for as long as the origin may hash a whole file (660 s), a status query's too: through
    a stopped edge `publish` sat silent for 11 minutes a request, an hour in all (an adversarial session)."""
    from edgeswarm.roles import uploader

    said: list[str] = []
    async with edge_double(tmp_path, hold, retries=1) as job:
        started = time.monotonic()
        with pytest.raises(uploader.PublishError, match="gave up after 1 retries"):
            async with asyncio.timeout(30):
                await uploader.publish(job, on_retry=said.append)
        took = time.monotonic() - started
    assert took < 10, took
    assert said == [f"{job.edge} did not answer within 1 s; retry 1 of 1 in 1 s, from the origin's offset"], said


async def test_publish_waits_out_a_last_chunk_the_origin_checks_for_long_without_a_failure(tmp_path):
    """The origin hashes a large upload after its last byte, longer than the client's timeout: that was a retry line
    reading "did not answer", and one of the retries spent (a review)."""
    from edgeswarm.roles import uploader

    done = {"cid": ""}

    async def origin(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Range", "").startswith("bytes */"):  # a status query
            if done["cid"]:
                doc = {"path": "users/alice/up.bin", "size": 1000, "sha256": "s", "content_id": done["cid"]}
                return web.json_response(doc, status=201)
            return web.json_response({"offset": 0}, status=202, headers={"Upload-Offset": "0"})
        assert len(body) == 1000
        done["cid"] = "c" * 64
        return await hold(request)  # hashing, as far as the client can tell

    said: list[str] = []
    async with edge_double(tmp_path, origin, retries=0) as job:
        async with asyncio.timeout(30):
            published = await uploader.publish(job, on_retry=said.append)
    assert published.content_id == "c" * 64  # with no retry to spend
    assert said == ["all 1000 bytes sent, no answer within 1 s: asking whether the origin is still checking them"], said
