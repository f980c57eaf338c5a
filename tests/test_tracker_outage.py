"""A tracker outage: the edge that tracks a swarm (and serves it) is killed mid-download and restarted.

The edge runs with the default announce interval (30 s), so a peer early in
its download knows its neighbours' pieces from their first announce only (all
empty): whatever they trade during the outage, they learned from each other.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import make_file, sha, status
from test_swarm import REGIONS, body_sha, post, start_edge, start_peer, wait_complete  # noqa: F401  REGIONS: for the regions fixture

pytestmark = pytest.mark.integration
SIZE = 8 * 1024 * 1024  # 32 pieces of 256 KiB
PEERS = 4


async def peer_bytes(http, peers) -> int:
    """What the peers got from each other so far, as their own counters say."""
    return sum([(await status(http, p.urls["gateway"]))["received_by_kind"].get("peer-same-region", 0) for p in peers])


async def held(http, peers) -> list[int]:
    return [s["swarms"][0]["held"] if s["swarms"] else 0 for s in [await status(http, p.urls["gateway"]) for p in peers]]


async def test_peers_keep_trading_while_the_tracker_is_down_and_rejoin_after(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "f.bin", SIZE)
    interval = ("--announce-interval", "30")  # the default, spelled out: start_edge passes 1
    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "1MB/s", *interval)
    port = edge.url.rsplit(":", 1)[1]
    peers = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i + 1}", f"p{i}", upload="512KB/s") for i in range(PEERS)]
    await asyncio.gather(*(post(http, p, "/f.bin") for p in peers))
    deadline = time.monotonic() + 30
    while min(await held(http, peers)) < 2:  # every peer holds pieces; each its own, fetched rarest-first from the edge
        assert time.monotonic() < deadline, await held(http, peers)
        await asyncio.sleep(0.2)
    edge.kill()
    before = await peer_bytes(http, peers)
    await asyncio.sleep(6)
    during = await peer_bytes(http, peers)
    assert during > before, f"no pieces exchanged between peers during the outage ({before} bytes before, held {await held(http, peers)})"
    assert max(await held(http, peers)) < SIZE // 262144, "a peer completed: the outage came too late to test anything"

    edge = start_edge(nodes, tmp_path, origin.url, regions, "edge", "--upload-limit", "1MB/s", *interval, "--listen", f"127.0.0.1:{port}")
    restarted = time.monotonic()
    while (await status(http, edge.url))["p2p"]["peers"] < PEERS:
        # within half an interval: peers that saw the outage retry with a short back-off, not at their next interval
        assert time.monotonic() - restarted < 15, "peers did not re-join the restarted tracker"
        await asyncio.sleep(0.2)
    await wait_complete(http, peers, timeout=120)
    for p in peers:
        assert await body_sha(http, p.urls["gateway"] + "/f.bin") == sha(data)
