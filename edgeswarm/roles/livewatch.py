"""The origin's live publishing: a rewritten playlist and its new segments are published within a poll.

ffmpeg writes a live HLS stream into the published directory: a segment
every couple of seconds (written as ``.tmp`` and renamed when complete, with
``-hls_flags temp_file``) and the playlist rewritten (by rename) to name it.
The origin's full scan walks the whole tree every ``--scan-interval``; that
is too slow and too costly for a stream.  Instead, every ``LIVE_POLL``
seconds this watcher stats only the playlists already published - one
``stat`` each, no walk - and when one changed it reads it and publishes, in
one catalogue change, the segments (and LL-HLS parts) it names that are
new (hashing only those) and then the playlist.  So a playlist is never
published before the segments it names, no half-written file is ever
hashed (the catalogue skips ``.tmp`` names, and ffmpeg renames a segment
before it names it), and the full scan still withdraws the segments ffmpeg
deletes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from edgeswarm.policy.live import LIVE_POLL, is_playlist
from edgeswarm.protocol import hls
from edgeswarm.store.catalog import Catalog, Entry, _stat_key

log = logging.getLogger("edgeswarm.roles.livewatch")
MAX_PLAYLIST = 1 << 20  # bytes of a playlist read: all of a live window's, the newest end of a long DVR or event one


class LiveWatcher:
    """Publishes rewritten playlists and the segments they name, between two full scans.

    Its changes go through ``Catalog.change``, as the full scan's and
    uploads' do, so they never interleave with theirs.
    """

    def __init__(self, catalog: Catalog, poll: float = LIVE_POLL, on_change: Callable[[str], None] | None = None):
        self.catalog, self.poll = catalog, poll
        self.on_change = on_change
        self.published = 0  # playlist versions published by this watcher (not by full scans)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.check()
            except Exception:
                log.exception("live check of %s failed", self.catalog.root)

    def changed_playlists(self) -> list[str]:
        """Published playlists whose file is no longer the one hashed: one stat each (blocking)."""
        changed = []
        for rel, entry in list(self.catalog.by_path.items()):
            if not is_playlist(rel):
                continue
            try:
                if _stat_key(entry.file.stat()) != entry.stat:
                    changed.append(rel)
            except OSError:
                continue  # gone: the full scan withdraws it
        return changed

    async def check(self) -> None:
        changed = await asyncio.to_thread(self.changed_playlists)
        if not changed:
            return
        changes, lines = await self.catalog.change(lambda known: self._changes(changed, known))
        for line in lines:
            log.debug("%s", line)
        for rel in changed:
            if rel in changes:
                self.published += 1
                if self.on_change is not None:
                    self.on_change(rel)

    def _changes(self, playlists: list[str], known: dict[str, Entry]) -> dict[str, Entry | None]:
        """The new segments of each changed playlist, then the playlist (blocking: reads and hashes)."""
        rels: list[str] = []
        read: dict[str, tuple[int, int, int] | None] = {}
        for rel in playlists:
            read[rel], media = _media(self.catalog.root / rel, rel)
            rels += media
            rels.append(rel)
        changes = self.catalog.changes_for(rels, known)
        for rel in playlists:  # rewritten again between our read and its hashing: it may name a segment not published
            entry = changes.get(rel)
            if entry is not None and entry.stat != read[rel]:
                del changes[rel]  # the next poll publishes it with its segments
        return changes


def _media(file: Path, rel: str) -> tuple[tuple[int, int, int] | None, list[str]]:
    """The playlist file's stat key as read, and the segments and parts it names; none if it is unreadable or not a playlist.

    Of a playlist over MAX_PLAYLIST (an event or DVR window of hours), its
    head's tags and its last MAX_PLAYLIST bytes, from a line's start: new
    segments are appended, and read from its first megabyte the newest went
    unpublished until the next full scan, a player's 404s meanwhile (an
    adversarial session: 51 in 20 s).
    """
    try:
        with open(file, "rb") as f:
            key = _stat_key(os.fstat(f.fileno()))
            data = f.read(MAX_PLAYLIST)
            if key[0] > MAX_PLAYLIST:
                head = data.split(b"#EXTINF", 1)[0]  # the header's tags (#EXTM3U first), before the first segment
                f.seek(key[0] - MAX_PLAYLIST)
                data = head + f.read(MAX_PLAYLIST).split(b"\n", 1)[-1]  # from the first whole line
            text = data.decode("utf-8", errors="replace")
    except OSError:
        return None, []
    try:
        return key, hls.parse(text, rel).media_paths
    except hls.PlaylistError:
        return key, []
