"""Users publish through their edge, with real daemons: a publish then served and swarmed, a resumed upload, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_file, post, sha, start_p2p_edge, start_peer, status

from edgeswarm.protocol.manifest import SignedManifest
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
