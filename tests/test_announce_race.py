"""The announcer and what wakes it (no sockets): a swarm created as an announce starts is announced soon; a stop just after a wake-up ends it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_engine import make as make_engine

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
    await peer.pinned.open(peer.upstream, peer.edges)
    announce = asyncio.ensure_future(peer.announce_all("update", [EDGE]))
    await asyncio.sleep(0)  # announce_all has listed the contents (none) and handed the announce to gather
    peer.announce_soon()  # what a new swarm does
    await announce
    assert peer.schedule.due([EDGE], time.monotonic()) == [EDGE], "the hurry was overwritten by the interval"
    assert peer.store is not None
    peer.store.close()


@pytest.mark.parametrize("turns", [0, 1])
async def test_stop_just_after_a_wake_up_ends_the_announcer(tmp_path: Path, turns: int):
    """Peer.stop cancels the announcer, and a wake-up (a swarm created, or completed) a loop turn before must not
    swallow that cancellation.  Python 3.11's asyncio.wait_for returns what it waited for when it completes in the turn
    the wait is cancelled: the announcer ran on, and stop() awaited it for good.  `edgeswarm get` of one missing piece
    met it in CI (idle for 60 s after its output was written): its last piece came while its first announce was in
    flight, and the announce's answer brought the announcer to its wait just as the get stopped."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(), origin_key=key))
    peer.bound.set()
    await peer.start()
    await asyncio.sleep(0.05)  # the announcer waits for a wake-up (no tracker: an interval)
    peer.announce_soon()
    for _ in range(turns):
        await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await peer.stop()


def test_a_subscriber_met_before_our_region_was_known_is_judged_by_its_claim_once_it_is(tmp_path: Path):
    """A neighbour whose answer named us can subscribe before our own first answer tells us our region: judged then
    against None, its pieces were booked as crossing regions until a tracker answer named it (a flaky lab test)."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(EDGE,), origin_key=key))
    engine, _ = make_engine()
    peer.swarms["c" * 64] = SimpleNamespace(neighbours=engine.neighbours)  # type: ignore[assignment]
    east = engine.add_neighbour("a", "http://127.1.0.2:7000", same_region=False, subscriber=True, claim="east")
    west = engine.add_neighbour("b", "http://127.2.0.2:7000", same_region=False, subscriber=True, claim="west")
    named = engine.add_neighbour("c", "http://127.1.0.3:7000", same_region=False)  # a tracker's: its word stands
    assert east and west and named
    peer._learn_region("east")
    assert (east.same_region, west.same_region, named.same_region) == (True, False, False)
    engine.tracker_answer([{"peer_id": "a", "url": east.url, "have": set(), "same_region": True}])
    peer._learn_region("west")  # moved: claims are judged again, but a tracker's word is not a claim
    assert (east.same_region, west.same_region) == (True, True)


async def test_a_round_sends_its_batches_one_after_another(tmp_path: Path):
    """A round's batches went to the edge all at once: 50 of them, for a peer holding 2 500 contents, made the edge's
    loop run late past its flood guard, which shed a third of them, round after round (an adversarial session)."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(EDGE,), origin_key=key))
    flying, most, sent = 0, 0, []

    async def batch(edge: str, cids: list[str], event: str) -> None:
        nonlocal flying, most
        flying += 1
        most = max(most, flying)
        await asyncio.sleep(0.01)
        sent.append(len(cids))
        flying -= 1

    peer._announce_batch = batch  # type: ignore[method-assign]
    await peer._announce_edge(EDGE, {f"{i:064x}" for i in range(120)}, "update")
    assert most == 1 and sent == [50, 50, 20]


async def test_a_failed_round_keeps_its_ask_for_neighbours_and_a_round_of_nothing_is_no_answer(tmp_path: Path, caplog):
    """A lonely swarm's ask for neighbours was cleared as its round went out; the round failed (the peer's link was
    down), the retry carried nothing, and that round of nothing counted as the edge's answer: "EDGE answers announces
    again" on a link still down, and the next round an interval away (an adversarial session)."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    caplog.set_level(logging.INFO)
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(EDGE,), origin_key=key))
    peer._p2p_edges.add(EDGE)
    cid = "c" * 64
    outcomes = [["Network is unreachable"], []]

    async def rounds(edge: str, cids: set[str], event: str) -> list[str | None]:
        return list(outcomes.pop(0))

    peer._announce_edge = rounds  # type: ignore[method-assign]
    peer._vouch.add(cid)
    await peer._announce_to(EDGE, {cid}, "update", time.monotonic(), set())
    assert cid in peer._vouch  # still asked for: the retry carries it
    await peer._announce_to(EDGE, set(), "update", time.monotonic(), set())
    assert not any("answers announces again" in r.getMessage() for r in caplog.records)
