"""A peer the router moves to other edges and back (no sockets): only the trackers it announces to count it, and its
bytes are booked once over all of them.

The edges here are real trackers (``TrackerService``, each with its own
memory store) behind a stand-in for the peer's POST /announce.  Before, the
peer said nothing to the edges it left, so they counted it for three
intervals beside the new ones, and each tracker it came to booked its whole
counters again: the router's region totals counted one peer twice and its
bytes up to twice, for good (an adversarial session).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.policy.vocabulary import EDGE, PEER_OTHER_REGION, PEER_SAME_REGION, STAT_KEYS
from edgeswarm.protocol.manifest import MIN_PIECE, Manifest, SignedManifest
from edgeswarm.roles.announce import TrackerService
from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import Peer
from edgeswarm.trust.signing import public_pem

W, E = "http://127.10.0.2:7000", "http://127.10.0.1:7000"  # the peer's region's edge, and another region's
ADDRESS = "127.2.0.1"
SIZE = 4 * MIN_PIECE


class Edges:
    """Trackers by URL, as the peer's announces reach them; a dead one's URL is unreachable, a restarted one is new."""

    def __init__(self) -> None:
        self.live: dict[str, TrackerService] = {}
        self.every: list[TrackerService] = []  # the dead ones too: what they booked was booked
        self.heard: list[tuple[str, str, str]] = []  # (edge, content, event)
        self.bases: dict[tuple[str, str], dict | None] = {}  # (edge, content) -> the stats_base of its last "started"

    def start(self, url: str) -> None:
        self.live[url] = TrackerService(None, "prefer", 300.0)
        self.every.append(self.live[url])

    async def post(self, peer: Peer, url: str, doc: dict) -> tuple[int, bytes, tuple[float, float, float]] | str:
        tracker = self.live.get(url)
        if tracker is None:
            return f"{url} is unreachable: Connection refused"
        head = {k: v for k, v in doc.items() if k != "contents"}
        answers = {}
        for item in doc["contents"]:
            self.heard.append((url, item["content"], item["event"]))
            if item["event"] == "started":
                self.bases[url, item["content"]] = item.get("stats_base")
            signed = peer.store.manifest(item["content"]) if peer.store else None
            assert signed is not None
            answers[item["content"]], _ = await tracker.handle({**head, **item}, ADDRESS, signed.manifest)
        now = time.monotonic()
        return 200, json.dumps({"contents": answers}).encode(), (now, now, time.time())  # asked, answered, the wall clock

    async def booked(self) -> int:
        """Bytes booked by every tracker that ever ran, over all kinds and regions."""
        shares = [await t.store.shares() for t in self.every]
        return sum(sum(c.values()) for by_region in shares for c in by_region.values())

    async def counted(self, url: str) -> int:
        """The peer's records at a live tracker (its swarms' sizes)."""
        tracker = self.live[url].tracker
        return sum([len(await tracker.swarm(cid)) for cid in await tracker.contents()])


def held(peer: Peer, key: Ed25519PrivateKey, name: str) -> str:
    """A content of four pieces whose manifest the peer holds: its id."""
    data = (name.encode() * SIZE)[:SIZE]
    hashes = tuple(hashlib.sha256(data[i : i + MIN_PIECE]).hexdigest() for i in range(0, SIZE, MIN_PIECE))
    signed = SignedManifest.sign(Manifest(name, SIZE, "application/octet-stream", MIN_PIECE, hashes, 1_700_000_000), key)
    assert peer.store is not None
    peer.store.put_manifest(signed, signed.to_json())
    for i in range(4):
        peer.store.put_piece(signed.content_id, i, data[i * MIN_PIECE : (i + 1) * MIN_PIECE])
    return signed.content_id


class Turned(Exception):
    """The announcer's loop ended its turn."""


async def turn(peer: Peer) -> None:
    """One turn of the peer's announcer, every edge due with every content (as an interval after the last round)."""

    async def end() -> None:
        raise Turned

    peer.schedule.woke(time.monotonic())
    peer._until_due = end  # type: ignore[method-assign]
    with pytest.raises(Turned):
        await peer.announce_loop()


def got(peer: Peer, cid: str, edge: int, peers: int = 0) -> None:
    """The peer has received this much of ``cid`` so far, from edges and from peers of its region."""
    peer.received[cid] = Counter({EDGE: edge, PEER_SAME_REGION: peers})


@pytest.mark.parametrize("w_dies", [False, True], ids=["flap", "killed"])
async def test_a_peer_moved_to_another_regions_edge_and_back_is_counted_by_one_tracker_and_booked_once(tmp_path: Path, w_dies: bool):
    """Moved from W to E and back (the router's fallback while W is down, or a flap while it is not), the peer says
    ``stopped`` to the edge it leaves, so only the tracker it announces to counts it; and its ``started`` at the next
    one carries the stats a tracker took already (``stats_base``), which that one does not book again, so whatever it
    received is booked once over all the trackers.  A W killed meanwhile restarts knowing nothing, hears ``started``
    for everything, and does not book again what its first run booked."""
    key = Ed25519PrivateKey.generate()
    (tmp_path / "origin.pub").write_bytes(public_pem(key.public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(W,), origin_key=tmp_path / "origin.pub"))
    await peer.pinned.open(peer.upstream, peer.edges)
    peer.upload_port = 6881
    peer.bound.set()
    peer.ticket_keys.update({W: key.public_key(), E: key.public_key()})  # not asked for: no edge answers here
    edges = Edges()
    peer._post_announce = lambda edge, doc, limit: edges.post(peer, edge, doc)  # type: ignore[method-assign]
    edges.start(W)
    edges.start(E)
    try:
        one = held(peer, key, "one.bin")
        got(peer, one, MIN_PIECE)
        await turn(peer)
        got(peer, one, SIZE - MIN_PIECE, MIN_PIECE)  # complete
        await turn(peer)

        if w_dies:
            del edges.live[W]
        peer.use_edges([E])  # the router's fallback: W is down, or seemed so
        two = held(peer, key, "two.bin")
        got(peer, two, SIZE)
        await turn(peer)
        assert await edges.counted(E) == 2
        if not w_dies:
            assert await edges.counted(W) == 0, "the edge the peer left still counts it"

        if w_dies:
            edges.start(W)  # restarted, knowing nothing (no snapshot: it was killed)
        peer.use_edges([W])
        three = held(peer, key, "three.bin")
        got(peer, three, SIZE // 2, SIZE // 2)
        await turn(peer)
        assert await edges.counted(E) == 0, "the edge the peer left still counts it"
        assert await edges.counted(W) == 3

        assert (W, one, "started") in edges.heard[-3:], "back at W, the peer joins its swarms afresh"
        assert (W, one, "stopped") in edges.heard or w_dies

        received = sum(sum(c.values()) for c in peer.received.values())
        assert await edges.booked() == received == 3 * SIZE, "bytes booked twice"
        base = {STAT_KEYS[EDGE]: SIZE - MIN_PIECE, STAT_KEYS[PEER_SAME_REGION]: MIN_PIECE, STAT_KEYS[PEER_OTHER_REGION]: 0}
        assert edges.bases[E, one] == edges.bases[W, one] == base and edges.bases[E, two] is None
    finally:
        assert peer.store is not None
        peer.store.close()
