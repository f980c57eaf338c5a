"""HLS media playlists (RFC 8216), read only as far as live delivery needs.

A live stream is a playlist that ffmpeg rewrites at every segment and the
segments it names.  The origin reads it to publish the named segments before
the playlist that names them; a peer's gateway reads it to fetch the newest
segments through its swarm before the player asks; the lab's player reads it
to follow the live edge.  Nothing here is trusted more than the playlist's
own bytes, which every node has already checked against the origin's
signature: a name that is not a plain relative path is skipped.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from edgeswarm.errors import EdgeswarmError


class PlaylistError(EdgeswarmError, ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    sequence: int  # its media sequence number
    uri: str  # as written in the playlist
    path: str  # the published path it names (relative to the playlist's directory)
    duration: float


@dataclass(frozen=True)
class MediaPlaylist:
    target_duration: float
    media_sequence: int
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    ended: bool = False  # #EXT-X-ENDLIST: the stream is over

    @property
    def last_sequence(self) -> int:
        """The newest segment's sequence number of ours (one before the first when there is none)."""
        return self.segments[-1].sequence if self.segments else self.media_sequence - 1


def parse(text: str, playlist_path: str) -> MediaPlaylist:
    """A media playlist; PlaylistError if it is not one.  Segment paths are resolved against ``playlist_path``."""
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("not an HLS playlist: it does not start with #EXTM3U")
    base = posixpath.dirname(playlist_path)
    target, sequence, ended = 0.0, 0, False
    segments: list[Segment] = []
    duration: float | None = None
    count = 0  # segment URIs so far
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith("#"):
            tag, _, value = line.partition(":")
            try:
                if tag == "#EXT-X-TARGETDURATION":
                    target = float(value)
                elif tag == "#EXT-X-MEDIA-SEQUENCE":
                    sequence = int(value)
                elif tag == "#EXTINF":
                    duration = float(value.split(",", 1)[0])
            except ValueError:
                raise PlaylistError(f"bad {tag} value {value[:40]!r}") from None
            ended = ended or tag == "#EXT-X-ENDLIST"
            continue
        path = _segment_path(base, line)
        if path is not None:  # a URI that is not ours still takes its sequence number
            segments.append(Segment(sequence + count, line, path, duration if duration is not None else target))
        count, duration = count + 1, None
    return MediaPlaylist(target, sequence, tuple(segments), ended)


def _segment_path(base: str, uri: str) -> str | None:
    """The published path a segment URI names, or None for an absolute URL or a path out of the tree."""
    if "://" in uri or uri.startswith("/") or "?" in uri or "#" in uri:
        return None
    path = posixpath.normpath(posixpath.join(base, uri))
    if path.startswith("../") or path == ".." or path.startswith("/"):
        return None
    return path
