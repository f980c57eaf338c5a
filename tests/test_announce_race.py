"""A swarm created while an announce is starting is announced soon, not an interval later (no sockets)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import Peer
from edgeswarm.trust.signing import load_or_create_private_key, public_pem

EDGE = "http://127.0.0.1:9"  # never reached: the announce below has no content, so it sends nothing


async def test_a_hurry_between_listing_the_contents_and_the_announce_start_is_kept(tmp_path: Path):
    """`edgeswarm get` creates its swarm as its manifest arrives, which can fall between announce_all listing
    the contents and gather starting the announce: the swarm is not in that announce, so its hurry must stand."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(EDGE,), origin_key=key))
    await peer.open_store()
    announce = asyncio.ensure_future(peer.announce_all("update", [EDGE]))
    await asyncio.sleep(0)  # announce_all has listed the contents (none) and handed the announce to gather
    peer.announce_soon()  # what a new swarm does
    await announce
    assert peer.schedule.due([EDGE], time.monotonic()) == [EDGE], "the hurry was overwritten by the interval"
    assert peer.store is not None
    peer.store.close()
