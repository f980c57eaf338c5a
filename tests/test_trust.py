"""Trust end to end: tokens at edges, swarm tickets between peers, protected content, the usage ledger.

Real origin, edges and peers on loopback; tokens made with the real
``edgeswarm token issue``; curl as the plain HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import DoubleServer, curl, make_file, sha, status, until
from pgserver import free_port, pg_database, pg_dsn  # noqa: F401 - fixtures

from edgeswarm.measure.process import ProcessGroup
from edgeswarm.policy.engine import EDGE_PIPELINE
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_private_key

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses

PIECE = 256 * 1024  # the origin's default piece size
SIZE = 3 * PIECE + 12345  # four pieces, the last one short


def issue(key: Path, user: str, path: str = "/", ttl: str = "1h", *extra: str) -> str:
    """A token from the real CLI: the last line of its output."""
    done = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "token", "issue", "--key", str(key), "--user", user, "--path", path, "--ttl", ttl, *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgeswarm", "get", url, "-o", str(out), *extra], capture_output=True, text=True, timeout=60
    )


def usage_csv(ledger: str, by: str = "user") -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "usage", "report", "--ledger", ledger, "--by", by, "--csv"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return {row[by]: row for row in csv.DictReader(io.StringIO(done.stdout))}


@pytest.fixture
def deployment(tmp_path: Path, nodes: ProcessGroup, published: Path):
    """An origin protecting films/*, with a public file beside them; its key file for issuing tokens."""
    secret = make_file(published / "films" / "secret.bin", SIZE)
    public = make_file(published / "pub" / "readme.bin", SIZE)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2", "--protect", "films/*")
    key = published / ".edgeswarm" / "origin.key"
    return origin, key, secret, public


def start_edge(nodes: ProcessGroup, tmp_path: Path, origin, key: Path, name: str = "edge", *extra: str):
    cache = tmp_path / name
    edge = nodes.start(
        "edge",
        *("--cache", str(cache), "--parent", origin.url, "--p2p", "--announce-interval", "1", "--require-token"),
        *("--token", issue(key, f"node-{name}"), *extra),
        name=name,
    )
    return edge, cache


async def test_edge_demands_a_valid_token_for_the_path(tmp_path, nodes, deployment, http):
    origin, key, _, public = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--access-log")
    url = edge.url + "/pub/readme.bin"

    async with http.get(url) as r:
        assert r.status == 401 and "token is required" in await r.text()
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    alice = issue(key, "alice", "/pub/")
    async with http.get(url, headers=bearer(alice)) as r:
        assert r.status == 200 and sha(await r.read()) == sha(public)
    async with http.get(url, params={"token": alice}) as r:  # for players that cannot set headers
        assert r.status == 200 and sha(await r.read()) == sha(public)
    st = await status(http, edge.url)
    assert [c["path"] for c in st["contents"]] == ["pub/readme.bin"]  # the query string is not part of the cache key

    async with http.get(url, headers=bearer(issue(key, "alice", "/films/"))) as r:
        assert r.status == 403 and "/films/" in await r.text()
    async with http.get(url, headers=bearer(alice[:-3] + ("AAA" if not alice.endswith("AAA") else "BBB"))) as r:
        assert r.status == 401  # tampered signature
    origin_key = load_private_key(key)
    expired = tokens.issue(origin_key, "alice", "/", 60, now=time.time() - 3600)
    async with http.get(url, headers=bearer(expired)) as r:
        assert r.status == 401 and "expired" in await r.text()
    async with http.get(url, headers={"Authorization": "Basic YWxpY2U6eA=="}) as r:
        assert r.status == 401
    async with http.get(edge.url + "/manifest/pub/readme.bin") as r:
        assert r.status == 401
    async with http.get(edge.url + "/manifest/pub/readme.bin", headers=bearer(alice)) as r:
        assert r.status == 200
        cid = (await r.json())["id"]
    async with http.get(f"{edge.url}/piece/{cid}/0") as r:
        assert r.status == 401
    async with http.get(f"{edge.url}/piece/{cid}/0", headers=bearer(alice)) as r:
        assert r.status == 200
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(8):  # connections of their own, dealt to both workers: the second asks the first for /status
            async with fresh.get(edge.url + "/status") as r:
                assert r.status == 200
    log = (tmp_path / "logs" / "edge.log").read_text()
    assert "-> 401" in log and "-> 403" in log and "Traceback" not in log
    assert "token=***" in log and alice not in log  # credentials stay out of the logs
    # one access line per client request: none for the workers' own requests on their unix socket, which had no client
    # address (a line for each /status a router polled: an adversarial session)
    assert ']:  "' not in log, [line for line in log.splitlines() if ']:  "' in line][:3]


async def test_a_stranger_learns_nothing_by_content_id_and_makes_nothing_be_fetched(tmp_path, nodes, deployment, http):
    """Under --require-token, /key fetched a manifest from the parent before the token was checked (the edge then held
    it), and /have, /piece, /content said "not cached here" (404) to anyone: a map of what the edge holds (an
    adversarial session).  The token is now checked before the id is looked up: 401 first, the edge unchanged."""
    origin, key, _, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    async with http.get(origin.url + "/manifest/pub/readme.bin") as r:
        cid = (await r.json())["id"]
    for path in (f"/key/{cid}", f"/have/{cid}", f"/piece/{cid}/0", f"/content/{cid}", f"/key/{'0' * 64}", f"/have/{'0' * 64}"):
        async with http.get(edge.url + path) as r:
            assert r.status == 401 and "token is required" in await r.text(), path
    async with http.post(f"{edge.url}/seed/{cid}", json={"have": ""}) as r:
        assert r.status == 401
    assert (await status(http, edge.url))["content_count"] == 0  # nothing fetched for a stranger
    alice = issue(key, "alice", "/pub/")
    async with http.get(f"{edge.url}/have/{cid}", headers=bearer(alice)) as r:
        assert r.status == 404 and "not cached here" in await r.text()  # a token holder is told
    async with http.get(f"{edge.url}/key/{cid}", headers=bearer(alice)) as r:  # a token holder may make it fetch
        assert r.status == 404 and "not protected" in await r.text()
    assert (await status(http, edge.url))["content_count"] == 1


async def test_a_rebuilt_edge_fetches_the_ids_a_token_holder_asks_for(tmp_path, nodes, deployment, http):
    """A managed peer asks for pieces by the content id an edge gave it.  Rebuilt with an empty cache, a --require-token
    edge answered them 404 "not cached here", which a peer reads as a file withdrawn at the origin: every player
    reading through one was cut, and `get` failed (an adversarial session).  A token holder's id is looked up
    upstream, as on an open edge; a stranger still gets 401 and makes nothing be fetched (the test above)."""
    origin, key, _, public = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    async with http.get(origin.url + "/manifest/pub/readme.bin") as r:
        cid = (await r.json())["id"]
    async with http.get(f"{edge.url}/piece/{cid}/0", headers=bearer(issue(key, "bob", "/films/"))) as r:
        assert r.status == 403 and "/films/" in await r.text()  # fetched, and its path is not the token's
    alice = issue(key, "alice", "/pub/")
    async with http.get(f"{edge.url}/piece/{cid}/0", headers=bearer(alice)) as r:
        body = await r.read()
        assert r.status == 200 and body and public.startswith(body), body[:200]
    async with http.get(f"{edge.url}/content/{cid}", headers=bearer(alice)) as r:
        assert r.status == 200 and (await r.json())["id"] == cid


async def test_status_is_the_operators_from_loopback_by_address_and_from_internal_networks_by_any_name(tmp_path, nodes, deployment, http):
    """From loopback a page rebound to 127.0.0.1 sends its own name as Host, so loopback is trusted only under an IP
    address or localhost; --internal networks are trusted by address, as a router there names the edge as its
    certificate does (refused too in a first version: an adversarial review)."""
    origin, key, _, _ = deployment
    plain, _ = start_edge(nodes, tmp_path, origin, key, "plain")
    internal, _ = start_edge(nodes, tmp_path, origin, key, "internal", "--internal", "127.0.0.0/8")

    async def status_code(url: str, host: str | None) -> int:
        async with http.get(f"{url}/status", headers={"Host": host} if host else {}) as r:
            return r.status

    assert await status_code(plain.url, None) == 200 and await status_code(plain.url, "localhost") == 200
    assert await status_code(plain.url, "rebound.test") == 401
    assert await status_code(internal.url, "edge.example") == 200


async def test_region_scoped_token(tmp_path, nodes, deployment, http):
    origin, key, _, _ = deployment
    regions = tmp_path / "regions.yaml"
    regions.write_text(
        "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n  - {name: west, isp: vz, networks: [127.2.0.0/16]}\n"
    )
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--regions", str(regions), "--listen", "0.0.0.0:0")
    port = edge.url.rsplit(":", 1)[1]
    east = issue(key, "erin", "/", "1h", "--region", "east")
    from_east = curl(
        "--interface",
        "127.1.0.9",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        f"Authorization: Bearer {east}",
        f"http://127.0.0.1:{port}/pub/readme.bin",
    )
    from_west = curl(
        "--interface", "127.2.0.9", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {east}", f"http://127.0.0.1:{port}/pub/readme.bin"
    )
    assert from_east.stdout.decode() == "200"
    body, code = from_west.stdout.decode().rsplit("\n", 1)
    assert code == "403" and "region" in body
    unplaced = curl(
        "-w", "\n%{http_code}", "--interface", "127.3.0.9", "-H", f"Authorization: Bearer {east}", f"http://127.0.0.1:{port}/pub/readme.bin"
    )
    body, code = unplaced.stdout.decode().rsplit("\n", 1)
    assert code == "403" and "cannot place you" in body  # unknown is not "any region"


async def test_the_ledger_bills_what_left_not_what_was_promised(tmp_path, nodes, deployment):
    origin, key, _, _ = deployment
    # one process: the one download gets all of --upload-limit (each of N workers has 1/N), so a whole piece leaves in time
    edge, cache = start_edge(nodes, tmp_path, origin, key, "edge", "--upload-limit", "256KB/s", "--workers", "1")
    hasty = issue(key, "hasty", "/pub/")
    cut = curl("--max-time", "1.5", "-H", f"Authorization: Bearer {hasty}", "-o", "/dev/null", edge.url + "/pub/readme.bin")
    assert cut.returncode == 28  # curl gave up half way
    await asyncio.sleep(0.5)
    nodes.stop()
    billed = int(usage_csv(str(cache / "ledger.sqlite"))["hasty"]["edge_sent"])
    assert 0 < billed < SIZE, billed


def plaintext_on_disk(root: Path, plain: bytes) -> list[str]:
    """Files under root that hold any 64-byte stretch of plain (sampled every 4 KiB)."""
    probes = [plain[i : i + 64] for i in range(0, len(plain) - 64, 4096)]
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(p in data for p in probes):
                hits.append(str(path))
    return hits


async def wait_complete(http: aiohttp.ClientSession, peer, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await status(http, peer.urls["gateway"])
        if st["swarms"] and all(s["complete"] for s in st["swarms"]):
            return st
        assert time.monotonic() < deadline, st["swarms"]
        await asyncio.sleep(0.3)


async def test_protected_content_travels_encrypted_and_only_to_token_holders(tmp_path, nodes, deployment, http):
    origin, key, secret, _ = deployment
    edge, edge_cache = start_edge(nodes, tmp_path, origin, key, "edge", "--upload-limit", "1MB/s")

    def peer(name: str, addr: str, token: str | None):
        creds = ("--token", token) if token else ()
        args = ("--cache", str(tmp_path / name), "--edge", edge.url, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0")
        return nodes.start("peer", *args, *creds, name=name)

    alice = peer("alice", "127.0.0.11", issue(key, "alice", "/films/"))
    bob = peer("bob", "127.0.0.12", issue(key, "bob", "/"))
    mallory = peer("mallory", "127.0.0.13", None)

    # the manifest hashes ciphertext and says so; the key is not in it
    async with http.get(edge.url + "/manifest/films/secret.bin", headers=bearer(issue(key, "carol", "/films/"))) as r:
        doc = await r.json()
    cid, protected = doc["id"], doc["manifest"]["protected"]
    assert protected["scheme"] == "aes-128-ctr" and "key" not in protected

    async with http.post(alice.urls["gateway"] + "/films/secret.bin") as r:
        assert r.status == 202
    await wait_complete(http, alice)
    async with http.post(bob.urls["gateway"] + "/films/secret.bin") as r:
        assert r.status == 202
    st_bob = await wait_complete(http, bob)
    assert st_bob["received_by_kind"].get("peer-same-region", 0) > 0  # bob's ticket opened alice's upload server

    for p in (alice, bob):  # the gateways decrypt for the player, ranges too
        async with http.get(p.urls["gateway"] + "/films/secret.bin") as r:
            assert r.status == 200 and sha(await r.read()) == sha(secret)
        async with http.get(p.urls["gateway"] + "/films/secret.bin", headers={"Range": "bytes=300000-300099"}) as r:
            assert r.status == 206 and await r.read() == secret[300000:300100]
    carol = issue(key, "carol", "/films/")
    whole = curl("-H", f"Authorization: Bearer {carol}", edge.url + "/films/secret.bin")
    assert sha(whole.stdout) == sha(secret)  # a plain HTTP client gets plaintext from the edge
    part = curl("-H", f"Authorization: Bearer {carol}", "-r", "5-20", edge.url + "/films/secret.bin")
    assert part.stdout == secret[5:21]

    # mallory has no token: no file, no key, no pieces from the edge or from alice
    async with http.get(mallory.urls["gateway"] + "/films/secret.bin") as r:
        assert r.status == 403, await r.text()  # the peer has no token: no token of the player changes that
    async with http.get(f"{edge.url}/key/{cid}") as r:
        assert r.status == 401
    async with http.get(f"{edge.url}/key/{cid}", headers=bearer(issue(key, "dave", "/pub/"))) as r:
        assert r.status == 403
    async with http.get(f"{edge.url}/piece/{cid}/0") as r:
        assert r.status == 401
    alice_upload = alice.urls["upload"]
    async with http.get(f"{alice_upload}/piece/{cid}/0") as r:
        assert r.status == 401 and "ticket" in await r.text()
    forged = tokens.issue_ticket(load_private_key(key), "m", "mallory", cid, 60)  # signed, but not by alice's edge
    async with http.get(f"{alice_upload}/piece/{cid}/0", headers=bearer(forged)) as r:
        assert r.status == 401
    async with http.get(f"{alice_upload}/piece/{cid}/0", headers=bearer(carol)) as r:
        assert r.status == 401  # an access token is not a ticket: peers never see users' tokens
    mallory_files = [p for p in (tmp_path / "mallory").rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert mallory_files == []

    assert plaintext_on_disk(tmp_path / "pub" / "films", secret)  # the probe finds plaintext where it is
    for root in (edge_cache, tmp_path / "alice", tmp_path / "bob"):
        assert plaintext_on_disk(root, secret) == [], root
    held = sum(p.stat().st_size for p in (tmp_path / "alice").rglob("*") if p.is_file())
    assert held >= SIZE  # the check above looked at real pieces

    users = (await status(http, edge.url))["p2p"]["users"]
    assert users == {"alice": 1, "bob": 1}  # the tracker knows who each peer is; mallory was never tracked
    out = tmp_path / "got.bin"
    refused_before = edge.log_text().count("-> 401")
    done = get(edge.url + "/films/secret.bin", out, "--token", issue(key, "gina", "/films/"), "--listen", "127.0.0.14:0")
    assert done.returncode == 0 and sha(out.read_bytes()) == sha(secret), done.stderr
    assert edge.log_text().count("-> 401") == refused_before  # its probe of the URL (router or edge?) showed the token too
    done = get(edge.url + "/films/secret.bin", tmp_path / "no.bin", "--listen", "127.0.0.15:0")
    assert done.returncode == 1 and "token is required" in done.stderr, done.stderr
    assert not (tmp_path / "no.bin").exists()

    # the ledger: every user's bytes, from the edge's own count and the peers' reports
    nodes.stop()  # the edge flushes on the way out
    rows = usage_csv(str(edge_cache / "ledger.sqlite"))
    assert int(rows["carol"]["edge_sent"]) == SIZE + 16  # the whole file and a 16-byte range
    assert int(rows["alice"]["edge_sent"]) > 0 and int(rows["alice"]["reported_from_edge"]) > 0
    assert int(rows["bob"]["reported_from_peers"]) > 0 and int(rows["alice"]["reported_uploaded"]) > 0
    assert "mallory" not in rows


async def test_an_edge_stops_holding_plaintext_when_the_origin_restarts_protecting_the_file(tmp_path, nodes, published, http):
    """An origin restarted with --protect republished the file with the same ``modified`` (its mtime had not changed
    and the dropped state was forgotten), so the edge refused the new manifest as "an older version" and served and
    kept the cached plaintext for good (found by the Roles audit).  A protection change is a later version."""
    secret = make_file(published / "films" / "secret.bin", SIZE)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
    key = published / ".edgeswarm" / "origin.key"
    edge, edge_cache = start_edge(nodes, tmp_path, origin, key, "edge")
    carol = bearer(issue(key, "carol", "/films/"))
    async with http.get(edge.url + "/films/secret.bin", headers=carol) as r:
        assert r.status == 200 and sha(await r.read()) == sha(secret)
    assert plaintext_on_disk(edge_cache, secret)  # cached as it was published: in the clear

    origin.stop()
    origin.args = [*origin.args, "--protect", "films/*"]
    origin.port = int(origin.url.rsplit(":", 1)[1])  # the edge's parent URL stays right
    origin.start()
    deadline = time.monotonic() + 20
    while True:
        async with http.get(edge.url + "/manifest/films/secret.bin", headers=carol) as r:
            doc = await r.json()
        if "protected" in doc["manifest"]:
            break
        assert time.monotonic() < deadline, f"the edge still holds the unprotected version: {doc['manifest']}"
        await asyncio.sleep(0.3)
    async with http.get(edge.url + "/films/secret.bin", headers=carol) as r:
        assert r.status == 200 and sha(await r.read()) == sha(secret)  # decrypted on the fly for the token holder
    assert plaintext_on_disk(edge_cache, secret) == []
    assert "older version" not in edge.log_path.read_text()


async def test_announces_refuse_bad_input_without_changing_state(tmp_path, nodes, deployment, http):
    origin, key, _, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    alice, bob = issue(key, "alice"), issue(key, "bob")
    async with http.get(edge.url + "/manifest/pub/readme.bin", headers=bearer(alice)) as r:
        cid = (await r.json())["id"]
    good = {"peer_id": "p1", "port": 7000, "content": cid, "pieces": 4, "have": "AA==", "uploaded": 0, "downloaded": 0, "event": "started"}

    async def announce(doc, token: str | None = alice, data: bytes | None = None) -> tuple[int, str]:
        kwargs = {"data": data} if data is not None else {"json": doc}
        async with http.post(edge.url + "/announce", headers=bearer(token) if token else {}, **kwargs) as r:
            return r.status, await r.text()

    assert (await announce(good, None))[0] == 401
    code, answer = await announce(good)
    assert code == 200 and json.loads(answer)["ticket"]
    before = (await status(http, edge.url))["p2p"]
    cases = [
        ({**good, "ip": "10.9.9.9"}, alice, "address"),  # claims an address
        ({**good, "url": "http://127.0.0.99:7000"}, alice, "address"),
        ({**good, "have": "!!!"}, alice, "have"),  # malformed bitfield
        ({**good, "pieces": 5}, alice, "pieces"),
        ({**good, "stats": {"edge": True}}, alice, "stats"),
    ]
    for doc, token, why in cases:
        code, text = await announce(doc, token)
        assert code in (400, 403) and why in text, (doc, code, text)
    code, _ = await announce(None, alice, b"{" + b" " * (100 * 1024) + b"}")
    assert code == 413  # oversized body
    code, _ = await announce(None, alice, b"\xff\xfe not json")
    assert code == 400
    async with http.get(f"{edge.url}/piece/{cid}/99", headers=bearer(alice)) as r:
        assert r.status == 404
    async with http.get(f"{edge.url}/piece/{cid}/-1", headers=bearer(alice)) as r:
        assert r.status == 400
    assert (await status(http, edge.url))["p2p"] == before
    assert (await announce(good, bob))[0] == 200  # the same peer id under another user is another peer, not a takeover
    assert (await status(http, edge.url))["p2p"]["users"] == {"alice": 1, "bob": 1}
    assert "Traceback" not in (tmp_path / "logs" / "edge.log").read_text()


async def test_a_swarm_ticket_never_outlives_the_token_it_was_issued_for(tmp_path, nodes, deployment, http):
    """A token with seconds left got a ticket of max(60 s, three announce intervals): 15 minutes at the defaults, during
    which `edgeswarm get` finished whole files from other users' peers while the edge answered it 401 (an adversarial
    session)."""
    origin, key, _, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    long, short = issue(key, "alice"), issue(key, "alice", "/", "20s")
    async with http.get(edge.url + "/manifest/pub/readme.bin", headers=bearer(long)) as r:
        cid = (await r.json())["id"]
    doc = {"peer_id": "p1", "port": 7000, "content": cid, "pieces": 4, "have": "AA==", "uploaded": 0, "downloaded": 0, "event": "started"}
    lives = []
    for token in (long, short):
        async with http.post(edge.url + "/announce", headers=bearer(token), json=doc) as r:
            assert r.status == 200
            ticket = (await r.json())["ticket"]
        claims = json.loads(base64.urlsafe_b64decode(ticket.split(".")[1] + "=="))
        lives.append(claims["exp"] - time.time())
    assert lives[0] >= 55 and lives[1] <= 20, lives  # 60 s at this edge's 1 s interval; the token's 20 s at most


async def test_a_have_stream_ends_when_the_ticket_it_was_opened_with_expires(tmp_path, nodes, deployment, http):
    """A HAVE stream opened with a valid ticket ran for as long as its subscriber stayed: a user whose token had
    expired went on learning what another user's peer held (an adversarial session).  It ends within a heartbeat of
    the ticket's expiry; a live subscriber opens it again with its newest ticket."""
    origin, key, _, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    args = ("--cache", str(tmp_path / "alice"), "--edge", edge.url, "--listen", "127.0.0.11:0", "--gateway", "127.0.0.1:0")
    alice = nodes.start("peer", *args, "--token", issue(key, "alice"), name="alice")
    async with http.post(alice.urls["gateway"] + "/pub/readme.bin") as r:
        assert r.status == 202
    await wait_complete(http, alice)
    async with http.get(edge.url + "/manifest/pub/readme.bin", headers=bearer(issue(key, "bob"))) as r:
        cid = (await r.json())["id"]
    soon = tokens.issue(load_private_key(key), "bob", "/", 60, now=time.time() - 56)  # expires in 4 s
    doc = {"peer_id": "b1", "port": 7000, "content": cid, "pieces": 4, "have": "AA==", "uploaded": 0, "downloaded": 0, "event": "started"}
    async with http.post(edge.url + "/announce", headers=bearer(soon), json=doc) as r:
        assert r.status == 200, await r.text()
        ticket = (await r.json())["ticket"]
    expires = json.loads(base64.urlsafe_b64decode(ticket.split(".")[1] + "=="))["exp"]
    headers = {**bearer(ticket), "X-Edgeswarm-Peer": "b1", "Accept": "application/x-ndjson"}
    lines = []
    async with http.get(f"{alice.urls['upload']}/have/{cid}", headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as r:
        assert r.status == 200, await r.text()
        with contextlib.suppress(TimeoutError):  # the old code: the stream never ends
            async with asyncio.timeout(expires - time.time() + 25):
                async for line in r.content:
                    lines.append(line)
    ended = time.time()
    assert lines and b'"bitfield"' in lines[0]  # the snapshot
    assert ended < expires + 18, f"the stream outlived its ticket by {ended - expires:.0f} s"  # a heartbeat (10 s), and slack
    async with http.get(f"{alice.urls['upload']}/have/{cid}", headers=headers) as r:
        assert r.status == 401  # and it is not opened again with that ticket


async def test_a_peer_takes_tickets_of_its_edges_former_key_until_they_expire(tmp_path, nodes, deployment, http):
    """An edge rebuilt with an empty cache signs tickets with a new key.  A peer that learned it forgot the old one, and
    refused a neighbour's valid ticket every 2 s until the neighbour's next announce, up to 300 s, which then took
    everything from the edge (an adversarial session).  The key a new one replaces is kept beside it."""
    origin, key, _, public = deployment
    edge, cache = start_edge(nodes, tmp_path, origin, key)
    port = edge.url.rsplit(":", 1)[1]
    args = ("--cache", str(tmp_path / "alice"), "--edge", edge.url, "--listen", "127.0.0.11:0", "--gateway", "127.0.0.1:0")
    alice = nodes.start("peer", *args, "--token", issue(key, "alice"), name="alice")
    async with http.post(alice.urls["gateway"] + "/pub/readme.bin") as r:
        assert r.status == 202
    await wait_complete(http, alice)
    async with http.get(origin.url + "/manifest/pub/readme.bin") as r:
        cid = (await r.json())["id"]
    old = tokens.issue_ticket(load_private_key(cache / "swarm.key"), "b1", "bob", cid, 600)
    piece = f"{alice.urls['upload']}/piece/{cid}/0"
    headers = {"X-Edgeswarm-Peer": "b1"}
    async with http.get(piece, headers={**headers, **bearer(old)}) as r:
        assert r.status == 200 and public.startswith(await r.read())
    edge.stop()
    (cache / "swarm.key").unlink()  # rebuilt: a new key, and a neighbour's ticket signed with it teaches alice that key
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--listen", f"127.0.0.1:{port}")
    new = tokens.issue_ticket(load_private_key(cache / "swarm.key"), "c1", "carol", cid, 600)
    deadline = time.monotonic() + 30
    while True:  # alice asks its edge for its key again at most every 10 s
        async with http.get(piece, headers={"X-Edgeswarm-Peer": "c1", **bearer(new)}) as r:
            if r.status == 200:
                break
            assert r.status == 401 and time.monotonic() < deadline, await r.text()
        await asyncio.sleep(1)
    async with http.get(piece, headers={**headers, **bearer(old)}) as r:
        assert r.status == 200, await r.text()  # 401 "not signed by any of this peer's edges" before


async def test_a_wedged_edge_never_holds_a_peers_announces_to_its_other_edge(tmp_path, nodes, deployment, http):
    """A peer fetched the swarm-ticket key of each edge it held none of before every announce round, and waited: with
    one of its two edges wedged (the kernel takes its connections, nothing answers), every round, a new content's first
    announce among them, waited for that edge's 5 s timeout (a session's finding).  The keys are fetched beside the
    announces: alice is handed out before the wedged edge's fetch has even failed."""
    origin, key, _, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)
    async with http.get(origin.url + "/manifest/pub/readme.bin") as r:
        cid = (await r.json())["id"]
    with socket.create_server(("127.0.0.1", 0)) as wedged:
        wedged_url = f"http://127.0.0.1:{wedged.getsockname()[1]}"
        args = ("--cache", str(tmp_path / "alice"), "--edge", edge.url, "--edge", wedged_url, "--listen", "127.0.0.11:0")
        alice = nodes.start("peer", *args, "--gateway", "127.0.0.1:0", "--token", issue(key, "alice"), name="alice")
        alice_id = (await status(http, alice.urls["gateway"]))["peer_id"]
        async with http.post(alice.urls["gateway"] + "/pub/readme.bin") as r:
            assert r.status == 202
        bob = bearer(issue(key, "bob"))
        doc = {"peer_id": "b1", "port": 7000, "content": cid, "pieces": 4, "have": "AA=="}
        doc |= {"uploaded": 0, "downloaded": 0, "event": "started"}

        async def handed_out() -> bool:
            async with http.post(edge.url + "/announce", headers=bob, json=doc) as r:
                assert r.status == 200, await r.text()
                return any(p["peer_id"] == alice_id for p in (await r.json())["peers"])

        await until(handed_out, 30, "alice handed out by its edge")
        assert f"no swarm-ticket key from {wedged_url}" not in alice.log_text()  # its announce waited for that before
        await until(lambda: asyncio.sleep(0.2, f"from {wedged_url}" in alice.log_text()), 30, "the wedged edge's key fetch failed")


class EdgeAnHourAhead(DoubleServer):
    """An edge whose clock runs an hour ahead of its peers' (theirs an hour slow): a proxy to a real edge that signs the
    tickets of its announce answers an hour later, with the edge's own key."""

    HOP = frozenset({"connection", "content-length", "date", "keep-alive", "server", "transfer-encoding"})

    def __init__(self, upstream: str, key: Path):
        self.upstream, self.key = upstream, key

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    def later(self, ticket: str) -> str:
        import jwt

        claims = jwt.decode(ticket, options={"verify_signature": False})
        claims |= {"iat": claims["iat"] + 3600, "exp": claims["exp"] + 3600}
        return jwt.encode(claims, load_private_key(self.key), algorithm="EdDSA")

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", *self.HOP}}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.request(request.method, self.upstream + request.raw_path, headers=headers, data=await request.read()) as r,
        ):
            body, status, keep = await r.read(), r.status, {k: v for k, v in r.headers.items() if k.lower() not in self.HOP}
        if request.path == "/announce" and status == 200:
            doc = json.loads(body)
            for answer in doc.get("contents", {}).values():
                if "ticket" in answer:
                    answer["ticket"] = self.later(answer["ticket"])
            body = json.dumps(doc).encode()
        return web.Response(status=status, body=body, headers=keep)


async def test_a_peer_whose_clock_is_slow_takes_its_neighbours_tickets_by_its_edges_clock(tmp_path, nodes, deployment, http):
    """A peer whose clock ran more than 5 s behind its edge's refused every neighbour's swarm ticket, 401 "not valid
    yet", and uploaded nothing, with no line in its log (an adversarial session: 10 s slow, or an hour).  It reads its
    edge's clock off the tickets the edge issues to it, judges that edge's tickets by it, and says the gap once."""
    origin, key, _, public = deployment
    edge, cache = start_edge(nodes, tmp_path, origin, key)
    async with EdgeAnHourAhead(edge.url, cache / "swarm.key") as ahead:
        args = ("--cache", str(tmp_path / "alice"), "--edge", ahead.url, "--listen", "127.0.0.11:0", "--gateway", "127.0.0.1:0")
        alice = nodes.start("peer", *args, "--token", issue(key, "alice"), name="alice")
        async with http.post(alice.urls["gateway"] + "/pub/readme.bin") as r:
            assert r.status == 202
        await wait_complete(http, alice)
        async with http.get(origin.url + "/manifest/pub/readme.bin") as r:
            cid = (await r.json())["id"]
        piece, swarm_key = f"{alice.urls['upload']}/piece/{cid}/0", load_private_key(cache / "swarm.key")

        async def read() -> float | None:  # once alice has announced: none before the fix
            return (await status(http, alice.urls["gateway"]))["edges"][0].get("clock_ahead_s")

        assert abs(await until(read, 30, "alice to read its edge's clock") - 3600) < 5
        log = tmp_path / "logs" / "alice.log"
        said = [line for line in log.read_text().splitlines() if " WARNING " in line]
        assert len(said) == 1 and "clock is 3600 s behind edge" in said[0] and "set the clock (NTP)" in said[0], said
        fresh = tokens.issue_ticket(swarm_key, "b1", "bob", cid, 60, now=time.time() + 3600)  # what the edge gives bob
        async with http.get(piece, headers={"X-Edgeswarm-Peer": "b1", **bearer(fresh)}) as r:
            assert r.status == 200 and public.startswith(await r.read())  # 401 "not valid yet (issued 3600 s …" before
        stale = tokens.issue_ticket(swarm_key, "b1", "bob", cid, 60, now=time.time())  # good by alice's clock, not the edge's
        for _ in range(3):
            async with http.get(piece, headers={"X-Edgeswarm-Peer": "b1", **bearer(stale)}) as r:
                assert r.status == 401 and "expired" in await r.text()
        said = [line for line in log.read_text().splitlines() if "refused a neighbour's swarm ticket" in line]
        assert len(said) == 1 and "by that edge's clock (this machine's is 3600 s behind it)" in said[0], said


async def test_get_with_origin_key_refuses_an_edge_that_signs_with_another_key(tmp_path, nodes, published, http):
    """`get` had no --origin-key: run without a --cache it trusted whatever key the edge served, and wrote a forging
    edge's bytes saying "every piece verified" (an adversarial session).  A forger here is an origin of its own with
    another key, serving other bytes at the same path."""
    data = make_file(published / "os.img", SIZE)
    real = nodes.start("origin", "--publish", str(published), name="real")
    forged_dir = tmp_path / "forged"
    make_file(forged_dir / "os.img", SIZE)
    forger = nodes.start("origin", "--publish", str(forged_dir), "--state", str(tmp_path / "forger-state"), name="forger")
    pinned = tmp_path / "origin.pub"
    pinned.write_bytes(curl(real.url + "/origin-key").stdout)
    assert b"PUBLIC KEY" in pinned.read_bytes()

    out = tmp_path / "out" / "os.img"
    refused = get(forger.url + "/os.img", out, "--origin-key", str(pinned))
    assert refused.returncode == 1 and "not signed by the pinned origin key" in refused.stderr, refused.stderr
    assert not out.exists() and "Traceback" not in refused.stderr
    ok = get(real.url + "/os.img", out, "--origin-key", str(pinned))
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes() == data and ok.stdout.strip().endswith("every piece verified"), ok.stdout
    unpinned = get(forger.url + "/os.img", tmp_path / "other.img")  # trust on first use: it says whose key it checked against
    assert unpinned.returncode == 0 and "against the origin key the edge served" in unpinned.stdout, unpinned.stdout


class SlowKeys(DoubleServer):
    """A parent in front of the origin whose ``/key`` answers come a second late; it counts them."""

    def __init__(self, upstream: str):
        self.upstream, self.keys = upstream, 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/key/"):
            self.keys += 1
            await asyncio.sleep(1.0)
        headers = {k: v for k, v in request.headers.items() if k != "Host"}
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(self.upstream + request.raw_path, headers=headers) as r:
            keep = {k: v for k, v in r.headers.items() if k in ("Content-Type", "ETag")}
            return web.Response(status=r.status, body=await r.read(), headers=keep)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("GET", "/{tail:.*}", self.handle)


async def test_a_protected_files_key_is_fetched_once_and_a_withdrawn_versions_key_makes_the_read_ask_again(
    tmp_path, nodes, deployment, published, http
):
    """Twenty requests at once for a protected file made twenty /key requests to a slow parent; and a child holding
    the manifest of a version its parent no longer publishes answered 502 "refused the key ... 404" for its whole
    --revalidate window, where a piece's 404 makes the next read ask again (an adversarial session)."""
    origin, key, secret, _ = deployment
    alice = bearer(issue(key, "alice", "/films/"))

    async def read(edge) -> tuple[int, bytes]:
        async with http.get(edge.url + "/films/secret.bin", headers=alice) as r:
            return r.status, await r.read()

    async with SlowKeys(origin.url) as parent:
        child, _ = start_edge(nodes, tmp_path, parent, key, "child")
        assert await asyncio.gather(*(read(child) for _ in range(20))) == [(200, secret)] * 20
        assert parent.keys <= (os.cpu_count() or 1)  # one per worker process (--workers: the cores), not one per request
        late, _ = start_edge(nodes, tmp_path, parent, key, "late", "--revalidate", "60")
        async with http.get(late.url + "/manifest/films/secret.bin", headers=alice) as r:  # the manifest, not the key
            old = (await r.json())["id"]
        newer = make_file(published / "films" / "secret.bin", SIZE)  # the origin publishes a new version
        deadline = time.monotonic() + 20
        while True:  # its scan
            async with http.get(origin.url + "/manifest/films/secret.bin", headers=alice) as r:
                if r.status == 200 and (await r.json())["id"] != old:
                    break
            assert time.monotonic() < deadline, "the origin did not publish the new version"
            await asyncio.sleep(0.2)
        # the key of the version it held is a 404 upstream: nothing went out yet, so the read asks for the new version
        assert await read(late) == (200, newer)  # (a 404 for a file that is there, before: final to a player)


async def test_ledger_in_postgresql(tmp_path, nodes, deployment, pg_database, http):  # noqa: F811 - the fixture
    origin, key, _, public = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--ledger", pg_database)
    erin = issue(key, "erin", "/pub/")
    for _ in range(2):
        assert sha(curl("-H", f"Authorization: Bearer {erin}", edge.url + "/pub/readme.bin").stdout) == sha(public)
    nodes.stop()
    rows = usage_csv(pg_database, "user")
    assert int(rows["erin"]["edge_sent"]) == 2 * SIZE
    assert int(usage_csv(pg_database, "content")["pub/readme.bin"]["edge_sent"]) == 2 * SIZE


def test_origin_config_file_and_bad_options(tmp_path, published):
    make_file(published / "a.bin", 1000)
    bad = tmp_path / "bad.yaml"
    bad.write_text("protect: films/*\n")  # a string, not a list
    done = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(published), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "list" in done.stderr and "Traceback" not in done.stderr
    bad.write_text("protekt: [x]\n")
    done = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(published), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "unknown option" in done.stderr
    # a name given twice (the second was dropped) and an empty glob (refused as --protect "") are refused too
    for text, said in (("tls-cert: a.pem\ntls_cert: b.pem\n", "name one option: give it once"), ('protect: [""]\n', "none empty")):
        bad.write_text(text)
        cmd = [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(published), "--config", str(bad)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "origin", "--publish", str(published), "--tls-cert", str(tmp_path / "none.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--tls-key" in done.stderr


async def test_config_file_protects(tmp_path, nodes, published, http):
    plain = make_file(published / "films" / "a.bin", SIZE)
    config = tmp_path / "origin.yaml"
    config.write_text("protect: ['films/*']\nscan_interval: 0.2\n")
    origin = nodes.start("origin", "--publish", str(published), "--config", str(config))
    async with http.get(origin.url + "/manifest/films/a.bin") as r:
        doc = await r.json()
    assert "protected" in doc["manifest"]
    async with http.get(origin.url + f"/piece/{doc['id']}/0") as r:
        assert await r.read() != plain[: 256 * 1024]
    async with http.get(origin.url + "/films/a.bin") as r:
        assert r.status == 401  # plaintext only for a token, at the origin too
    token = issue(published / ".edgeswarm" / "origin.key", "ops", "/films/")
    async with http.get(origin.url + "/films/a.bin", headers=bearer(token)) as r:
        assert sha(await r.read()) == sha(plain)
    assert os.stat(published / ".edgeswarm" / "catalog.json").st_mode & 0o077 == 0  # it holds content keys


@pytest.mark.alone  # restart timing: failed beside other files' daemons, not alone
async def test_the_ledger_counts_each_byte_once_across_an_edge_restart(tmp_path, nodes, deployment, http):
    origin, key, _, _ = deployment
    port = free_port()  # the peers must find the restarted edge where it was
    edge, cache = start_edge(nodes, tmp_path, origin, key, "edge", "--listen", f"127.0.0.1:{port}", "--upload-limit", "1MB/s")

    def peer(name: str, addr: str):
        args = ("--cache", str(tmp_path / name), "--edge", edge.url, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0")
        return nodes.start("peer", *args, "--token", issue(key, name, "/pub/"), name=name)

    alice, bob = peer("alice", "127.0.0.21"), peer("bob", "127.0.0.22")
    for p in (alice, bob):
        async with http.post(p.urls["gateway"] + "/pub/readme.bin") as r:
            assert r.status == 202
        await wait_complete(http, p)
    edge.stop()
    edge.start()
    await asyncio.sleep(3)  # both peers re-announce to the new edge process
    curl_alice = curl(
        "-H", f"Authorization: Bearer {issue(key, 'alice', '/pub/')}", edge.url + "/pub/readme.bin"
    )  # alice, without her peer
    assert len(curl_alice.stdout) == SIZE
    got = {"alice": await status(http, alice.urls["gateway"]), "bob": await status(http, bob.urls["gateway"])}
    for p in (alice, bob):
        p.stop()  # their last announces, with the last bytes, reach the edge before it stops
    nodes.stop()
    rows = usage_csv(str(cache / "ledger.sqlite"))
    for name, st in got.items():
        kinds = st["received_by_kind"]
        assert int(rows[name]["reported_from_edge"]) == kinds.get("edge", 0)
        assert int(rows[name]["reported_from_peers"]) == kinds.get("peer-same-region", 0) + kinds.get("peer-other-region", 0)
        assert int(rows[name]["reported_uploaded"]) == st["uploaded_to_peers"]
        with_curl = SIZE if name == "alice" else 0
        # what the edge measured, across both of its lives: what the peer took from it, and at most the pieces it had in
        # flight from the edge (its edge workers' - as many as EDGE_PIPELINE while the edge is its one source and its
        # answers' heads come 20 ms or more late, as on a loaded machine - and its /seed ask) when a peer's copies
        # completed the file and the download stopped: sent, billed, and dropped by the peer unread
        excess = int(rows[name]["edge_sent"]) - (kinds.get("edge", 0) + with_curl)
        assert 0 <= excess <= (EDGE_PIPELINE + 1) * PIECE, (name, excess)
        assert rows[name]["flags"] == ""  # her curl is billed, and does not contradict what her peer reported
    assert int(rows["bob"]["reported_from_peers"]) > 0


async def test_a_peer_whose_token_expires_ends_its_players_read_at_once(tmp_path, nodes, deployment, published, http):
    """The player's read stalled for the whole read timeout (30 s) once the peer's token expired mid-film, while the
    peer asked the edges once a second (an adversarial session): once every edge refuses the token, the read ends (its
    connection cut, the answer having begun), and the peer's log says why.  A new request is a 403 saying so."""
    origin, key, _, _ = deployment
    film = make_file(published / "pub" / "film.bin", 12 * PIECE)
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--upload-limit", "400kB/s")
    soon = tokens.issue(load_private_key(key), "alice", "/", 60, now=time.time() - 60 - tokens.LEEWAY + 5)  # refused in 5 s
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "peer"), "--edge", edge.url, "--token", soon, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"),
    )
    started, got = time.monotonic(), b""
    with contextlib.suppress(aiohttp.ClientPayloadError):
        async with http.get(peer.urls["gateway"] + "/pub/film.bin") as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                got += chunk
    assert len(got) < len(film) and film.startswith(got)
    assert time.monotonic() - started < 20, "the read waited for its timeout"
    assert "this peer's token is refused; renew it and restart the peer" in peer.log_text()
    async with http.get(peer.urls["gateway"] + "/pub/film.bin", headers={"Range": f"bytes={len(got)}-"}) as r:
        assert r.status == 403, "the refusal of a new read, whether its manifest or its pieces are refused"
        assert (await r.text()).strip().endswith("renew it and restart the peer") and "WWW-Authenticate" not in r.headers


def test_get_takes_a_urls_token_and_asks_a_protected_files_key_before_its_pieces(tmp_path, nodes, deployment):
    """`get URL?token=T` dropped the token with the query: a --require-token edge said "send ... ?token=TOKEN", which
    the user had, and printed it in the clear.  And a protected file without a token came down whole (30 MB) before its
    key was refused (an adversarial session)."""
    origin, key, secret, _ = deployment
    edge, _ = start_edge(nodes, tmp_path, origin, key)  # --require-token
    alice = issue(key, "alice", "/films/")
    cmd = [sys.executable, "-m", "edgeswarm", "get", f"{edge.url}/films/secret.bin?token={alice}", "-o", str(tmp_path / "s.bin")]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert sha((tmp_path / "s.bin").read_bytes()) == sha(secret) and alice not in got.stderr + got.stdout
    twice = subprocess.run([*cmd, "--token", "another.one.here"], capture_output=True, text=True, timeout=60)
    assert twice.returncode == 2 and "two different tokens" in twice.stderr and alice not in twice.stderr, twice.stderr
    # a token for another path: the edge's reason, not its answer for the /edges a router would have (it said "not /edges")
    bob = issue(key, "bob", "/pub/")
    cmd = [sys.executable, "-m", "edgeswarm", "get", f"{edge.url}/films/secret.bin", "-o", str(tmp_path / "b.bin"), "--token", bob]
    scoped = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert scoped.returncode == 1 and "/films/secret.bin" in scoped.stderr and "/edges" not in scoped.stderr, scoped.stderr

    open_edge = nodes.start(
        "edge", "--cache", str(tmp_path / "open"), "--parent", origin.url, "--token", issue(key, "node-open"), name="open"
    )
    cache = tmp_path / "get-cache"
    cmd = [
        sys.executable,
        "-m",
        "edgeswarm",
        "get",
        f"{open_edge.url}/films/secret.bin",
        "-o",
        str(tmp_path / "t.bin"),
        "--cache",
        str(cache),
    ]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "a token is required" in refused.stderr, refused.stderr
    assert not list(cache.rglob("*.piece")), "the pieces came down before the key was refused"


async def test_a_peer_without_a_token_tells_its_player_what_fixes_a_refusal(tmp_path, nodes, deployment, http):
    """A peer started without --token passed on the edge's 'send Authorization: Bearer TOKEN, or ?token=TOKEN', and a
    player that then sent one got the same answer, since the gateway sends the peer's own token only (an adversarial
    session).  It says what works: a token for the peer, in a 403 (a 401 asks the player for credentials).  For the
    manifest (a --require-token edge) and for the key of a protected file (an open edge)."""
    origin, key, _, _ = deployment
    closed, _ = start_edge(nodes, tmp_path, origin, key, "closed")
    opened = nodes.start(
        "edge", *("--cache", str(tmp_path / "open"), "--parent", origin.url, "--p2p", "--token", issue(key, "node-open")), name="open"
    )
    alice = issue(key, "alice")
    for n, (edge, path) in enumerate(((closed, "/pub/readme.bin"), (opened, "/films/secret.bin"))):
        cache = str(tmp_path / f"peer{n}")
        peer = nodes.start("peer", "--cache", cache, "--edge", edge.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
        for headers, query in (({}, ""), (bearer(alice), ""), ({}, f"?token={alice}")):  # the player's token is not used
            async with http.get(peer.urls["gateway"] + path + query, headers=headers) as r:
                said = (await r.text()).strip()
                assert r.status == 403 and said.endswith(": this peer has no token: give it one with --token or --token-file"), said
                assert "WWW-Authenticate" not in r.headers, "an invitation to send a token the gateway does not use"


async def test_a_background_download_whose_token_expires_stops_asking_and_says_why(tmp_path, nodes, deployment, published, http):
    """A POSTed download whose token expired asked its only edge for a piece a second, for good (each a line in the
    edge's log), while a new POST answered 202 'complete: false' and /status said nothing (an adversarial session).
    The edge is left alone for a while (engine._hopeless), and /status and the POST say why and what to do."""
    origin, key, _, _ = deployment
    make_file(published / "pub" / "film.bin", 24 * PIECE)
    edge, _ = start_edge(nodes, tmp_path, origin, key, "edge", "--upload-limit", "400kB/s")  # 15 s for the film
    soon = tokens.issue(load_private_key(key), "alice", "/", 60, now=time.time() - 60 - tokens.LEEWAY + 6)  # refused in 6 s
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "peer"), "--edge", edge.url, "--token", soon, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"),
    )
    gateway = peer.urls["gateway"]
    async with http.post(gateway + "/pub/film.bin") as r:
        assert r.status == 202

    async def refused() -> dict | None:
        st = await status(http, gateway)
        return st if "token_error" in st else None

    st = await until(refused, 30, "the peer's /status to say its token is refused")
    assert "token expired" in st["token_error"] and st["token_error"].endswith("renew it and restart the peer")
    assert not st["swarms"][0]["complete"]

    def asked() -> int:
        return sum("/piece/" in line and "-> 401" in line for line in edge.log_text().splitlines())

    before = asked()
    await asyncio.sleep(6)
    assert asked() - before <= 1, "the edge was asked again and again"  # a second each before, for good
    async with http.post(gateway + "/pub/film.bin") as r:  # 403 once the manifest is revalidated, else 202
        assert "this peer's token is refused; renew it and restart the peer" in await r.text()
