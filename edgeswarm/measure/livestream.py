"""A live HLS stream for the lab and the tests: ffmpeg writing it, a watch on the origin's disk, and a player.

* ``ffmpeg_command``: a synthetic live stream (lavfi test pattern at a
  constant bitrate, ``-re`` so it runs in real time) written as HLS into a
  directory the origin publishes: ``SEGMENT_S``-second segments, a playlist
  rewritten at each, old segments deleted (``LIST_SIZE`` segments after
  they left the playlist, so a player or a swarm a little behind still
  finds them), every file written as ``.tmp`` and renamed when complete.
* ``DiskWatch``: the truth to measure against - every version of the
  playlist on the origin's disk and when it appeared, and each segment's
  bytes as ffmpeg finished them.
* ``play_live``: a player as hls.js plays a live stream: it reloads the
  playlist every half target duration, starts ``start_behind`` segments
  from the live edge, keeps at most ``buffer_segments`` segments buffered
  ahead of playback, and stalls when the next segment is not there when the
  buffer runs dry.  It records what it was handed, so the caller can check
  freshness, bytes and latency behind live.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edgeswarm.errors import EdgeswarmError
from edgeswarm.protocol import hls

SEGMENT_S = 2.0
LIST_SIZE = 6  # segments the playlist names (ffmpeg's -hls_list_size)
RETRY_S = 0.5  # seconds before a player asks again for a segment that failed
WATCH_POLL = 0.05  # seconds between two looks at the origin's playlist on disk


def ffmpeg_command(out: Path, seconds: float, bitrate_bps: int, segment_s: float = SEGMENT_S, playlist: str = "live.m3u8") -> list[str]:
    """ffmpeg writing a ``seconds`` long live stream of ``bitrate_bps`` (constant) as HLS into ``out``."""
    gop = str(round(25 * segment_s))  # a key frame at every segment start, so every segment is exactly segment_s long
    rate = str(bitrate_bps)
    return [
        *("ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"),
        *("-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "ultrafast", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0"),
        *("-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", rate, "-x264-params", "nal-hrd=cbr"),
        *("-f", "hls", "-hls_time", f"{segment_s:g}", "-hls_list_size", str(LIST_SIZE), "-hls_delete_threshold", str(LIST_SIZE)),
        *("-hls_flags", "delete_segments+temp_file", "-hls_segment_filename", str(out / "seg%05d.ts"), str(out / playlist)),
    ]


@dataclass
class DiskWatch:
    """Every version of a playlist on disk (text -> when first seen), when each segment first appeared, its bytes' hash."""

    root: Path  # the published directory
    playlist: str  # its published path
    versions: list[tuple[float, str]] = field(default_factory=list)  # (first seen, text), in order
    appeared: dict[int, float] = field(default_factory=dict)  # segment sequence -> when a playlist first named it
    sizes: dict[str, int] = field(default_factory=dict)  # segment path -> its size
    digests: dict[str, str] = field(default_factory=dict)  # segment path -> sha256 of the bytes ffmpeg finished
    durations: dict[int, float] = field(default_factory=dict)
    ended: bool = False

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.look)
            await asyncio.sleep(WATCH_POLL)

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
        for s in parsed.segments:
            self.appeared.setdefault(s.sequence, now)
            self.durations[s.sequence] = s.duration
            if s.path not in self.digests:
                try:
                    data = (self.root / s.path).read_bytes()
                except OSError:
                    continue
                self.digests[s.path], self.sizes[s.path] = hashlib.sha256(data).hexdigest(), len(data)

    def age(self, text: str, asked_at: float) -> float | None:
        """How long before ``asked_at`` a newer version than ``text`` was on disk (0: none was); None: never on disk."""
        for i, (_, version) in enumerate(self.versions):
            if version == text:
                if i + 1 < len(self.versions):
                    return max(0.0, asked_at - self.versions[i + 1][0])
                return 0.0
        return None

    def capture_start(self, sequence: int) -> float | None:
        """When a segment's first frame was captured: it appears once complete, ``duration`` seconds later."""
        at = self.appeared.get(sequence)
        return None if at is None else at - self.durations.get(sequence, SEGMENT_S)


@dataclass
class LiveView:
    """What one viewer was handed and when."""

    joined: float
    playlists: list[tuple[float, str]] = field(default_factory=list)  # (asked at, text)
    segments: dict[int, tuple[str, str, float]] = field(default_factory=dict)  # sequence -> (path, sha256, play start)
    startup_s: float | None = None
    first: tuple[int, float] | None = None  # (sequence, when) the player chose its first segment
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
        view.error = str(exc) or type(exc).__name__
    finally:
        reloader.cancel()
        await asyncio.gather(reloader, return_exceptions=True)
    return view


class PlayerError(EdgeswarmError):
    pass


async def _reload(http: aiohttp.ClientSession, url: str, path: str, view: LiveView, latest: list[hls.MediaPlaylist]) -> None:
    """The playlist, every half target duration (as hls.js reloads a live playlist that did not change)."""
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
            if parsed is not None and (not latest or parsed.last_sequence >= latest[0].last_sequence):
                latest[:] = [parsed]
        await asyncio.sleep((latest[0].target_duration if latest else SEGMENT_S) / 2)


async def _play(
    http: aiohttp.ClientSession, base: str, view: LiveView, latest: list[hls.MediaPlaylist], until: float, behind: int, ahead: int
) -> None:
    while not latest or len(latest[0].segments) < behind:
        if time.monotonic() > until:
            raise PlayerError("the stream never had enough segments to start")
        await asyncio.sleep(0.1)
    nxt = latest[0].last_sequence - behind + 1
    view.first = (nxt, time.monotonic())
    playing_until: float | None = None  # when the buffered video runs out
    while time.monotonic() < until:
        pl = latest[0]
        if nxt < pl.media_sequence:
            view.skipped += pl.media_sequence - nxt
            nxt = pl.media_sequence
        segment = next((s for s in pl.segments if s.sequence == nxt), None)
        if segment is None:
            if pl.ended:
                break
            await asyncio.sleep(0.1)  # not out yet
            continue
        if playing_until is not None and playing_until - time.monotonic() > ahead * segment.duration:
            await asyncio.sleep(playing_until - time.monotonic() - ahead * segment.duration)
        try:
            digest, n = await _fetch(http, f"{base}/{segment.path}")
        except (aiohttp.ClientError, TimeoutError, PlayerError) as exc:  # a player retries; the wait counts as a stall
            view.failures += 1
            view.error = view.error or str(exc) or type(exc).__name__
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
        view.segments[nxt] = (segment.path, digest, start)
        view.watched_s += segment.duration
        playing_until = start + segment.duration
        nxt += 1


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
    """What ``latencies`` would be with instant delivery and no stall: the player's own choice, one per segment played.

    A player that starts ``start_behind`` segments from the newest it was
    handed plays each segment that far behind its capture, plus the time
    since that newest one appeared: the reference for the measured latency.
    """
    captured = disk.capture_start(view.first[0]) if view.first else None
    if view.first is None or captured is None:
        return []
    return [view.first[1] - captured for seq in view.segments if disk.capture_start(seq) is not None]  # as ``latencies`` counts


def latencies(view: LiveView, disk: DiskWatch) -> list[float]:
    """Seconds behind live of each segment as it started playing: play start minus its capture start."""
    out = []
    for seq, (_, _, start) in sorted(view.segments.items()):
        captured = disk.capture_start(seq)
        if captured is not None:
            out.append(start - captured)
    return out
