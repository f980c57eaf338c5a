"""A live HLS stream for the lab and the tests: ffmpeg writing it, a watch on the origin's disk, and a player.

* ``ffmpeg_command``: a synthetic live stream (lavfi test pattern at a
  constant bitrate, ``-re`` so it runs in real time) written as HLS into a
  directory the origin publishes: ``SEGMENT_S``-second segments, a playlist
  rewritten at each, old segments deleted (``LIST_SIZE`` segments after
  they left the playlist, so a player or a swarm a little behind still
  finds them), every file written as ``.tmp`` and renamed when complete.
  With parts, the same stream is also cut in parts, and
* ``LowLatencyPackager`` writes the LL-HLS playlist that names both.
* ``DiskWatch``: the truth to measure against - every version of the
  playlist on the origin's disk and when it appeared, and each segment's
  (and part's) bytes as ffmpeg finished them.
* ``play_live``: a player as hls.js plays a live stream: it reloads the
  playlist every half target duration (every part target in low-latency
  mode), starts ``start_behind`` segments from the live edge (in
  low-latency mode at the part ``PART-HOLD-BACK`` from it, and plays parts
  while the playlist lists them), keeps at most ``buffer_segments``
  segments' duration buffered ahead of playback, and stalls when the next
  file is not there when the buffer runs dry.  It records what it was
  handed, so the caller can check freshness, bytes and latency behind live.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edgeswarm.errors import EdgeswarmError, said
from edgeswarm.protocol import hls

SEGMENT_S = 2.0
FPS = 24  # frames a second: 12 to a half-second part
SEGMENTS_PLAYLIST = "segments.m3u8"  # with parts: ffmpeg's playlist of whole segments
PARTS_PLAYLIST = "parts.m3u8"  # and of the same stream in parts
PACKAGER_POLL = 0.02  # seconds between two looks of the packager at ffmpeg's playlists
LIST_SIZE = 6  # segments the playlist names (ffmpeg's -hls_list_size)
RETRY_S = 0.5  # seconds before a player asks again for a segment that failed
WATCH_POLL = 0.05  # seconds between two looks at the origin's playlist on disk


def ffmpeg_command(
    out: Path, seconds: float, bitrate_bps: int, segment_s: float = SEGMENT_S, playlist: str = "live.m3u8", part_s: float | None = None
) -> list[str]:
    """ffmpeg writing a ``seconds`` long live stream of ``bitrate_bps`` (constant) as HLS into ``out``.

    With ``part_s``, one encode is written twice (ffmpeg's tee muxer): as
    ``segment_s`` segments named by ``SEGMENTS_PLAYLIST`` and as ``part_s``
    parts named by ``PARTS_PLAYLIST``, both cut at the same key frames (one
    at every part), for ``LowLatencyPackager`` to make ``playlist`` of.
    """
    gop = str(round(FPS * (part_s or segment_s)))  # a key frame at every segment (or part) start: each is exactly that long
    rate = str(bitrate_bps)
    encode = [
        *("ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}"),
        *("-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "ultrafast", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0"),
        *("-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate, "-x264-params", "nal-hrd=cbr"),
    ]
    if part_s is None:
        options = _hls_options(out, segment_s, LIST_SIZE, "seg")
        return [*encode, "-f", "hls", *(x for k, v in options.items() for x in (f"-{k}", v)), str(out / playlist)]
    outputs = [
        (_hls_options(out, segment_s, LIST_SIZE, "seg"), SEGMENTS_PLAYLIST),
        (_hls_options(out, part_s, LIST_SIZE * round(segment_s / part_s), "part"), PARTS_PLAYLIST),
    ]
    tee = "|".join("[f=hls:" + ":".join(f"{k}={v}" for k, v in options.items()) + f"]{out / name}" for options, name in outputs)
    return [*encode, "-map", "0:v", "-f", "tee", tee]


def _hls_options(out: Path, seconds: float, size: int, prefix: str) -> dict[str, str]:
    """One HLS output's options: ``size`` files named, each deleted ``size`` files after it left the playlist, written as .tmp then renamed."""
    return {
        "hls_time": f"{seconds:g}",
        "hls_list_size": str(size),
        "hls_delete_threshold": str(size),
        "hls_flags": "delete_segments+temp_file",
        "hls_segment_filename": str(out / f"{prefix}%05d.ts"),
    }


async def _every(seconds: float, look: Callable[[], object]) -> None:
    """``look`` (blocking: files) in a thread, then again ``seconds`` after it returned, until cancelled."""
    while True:
        await asyncio.to_thread(look)
        await asyncio.sleep(seconds)


@dataclass
class LowLatencyPackager:
    """Writes the LL-HLS playlist of a stream that ``ffmpeg_command`` writes with parts, as a live packager does.

    Each time ffmpeg names a new part or segment, ``playlist`` is rewritten
    (by rename, so a reader never sees half of it) from ffmpeg's two
    playlists (``hls.low_latency``): the whole segments as before, plus the
    parts of the newest ones, and ``PART-HOLD-BACK``, how far from the live
    edge players stay.
    """

    directory: Path
    segment_s: float
    part_s: float
    hold_back_s: float
    playlist: str = "live.m3u8"
    written: str = ""

    async def run(self) -> None:
        await _every(PACKAGER_POLL, self.write)

    def write(self) -> bool:
        """Rewrite the playlist if ffmpeg's changed (blocking); whether it was."""
        try:
            segments = hls.parse((self.directory / SEGMENTS_PLAYLIST).read_text(), SEGMENTS_PLAYLIST)
            parts = hls.parse((self.directory / PARTS_PLAYLIST).read_text(), PARTS_PLAYLIST)
        except (OSError, hls.PlaylistError):
            return False  # not written yet, or being replaced
        text = hls.low_latency(segments, parts, round(self.segment_s / self.part_s), self.hold_back_s)
        if text == self.written:
            return False
        tmp = self.directory / f"{self.playlist}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.directory / self.playlist)
        self.written = text
        return True


@dataclass
class DiskWatch:
    """Every version of a playlist on disk (text -> when first seen), when each file it names first appeared, its bytes' hash."""

    root: Path  # the published directory
    playlist: str  # its published path
    versions: list[tuple[float, str]] = field(default_factory=list)  # (first seen, text), in order
    appeared: dict[str, float] = field(default_factory=dict)  # segment or part path -> when a playlist first named it
    sizes: dict[str, int] = field(default_factory=dict)  # segment or part path -> its size
    digests: dict[str, str] = field(default_factory=dict)  # segment or part path -> sha256 of the bytes ffmpeg finished
    durations: dict[str, float] = field(default_factory=dict)
    parts: set[str] = field(default_factory=set)  # which of those are parts (LL-HLS)
    ended: bool = False

    async def run(self) -> None:
        await _every(WATCH_POLL, self.look)

    def look(self) -> None:
        try:
            text = (self.root / self.playlist).read_text()
        except OSError:
            return
        if self.versions and self.versions[-1][1] == text:
            return
        now = time.monotonic()
        try:
            parsed = hls.parse(text, self.playlist)
        except hls.PlaylistError:
            return
        self.versions.append((now, text))
        self.ended = parsed.ended
        self.parts.update(p.path for p in parsed.parts)
        for m in parsed.media:
            path = m.path
            self.appeared.setdefault(path, now)
            self.durations[path] = m.duration
            if path not in self.digests:
                try:
                    data = (self.root / path).read_bytes()
                except OSError:
                    continue
                self.digests[path], self.sizes[path] = hashlib.sha256(data).hexdigest(), len(data)

    def age(self, text: str, asked_at: float) -> float | None:
        """How long before ``asked_at`` a newer version than ``text`` was on disk (0: none was); None: never on disk."""
        for i, (_, version) in enumerate(self.versions):
            if version == text:
                if i + 1 < len(self.versions):
                    return max(0.0, asked_at - self.versions[i + 1][0])
                return 0.0
        return None

    def capture_start(self, path: str) -> float | None:
        """When a segment's (or part's) first frame was captured: it appears once complete, ``duration`` seconds later."""
        at = self.appeared.get(path)
        return None if at is None else at - self.durations.get(path, SEGMENT_S)


@dataclass
class LiveView:
    """What one viewer was handed and when."""

    joined: float
    playlists: list[tuple[float, str]] = field(default_factory=list)  # (asked at, text)
    played: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # segment or part path -> (sha256, play start, offset)
    startup_s: float | None = None
    first: tuple[str, float, float] | None = None  # (path, when, offset) of the first file the player chose
    stall_s: float = 0.0
    stalls: int = 0
    skipped: int = 0  # segments that left the playlist before the player got to them
    failures: int = 0  # segment requests that failed (retried while the segment is in the playlist)
    watched_s: float = 0.0
    bytes: int = 0
    error: str | None = None  # the first failure, or why the player could not play at all


async def play_live(
    http: aiohttp.ClientSession,
    base: str,
    playlist: str,
    until: float,
    start_behind: int = 2,
    buffer_segments: int = 1,
) -> LiveView:
    """Play a live stream from ``base`` until the monotonic time ``until`` or its end (see the module's docstring)."""
    view = LiveView(time.monotonic())
    latest: list[hls.MediaPlaylist] = []
    reloader = asyncio.create_task(_reload(http, f"{base}/{playlist}", playlist, view, latest))
    try:
        await _play(http, base, view, latest, until, start_behind, buffer_segments)
    except (aiohttp.ClientError, TimeoutError, PlayerError) as exc:
        view.error = said(exc)
    finally:
        reloader.cancel()
        await asyncio.gather(reloader, return_exceptions=True)
    return view


class PlayerError(EdgeswarmError):
    pass


async def _reload(http: aiohttp.ClientSession, url: str, path: str, view: LiveView, latest: list[hls.MediaPlaylist]) -> None:
    """The playlist, every half target duration, or every part target if it has parts (as hls.js reloads a live playlist)."""
    while True:
        asked = time.monotonic()
        try:
            async with http.get(url) as resp:
                text = await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            text = None
        if text is not None:
            view.playlists.append((asked, text))
            try:
                parsed = hls.parse(text, path)
            except hls.PlaylistError:
                parsed = None
            if parsed is not None and (not latest or _newest(parsed) >= _newest(latest[0])):
                latest[:] = [parsed]
        pl = latest[0] if latest else None
        await asyncio.sleep(pl.part_target if pl is not None and pl.part_target else (pl.target_duration if pl else SEGMENT_S) / 2)


def _newest(pl: hls.MediaPlaylist) -> tuple[int, int]:
    """How far a playlist reaches: its newest segment, then its newest part after it."""
    last = pl.parts[-1] if pl.parts and pl.parts[-1].sequence > pl.last_sequence else None
    return (last.sequence, last.index) if last is not None else (pl.last_sequence, 1 << 30)


def _start(pl: hls.MediaPlaylist, behind: int) -> tuple[int, int] | None:
    """Where a player starts: ``PART-HOLD-BACK`` from the live edge at a part, else ``behind`` whole segments; None: too early."""
    if pl.parts and pl.part_hold_back:
        parts, reached = pl.newest_parts(pl.part_hold_back)
        return (parts[0].sequence, parts[0].index) if reached else None
    return (pl.last_sequence - behind + 1, 0) if len(pl.segments) >= behind else None


@dataclass(frozen=True)
class _File:
    path: str
    duration: float  # seconds of it that play
    offset: float  # seconds into it where they start
    part: bool


def _file_at(pl: hls.MediaPlaylist, seq: int, index: int) -> _File | None:
    """What plays from part ``index`` of segment ``seq``; None: not out yet (or past a whole segment's last part).

    A part when the playlist lists it; else the whole segment, from the
    part's offset into it (a player that fell behind the listed parts, or a
    playlist without parts).
    """
    part = next((p for p in pl.parts if p.sequence == seq and p.index == index), None)
    if part is not None:
        return _File(part.path, part.duration, 0.0, True)
    segment = next((s for s in pl.segments if s.sequence == seq), None)
    if segment is None or any(p.sequence == seq for p in pl.parts):
        return None
    offset = min(index * (pl.part_target or 0.0), segment.duration)
    return _File(segment.path, segment.duration - offset, offset, False)


def _past_parts(pl: hls.MediaPlaylist, seq: int, index: int) -> bool:
    """Whether the player has played every part of segment ``seq``, which is whole: it goes on with the next segment."""
    return any(s.sequence == seq for s in pl.segments) and index >= sum(1 for p in pl.parts if p.sequence == seq) > 0


async def _play(
    http: aiohttp.ClientSession, base: str, view: LiveView, latest: list[hls.MediaPlaylist], until: float, behind: int, ahead: int
) -> None:
    while not latest or (position := _start(latest[0], behind)) is None:
        if time.monotonic() > until:
            raise PlayerError("the stream never had enough segments to start")
        await asyncio.sleep(0.05)
    seq, index = position
    playing_until: float | None = None  # when the buffered video runs out
    while time.monotonic() < until:
        pl = latest[0]
        if seq < pl.media_sequence:
            view.skipped += pl.media_sequence - seq
            seq, index = pl.media_sequence, 0
        if _past_parts(pl, seq, index):
            seq, index = seq + 1, 0
            continue
        at = _file_at(pl, seq, index)
        if at is None:
            if pl.ended and seq > pl.last_sequence:
                break
            await asyncio.sleep(0.05)  # not out yet
            continue
        path, duration, offset = at.path, at.duration, at.offset
        if view.first is None:
            view.first = (path, time.monotonic(), offset)
        if playing_until is not None and playing_until - time.monotonic() > ahead * pl.target_duration:
            await asyncio.sleep(playing_until - time.monotonic() - ahead * pl.target_duration)
        try:
            digest, n = await _fetch(http, f"{base}/{path}")
        except (aiohttp.ClientError, TimeoutError, PlayerError) as exc:  # a player retries; the wait counts as a stall
            view.failures += 1
            view.error = view.error or said(exc)
            await asyncio.sleep(RETRY_S)
            continue
        done = time.monotonic()
        view.bytes += n
        if playing_until is None:
            view.startup_s, start = done - view.joined, done
        elif done > playing_until:
            view.stalls += 1
            view.stall_s += done - playing_until
            start = done
        else:
            start = playing_until
        view.played[path] = (digest, start, offset)
        view.watched_s += duration
        playing_until = start + duration
        seq, index = (seq, index + 1) if at.part else (seq + 1, 0)


async def _fetch(http: aiohttp.ClientSession, url: str) -> tuple[str, int]:
    async with http.get(url) as resp:
        if resp.status != 200:
            raise PlayerError(f"{url}: {resp.status} {(await resp.text())[:200]}")
        digest, n = hashlib.sha256(), 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            n += len(chunk)
        return digest.hexdigest(), n


def floor_latencies(view: LiveView, disk: DiskWatch) -> list[float]:
    """What ``latencies`` would be with instant delivery and no stall: the player's own choice, one per file played.

    A player plays everything as far behind its capture as it chose for its
    first file (``start_behind`` segments, or ``PART-HOLD-BACK``, from the
    newest it was handed, plus the time since that one appeared): the
    reference for the measured latency.
    """
    if view.first is None:
        return []
    path, when, offset = view.first
    captured = disk.capture_start(path)
    if captured is None:
        return []
    return [when - captured - offset for p in view.played if disk.capture_start(p) is not None]  # as ``latencies`` counts


def latencies(view: LiveView, disk: DiskWatch) -> list[float]:
    """Seconds behind live of each segment or part as it started playing: play start minus its capture start."""
    out = []
    for path, (_, start, offset) in view.played.items():
        captured = disk.capture_start(path)
        if captured is not None:
            out.append(start - captured - offset)
    return out
