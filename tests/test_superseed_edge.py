"""POST /seed end to end: a real origin and p2p edge; the test plays peers of two regions by their source addresses."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import aiohttp
import pytest
from conftest import complete, make_file, post, start_p2p_edge, status, until

from edgeswarm.policy import bitfield
from edgeswarm.policy.superseed import STALE_COPY_S, UNCONFIRMED_S
from edgeswarm.protocol.httpspec import PEER_HEADER
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_private_key

pytestmark = pytest.mark.integration  # starts daemons as subprocesses

REGIONS = """\
regions:
  - {name: east, isp: att, networks: [127.1.0.0/16]}
  - {name: west, isp: verizon, networks: [127.2.0.0/16]}
"""
PIECE = 256 * 1024
PIECES = 8


class FakePeer:
    """A peer as the edge sees it: requests from its own address, its peer id on them, announces naming its port."""

    def __init__(self, edge: str, cid: str, addr: str, peer_id: str):
        self.edge, self.cid, self.peer_id = edge, cid, peer_id
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(addr, 0)))
        self.have: set[int] = set()

    async def announce(self, event: str = "update", **extra) -> aiohttp.ClientResponse:
        doc = {"peer_id": self.peer_id, "port": 9, "content": self.cid, "pieces": PIECES, "have": bitfield.encode(self.have, PIECES)}
        async with self.session.post(self.edge + "/announce", json=doc | {"uploaded": 0, "downloaded": 0, "event": event} | extra) as r:
            await r.read()
            return r

    async def seed(self, start: int | None = None, headers: dict | None = None) -> int | None:
        """One POST /seed: the piece index it brought (now held), or None for 204."""
        doc = {"have": bitfield.encode(self.have, PIECES), **({"from": start} if start is not None else {})}
        async with self.session.post(f"{self.edge}/seed/{self.cid}", json=doc, headers={PEER_HEADER: self.peer_id, **(headers or {})}) as r:
            if r.status == 204:
                assert await r.read() == b""
                return None
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"] == "application/octet-stream"
            index = int(r.headers["X-Edgeswarm-Piece"])
            assert await r.read() == DATA[index * PIECE : (index + 1) * PIECE]
            self.have.add(index)
            return index

    async def close(self) -> None:
        await self.session.close()


DATA = b""


start_edge = start_p2p_edge  # the p2p edge every test here runs: tracker and seeder of the two regions


async def content_id(http: aiohttp.ClientSession, edge: str, path: str, headers: dict | None = None) -> str:
    async with http.get(f"{edge}/manifest/{path}", headers=headers) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["id"]


async def test_peers_asking_in_turn_get_different_pieces_then_trade(tmp_path, nodes, origin, published, regions, http):
    global DATA
    DATA = make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--announce-interval", "2")
    cid = await content_id(http, edge.url, "f.bin")
    east = [FakePeer(edge.url, cid, f"127.1.0.{n + 1}", f"e{n}") for n in range(4)]
    west = FakePeer(edge.url, cid, "127.2.0.1", "w0")
    stranger = FakePeer(edge.url, cid, "127.2.0.99", "never-announced")
    alive = [*east, west]

    async def keep_alive() -> None:  # re-announce well within the tracker's ttl (3 intervals)
        while True:
            for p in list(alive):
                await p.announce()
            await asyncio.sleep(0.5)

    for p in alive:
        assert (await p.announce("started")).status == 200
    announcer = asyncio.create_task(keep_alive())
    try:
        got = [await p.seed() for _ in range(2) for p in east]  # the edge reads most pieces from its parent, a miss each
        assert sorted(got) == list(range(PIECES)), "peers asking in turn got the same piece twice"
        assert await east[0].seed() is None, "every piece went to east once: trade for it there"
        assert await west.seed() == 0, "west is counted apart from east"
        assert await west.seed(start=5) == 5, "'from' skips the pieces before the reader"
        assert await west.seed(start=PIECES) is None, "a reader at the end wants nothing more"
        assert await stranger.seed() == 1, "a peer whose announce has not arrived is served..."
        assert await west.seed() == 2, "...and its copy counts at once (until its announce is overdue, below)"

        # an urgent /piece from a peer is a deadline-forced copy in its region
        headers = {PEER_HEADER: "w0", "X-Edgeswarm-Urgency": "urgent"}
        async with west.session.get(f"{edge.url}/piece/{cid}/3", headers=headers) as r:
            assert r.status == 200 and await r.read() == DATA[3 * PIECE : 4 * PIECE]
        west.have.add(3)
        assert await west.seed() == 4, "the piece west fetched urgently counts as its region's copy"

        # e1 stops: its two pieces may go out again at once; e2 falls silent: its pieces again once it expired
        gone = set(east[1].have)
        alive.remove(east[1])
        assert (await east[1].announce("stopped")).status == 200
        assert {await east[0].seed(), await east[0].seed()} == gone
        assert await east[0].seed() is None

        silent = set(east[2].have)
        alive.remove(east[2])
        deadline = time.monotonic() + 20
        while (await status(http, edge.url))["p2p"]["peers"] != 3:
            assert time.monotonic() < deadline, "e2 never expired"
            await asyncio.sleep(0.2)
        assert {await east[3].seed(), await east[3].seed()} == silent, "a copy to an expired peer still counted"
        assert await east[3].seed() is None

        st = (await status(http, edge.url))["p2p"]["regions"]
        sent_east = 8 + 2 + 2  # 8 pieces, then e1's two and e2's two again
        assert st["east"]["copies"] == {cid: sent_east / PIECES + 0.0}
        assert st["east"]["live_copies"] == {cid: 8}  # e0, e3 hold 8 between them; e1 and e2 left
        assert st["east"]["seeded"] == {"sent": sent_east, "none": 3}
        assert st["west"]["copies"] == {cid: 6 / PIECES} and st["west"]["deadline_forced"] == 1  # stranger's piece too
        assert st["west"]["seeded"] == {"sent": 5, "none": 1}
        deadline = time.monotonic() + UNCONFIRMED_S + 5
        while (await status(http, edge.url))["p2p"]["regions"]["west"]["live_copies"] != {cid: 5}:  # w0's five
            assert time.monotonic() < deadline, "the copy of a peer that never announced kept counting"
            await asyncio.sleep(0.5)
        assert st["west"]["piece_requests"] == {"urgent": 1, "background": 0, "none": 0}
        async with http.get(edge.url + "/metrics") as r:
            text = await r.text()
        assert f'edgeswarm_seed_pieces_total{{outcome="sent",region="east"}} {sent_east}.0' in text
        assert 'edgeswarm_edge_piece_requests_total{region="west",urgency="urgent"} 1.0' in text
        assert 'edgeswarm_seed_live_copies{region="east"} 8.0' in text
        regional = [line for line in text.splitlines() if 'region="' in line]
        assert regional and not [line for line in regional if cid in line], "a content id in a per-region metric"

        # peers report how fast availability reaches them; the region shows the median p50 and the p95
        await east[0].announce(have_latency={"p50": 0.02, "p95": 0.09})
        await east[3].announce(have_latency={"p50": 0.04, "p95": 0.2})
        bad = await east[3].announce(have_latency={"p50": 1, "p95": 0.5})
        assert bad.status == 400
        latency = (await status(http, edge.url))["p2p"]["regions"]["east"]["have_latency"]
        assert latency == {"p50": 0.02, "p95": 0.2, "peers": 2}
    finally:
        announcer.cancel()
        for p in [*east, west, stranger]:
            await p.close()
    assert "Traceback" not in (tmp_path / "logs" / "edge.log").read_text()


async def test_bad_seed_requests_and_who_may_ask(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "f.bin", PIECES * PIECE)
    plain = nodes.start("edge", *("--cache", str(tmp_path / "plain"), "--parent", origin.url), name="plain")
    cid = await content_id(http, plain.url, "f.bin")
    async with http.post(f"{plain.url}/seed/{cid}", json={"have": bitfield.encode(set(), PIECES)}) as r:
        assert r.status == 404 and "--p2p" in await r.text()

    edge = start_edge(nodes, tmp_path, origin.url, regions, "--require-token")
    key = load_private_key(published / ".edgeswarm" / "origin.key")
    auth = {"Authorization": "Bearer " + tokens.issue(key, "alice", "/", 3600)}
    cid = await content_id(http, edge.url, "f.bin", auth)
    url = f"{edge.url}/seed/{cid}"
    good = {"have": bitfield.encode(set(), PIECES)}
    async with http.post(url, json=good) as r:
        assert r.status == 401, "a seed needs the same token as a piece"
    for body, word in [
        (b"{nope", "JSON"),
        (b"[1]", "object"),
        (b'{"have": "%%%"}', "have"),
        (f'{{"have": "{bitfield.encode(set(), 17)}"}}'.encode(), "have"),
        *[(f'{{"have": "{good["have"]}", "from": {bad}}}'.encode(), "from") for bad in ("-1", str(PIECES + 1), "1.5", "true", '"2"')],
    ]:
        async with http.post(url, data=body, headers=auth) as r:
            assert r.status == 400 and word in await r.text(), (body, r.status)
    async with http.post(url, data=b"x" * 200_000, headers=auth) as r:
        assert r.status == 413
    body = json.dumps(good).encode()
    async with http.post(url, data=gzip.compress(body), headers={**auth, "Content-Encoding": "gzip"}) as r:
        assert r.status == 415 and "uncompressed" in await r.text()
    async with http.post(url, data=body, headers={**auth, "Content-Type": "application/json; charset=latin-1"}) as r:
        assert r.status == 400 and "UTF-8" in await r.text()
    async with http.post(f"{edge.url}/seed/{'0' * 64}", json=good, headers=auth) as r:
        assert r.status == 404
    async with http.post(url, json=good, headers=auth) as r:
        assert r.status == 200 and r.headers["X-Edgeswarm-Piece"] == "0"
        assert len(await r.read()) == PIECE
    log = (tmp_path / "logs" / "edge.log").read_text()
    assert "Traceback" not in log


async def test_under_internal_an_outside_peer_is_seeded_only_what_the_edge_holds(tmp_path, nodes, origin, published, regions, http):
    """--internal 127.0.0.1/32: peers may not make the edge fetch, so /seed picks among cached pieces (else 204, not 403)."""
    global DATA
    DATA = make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--internal", "127.0.0.1/32")
    cid = await content_id(http, edge.url, "f.bin")
    peer = FakePeer(edge.url, cid, "127.1.0.1", "e0")
    try:
        assert (await peer.announce("started")).status == 200
        assert await peer.seed() is None, "nothing cached: wait (204), not a 403 the peer would hold against the edge"
        async with http.get(f"{edge.url}/piece/{cid}/5") as r:  # an internal client: the edge fetches and caches it
            assert r.status == 200
        assert await peer.seed() == 5, "the one piece the edge holds"
        assert await peer.seed() is None
        st = (await status(http, edge.url))["p2p"]["regions"]["east"]
        assert st["live_copies"] == {cid: 1} and st["seeded"] == {"sent": 1, "none": 2}
    finally:
        await peer.close()


async def test_pieces_a_small_cache_evicted_are_seeded_again_not_left_to_the_fallback(tmp_path, nodes, origin, published, regions, http):
    """A peer with a small --max-cache fetched a file whole and kept a few of its pieces; the edge counted every copy it
    had sent it as live, answered a newcomer's /seed with "trade with your region" for pieces nobody there held, and the
    newcomer took them from the edge only at its fallback, 10 s on (an adversarial session: 10.3 s against 0.41 s).
    Now the newcomer says which pieces no neighbour of its holds, and the edge seeds it those of its old copies."""
    data = make_file(published / "e.bin", 12_000_000)  # 46 pieces
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    small = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "small"), "--edge", edge.url, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"),
        *("--max-cache", "2MB"),
        name="small",
    )
    await post(http, small, "/e.bin")
    await until(lambda: complete(http, small), 60, "the small cache's whole download")
    held = next(c["held"] for c in (await status(http, small.urls["gateway"]))["contents"] if c["path"] == "e.bin")
    assert held <= 8  # 2MB: the rest evicted as it came
    await asyncio.sleep(STALE_COPY_S)  # the edge's copies to it are old now

    before = (await status(http, edge.url))["p2p"]["regions"]["east"]
    newcomer = nodes.start(
        "peer", *("--cache", str(tmp_path / "new"), "--edge", edge.url, "--listen", "127.1.0.2:0", "--gateway", "127.0.0.1:0"), name="new"
    )
    await post(http, newcomer, "/e.bin")
    st = await until(lambda: complete(http, newcomer), 60, "the newcomer's whole download")
    async with http.get(newcomer.urls["gateway"] + "/e.bin") as resp:
        assert resp.status == 200 and await resp.read() == data
    after = (await status(http, edge.url))["p2p"]["regions"]["east"]
    from_edge = sum(row["bytes"] for row in st["bytes_received"] if row["kind"] == "edge")
    seeded = after["seeded"]["sent"] - before["seeded"]["sent"]
    asked = sum(after["piece_requests"].values()) - sum(before["piece_requests"].values())
    # what the small cache no longer held came from the edge's seeding, not from /piece once the newcomer fell back
    assert from_edge >= (46 - held) * PIECE - PIECE, st["bytes_received"]
    assert seeded >= 3 * asked and asked <= 12, (seeded, asked, after)  # 0 and 39 before; 33-37 and 4-6 since
