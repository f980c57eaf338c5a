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
from pathlib import Path

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
    finally:
        await peer.stop()
