"""Lying and bloating upstreams (issue 9, defects 2 and 3): what edges, peer gateways and `get` refuse.

The test double ``FakeParent`` stands where a parent (for an edge) or an edge
(for a peer and `get`) would.  It serves real manifests, signed with the
origin's own signing code, and the real pieces; each test makes it lie in
one way: the signed manifest of another path, an older signed version after
a newer one, or an endless chunked body.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import DoubleServer, run_cli, sha, status
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_swarm import REGIONS, CorruptingPeer, start_edge, start_peer, wait_complete  # noqa: F401  REGIONS: for the regions fixture

from edgeswarm.policy import bitfield
from edgeswarm.protocol.manifest import Manifest, SignedManifest, hash_pieces, piece_size_for
from edgeswarm.protocol.wire import manifest_response
from edgeswarm.trust.signing import public_pem

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ENDLESS = 512 * MiB  # what one "endless" answer sends at most: far past every cap, and past the RSS bound
RSS_BOUND = 300 * MiB


class FakeParent(DoubleServer):
    """Real signed manifests and pieces, served as the test says (``answers``: path -> manifest; ``endless``)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.key = Ed25519PrivateKey.generate()
        self.by_id: dict[str, tuple[SignedManifest, bytes]] = {}
        self.answers: dict[str, SignedManifest] = {}
        self.endless: set[str] = set()  # "manifest", "piece": answered with an endless chunked body
        self.oversized = False  # /manifest answered with a 2 MiB body that says so in Content-Length
        self.endless_answers = 0
        self.hung = False  # /manifest never answers (a stalled edge)
        self.content_asks = 0  # /content/<id> requests
        self.hangs: set[str] = set()  # "piece": /piece never answers (an edge stalled after it gave the manifest)
        self.slow = 0.0  # seconds /manifest takes to answer (a slow parent)
        self.manifest_asks = 0

    def publish(self, path: str, data: bytes, modified: int) -> SignedManifest:
        """Sign ``data`` as ``path`` the way the origin does, and answer ``/manifest/path`` with it."""
        file = self.workdir / f"{len(self.by_id)}.bin"
        file.write_bytes(data)
        piece_size = piece_size_for(len(data))
        m = Manifest(path, len(data), "application/octet-stream", piece_size, hash_pieces(file, piece_size), modified)
        signed = SignedManifest.sign(m, self.key)
        self.by_id[signed.content_id] = (signed, data)
        self.answers[path] = signed
        return signed

    async def origin_key(self, _: web.Request) -> web.Response:
        return web.Response(body=public_pem(self.key.public_key()), content_type="application/x-pem-file")

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        self.manifest_asks += 1
        if self.hung:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.slow)
        if "manifest" in self.endless:
            return await self._endless(request)
        if self.oversized:
            return web.Response(body=b" " * (2 * MiB))
        signed = self.answers.get(request.match_info["path"])
        if signed is None:
            raise web.HTTPNotFound(text="not published")
        return manifest_response(request, signed.etag, signed.to_json())

    async def content(self, request: web.Request) -> web.Response:
        self.content_asks += 1
        if request.match_info["cid"] not in self.by_id:
            raise web.HTTPNotFound()
        signed, _ = self.by_id[request.match_info["cid"]]
        return manifest_response(request, signed.etag, signed.to_json())

    async def piece(self, request: web.Request) -> web.StreamResponse:
        if "piece" in self.hangs:
            await asyncio.sleep(3600)
        if "piece" in self.endless:
            return await self._endless(request)
        signed, data = self.by_id[request.match_info["cid"]]
        start, length = signed.manifest.piece_span(int(request.match_info["i"]))
        return web.Response(body=data[start : start + length])

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        self.endless_answers += 1
        return await stream_endless(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/origin-key", self.origin_key)
        app.router.add_get("/manifest/{path:.*}", self.manifest)
        app.router.add_get("/content/{cid}", self.content)
        app.router.add_get("/piece/{cid}/{i}", self.piece)


async def stream_endless(request: web.Request) -> web.StreamResponse:
    """A chunked 200 that goes on (up to ENDLESS bytes) until the reader hangs up."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"\0" * MiB
    try:
        for _ in range(ENDLESS // MiB):
            await resp.write(chunk)
    except (ConnectionError, RuntimeError):  # the victim hung up: what a bounded reader does
        pass
    return resp


class RssWatch:
    """The peak VmRSS of a process, sampled from /proc while the test runs."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0

    def sample(self) -> None:
        with open(f"/proc/{self.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        self.peak = max(self.peak, kb * 1024)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> RssWatch:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        self.sample()


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes | None]:
    """(status, body); body None if the transfer was cut short after the headers."""
    async with http.get(url) as resp:
        try:
            return resp.status, await resp.read()
        except aiohttp.ClientPayloadError:
            return resp.status, None


def get(url: str, out: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeswarm", "get", url, "-o", str(out), "--cache", str(cache), "--listen", "127.0.0.1:0"]
    # info logs: CI saw this get hang once more (2026-12-03: its loop idle in select, 0 bytes after 60 s); next time the
    # failure shows what it asked and heard before its stacks
    return run_cli([*cmd, "--log-level", "info"], timeout=60)


def edge_of(nodes, tmp_path: Path, parent: str, *extra: str):
    return nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", parent, *extra, name="edge")


def peer_of(nodes, tmp_path: Path, edge: str, *extra: str):
    args = ("--cache", str(tmp_path / "peer"), "--edge", edge, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0")
    return nodes.start("peer", *args, *extra, name="peer")


# -- defect 2: a manifest signed for another path, or an older version ----------------------


async def test_the_signed_manifest_of_another_path_is_refused_everywhere(tmp_path, nodes, http):
    async with FakeParent(tmp_path) as parent:
        b_data = b"b" * 300_000
        b = parent.publish("b.txt", b_data, 1_700_000_000)
        parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        parent.answers["a.txt"] = b  # validly signed, but for /b.txt
        edge, peer = edge_of(nodes, tmp_path, parent.url), peer_of(nodes, tmp_path, parent.url)
        for url in (edge.url, peer.urls["gateway"]):
            code, body = await fetch(http, url + "/a.txt")
            assert code == 502, (url, code, body[:200])
            assert b"bad manifest for a.txt" in body and b"'b.txt'" in body, body
        out = tmp_path / "a.out"
        proc = await asyncio.to_thread(get, parent.url + "/a.txt", out, tmp_path / "get")
        assert proc.returncode == 1, proc.stderr
        assert "manifest of 'b.txt', not of 'a.txt'" in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()
        assert "a.txt" not in [c["path"] for c in (await status(http, edge.url))["contents"]]  # nothing of b kept as a
        assert (await status(http, peer.urls["gateway"]))["swarms"] == []
        code, body = await fetch(http, peer.urls["gateway"] + "/b.txt")  # b itself is fine
        assert code == 200 and body == b_data


async def test_an_older_signed_version_after_a_newer_one_is_refused_everywhere(tmp_path, nodes, http):
    async with FakeParent(tmp_path) as parent:
        v1, v2 = b"1" * 300_000, b"2" * 300_000
        old = parent.publish("a.txt", v1, 1_700_000_000)
        new = parent.publish("a.txt", v2, 1_700_000_001)
        edge = edge_of(nodes, tmp_path, parent.url, "--revalidate", "0")
        peer = peer_of(nodes, tmp_path, parent.url)
        out = tmp_path / "a.out"
        for url in (edge.url, peer.urls["gateway"]):
            assert await fetch(http, url + "/a.txt") == (200, v2)
        proc = await asyncio.to_thread(get, parent.url + "/a.txt", out, tmp_path / "get")
        assert proc.returncode == 0 and out.read_bytes() == v2, proc.stderr

        parent.answers["a.txt"] = old  # roll back
        peer.stop()
        peer.start()  # a fresh revalidation, with v2 in its store
        for url in (edge.url, peer.urls["gateway"]):
            async with http.get(url + "/a.txt") as r:  # v1 refused: the newest version held is served
                assert (r.status, await r.read(), r.headers["ETag"]) == (200, v2, new.etag)
        proc = await asyncio.to_thread(get, parent.url + "/a.txt", out, tmp_path / "get")
        assert out.read_bytes() == v2, proc.stderr
        assert "older version of 'a.txt'" in proc.stderr
        for node in (edge, peer):
            assert "older version of 'a.txt'" in node.log_text()


async def test_an_older_version_of_one_path_leaves_the_parent_trusted_for_the_others(tmp_path, nodes, http):
    """A refused older version set the edge's only parent aside, so no other cached file was revalidated for up to a
    minute: the edge served their old versions meanwhile (found by an adversarial session).  It is that path's matter."""
    async with FakeParent(tmp_path) as parent:
        old = parent.publish("a.txt", b"1" * 300_000, 1_700_000_000)
        parent.publish("a.txt", b"2" * 300_000, 1_700_000_001)
        parent.publish("b.txt", b"b" * 300_000, 1_700_000_000)
        edge = edge_of(nodes, tmp_path, parent.url)
        for path in ("a.txt", "b.txt"):
            assert (await fetch(http, f"{edge.url}/{path}"))[0] == 200
        parent.answers["a.txt"] = old  # roll back one path
        for _ in range(5):
            assert await fetch(http, edge.url + "/a.txt") == (200, b"2" * 300_000)
            await asyncio.sleep(0.3)
        parent.publish("b.txt", b"B" * 300_000, 1_700_000_001)
        await asyncio.sleep(1.5)  # the edge's --revalidate (1 s)
        assert await fetch(http, edge.url + "/b.txt") == (200, b"B" * 300_000)
        assert "set aside" not in edge.log_text()


# -- defect 3: endless bodies ------------------------------------------------------------------


async def test_endless_manifest_and_piece_bodies_leave_edge_and_peer_bounded(tmp_path, nodes, http):
    async with FakeParent(tmp_path) as parent:
        parent.publish("a.bin", b"a" * 600_000, 1_700_000_000)
        edge, peer = edge_of(nodes, tmp_path, parent.url), peer_of(nodes, tmp_path, parent.url, "--read-timeout", "3")
        for what, cap in (("manifest", 1024 * 1024), ("piece", 262144)):
            parent.endless = {what}
            for node, url in ((edge, edge.url), (peer, peer.urls["gateway"])):
                before = parent.endless_answers
                async with RssWatch(node.proc.pid) as rss:
                    code, body = await fetch(http, url + "/a.bin")
                assert parent.endless_answers > before, "the double was never asked: the test proves nothing"
                assert rss.peak < RSS_BOUND, f"{node.role} reached {rss.peak / MiB:.0f} MiB on an endless {what}"
                if what == "manifest":
                    assert code == 502 and f"sent more than {cap} bytes".encode() in body, body[:300]
                else:  # an error, or a transfer cut short after the headers: never a wrong byte
                    assert code in (502, 504) or body is None, (code, body and body[:300])
            assert f"sent more than {cap} bytes" in edge.log_text() and f"sent more than {cap} bytes" in peer.log_text()
        parent.endless, parent.oversized = set(), True  # a Content-Length over the cap: refused before reading
        code, body = await fetch(http, edge.url + "/new.bin")  # not cached: nothing stale to fall back on
        assert code == 502 and b"sent more than 1048576 bytes for /manifest/new.bin (Content-Length 2097152)" in body, body
        parent.oversized = False  # and once the parent behaves, the file comes through
        assert await fetch(http, edge.url + "/a.bin") == (200, b"a" * 600_000)


class BloatingPeer(CorruptingPeer):
    """Announces that it holds everything, then answers every piece with an endless chunked body."""

    async def piece(self, request: web.Request) -> web.StreamResponse:
        self.served += 1
        return await stream_endless(request)


async def test_a_peer_with_endless_pieces_leaves_the_victim_bounded(tmp_path, nodes, origin, published, regions, http):
    data = b"".join(bytes([i]) * 262144 for i in range(8))
    (published / "f.bin").write_bytes(data)
    # a slow edge, so the victim keeps asking the double until it gives up on it (a seeding edge would be done first)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "256KB/s")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    evil = BloatingPeer(origin.url, "127.1.0.99")
    await evil.start(edge.url, cid, 8)
    try:
        victim = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "victim")
        async with RssWatch(victim.proc.pid) as rss:
            async with http.post(victim.urls["gateway"] + "/f.bin") as r:
                assert r.status == 202
            await wait_complete(http, [victim])
    finally:
        await evil.stop()
    assert evil.served > 0, "the double was never asked: the test proves nothing"
    assert rss.peak < RSS_BOUND, f"the victim reached {rss.peak / MiB:.0f} MiB"
    assert sha((await fetch(http, victim.urls["gateway"] + "/f.bin"))[1]) == sha(data)
    assert "sent more than 262144 bytes" in victim.log_text()


class TrackerProxy(DoubleServer):
    """An edge in front of a real one: every request passed on (pieces a second late, so that a download lasts),
    announces counted; a ``lying`` one answers them with an interval too large for a float and peers at ``victim``'s
    URL, with a path and a query of its choosing."""

    def __init__(self, upstream: str, lying: bool = False, victim: str = "", interval: object = 300):
        self.upstream, self.lying, self.victim, self.interval = upstream, lying, victim, interval
        self.announces = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/announce":
            self.announces += 1
            if self.lying:
                doc = await request.json()
                have = bitfield.encode(range(12), 12)
                peers = [{"peer_id": f"v{i}", "url": f"{self.victim}/x{i}?", "have": have, "region": None} for i in range(50)]
                contents = {c["content"]: {"peers": peers} for c in doc.get("contents", [doc])}
                return web.json_response({"interval": self.interval, "locality": "prefer", "region": None, "contents": contents})
        if request.path.startswith(("/piece/", "/seed/")):
            await asyncio.sleep(1.0)
        headers = {k: v for k, v in request.headers.items() if k not in ("Host", "Content-Length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.request(request.method, self.upstream + request.raw_path, headers=headers, data=body) as r,
        ):
            out = await r.read()
            keep = {k: v for k, v in r.headers.items() if k in ("Content-Type", "ETag", "Retry-After")}
            return web.Response(status=r.status, body=out, headers=keep)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


class Victim(DoubleServer):
    """A service that is no peer: it counts what it is asked, and answers 404."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=404, text="no such page\n")

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


@pytest.mark.parametrize("interval", [300, int("9" * 400)], ids=["victim", "overflow"])
async def test_an_edge_cannot_aim_peers_at_a_service_nor_stop_their_announces(interval, tmp_path, nodes, origin, published, regions, http):
    """An edge answering peers at any URL made each peer of its swarm send tens of requests a second to a service of
    its choosing, and an interval too large for a float silently ended the peer's announces to every edge, the honest
    ones too (an adversarial session)."""
    data = os.urandom(3 * MiB)  # 12 pieces
    (published / "f.bin").write_bytes(data)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    async with Victim() as victim, TrackerProxy(edge.url, True, victim.url, interval) as liar, TrackerProxy(edge.url) as honest:
        peer = nodes.start(
            "peer",
            *("--cache", str(tmp_path / "p"), "--edge", honest.url, "--edge", liar.url, "--listen", "127.1.0.6:0"),
            *("--gateway", "127.0.0.1:0"),
        )
        async with http.get(peer.urls["gateway"] + "/f.bin") as r:  # pieces a second each: the download lasts
            assert r.status == 200
            head = await r.content.readexactly(256 * 1024)
            await asyncio.sleep(1)
            before = honest.announces
            await asyncio.sleep(3)
            assert liar.announces >= 1 and victim.requests == 0, victim.requests
            assert honest.announces > before, "the peer stopped announcing to the honest edge"
            assert head + await r.read() == data
    assert "a tracker answer lists a peer at" in peer.log_text()


class Portal(DoubleServer):
    """An edge that sends everything to a login page (a captive portal, a broken load balancer)."""

    async def handle(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/login")

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


async def test_get_goes_on_with_its_other_edges_when_the_first_redirects_elsewhere(tmp_path, nodes, origin, published, regions):
    """`get PORTAL/f.bin --edge GOOD` ended at once on the portal's redirect, never trying GOOD, where a peer daemon
    given the same edges fell back (an adversarial session)."""
    data = os.urandom(MiB)
    (published / "f.bin").write_bytes(data)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge")
    out = tmp_path / "out.bin"
    async with Portal() as portal:
        cmd = [sys.executable, "-m", "edgeswarm", "get", f"{portal.url}/f.bin", "--edge", edge.url, "-o", str(out)]
        done = await asyncio.to_thread(run_cli, cmd, 60)
        alone = await asyncio.to_thread(run_cli, cmd[:5] + cmd[7:], 60)  # without another edge: it ends, saying why
    assert done.returncode == 0 and out.read_bytes() == data, done.stderr
    assert "neither a router nor the same file on another host: going on with the other --edge" in done.stderr
    assert alone.returncode == 1 and "neither a router nor the same file" in alone.stderr and "Traceback" not in alone.stderr
