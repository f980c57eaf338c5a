"""HLS media playlists (RFC 8216, and its low-latency parts), read only as far as live delivery needs.

A live stream is a playlist that ffmpeg rewrites at every segment and the
segments it names.  A low-latency playlist (RFC 8216bis, LL-HLS) also names
the partial segments of its newest segments (``#EXT-X-PART``), each a file
of its own here, so that a player can sit closer to live than whole
segments allow and a swarm can pass a part on before the whole segment
exists.  The origin reads a playlist to publish the named files before the
playlist that names them; a peer's gateway reads it to fetch the newest
segments (or parts) through its swarm before the player asks; the lab's
player reads it to follow the live edge.  Nothing here is trusted more than the playlist's
own bytes, which every node has already checked against the origin's
signature: a name that is not a plain relative path is skipped.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from edgeswarm.errors import EdgeswarmError
from edgeswarm.protocol.paths import decoded


class PlaylistError(EdgeswarmError, ValueError):
    pass


_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


@dataclass(frozen=True)
class Segment:
    sequence: int  # its media sequence number
    uri: str  # as written in the playlist
    path: str  # the published path it names (relative to the playlist's directory)
    duration: float


@dataclass(frozen=True)
class Part:
    sequence: int  # the media sequence number of the segment it is a part of
    index: int  # its place in that segment, from 0
    uri: str
    path: str
    duration: float


@dataclass(frozen=True)
class MediaPlaylist:
    target_duration: float
    media_sequence: int
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    ended: bool = False  # #EXT-X-ENDLIST: the stream is over
    parts: tuple[Part, ...] = ()  # #EXT-X-PART, in order; those after the last segment belong to the one being made
    part_target: float | None = None  # #EXT-X-PART-INF:PART-TARGET
    part_hold_back: float | None = None  # #EXT-X-SERVER-CONTROL:PART-HOLD-BACK: how far from the live edge a player stays

    @property
    def media(self) -> list[Segment | Part]:
        """Every file the playlist names: its segments, then its parts."""
        return [*self.segments, *self.parts]

    @property
    def media_paths(self) -> list[str]:
        return [m.path for m in self.media]

    def newest_parts(self, span: float) -> tuple[list[Part], bool]:
        """The newest parts that play for ``span`` seconds, oldest first (a low-latency player's ``PART-HOLD-BACK``
        from the live edge), and whether they reach it: all of them when they play for less."""
        held = 0.0
        for i in range(len(self.parts) - 1, -1, -1):
            held += self.parts[i].duration
            if held >= span:
                return list(self.parts[i:]), True
        return list(self.parts), False

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
    part_target: float | None = None
    hold_back: float | None = None
    segments: list[Segment] = []
    parts: list[Part] = []
    duration: float | None = None
    count, index = 0, 0  # segment URIs so far; parts so far of the segment being read
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
                elif tag == "#EXT-X-PART-INF":
                    part_target = float(_attributes(value)["PART-TARGET"])
                elif tag == "#EXT-X-SERVER-CONTROL" and "PART-HOLD-BACK" in (attrs := _attributes(value)):
                    hold_back = float(attrs["PART-HOLD-BACK"])
                elif tag == "#EXT-X-PART":
                    attrs = _attributes(value)
                    path = _segment_path(base, attrs["URI"])
                    if path is not None:
                        parts.append(Part(sequence + count, index, attrs["URI"], path, float(attrs["DURATION"])))
                    index += 1
            except (ValueError, KeyError):
                raise PlaylistError(f"bad {tag} value {value[:60]!r}") from None
            ended = ended or tag == "#EXT-X-ENDLIST"
            continue
        path = _segment_path(base, line)
        if path is not None:  # a URI that is not ours still takes its sequence number
            segments.append(Segment(sequence + count, line, path, duration if duration is not None else target))
        count, duration, index = count + 1, None, 0
    return MediaPlaylist(target, sequence, tuple(segments), ended, tuple(parts), part_target, hold_back)


def _attributes(value: str) -> dict[str, str]:
    """An attribute list (``NAME=value,NAME="quoted, value"``) as a dict, quotes removed."""
    out: dict[str, str] = {}
    for m in _ATTRIBUTE.finditer(value):
        out[m.group(1)] = m.group(2).strip('"')
    return out


def _segment_path(base: str, uri: str) -> str | None:
    """The published path a segment URI names, or None for an absolute URL or a path out of the tree.

    A URI is percent-encoded, as a player resolves it (``seg%201.ts`` is the file ``seg 1.ts``): taken as it
    was, the segment of such a playlist was published only at the next full scan, after its playlist, and gateways
    prefetched a file of that literal name (an adversarial session).
    """
    if "://" in uri or uri.startswith("/") or "?" in uri or "#" in uri:
        return None
    try:
        uri = decoded(uri)
    except ValueError:
        return None
    path = posixpath.normpath(posixpath.join(base, uri))
    if path.startswith("../") or path == ".." or path.startswith("/"):
        return None
    return path


def low_latency(segments: MediaPlaylist, parts: MediaPlaylist, per_segment: int, hold_back: float, keep: int = 3) -> str:
    """An LL-HLS playlist from an encoder's two outputs of one stream: its whole segments, and the same stream cut in parts.

    Both outputs number their files from 0 and cut at the same key frames,
    so part ``k`` is part ``k % per_segment`` of segment ``k // per_segment``.
    The newest ``keep`` whole segments keep their parts listed (RFC 8216bis
    asks for about three target durations of them); parts of the segment not
    yet whole follow the last one.  URIs are written as the outputs wrote
    them, so all three playlists must share a directory.
    """
    of: dict[int, list[Segment]] = {}
    for p in parts.segments:
        of.setdefault(p.sequence // per_segment, []).append(p)
    part_target = max((p.duration for p in parts.segments), default=segments.target_duration / per_segment)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{max(1, round(segments.target_duration))}",
        f"#EXT-X-SERVER-CONTROL:PART-HOLD-BACK={hold_back:.3f}",
        f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
        f"#EXT-X-MEDIA-SEQUENCE:{segments.media_sequence}",
    ]
    last = segments.last_sequence
    for s in segments.segments:
        if s.sequence > last - keep:
            lines += [_part_tag(p) for p in of.get(s.sequence, [])]
        lines += [f"#EXTINF:{s.duration:.6f},", s.uri]
    if segments.ended:
        lines.append("#EXT-X-ENDLIST")
    else:
        lines += [_part_tag(p) for p in of.get(last + 1, [])]
    return "\n".join(lines) + "\n"


def _part_tag(p: Segment) -> str:
    return f'#EXT-X-PART:DURATION={p.duration:.6f},URI="{p.uri}",INDEPENDENT=YES'
