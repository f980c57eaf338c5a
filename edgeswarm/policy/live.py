"""How fresh a live stream's playlist must be, decided in one place.

A live HLS playlist changes at every segment; everything else a node caches
changes rarely.  Nodes hold a manifest for ``--revalidate`` seconds (1 s by
default) before asking upstream again, and a playlist crosses two of them
(edge, then the peer's gateway) after the origin notices the rewrite.  To
keep every viewer's playlist younger than one segment duration (2 s), a
playlist's manifest is held for at most ``PLAYLIST_REVALIDATE`` seconds at
each hop: origin polling (0.25 s) + edge (0.5 s) + gateway (0.5 s) stays
well under one segment, and an edge's concurrent revalidations of one path
share one upstream request, so the cost upstream is at most two requests a
second per playlist and edge, however many viewers.
"""

from __future__ import annotations

PLAYLIST_SUFFIX = ".m3u8"
SEGMENT_SUFFIXES = (".ts", ".m4s", ".aac")  # HLS media segments (MPEG-TS, fragmented MP4, packed audio)
PLAYLIST_REVALIDATE = 0.5  # seconds a node holds a playlist's manifest before asking upstream again
LIVE_POLL = 0.25  # seconds between two looks of the origin at its published playlists
LIVE_AHEAD = 2  # the newest segments of a playlist a gateway fetches through its swarm before its player asks


def is_playlist(path: str) -> bool:
    """A live (or any) HLS playlist, by its name: it is revalidated more often."""
    return path.lower().endswith(PLAYLIST_SUFFIX)


def is_segment(path: str) -> bool:
    """An HLS media segment, by its name: cut into smaller pieces (manifest.piece_size_for), as it must spread fast."""
    return path.lower().endswith(SEGMENT_SUFFIXES)


def revalidate_after(path: str, default: float) -> float:
    """How long a node may hold ``path``'s manifest before asking upstream: playlists briefly."""
    return min(default, PLAYLIST_REVALIDATE) if is_playlist(path) else default
