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

import posixpath
from collections.abc import Iterable

from edgeswarm.policy.recent import Recent

PLAYLIST_SUFFIX = ".m3u8"
SEGMENT_SUFFIXES = (".ts", ".m4s", ".aac")  # HLS media segments (MPEG-TS, fragmented MP4, packed audio)
PLAYLIST_REVALIDATE = 0.5  # seconds a node holds a playlist's manifest before asking upstream again
LIVE_POLL = 0.25  # seconds between two looks of the origin at its published playlists
LIVE_AHEAD = 2  # the newest segments of a playlist a gateway fetches through its swarm before its player asks
RETIRE_AFTER = 6  # segments after one left a playlist before a node drops it: a player far behind still finishes it
PLAYLISTS_FOLLOWED = 1024  # live playlists whose window a node remembers (the least recently served forgotten)
IDLE_AFTER = 120.0  # seconds a live playlist nobody asked for keeps its window: then its segments go too


def is_playlist(path: str) -> bool:
    """A live (or any) HLS playlist, by its name: it is revalidated more often."""
    return path.lower().endswith(PLAYLIST_SUFFIX)


def is_segment(path: str) -> bool:
    """An HLS media segment, by its name: cut into smaller pieces (manifest.piece_size_for), as it must spread fast."""
    return path.lower().endswith(SEGMENT_SUFFIXES)


def revalidate_after(path: str, default: float) -> float:
    """How long a node may hold ``path``'s manifest before asking upstream: playlists briefly."""
    return min(default, PLAYLIST_REVALIDATE) if is_playlist(path) else default


def _within(playlist: str, path: str) -> bool:
    """Whether ``path`` is a segment in ``playlist``'s folder or below it (paths are resolved: no ``..`` is left)."""
    folder = posixpath.dirname(playlist)
    return is_segment(path) and (not folder or path.startswith(folder + "/"))


class LiveWindows:
    """What each live playlist a node served named, by media sequence, until it falls ``RETIRE_AFTER`` segments
    behind the window: then the node drops it, so a live stream does not fill a cache that has no quota.

    An edge kept every segment it served (8 GB and 200 000 files a day at
    800 kbit/s, under the default of no ``--max-cache``), and a restarted
    gateway the window it held before (an adversarial session): both follow
    the playlists they serve with this.  What an earlier run held is named
    by no version this run sees: on first sight of a playlist, the segments
    of its folder it does not name are ``found`` as orphans, each dropped
    once the window has left its date behind (``behind``).  That look is
    taken again each time the window has moved ``retire_after`` segments on
    (``due``): a segment stored while no version read here named it (fetched
    by peers by id, or ahead, in a viewer's gap) was never named, and an edge
    kept a fifth of a stream for good (an adversarial soak).  A playlist no
    one has asked for in ``IDLE_AFTER`` seconds (its viewers left, or the
    stream ended) gives its whole window up (``idle``).
    """

    def __init__(self, retire_after: int = RETIRE_AFTER, playlists: int = PLAYLISTS_FOLLOWED):
        self.retire_after = retire_after
        self.playlists = playlists
        self._named: Recent[str, dict[int, set[str]]] = Recent(playlists)
        self._orphans: Recent[str, dict[str, int]] = Recent(playlists)  # playlist -> its folder's unnamed segments' dates
        self._looked: Recent[str, int] = Recent(playlists)  # playlist -> its media sequence at its last look for orphans
        self._asked: Recent[str, float] = Recent(playlists)  # playlist -> when it was last served
        self._next_idle = 0.0

    def named(self, playlist: str, media: Iterable[tuple[int, str]], first: int) -> list[str]:
        """Record the ``(sequence, path)`` that ``playlist`` names now (``first``: its media sequence); the paths that
        fell ``retire_after`` segments behind its window, to drop.

        Only segments of the playlist's own folder (or below) count: a user's
        playlist naming ``../../films/big.bin`` made an edge drop that film
        each time its window moved (an adversarial session).  A path named
        again later (a repeated slate) goes only once its last naming has.
        """
        known = self._named.touch(playlist)
        if known is None:
            known = self._named[playlist] = {}
        for sequence, path in media:
            if _within(playlist, path):
                known.setdefault(sequence, set()).add(path)
        gone = {path for q in [q for q in known if q < first - self.retire_after] for path in known.pop(q)}
        still = {path for paths in known.values() for path in paths}
        return sorted(gone - still)

    def seen(self, playlist: str) -> bool:
        """Whether ``playlist`` was followed since the start (and not forgotten among PLAYLISTS_FOLLOWED others)."""
        return playlist in self._named

    def due(self, playlist: str, first: int) -> bool:
        """Whether to look for ``playlist``'s orphans (``found``) at the version whose media sequence is ``first``: on
        first sight, and once the window has moved ``retire_after`` segments on since the last look."""
        looked = self._looked.get(playlist)
        return looked is None or not 0 <= first - looked < self.retire_after

    def found(self, playlist: str, named: set[str], held: Iterable[tuple[str, int]], first: int) -> None:
        """At a look (``due``; ``first``: the version's media sequence): of the ``(path, modified)`` held, its folder's
        segments it does not name (``named``: also those the folder's other playlists name, a recording's beside a live
        stream)."""
        self._looked[playlist] = first
        folder = posixpath.dirname(playlist)
        self._orphans[playlist] = {
            path: modified for path, modified in held if is_segment(path) and path not in named and posixpath.dirname(path) == folder
        }

    def orphaned(self, playlist: str) -> bool:
        """Whether ``playlist`` has orphans left to drop (``behind`` needs its window's date only then)."""
        return bool(self._orphans.get(playlist))

    def behind(self, playlist: str, oldest: int, target: float) -> list[str]:
        """The orphans of ``playlist`` dated over ``retire_after`` segment durations before ``oldest``, the date of the
        first segment its window names now: to drop (each named once)."""
        orphans = self._orphans.get(playlist)
        if not orphans:
            return []
        cutoff = oldest - self.retire_after * target
        gone = [path for path, modified in orphans.items() if modified < cutoff]
        for path in gone:
            del orphans[path]
        return gone

    def asked(self, playlist: str, now: float) -> None:
        """``playlist`` was served at ``now``."""
        self._asked[playlist] = now

    def idle(self, now: float, after: float = IDLE_AFTER) -> list[str]:
        """Every segment still kept for the playlists not served for ``after`` seconds, which are forgotten (looked
        at most every tenth of ``after``: the tables are in order of last use, so a look stops at the first one asked)."""
        if now < self._next_idle:
            return []
        self._next_idle = now + after / 10
        gone: list[str] = []
        while self._asked and now - next(iter(self._asked.values())) > after:
            playlist, _ = self._asked.popitem(last=False)
            gone += [path for paths in self._named.pop(playlist, {}).values() for path in paths]
            gone += list(self._orphans.pop(playlist, {}))
            self._looked.pop(playlist, None)
        return gone
