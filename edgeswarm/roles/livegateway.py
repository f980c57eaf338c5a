"""A peer gateway's side of live streaming: fresh playlists straight from the edge, new segments through the swarm.

A live playlist is a few hundred bytes that change at every segment: it is
fetched from the edge (verified against its signed manifest like any
piece), never from peers, so no reader waits out the swarm's patience for it
and no swarm is made for each of its versions.  Each playlist the player is
handed names the newest segments; the gateway then fetches the last
``LIVE_AHEAD`` of them through their swarms (``want_live``: background
pieces, which the edge hands its region about once - policy/superseed.py -
and peers pass on over their HAVE streams), so by the time the player asks
for a segment it is usually here already, or at a neighbour.  Segments that
left the playlist are dropped a little later: a live stream does not fill
the cache, and a peer's announces stay the size of the live window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from edgeswarm.errors import HttpError
from edgeswarm.node.upstream import UpstreamError
from edgeswarm.policy.live import LIVE_AHEAD, PLAYLIST_REVALIDATE
from edgeswarm.policy.vocabulary import EDGE
from edgeswarm.protocol import hls
from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.store.piecestore import CorruptPiece, PieceNotStored

if TYPE_CHECKING:
    from edgeswarm.roles.peer import Peer

log = logging.getLogger("edgeswarm.roles.livegateway")
RETIRE_AFTER = 6  # segments after one left the playlist before the gateway drops it: a player far behind still finishes it
FOLLOW_S = 10.0  # seconds a playlist is followed after a player last asked for it (hls.js reloads at least every segment)
RELOAD_WAIT = 10.0  # seconds an edge may hold the gateway's blocking reload of a playlist


class EdgeSource:
    """A playlist's pieces: the store, else the fastest edge that gives a verified copy."""

    def __init__(self, peer: Peer, signed: SignedManifest):
        self.peer, self.signed = peer, signed

    def local(self, index: int) -> int | None:
        return self.peer.pinned.opened.piece_fd(self.signed.content_id, index)

    def held(self, index: int) -> bool:
        return self.peer.pinned.opened.has(self.signed.content_id, index)

    async def fetch(self, index: int) -> bytes:
        cid = self.signed.content_id
        problems = []
        for edge in self.peer.ranking.ranked(self.peer.edges, time.monotonic()) or self.peer.edges:
            try:
                data = await self.peer.fetch_piece(edge, cid, index, to_peer=False, urgent=True)
                self.peer.pinned.opened.put_piece(cid, index, data)
            except (UpstreamError, CorruptPiece, KeyError) as exc:
                problems.append(f"{edge}: {exc}")
                continue
            except PieceNotStored:
                pass  # verified by put_piece before the disk refused it: served from memory
            self.peer.count_received(cid, EDGE, edge, len(data))
            return data
        raise HttpError(502, f"no edge gave piece {index} of {self.signed.manifest.path}: {'; '.join(problems) or 'no edge'}")


class LiveFollower:
    """After a playlist is served, follows it: its newest segments through the swarm, at each new version.

    While a player keeps asking for the playlist (within ``FOLLOW_S``), the
    gateway holds a blocking reload at its edge (``?wait=``: answered when
    the origin publishes the next version), so its swarm starts on a new
    segment within a round trip of its publication, not at the player's
    next reload (every half segment) through two nodes' revalidation.  One
    follow per playlist path at a time.
    """

    def __init__(self, peer: Peer):
        self.peer = peer
        self._following: dict[str, asyncio.Task] = {}  # playlist path -> its follow task
        self._asked: dict[str, float] = {}  # playlist path -> when a player last asked for it
        self._newest: dict[str, int] = {}  # playlist path -> the newest segment sequence already asked for
        self._segments: dict[str, dict[int, str]] = {}  # playlist path -> the segments it named (sequence -> path), until retired

    def served(self, signed: SignedManifest) -> None:
        path = signed.manifest.path
        self._asked[path] = time.monotonic()
        if path in self._following:
            return
        task = self._following[path] = asyncio.create_task(self._follow(signed))
        task.add_done_callback(lambda t: self._done(path, t))

    def _done(self, path: str, task: asyncio.Task) -> None:
        self._following.pop(path, None)
        if not task.cancelled() and task.exception() is not None:
            log.info("following %s: %s", path, task.exception())

    async def _follow(self, signed: SignedManifest) -> None:
        """Fetch ahead for this version, then for each next one while the player is still watching."""
        path = signed.manifest.path
        playlist = await self._ahead(signed)
        while playlist is not None and not playlist.ended and time.monotonic() - self._asked.get(path, 0.0) <= FOLLOW_S:
            asked = time.monotonic()
            try:
                newer = await self._next_version(signed)
            except HttpError as exc:  # no edge answered, or a newer version superseded it meanwhile: the next reload says
                log.debug("following %s: %s", path, exc.message)
                newer = None
            if newer is None:  # unchanged (or an edge that does not hold reloads): at most one reload per revalidation
                await asyncio.sleep(max(0.0, PLAYLIST_REVALIDATE - (time.monotonic() - asked)))
                continue
            signed = newer
            playlist = await self._ahead(signed)

    async def _next_version(self, signed: SignedManifest) -> SignedManifest | None:
        """The playlist's next version from the edges, its pieces stored; None while it is unchanged."""
        peer, path = self.peer, signed.manifest.path
        edges = peer.ranking.ranked(peer.edges, time.monotonic()) or peer.edges
        store = peer.pinned.opened
        newer = await peer.manifests.revalidate(store, path, edges, peer.edge_headers(), wait=RELOAD_WAIT)
        if newer.content_id == signed.content_id:
            return None
        source = EdgeSource(peer, newer)
        for index in range(newer.manifest.piece_count):
            if not source.held(index):
                await source.fetch(index)
        return newer

    async def _ahead(self, signed: SignedManifest) -> hls.MediaPlaylist | None:
        """Ask the swarms of this version's newest segments for them (``want_live``); the parsed playlist, if it is one."""
        store = self.peer.pinned.opened
        data = b"".join(store.read_piece(signed.content_id, i) or b"" for i in range(signed.manifest.piece_count))
        if len(data) != signed.manifest.size:
            return None  # evicted or superseded meanwhile: the next playlist request follows it
        try:
            playlist = hls.parse(data.decode("utf-8", errors="replace"), signed.manifest.path)
        except hls.PlaylistError:
            return None  # a master playlist or something else: nothing to fetch ahead
        path = signed.manifest.path
        known = self._segments.setdefault(path, {})
        known.update((s.sequence, s.path) for s in playlist.segments)
        for sequence in [q for q in known if q < playlist.media_sequence - RETIRE_AFTER]:
            await self._retire(known.pop(sequence))
        for segment in playlist.segments[-LIVE_AHEAD:]:
            if segment.sequence <= self._newest.get(path, -1):
                continue
            try:
                seg = await self.peer.resolve(segment.path)
            except HttpError as exc:
                log.info("live segment %s of %s: %s", segment.path, path, exc.message)
                continue
            self.peer.swarm(seg).want_live()
            self._newest[path] = segment.sequence
        return playlist

    async def _retire(self, path: str) -> None:
        """A segment that left the live window: its swarm ends and its pieces go, so announces stay the window's size."""
        store = self.peer.pinned.opened
        signed = store.manifest_for_path(path)
        if signed is None:
            return
        swarm = self.peer.swarms.pop(signed.content_id, None)
        if swarm is not None:
            await swarm.close()
        store.drop_content(signed.content_id)

    async def close(self) -> None:
        for task in list(self._following.values()):
            task.cancel()
