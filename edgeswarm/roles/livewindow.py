"""Which live segments a node drops once they left their playlist's window: the edge and the peer's gateway alike.

A node follows each live playlist version it serves (``policy.live.LiveWindows``)
and drops the segments that fell behind: an edge under the default of no
``--max-cache`` kept every segment of a stream for good, and a restarted
gateway the window it held before its restart (an adversarial session).
"""

from __future__ import annotations

import posixpath
import time

from edgeswarm.policy.live import LiveWindows, is_playlist
from edgeswarm.policy.recent import Recent
from edgeswarm.protocol import hls
from edgeswarm.protocol.manifest import SignedManifest
from edgeswarm.store.piecestore import PieceStore


class LiveFollow:
    """The windows of the playlists a node serves, and the version of each it read last (each is read once)."""

    def __init__(self) -> None:
        self.windows = LiveWindows()
        self._read: Recent[str, tuple[str, hls.MediaPlaylist]] = Recent(self.windows.playlists)  # path -> (id, parsed)

    def served(self, store: PieceStore, signed: SignedManifest) -> tuple[hls.MediaPlaylist | None, list[str]]:
        """A playlist version just served: itself parsed (None if it is not a media playlist, or not whole here), and
        the segment paths to drop now (of other playlists too: those no one asked for lately, ``LiveWindows.idle``)."""
        path, now = signed.manifest.path, time.monotonic()
        self.windows.asked(path, now)
        idle = self.windows.idle(now)
        playlist, gone = self._read_version(store, signed)
        return playlist, idle + gone

    def _read_version(self, store: PieceStore, signed: SignedManifest) -> tuple[hls.MediaPlaylist | None, list[str]]:
        path = signed.manifest.path
        last = self._read.touch(path)
        if last is not None and last[0] == signed.content_id:
            return last[1], []
        playlist = _parsed(store, signed)
        if playlist is None:
            return None, []  # not whole here (the next request looks again), or a master playlist: no window
        self._read[path] = (signed.content_id, playlist)
        if playlist.ended:  # video on demand, or a stream that ended: nothing leaves its window (nor are other
            return playlist, []  # renditions of its folder, encoded at other times, any playlist's orphans)
        if self.windows.due(path, playlist.media_sequence):  # what an earlier run held, or this one never read named
            held = list(store.contents())
            named = set(playlist.media_paths).union(*(_named_by(store, s, path) for s in held))
            self.windows.found(path, named, ((s.manifest.path, s.manifest.modified) for s in held), playlist.media_sequence)
        gone = self.windows.named(path, ((m.sequence, m.path) for m in playlist.media), playlist.media_sequence)
        oldest = _oldest(store, playlist) if self.windows.orphaned(path) else None
        if oldest is not None:
            gone += self.windows.behind(path, oldest, playlist.target_duration)
        return playlist, gone


def _parsed(store: PieceStore, signed: SignedManifest) -> hls.MediaPlaylist | None:
    """A held media playlist, parsed; None if it is not whole here or not one."""
    data = b"".join(store.read_piece(signed.content_id, i) or b"" for i in range(signed.manifest.piece_count))
    if len(data) != signed.manifest.size:
        return None
    try:
        return hls.parse(data.decode("utf-8", errors="replace"), signed.manifest.path)
    except hls.PlaylistError:
        return None


def _named_by(store: PieceStore, other: SignedManifest, playlist: str) -> set[str]:
    """What ``other``, if it is another playlist of ``playlist``'s folder held here, names: not orphans of this one (a
    recording beside a live stream)."""
    path = other.manifest.path
    if path == playlist or not is_playlist(path) or posixpath.dirname(path) != posixpath.dirname(playlist):
        return set()
    parsed = _parsed(store, other)
    return set(parsed.media_paths) if parsed is not None else set()


def _oldest(store: PieceStore, playlist: hls.MediaPlaylist) -> int | None:
    """The date of the first segment the playlist names, from any of its segments held here (dated as written, one
    target duration apart); None if none is held."""
    for segment in playlist.segments:
        held = store.manifest_for_path(segment.path)
        if held is not None:
            return int(held.manifest.modified - (segment.sequence - playlist.media_sequence) * playlist.target_duration)
    return None


def drop(store: PieceStore, paths: list[str]) -> list[SignedManifest]:
    """Drop the held contents at ``paths``; those dropped."""
    dropped = []
    for path in paths:
        signed = store.manifest_for_path(path)
        if signed is not None:
            store.drop_content(signed.content_id)
            dropped.append(signed)
    return dropped
