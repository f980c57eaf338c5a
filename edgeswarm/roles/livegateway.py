"""A peer gateway's side of live streaming: fresh playlists straight from the edge, new segments through the swarm.

A live playlist is a few hundred bytes that change at every segment: it is
fetched from the edge (verified against its signed manifest like any
piece), never from peers, so no reader waits out the swarm's patience for it
and no swarm is made for each of its versions.  Each playlist the player is
handed names the newest segments; the gateway then fetches the last
``LIVE_AHEAD`` of them (of an LL-HLS playlist, the parts its player will
play next: ``_ahead``) through their swarms (``want_live``: background
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
from edgeswarm.node.serving import LOOKAHEAD
from edgeswarm.node.upstream import UpstreamError, first_answer
from edgeswarm.policy.live import LIVE_AHEAD
from edgeswarm.policy.vocabulary import EDGE
from edgeswarm.protocol import hls
from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.roles.livewindow import LiveFollow
from edgeswarm.store.piecestore import CorruptPiece, PieceNotStored

if TYPE_CHECKING:
    from edgeswarm.roles.peer import Peer

log = logging.getLogger("edgeswarm.roles.livegateway")


class EdgeSource:
    """A playlist's pieces: the store, else the fastest edge that gives a verified copy."""

    def __init__(self, peer: Peer, signed: SignedManifest):
        self.peer, self.signed = peer, signed

    def ahead(self, piece_size: int) -> int:
        return self.peer.pinned.opened.read_ahead(LOOKAHEAD, piece_size)

    def local(self, index: int) -> int | None:
        return self.peer.pinned.opened.piece_fd(self.signed.content_id, index)

    def held(self, index: int) -> bool:
        return self.peer.pinned.opened.has(self.signed.content_id, index)

    async def fetch(self, index: int, stop: int | None = None) -> bytes:
        """The piece from the edges asked as manifests are (``first_answer``): the next one too when one has not
        answered within HEDGE_AFTER.  Asked in turn, a wedged first edge held a live player's playlist for its 12 s
        timeout, and by then that version had been replaced: a 502 with the healthy edge's reason a bare content id
        (hls.js gave up on the playlist after 10 s and the video stalled: an adversarial session)."""
        edges = self.peer.ranking.ranked(self.peer.edges, time.monotonic()) or self.peer.edges
        problems: list[UpstreamError] = []
        got = await first_answer(edges, lambda edge: self._from(edge, index), problems, self.peer.ranking)
        if got is None:
            why = "; ".join(p.message for p in problems) or "no edge"
            raise HttpError(502, f"no edge gave piece {index} of {self.signed.manifest.path}: {why}")
        edge, data = got
        self.peer.count_received(self.signed.content_id, EDGE, edge, len(data))
        return data

    async def _from(self, edge: str, index: int) -> tuple[str, bytes]:
        """(edge, the piece) verified and stored; UpstreamError saying why not, so that ``first_answer`` moves on."""
        cid, path = self.signed.content_id, self.signed.manifest.path
        try:
            data = await self.peer.fetch_piece(edge, cid, index, to_peer=False, urgent=True)
            self.peer.pinned.opened.put_piece(cid, index, data)
        except CorruptPiece as exc:
            raise UpstreamError(502, f"{edge}: {exc}") from None
        except KeyError:  # Withdrawn (a 404), or this version left the store: a newer one replaced it meanwhile
            raise UpstreamError(502, f"{edge}: this version of {path} was withdrawn or replaced meanwhile") from None
        except PieceNotStored:
            pass  # verified by put_piece before the disk refused it: served from memory
        return edge, data


class LiveFollower:
    """After a playlist is served, fetches its newest segments through the swarm (one follow per playlist path at a time)."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self._following: dict[str, asyncio.Task] = {}  # playlist path -> its follow task
        self._asked: dict[str, set[str]] = {}  # playlist path -> the segments and parts already fetched ahead
        self._sequence: dict[str, int] = {}  # playlist path -> the media sequence of the version followed last
        self._windows = LiveFollow()  # what each playlist named, until it left the window (livewindow.py)

    def served(self, signed: SignedManifest) -> None:
        path = signed.manifest.path
        if path in self._following:
            return
        task = self._following[path] = asyncio.create_task(self._follow(signed))
        task.add_done_callback(lambda t: self._done(path, t))

    def _done(self, path: str, task: asyncio.Task) -> None:
        self._following.pop(path, None)
        if not task.cancelled() and task.exception() is not None:
            log.info("following %s: %s", path, task.exception())

    async def _follow(self, signed: SignedManifest) -> None:
        playlist, gone = self._windows.served(self.peer.pinned.opened, signed)
        asked = self._asked.setdefault(signed.manifest.path, set())
        for media in gone:
            asked.discard(media)
            await self._retire(media)
        if playlist is None:
            return  # not whole here (the next playlist request follows it), or not a media playlist: nothing to fetch
        path = signed.manifest.path
        if playlist.media_sequence < self._sequence.get(path, -1):  # the encoder started again, naming from 0 again
            self._restarted(asked, playlist)
        self._sequence[path] = playlist.media_sequence
        for media in _ahead(playlist):
            if media in asked:
                continue
            try:
                seg = await self.peer.resolve(media)
            except HttpError as exc:
                log.info("live segment %s of %s: %s", media, path, exc.message)
                continue
            self.peer.swarm(seg).want_live()
            asked.add(media)

    def _restarted(self, asked: set[str], playlist: hls.MediaPlaylist) -> None:
        """A new run of the stream reuses the names of the last one's segments, some still on disk, so they never left
        the window: names fetched ahead are new again, and their manifests are asked for (a restarted ffmpeg's first
        24 s went from the edge to every player, none through the swarm: an adversarial session)."""
        asked.clear()
        for media in playlist.media_paths:
            self.peer.manifests.expire(media)

    async def _retire(self, path: str) -> None:
        """A segment that left the live window: its swarm ends and its pieces go, so announces stay the window's size."""
        store = self.peer.pinned.opened
        signed = store.manifest_for_path(path)
        if signed is None:
            return
        swarm = self.peer.swarms.get(signed.content_id)
        if swarm is not None:
            self.peer.retire(swarm)  # a read still holding it (a late player) goes on with a fresh one (SwarmSource.fetch)
            await swarm.close()
        store.drop_content(signed.content_id)

    async def close(self) -> None:
        for task in list(self._following.values()):
            task.cancel()


def _ahead(playlist: hls.MediaPlaylist) -> list[str]:
    """What a gateway fetches ahead of its player: the newest ``LIVE_AHEAD`` segments, or with parts, the newest parts.

    A low-latency player plays parts from ``PART-HOLD-BACK`` behind the live
    edge: the parts over that span are what it will ask for next, and the
    whole segments they make up it never asks for.
    """
    if not playlist.parts:
        return [s.path for s in playlist.segments[-LIVE_AHEAD:]]
    parts, _ = playlist.newest_parts(playlist.part_hold_back or LIVE_AHEAD * playlist.target_duration)
    return [p.path for p in parts]
