"""BitTorrent clients: the origin's hybrid torrents, edges as web seeds, and the edge's BitTorrent tracker."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import libtorrent as lt
import pytest
from aiohttp import web
from conftest import DoubleServer, make_file, sha, status
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ports import free_port

from edgeswarm.policy.regions import Region
from edgeswarm.policy.tracker import PeerRecord
from edgeswarm.protocol import torrent
from edgeswarm.protocol.httpspec import is_authority
from edgeswarm.protocol.manifest import Manifest, hash_pieces, piece_size_for
from edgeswarm.roles import bttracker
from edgeswarm.roles.config import EdgeConfig
from edgeswarm.roles.edge import Edge
from edgeswarm.trust.protect import new_protection

MiB = 1024 * 1024
REGIONS = """\
regions:
  - {name: east, isp: att, networks: [127.1.0.0/16]}
  - {name: west, isp: verizon, networks: [127.2.0.0/16]}
"""


# -- the builder, sans daemons ------------------------------------------------------------
def manifest_of(path: Path, rel: str) -> Manifest:
    size = path.stat().st_size
    piece = piece_size_for(size)
    return Manifest(rel, size, "application/octet-stream", piece, hash_pieces(path, piece), int(path.stat().st_mtime))


def made(path: Path, rel: str, key: Ed25519PrivateKey) -> tuple[Manifest, torrent.Torrent]:
    m = manifest_of(path, rel)
    data = torrent.build(path.parent, path.name, m.size, m.piece_size, m.modified)
    return m, torrent.sign(data, m.content_id, key)


def test_a_torrent_is_hybrid_v1_v2_with_edgeswarm_piece_size(tmp_path):
    data = make_file(tmp_path / "clip.mp4", 3 * MiB + 123)
    m, t = made(tmp_path / "clip.mp4", "films/clip.mp4", Ed25519PrivateKey.generate())
    info = lt.bdecode(t.data)[b"info"]
    assert len(info[b"pieces"]) == 20 * m.piece_count  # v1: a SHA-1 per piece
    assert info[b"meta version"] == 2 and b"clip.mp4" in info[b"file tree"]  # v2 (BEP 52)
    assert info[b"piece length"] == m.piece_size and info[b"length"] == len(data) and info[b"name"] == b"clip.mp4"
    ti = lt.torrent_info(t.data)
    assert ti.info_hashes().has_v1() and ti.info_hashes().has_v2()
    assert (ti.info_hashes().v1.to_bytes(), ti.info_hashes().v2.to_bytes()) == (t.v1, t.v2)
    assert t.aria2_136 not in (t.v1, t.v2[:20])  # aria2 1.36 gets hybrid torrents' hash wrong (aria2 issue 1903)


def test_info_hashes_are_stable_and_web_seeds_do_not_change_them(tmp_path):
    make_file(tmp_path / "f.bin", MiB + 5)
    _, a = made(tmp_path / "f.bin", "f.bin", Ed25519PrivateKey.generate())
    _, b = made(tmp_path / "f.bin", "f.bin", Ed25519PrivateKey.generate())
    assert (a.v1, a.v2) == (b.v1, b.v2)  # the same bytes make the same torrent, whoever signs it
    handed = torrent.hand_out(a, ["http://e1/f.bin", "http://e2/f.bin", "http://e1/f.bin"], "http://e1/announce")
    doc = lt.bdecode(handed)
    assert doc[b"url-list"] == [b"http://e1/f.bin", b"http://e2/f.bin"] and doc[b"announce"] == b"http://e1/announce"
    ti = lt.torrent_info(handed)
    assert (ti.info_hashes().v1.to_bytes(), ti.info_hashes().v2.to_bytes()) == (a.v1, a.v2)
    assert lt.load_torrent_buffer(handed).url_seeds == ["http://e1/f.bin", "http://e2/f.bin"]
    make_file(tmp_path / "f.bin", MiB + 5)  # other bytes, other hashes
    _, c = made(tmp_path / "f.bin", "f.bin", Ed25519PrivateKey.generate())
    assert c.v1 != a.v1 and c.v2 != a.v2


def test_an_edge_accepts_only_the_origins_torrent_for_the_content_it_serves(tmp_path):
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    make_file(tmp_path / "f.bin", MiB)
    m, t = made(tmp_path / "f.bin", "f.bin", key)
    handed = torrent.hand_out(t, ["http://parent/f.bin"], "http://parent/announce")
    back = torrent.check(handed, m, m.content_id, key.public_key())
    assert (back.v1, back.v2) == (t.v1, t.v2) and torrent.seeds_of(back.data) == []  # the parent's seeds and tracker are not kept
    with pytest.raises(torrent.TorrentError, match="signature"):
        torrent.check(torrent.sign(t.data, m.content_id, stranger).data, m, m.content_id, key.public_key())
    with pytest.raises(torrent.TorrentError, match="not signed for content"):
        torrent.check(t.data, m, "f" * 64, key.public_key())
    make_file(tmp_path / "g.bin", MiB)  # a torrent of other bytes, with the signature of f.bin's
    other = lt.bdecode(torrent.build(tmp_path, "g.bin", MiB, m.piece_size, m.modified))
    other[torrent.SIGNED_KEY] = lt.bdecode(t.data)[torrent.SIGNED_KEY]
    with pytest.raises(torrent.TorrentError, match="signature"):
        torrent.check(lt.bencode(other), m, m.content_id, key.public_key())
    with pytest.raises(torrent.TorrentError, match="not a torrent"):
        torrent.check(b"d4:spam", m, m.content_id, key.public_key())


def test_magnet_links_name_both_hashes_and_the_web_seeds(tmp_path):
    make_file(tmp_path / "a b.bin", MiB)
    _, t = made(tmp_path / "a b.bin", "x/a b.bin", Ed25519PrivateKey.generate())
    seed = torrent.web_seed("http://edge:8080/", "x/a b.bin")
    assert seed == "http://edge:8080/x/a%20b.bin"
    uri = torrent.magnet(torrent.hand_out(t, [seed]))
    params = lt.parse_magnet_uri(uri)
    assert params.info_hashes.v1.to_bytes() == t.v1 and params.info_hashes.v2.to_bytes() == t.v2
    assert params.url_seeds == [seed] and params.name == "a b.bin"


def test_protected_and_empty_files_have_no_torrent(tmp_path):
    make_file(tmp_path / "f.bin", MiB)
    m = manifest_of(tmp_path / "f.bin", "f.bin")
    assert torrent.why_none(m) is None
    _, protection = new_protection()
    assert "protected" in torrent.why_none(Manifest("f.bin", 1, "x", m.piece_size, (m.pieces[0],), 1, protection))
    assert "empty" in torrent.why_none(Manifest("e.bin", 0, "x", m.piece_size, (), 1))


# -- the BitTorrent announce, sans daemons ------------------------------------------------------
def query(**params: bytes | str | int) -> str:
    return "&".join(f"{k}={quote(v if isinstance(v, bytes) else str(v).encode(), safe='')}" for k, v in params.items())


def test_announce_queries_carry_binary_hashes_and_bad_ones_say_which_parameter():
    h, pid = bytes(range(20)), b"-LT2110-" + bytes(range(200, 212))
    a = bttracker.parse(query(info_hash=h, peer_id=pid, port=6881, uploaded=1, downloaded=2, left=3, event="started"), 30)
    assert (a.info_hash, a.peer_id, a.port, a.uploaded, a.downloaded, a.left, a.event, a.numwant) == (h, pid, 6881, 1, 2, 3, "started", 30)
    assert bttracker.parse(query(info_hash=h, peer_id=pid, port=1, numwant=500), 30).event == "update"
    assert bttracker.parse(query(info_hash=h, peer_id=pid, port=1, numwant=5), 30).numwant == 5
    for bad, name in [
        (query(info_hash=h[:19], peer_id=pid, port=1), "info_hash"),
        (query(peer_id=pid, port=1), "info_hash"),
        (query(info_hash=h, peer_id=pid[:5], port=1), "peer_id"),
        (query(info_hash=h, peer_id=pid, port=0), "port"),
        (query(info_hash=h, peer_id=pid, port="x"), "port"),
        (query(info_hash=h, peer_id=pid, port=1, left=-1), "left"),
        (query(info_hash=h, peer_id=pid, port=1, event="bogus"), "event"),
        (query(info_hash=h, peer_id=pid, port="9" * 5000), "'port' must be an integer"),  # not Python's digit limit
        (query(info_hash=h, peer_id=pid, port=1, uploaded="1" * 20), "'uploaded' must be an integer"),
    ]:
        with pytest.raises(ValueError, match=name):
            bttracker.parse(bad, 30)


def test_scrapes_name_the_torrents_they_ask_about_and_are_answered_by_bep_48s_files():
    h, g = bytes(range(20)), bytes(range(1, 21))
    assert bttracker.parse_scrape(query(info_hash=h) + "&" + query(info_hash=g)) == [h, g]
    for bad, why in [
        ("", "names the torrents"),
        (query(info_hash=h[:19]), "20 bytes"),
        ("&".join([query(info_hash=h)] * 65), "at most 64"),
    ]:
        with pytest.raises(ValueError, match=why):
            bttracker.parse_scrape(bad)
    assert lt.bdecode(bttracker.scrape_answer({h: (2, 3)})) == {b"files": {h: {b"complete": 2, b"incomplete": 3}}}


def test_bittorrent_clients_are_kept_for_three_of_the_intervals_libtorrent_keeps():
    """libtorrent announces every 300 s at the most often: kept for 3 x --announce-interval, its clients left the swarm
    while they downloaded under an interval below 100 s (an adversarial session)."""
    assert bttracker.ttl(1.0) == bttracker.ttl(300.0) == 900.0
    assert bttracker.ttl(600.0) == 1800.0


def test_two_contents_of_the_same_bytes_and_name_keep_their_hashes_while_either_is_kept(tmp_path):
    """They share their info hashes; when one torrent was forgotten its hashes went, and the other's clients were
    answered "unknown torrent" though the edge still handed that torrent out (an adversarial session)."""
    key = Ed25519PrivateKey.generate()
    make_file(tmp_path / "a" / "clip.mp4", MiB)
    (tmp_path / "b").mkdir()
    shutil.copy2(tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4")
    (ma, ta), (mb, tb) = made(tmp_path / "a" / "clip.mp4", "a/clip.mp4", key), made(tmp_path / "b" / "clip.mp4", "b/clip.mp4", key)
    assert ta.announce_hashes == tb.announce_hashes and ma.content_id != mb.content_id
    index = torrent.announce_index([(mb.content_id, tb)])  # a's torrent forgotten, b's kept
    assert {index[h] for h in tb.announce_hashes} == {mb.content_id}


def test_a_host_header_is_a_url_authority_or_refused():
    """It becomes a torrent's web seed and tracker: `127.0.0.1:8080@evil.example` sent clients to evil.example."""
    for good in ("127.0.0.1:8080", "edge.example", "edge.example:80", "[::1]:8080", "[2001:db8::1]", "cdn_1.example"):
        assert is_authority(good), good
    for bad in ("127.0.0.1:8080@evil.example", "edge.example/x", "edge example", "edge:99999", "edge:0", "", "[::1", "a:b:c"):
        assert not is_authority(bad), bad


def test_announce_answers_are_compact_and_bencoded():
    east = Region("east", "att")
    recs = [
        PeerRecord("a", "http://127.1.0.1:6881", "127.1.0.1", east, {0}, 1),
        PeerRecord("b", "http://[::1]:51413", "::1", east, set(), 1),
        PeerRecord("c", "http://[::ffff:127.1.0.3]:7000", "::ffff:127.1.0.3", east, set(), 1),
    ]
    doc = lt.bdecode(bttracker.answer(300.0, recs, 1, 2))
    assert doc[b"interval"] == 300 and (doc[b"complete"], doc[b"incomplete"]) == (1, 2)
    assert doc[b"peers"] == bytes([127, 1, 0, 1]) + (6881).to_bytes(2, "big") + bytes([127, 1, 0, 3]) + (7000).to_bytes(2, "big")
    assert doc[b"peers6"] == bytes(15) + b"\x01" + (51413).to_bytes(2, "big")
    refused = lt.bdecode(bttracker.failure("no", 600))
    assert refused == {b"failure reason": b"no", b"retry in": 10}


# -- real clients against real daemons ---------------------------------------------------------
async def fetch(http, url: str) -> tuple[int, bytes, dict]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def session(interface: str) -> lt.session:
    """A libtorrent session on one loopback address: no DHT, LSD, UPnP or NAT-PMP, so it finds nothing on its own."""
    return lt.session(
        {
            "listen_interfaces": f"{interface}:0",
            "outgoing_interfaces": interface,
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": 0,
        }
    )


def add(ses: lt.session, data: bytes, save: Path, seed: bool = False) -> lt.torrent_handle:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(data)
    atp.save_path = str(save)
    if seed:
        atp.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(atp)


def on_disk(handle: lt.torrent_handle, path, data: bytes, timeout: float = 10.0) -> str:
    """The SHA-256 of ``path`` once it holds ``data``, or its last one after ``timeout``.

    libtorrent says a torrent is seeding once every piece passed its hash
    check; its disk threads may still be writing the last blocks then (CI met
    a file read at that moment), so the file is read again until it matches,
    after asking libtorrent to flush.  Corrupt data never matches: the test
    still fails on it.
    """
    handle.flush_cache()
    deadline = time.monotonic() + timeout
    while (got := sha(path.read_bytes())) != sha(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def wait_seeding(handle: lt.torrent_handle, timeout: float) -> lt.torrent_status:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = handle.status()
        if st.is_seeding:
            return st
        time.sleep(0.1)
    raise AssertionError(f"not complete after {timeout} s: {handle.status().progress:.0%}, state {handle.status().state}")


async def start_web_seed_setup(tmp_path, nodes, published, http, rel: str, size: int):
    """Origin listing edge B as a web seed, edges A and B under it; the torrent as edge A hands it out."""
    data = make_file(published / rel, size)
    port_b = free_port()
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2", "--web-seed", f"http://127.0.0.1:{port_b}")
    edge_a = nodes.start("edge", "--cache", str(tmp_path / "a"), "--parent", origin.url, "--p2p", name="edge-a")  # also the tracker
    edge_b = nodes.start("edge", "--cache", str(tmp_path / "b"), "--parent", origin.url, "--listen", f"127.0.0.1:{port_b}", name="edge-b")
    code, body, headers = await fetch(http, f"{edge_a.url}/torrent/{quote(rel)}")
    assert code == 200, body
    assert headers["Content-Type"] == "application/x-bittorrent"
    return data, body, origin, edge_a, edge_b


async def test_aria2c_downloads_a_published_file_from_the_edges_as_web_seeds(tmp_path, nodes, published, http):
    if shutil.which("aria2c") is None:
        pytest.skip("aria2c is not installed (Debian package aria2; ./dev test installs it)")
    rel = "films/a clip.bin"
    data, body, origin, edge_a, edge_b = await start_web_seed_setup(tmp_path, nodes, published, http, rel, 3 * MiB + 123)
    assert torrent.seeds_of(body) == [f"{edge_a.url}/films/a%20clip.bin", f"{edge_b.url}/films/a%20clip.bin"]
    (tmp_path / "t.torrent").write_bytes(body)
    out = tmp_path / "aria2"
    args = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--seed-time=0"]
    run = await asyncio.to_thread(
        subprocess.run,
        ["aria2c", *args, "--listen-port", str(free_port()), "--console-log-level=warn", "-d", str(out), str(tmp_path / "t.torrent")],
        capture_output=True,
        timeout=90,
    )
    output = run.stdout.decode()[-2000:] + run.stderr.decode()[-2000:]
    assert run.returncode == 0, output
    assert "Tracker" not in output, output  # its announces were answered, under the hash aria2 1.36 computes too
    assert sha((out / "a clip.bin").read_bytes()) == sha(data)
    sent = [(await status(http, e.url))["bytes_sent"].get("client", 0) for e in (edge_a, edge_b)]
    print("bytes sent to clients by edges A, B:", sent)
    assert sum(sent) >= len(data) and (await status(http, origin.url))["bytes_sent"].get("client", 0) == 0  # all from the edges


async def test_libtorrent_downloads_a_published_file_from_the_edges_as_web_seeds(tmp_path, nodes, published, http):
    rel = "b.bin"
    data, body, *_ = await start_web_seed_setup(tmp_path, nodes, published, http, rel, 2 * MiB + 7)
    ses = session("127.0.0.1")
    handle = add(ses, body, tmp_path / "lt")
    st = await asyncio.to_thread(wait_seeding, handle, 60)
    assert st.total_wanted == len(data)
    assert await asyncio.to_thread(on_disk, handle, tmp_path / "lt" / "b.bin", data) == sha(data)
    del ses


async def test_manifest_links_the_torrent_and_the_magnet_names_it(tmp_path, nodes, published, http):
    make_file(published / "open.bin", MiB)
    make_file(published / "locked/secret.bin", MiB)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2", "--protect", "locked/*")
    edge = nodes.start("edge", "--cache", str(tmp_path / "e"), "--parent", origin.url)
    await asyncio.sleep(0.5)
    for node in (origin, edge):
        code, _, headers = await fetch(http, node.url + "/manifest/open.bin")
        assert code == 200 and headers["Link"] == '</torrent/open.bin>; rel="alternate"; type="application/x-bittorrent"'
        code, _, headers = await fetch(http, node.url + "/manifest/locked/secret.bin")
        assert code == 200 and "Link" not in headers
        code, body, _ = await fetch(http, node.url + "/torrent/locked/secret.bin")
        assert code == 404 and b"protected" in body
    code, body, _ = await fetch(http, origin.url + "/torrent/open.bin")
    assert code == 200 and torrent.seeds_of(body) == [origin.url + "/open.bin"]  # no --web-seed: the origin itself
    code, text, headers = await fetch(http, edge.url + "/magnet/open.bin")
    assert code == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
    params = lt.parse_magnet_uri(text.decode().strip())
    ti = lt.torrent_info(body)
    assert params.info_hashes.v1 == ti.info_hashes().v1 and params.info_hashes.v2 == ti.info_hashes().v2
    assert params.url_seeds == [edge.url + "/open.bin"]  # the edge, not its parent
    leaf = nodes.start("edge", "--cache", str(tmp_path / "leaf"), "--parent", edge.url, name="leaf")
    code, leaf_body, _ = await fetch(http, leaf.url + "/torrent/open.bin")
    assert code == 200 and torrent.seeds_of(leaf_body) == [leaf.url + "/open.bin"]  # checked through a middle edge; not named
    assert lt.torrent_info(leaf_body).info_hashes() == ti.info_hashes()


class ForgingParent(DoubleServer):
    """A parent that passes everything on from the origin, but signs torrents with a key of its own."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.key = Ed25519PrivateKey.generate()

    async def handle(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as s, s.get(self.upstream + request.raw_path) as r:
            body, status, ctype = await r.read(), r.status, r.headers.get("Content-Type", "application/octet-stream")
        if request.path.startswith("/torrent/") and status == 200:
            doc = lt.bdecode(body)
            cid = doc[torrent.SIGNED_KEY][b"content"].decode()
            body = torrent.sign(lt.bencode({k: v for k, v in doc.items() if k != torrent.SIGNED_KEY}), cid, self.key).data
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{tail:.*}", self.handle)


async def test_an_edge_refuses_a_torrent_its_parent_did_not_get_from_the_origin(tmp_path, nodes, origin, published, http):
    make_file(published / "f.bin", MiB)
    await asyncio.sleep(0.5)
    async with ForgingParent(origin.url) as forger:
        edge = nodes.start(
            "edge", "--cache", str(tmp_path / "e"), "--parent", forger.url, "--origin-key", str(published / ".edgeswarm/origin.key")
        )
        code, body, _ = await fetch(http, edge.url + "/torrent/f.bin")
        assert code == 502 and b"signature" in body, body
        code, _, _ = await fetch(http, edge.url + "/f.bin")
        assert code == 200  # the file itself is still served: its pieces are checked against the signed manifest


async def test_bittorrent_clients_of_a_region_find_each_other_through_the_edge_and_no_one_else(tmp_path, nodes, published, http):
    (tmp_path / "regions.yaml").write_text(REGIONS)
    data = make_file(published / "c.bin", 2 * MiB + 3)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
    edge = nodes.start(
        "edge",
        "--cache",
        str(tmp_path / "e"),
        "--parent",
        origin.url,
        "--p2p",
        "--regions",
        str(tmp_path / "regions.yaml"),
        "--locality",
        "strict",
        name="edge",
    )
    code, body, _ = await fetch(http, edge.url + "/torrent/c.bin")
    assert code == 200 and lt.bdecode(body)[b"announce"] == (edge.url + "/announce").encode()
    doc = lt.bdecode(body)
    del doc[b"url-list"]  # no web seeds: the only way to the bytes is another client the tracker names
    peers_only = lt.bencode(doc)
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "c.bin").write_bytes(data)
    seeder, leecher, stranger = session("127.1.0.1"), session("127.1.0.2"), session("127.2.0.1")
    add(seeder, peers_only, tmp_path / "seed", seed=True)
    await asyncio.sleep(1)  # the seed announces first
    far = add(stranger, peers_only, tmp_path / "far")
    near = add(leecher, peers_only, tmp_path / "near")
    await asyncio.to_thread(wait_seeding, near, 60)
    assert await asyncio.to_thread(on_disk, near, tmp_path / "near" / "c.bin", data) == sha(data)
    assert far.status().total_wanted_done == 0 and far.status().num_peers == 0  # west was never handed an east client
    st = await status(http, edge.url)
    assert st["bittorrent"] == {"torrents": 1, "clients": 3, "swarms": 2}  # a hybrid torrent: a v1 swarm and a v2 swarm
    del seeder, leecher, stranger


async def test_the_edges_bittorrent_surfaces_take_no_forged_host_count_seeds_and_name_no_dead_tracker(tmp_path, nodes, published, http):
    """Three findings of an adversarial session: a Host of `EDGE@evil.example` became the torrent's web seed and tracker
    (clients then went to evil.example); an edge requiring tokens named itself as the tracker, which refuses every
    announce (they carry no token); and every announce read the whole swarm to count its seeds (now at most every
    few seconds: the figures stay whole, complete + incomplete the swarm)."""
    from test_trust import bearer, issue  # the real `edgeswarm token issue`

    make_file(published / "c.bin", MiB)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
    key = published / ".edgeswarm" / "origin.key"
    edge = nodes.start("edge", "--cache", str(tmp_path / "e"), "--parent", origin.url, "--p2p", name="edge")
    locked = nodes.start("edge", *("--cache", str(tmp_path / "l"), "--parent", origin.url, "--p2p", "--require-token"), name="locked")
    await asyncio.sleep(0.5)
    port = edge.url.rsplit(":", 1)[1]
    async with http.get(edge.url + "/torrent/c.bin", headers={"Host": f"127.0.0.1:{port}@evil.example"}) as r:
        assert r.status == 400 and "Host" in await r.text()
    code, body, _ = await fetch(http, edge.url + "/torrent/c.bin")
    assert code == 200 and lt.bdecode(body)[b"announce"] == (edge.url + "/announce").encode()
    async with http.get(locked.url + "/torrent/c.bin", headers=bearer(issue(key, "alice"))) as r:
        doc = lt.bdecode(await r.read())
        assert r.status == 200 and b"announce" not in doc and torrent.seeds_of(lt.bencode(doc)) == [locked.url + "/c.bin"]
    v1 = lt.torrent_info(body).info_hashes().v1.to_bytes()
    answers = []
    for i, left in enumerate((0, 0, 0, 100, 100)):  # three seeds and two leechers
        pid = f"-XX0001-{i:012d}".encode()
        async with http.get(f"{edge.url}/announce?" + query(info_hash=v1, peer_id=pid, port=7000 + i, left=left)) as r:
            answers.append(lt.bdecode(await r.read()))
    assert (answers[0][b"complete"], answers[0][b"incomplete"]) == (1, 0)  # counted on the swarm's first announce
    for n, doc in enumerate(answers, 1):
        assert doc[b"complete"] + doc[b"incomplete"] == n and 0 <= doc[b"complete"] <= 3, doc
    # a scrape (BEP 48) was taken for a file named "scrape": a 404, and a request to the origin each time
    unknown = bytes(20)
    async with http.get(f"{edge.url}/scrape?" + query(info_hash=v1) + "&" + query(info_hash=unknown)) as r:
        files = lt.bdecode(await r.read())[b"files"]
        assert r.status == 200 and list(files) == [v1] and 1 <= files[v1][b"complete"] <= 3, files  # counted at most 5 s ago
    async with http.get(f"{edge.url}/scrape") as r:
        assert r.status == 200 and b"names the torrents" in lt.bdecode(await r.read())[b"failure reason"]
    async with http.get(f"{locked.url}/scrape?" + query(info_hash=v1)) as r:
        assert b"requires access tokens" in lt.bdecode(await r.read())[b"failure reason"]
    assert "scrape" not in origin.log_text()


def test_a_torrent_is_saved_under_its_files_name():
    """Both parameters held percent-escapes, kept by `curl -OJ` in the saved name (`hash%23x.bin.torrent`), and a `"`
    was dropped from the exact one (an adversarial session): RFC 6266's exact name and an ASCII stand-in."""
    from urllib.parse import unquote

    from edgeswarm.protocol.wire import attachment

    for name, plain in (("hash#x.bin.torrent", "hash#x.bin.torrent"), ('d"q\\x é.torrent', "d_q_x _.torrent")):
        head, exact = attachment(name).split("; filename*=UTF-8''")
        assert head == f'attachment; filename="{plain}"' and unquote(exact) == name and "%" not in plain


async def test_torrent_hashes_the_disk_refuses_are_one_warning_until_a_save_succeeds(tmp_path, caplog):
    """A full disk logged "could not keep the torrents' hashes ([Errno 28] ...)" for every torrent fetched, where the
    piece store, the ledger and the tracker store say it once an episode (an adversarial session)."""
    edge = Edge(EdgeConfig(cache=tmp_path / "edge", parent="http://127.0.0.1:9", timeout=5.0, p2p=True))
    kept = tmp_path / "edge" / "bt-hashes.json"
    kept.mkdir()  # in the way: every save fails, as on a full disk
    with caplog.at_level(logging.WARNING, logger="edgeswarm.roles.edge"):
        for _ in range(3):
            edge._keep_bt_hashes()  # three torrents fetched
        kept.rmdir()
        edge._keep_bt_hashes()  # saved: the episode is over
        kept.unlink()
        kept.mkdir()
        edge._keep_bt_hashes()  # a new one
    said = [r.getMessage() for r in caplog.records]
    assert said == 2 * [
        f"could not keep the torrents' hashes in {kept} (Is a directory): a restart forgets them until their torrents are asked again"
    ]


@pytest.mark.integration  # starts daemons as subprocesses
async def test_a_restarted_edge_still_takes_the_announces_of_the_torrents_it_handed_out(tmp_path, nodes, published, http):
    """The hashes of the torrents an edge handed out lived in its memory only: after a restart (or its primary worker's)
    every client that held a torrent was told "unknown torrent: get it from /torrent first", which a client never does
    by itself, until somebody fetched that torrent again (an adversarial session).  They are kept in the cache."""
    make_file(published / "c.bin", MiB)
    origin = nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
    edge = nodes.start("edge", "--cache", str(tmp_path / "e"), "--parent", origin.url, "--p2p", name="edge")
    await asyncio.sleep(0.5)
    code, body, _ = await fetch(http, edge.url + "/torrent/c.bin")
    assert code == 200
    hashes = lt.torrent_info(body).info_hashes()

    async def announce(info_hash: bytes, i: int) -> dict:
        pid = f"-XX0001-{i:012d}".encode()
        async with http.get(f"{edge.url}/announce?" + query(info_hash=info_hash, peer_id=pid, port=7000 + i, left=0)) as r:
            return lt.bdecode(await r.read())

    assert b"failure reason" not in await announce(hashes.v1.to_bytes(), 1)
    edge.stop()
    edge.start()
    for i, info_hash in enumerate((hashes.v1.to_bytes(), hashes.v2.to_bytes()[:20]), 2):
        answer = await announce(info_hash, i)
        assert b"failure reason" not in answer, answer
    (tmp_path / "e" / "bt-hashes.json").write_text("{not json")
    edge.stop()
    edge.start()
    assert b"unknown torrent" in (await announce(hashes.v1.to_bytes(), 4))[b"failure reason"]  # a damaged file: said, set aside
    assert "bt-hashes.json: cannot read it" in (tmp_path / "logs" / "edge.log").read_text()
