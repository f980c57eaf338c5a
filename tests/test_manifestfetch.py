"""edgeswarm.node.manifestfetch, driven in-process through a real Peer: the peer checks manifests with the edge's code.

Issue 11 found the peer's copy of the manifest fetch without the edge's
"is this the manifest of the path I asked for?" check.  There is one copy
now; these tests drive ``Peer.resolve`` (no process, no socket of its own)
against ``FakeParent``, a real HTTP server that answers validly signed
manifests as the test says.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_lying_upstream import FakeParent

from edgeswarm.errors import HttpError
from edgeswarm.node import manifestfetch, upstream
from edgeswarm.roles import livegateway
from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import Peer


async def started_peer(tmp_path, parent: FakeParent) -> Peer:
    """A peer gateway's state, its origin key learned from ``parent`` (no upload server, no announces)."""
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(parent.url,), timeout=5.0))
    await peer.upstream.start()
    await peer.pinned.open(peer.upstream, peer.edges)
    return peer


async def close(peer: Peer) -> None:
    await peer.upstream.close()
    if peer.store is not None:
        peer.store.close()


async def test_a_peer_refuses_the_signed_manifest_of_another_path(tmp_path):
    async with FakeParent(tmp_path) as parent:
        b = parent.publish("b.txt", b"b" * 300_000, 1_700_000_000)
        parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        parent.answers["a.txt"] = b  # signed with the pinned key, but for /b.txt
        peer = await started_peer(tmp_path, parent)
        try:
            with pytest.raises(HttpError) as err:
                await peer.resolve("a.txt")
            assert err.value.status == 502
            assert "bad manifest for a.txt: it is the manifest of 'b.txt', not of 'a.txt'" in err.value.message
            assert peer.store is not None and peer.store.manifest_for_path("a.txt") is None  # nothing of b kept as a
            assert peer.metrics.events[("bad_manifest", parent.url)] == 1
            assert (await peer.resolve("b.txt")).content_id == b.content_id  # the same answer, asked for its own path
        finally:
            await close(peer)


async def test_a_hung_edge_costs_a_read_one_second_at_most_not_its_timeout(tmp_path):
    """A peer holding a file whose edge stopped answering served every read (each seek of a player) its 10 s
    timeout late.  Now a read waits STALE_WAIT at most and gets the cached manifest; the ask goes on, shared by the
    reads meanwhile, and after its timeout the edge is set aside, so the next reads are not kept waiting at all."""
    async with FakeParent(tmp_path) as parent:
        a = parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(parent.url,), timeout=2.0))
        await peer.upstream.start()
        await peer.pinned.open(peer.upstream, peer.edges)
        try:
            assert (await peer.resolve("a.txt")).content_id == a.content_id
            parent.hung, peer.manifests.revalidate_after = True, 0
            asks = parent.manifest_asks
            waits = []
            for _ in range(8):
                started = time.monotonic()
                assert (await peer.resolve("a.txt")).content_id == a.content_id
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.2)
            assert 0.9 < waits[0] < 1.5 and max(waits[1:]) < 0.3, waits  # the 2 s timeout is nobody's wait
            assert parent.manifest_asks == asks + 1  # one ask, then the edge is set aside
            assert peer.metrics.events[("stale_manifest", "")] == 8
            await asyncio.sleep(2.5)  # the ask's end: 4 s after it began (the timeout and peer.EDGE_SLACK, an edge's)
            parent.hung = False
            b = parent.publish("a.txt", b"b" * 300_000, 1_700_000_100)  # republished, and the edge answers again
            peer.ranking.revive(parent.url)
            assert (await peer.resolve("a.txt")).content_id == b.content_id
        finally:
            await close(peer)


async def test_a_version_a_source_withdrew_is_not_served_stale_while_a_slow_source_answers(tmp_path):
    """A file replaced at the origin: a piece's 404 withdrew the version held, and the next read, its source slower
    than STALE_WAIT, was handed that withdrawn version again, stale, and answered 404 "no longer published" for a
    file the origin served (an adversarial session).  It waits for the source's answer: the new version."""
    async with FakeParent(tmp_path) as parent:
        a = parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        peer = await started_peer(tmp_path, parent)
        try:
            assert (await peer.resolve("a.txt")).content_id == a.content_id
            b = parent.publish("a.txt", b"b" * 300_000, 1_700_000_100)
            parent.slow = 1.5
            peer.manifests.withdraw("a.txt", a.content_id)  # what a piece's 404 does
            assert (await peer.resolve("a.txt")).content_id == b.content_id
        finally:
            await close(peer)


async def test_reads_of_an_uncached_path_at_once_ask_the_edge_once(tmp_path):
    """A player's connections open together (and a crowd's readers through one gateway): the peer collapsed only
    revalidations of a cached manifest, and asked its edge once per read for one it did not hold yet.  A read that
    goes away while the ask runs does not cancel it for the others."""
    async with FakeParent(tmp_path) as parent:
        a = parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        peer = await started_peer(tmp_path, parent)
        try:
            gone = asyncio.ensure_future(peer.resolve("a.txt"))
            reads = [asyncio.ensure_future(peer.resolve("a.txt")) for _ in range(5)]
            await asyncio.sleep(0)
            gone.cancel()
            assert {s.content_id for s in await asyncio.gather(*reads)} == {a.content_id}
            assert parent.manifest_asks == 1
            parent.answers.pop("a.txt")  # withdrawn: every read waiting on the ask gets its 404
            peer.manifests.revalidate_after = 0
            peer.store.forget_path("a.txt")
            failed = await asyncio.gather(*(peer.resolve("a.txt") for _ in range(3)), return_exceptions=True)
            assert [getattr(e, "status", e) for e in failed] == [404] * 3 and parent.manifest_asks == 2
        finally:
            await close(peer)


async def test_a_peer_serves_what_it_holds_when_its_edge_turns_to_another_paths_manifest(tmp_path):
    """Revalidation goes through the same check: a lie after a good answer leaves the good one in use."""
    async with FakeParent(tmp_path) as parent:
        a = parent.publish("a.txt", b"a" * 300_000, 1_700_000_000)
        b = parent.publish("b.txt", b"b" * 300_000, 1_700_000_001)  # newer than a: only the path check refuses it
        peer = await started_peer(tmp_path, parent)
        try:
            assert (await peer.resolve("a.txt")).content_id == a.content_id
            parent.answers["a.txt"] = b
            peer.manifests.revalidate_after = 0  # ask again now
            assert (await peer.resolve("a.txt")).content_id == a.content_id
            assert peer.metrics.events[("stale_manifest", "")] == 1
            assert peer.metrics.events[("bad_manifest", parent.url)] == 1
        finally:
            await close(peer)


async def two_edge_peer(tmp_path, wedged: FakeParent, good: FakeParent) -> Peer:
    """A peer gateway with two edges, ``wedged`` first (its /manifest never answers), signed by one origin key."""
    good.workdir.mkdir()
    good.key, wedged.hung = wedged.key, True
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(wedged.url, good.url), timeout=5.0))
    await peer.upstream.start()
    await peer.pinned.open(peer.upstream, peer.edges)
    return peer


async def test_a_new_files_manifest_is_asked_of_the_next_edge_too_when_the_first_is_slow_to_answer(tmp_path):
    """A peer's first edge wedged (SIGSTOP: it takes connections and never answers): each edge was asked in turn
    with the whole timeout, and a new file's first read (and `edgeswarm get`) waited 12 s for it, where the second
    edge answered at once (an adversarial session).  Now the next edge is asked too after HEDGE_AFTER; the first
    answer is kept, and the edge that had not answered yet is set aside as a raced one is: left first, it cost the
    next file HEDGE_AFTER again, the first piece the reader's deadline more, and a live player every playlist version
    (another adversarial session)."""
    async with FakeParent(tmp_path) as wedged, FakeParent(tmp_path / "good") as good:
        peer = await two_edge_peer(tmp_path, wedged, good)
        try:
            a = good.publish("a.txt", b"a" * 300_000, 1_700_000_000)
            b = good.publish("b.txt", b"b" * 300_000, 1_700_000_000)
            started = time.monotonic()
            assert (await peer.resolve("a.txt")).content_id == a.content_id
            assert time.monotonic() - started < upstream.HEDGE_AFTER + 1.5  # not the 5 s timeout
            assert (wedged.manifest_asks, good.manifest_asks) == (1, 1)
            assert not peer.ranking.available(wedged.url, time.monotonic())
            assert (await peer.resolve("b.txt")).content_id == b.content_id  # the good edge first now
            assert (wedged.manifest_asks, good.manifest_asks) == (1, 2)
        finally:
            await close(peer)


async def test_a_live_playlists_piece_is_asked_of_the_next_edge_too_when_the_first_is_slow_to_answer(tmp_path):
    """A live playlist's bytes come from the edges, not the swarm (livegateway.EdgeSource), and were asked of them in
    turn: a wedged first edge held a live player's playlist for its whole timeout, then the version had been replaced
    and the read was a 502 (an adversarial session, in Chromium with hls.js)."""
    async with FakeParent(tmp_path) as wedged, FakeParent(tmp_path / "good") as good:
        peer = await two_edge_peer(tmp_path, wedged, good)
        wedged.hung, wedged.hangs = False, {"piece"}
        try:
            playlist = good.publish("live/live.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n", 1_700_000_000)
            wedged.publish("live/live.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n", 1_700_000_000)
            signed = await peer.resolve("live/live.m3u8")
            assert signed.content_id == playlist.content_id
            started = time.monotonic()
            data = await livegateway.EdgeSource(peer, signed).fetch(0)
            assert data.startswith(b"#EXTM3U") and time.monotonic() - started < upstream.HEDGE_AFTER + 1.5  # not 5 s
            assert not peer.ranking.available(wedged.url, time.monotonic())  # set aside: the next version asks the other
        finally:
            await close(peer)


async def test_a_404_from_the_edge_asked_next_is_the_answer_as_before(tmp_path):
    """A 404 (not published) from whichever edge answers first is the read's answer, as it was when the edges were
    asked one after another and the first timed out (now without waiting for that)."""
    async with FakeParent(tmp_path) as wedged, FakeParent(tmp_path / "good") as good:
        peer = await two_edge_peer(tmp_path, wedged, good)
        try:
            started = time.monotonic()
            with pytest.raises(HttpError) as err:
                await peer.resolve("nothing.txt")
            assert err.value.status == 404 and time.monotonic() - started < upstream.HEDGE_AFTER + 1.5
        finally:
            await close(peer)


async def test_a_content_id_a_source_answered_404_for_is_not_asked_again_at_once(tmp_path, monkeypatch):
    """A version withdrawn while peers held it was asked of the origin by id at each of their announces (a refusal, so
    announced again as new: 268 origin requests in 26 minutes for one file, an adversarial soak).  A 404 is kept a
    while (``UNKNOWN_FOR``), as nginx keeps one."""
    async with FakeParent(tmp_path) as parent:
        peer = await started_peer(tmp_path, parent)
        try:
            store = await peer._store()
            for _ in range(3):
                with pytest.raises(HttpError) as err:
                    await peer.manifests.by_id(store, parent.url, "c" * 64)
                assert err.value.status == 404 and f"{parent.url} answered 404" in err.value.message
            assert parent.content_asks == 1
            monkeypatch.setattr(manifestfetch, "UNKNOWN_FOR", 0.0)  # once it is over, asked again
            with pytest.raises(HttpError):
                await peer.manifests.by_id(store, parent.url, "c" * 64)
            assert parent.content_asks == 2
        finally:
            await close(peer)
