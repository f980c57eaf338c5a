"""A peer closes the swarms it has nothing to do with: their contents stay held, served and announced.

A gateway kept a swarm (an engine, two waiting workers, its neighbours) for
every file it ever read: after 5 000 files, 10 000 asyncio tasks and 87 MB
more than at start, and an HLS video is one content per segment.  The peer
here is in this process, so the test can look at its swarms; the origin and
the edge are real daemons.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
from conftest import make_file

from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import RETIRE_IDLE, Peer, SwarmSource

PIECE = 256 * 1024


async def test_an_idle_swarm_is_closed_and_its_content_stays_held_and_readable(tmp_path: Path, nodes, origin, published):
    a = make_file(published / "a.bin", 3 * PIECE)
    make_file(published / "b.bin", 3 * PIECE)
    await asyncio.sleep(0.5)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url)
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(edge.url,)))
    peer.bound.set()
    await peer.start()
    try:
        signed = await peer.resolve("a.bin")
        done = peer.swarm(signed)
        done.want_whole()
        async with asyncio.timeout(30):
            await done.completed.wait()
        workers = list(done._tasks)
        assert workers, "a swarm runs workers: without them the test proves nothing"

        downloading = peer.swarm(await peer.resolve("b.bin"))
        downloading.want_whole()  # under way: never retired, however long nobody reads it
        later = time.monotonic() + RETIRE_IDLE
        assert not downloading.retirable(later, RETIRE_IDLE)
        assert done.retirable(later, RETIRE_IDLE) and not done.retirable(time.monotonic(), RETIRE_IDLE)

        done.engine.banned.add("127.0.0.99")  # an address that sent a corrupt piece of this content
        assert await peer.retire_idle(later) >= 1
        assert signed.content_id not in peer.swarms and done.retired
        assert all(t.done() for t in workers), "a retired swarm's workers still run"
        store = peer.pinned.opened
        assert all(store.has(signed.content_id, i) for i in range(3)), "a retired swarm's pieces went with it"

        # a read that began before the swarm was retired goes on with a new one, and gets the right bytes
        source = SwarmSource(peer, done)
        first = await source.fetch(0)
        assert bytes(first) == a[:PIECE]
        again = peer.swarms[signed.content_id]
        assert again is not done and not again.retired and again.completed.is_set()
        assert "127.0.0.99" in again.banned, "a retired swarm's bans went with it: a corrupting neighbour got another try"
    finally:
        await peer.stop()


async def swarm_sizes(edge_url: str) -> dict[str, int]:
    """Every region's swarms on the edge's tracker, summed: content -> peers handed out for it."""
    async with aiohttp.ClientSession() as http, http.get(edge_url + "/status?contents=all") as resp:
        st = await resp.json()
    sizes: dict[str, int] = {}
    for row in st["p2p"]["regions"].values():
        for cid, n in row.get("swarms", {}).items():
            sizes[cid] = sizes.get(cid, 0) + n
    return sizes


async def test_a_content_no_longer_held_is_announced_stopped_then_forgotten(tmp_path: Path, nodes, origin, published):
    """Evicted whole and its swarm retired, a content is ``stopped`` at the edge, which hands us out for it no more, then
    forgotten: a peer kept its usage counters, ticket and totals for every content it ever held (a live viewer holds
    one per segment).  Its bytes stay in /status's totals, and a later read of it joins the swarm again."""
    a = make_file(published / "a.bin", 3 * PIECE)
    make_file(published / "b.bin", 2 * PIECE)
    await asyncio.sleep(0.5)
    edge = nodes.start("edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p")
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(edge.url,)))
    peer.upload_port = 9  # what the edge hands out; nobody asks it here
    peer.bound.set()
    await peer.start()
    try:
        signed = await peer.resolve("a.bin")
        cid = signed.content_id
        for name in ("a.bin", "b.bin"):
            swarm = peer.swarm(await peer.resolve(name))
            swarm.want_whole()
            async with asyncio.timeout(30):
                await swarm.completed.wait()
        await peer.announce_all("update")
        assert (await swarm_sizes(edge.url)).get(cid) == 1 and cid in peer.tickets
        before = peer._received_before + sum(peer.received.values(), Counter())

        peer.pinned.opened.drop_content(cid)  # evicted whole, and its manifest dropped too (piecestore.py, bare manifests)
        assert await peer.retire_idle(time.monotonic() + RETIRE_IDLE) == 2
        await peer.announce_all("update")
        sizes = await swarm_sizes(edge.url)
        assert not sizes.get(cid), f"the edge still hands us out for a content we no longer hold: {sizes}"
        assert len(sizes) == 1, "the content still held is still announced"
        for table in (peer.received, peer.tickets, peer.from_edge, peer._booked, peer._announced, peer._piece_counts):
            assert cid not in table, "a content no longer held is still in the peer's tables"
        assert peer._received_before + sum(peer.received.values(), Counter()) == before, "its bytes left /status's totals"

        # read again: it joins the swarm afresh ("started", not an update the edge would refuse after our "stopped")
        again = peer.swarm(await peer.resolve("a.bin"))
        again.want_whole()
        async with asyncio.timeout(30):
            await again.completed.wait()
        assert bytes(await SwarmSource(peer, again).fetch(0)) == a[:PIECE]
        await peer.announce_all("update")
        assert (await swarm_sizes(edge.url)).get(cid) == 1

        # a content gone while the only edge that had it is no longer ours (the router dropped it): forgotten all the same
        other = (await peer.resolve("b.bin")).content_id
        peer.pinned.opened.drop_content(other)
        peer.use_edges([])
        await peer.announce_all("update")
        assert other not in peer._announced and other not in peer.received, "waiting for an edge that is no longer ours"
    finally:
        await peer.stop()
