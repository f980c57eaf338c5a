"""Players on a cold gateway: ffprobe and ffmpeg open media as players do, through a peer that holds nothing yet.

A player reads an MP4's index from its end (``moov`` after ``mdat``, ffmpeg's
default) or seeks far into a file on a second connection while the first is
still open.  Each open read gets its own urgent window in the engine, so
neither waits behind the other.  Before, the second read waited for the
gateway's read timeout (30 s) and got a 504.  The bound below is a third of that
timeout: generous for a 10 MB file on loopback, and far from a stall.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import start_peer

from edgeswarm.measure.process import ProcessGroup

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),  # the first test's setup encodes both files: over 120 s on a loaded machine
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed (./dev test installs them as root)"),
]
BOUND = 10.0  # seconds; the gateway's --read-timeout is 30


def _make(path: Path, *codec: str) -> subprocess.Popen:
    """Start encoding a 20 s test picture into path: both files are encoded at once, one core each."""
    source = ("-f", "lavfi", "-i", "testsrc2=duration=20:size=640x360:rate=25", "-pix_fmt", "yuv420p")
    return subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", *source, *codec, str(path)])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10 MB MP4 with its index at the end, and a WebM, made once with ffmpeg: encoding them is most of this file's CPU time."""
    made = tmp_path_factory.mktemp("media")
    encoders = [
        _make(made / "moov-at-end.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M"),
        _make(made / "clip.webm", "-c:v", "libvpx", "-deadline", "realtime", "-b:v", "2M"),
    ]
    try:
        assert [e.wait(timeout=240) for e in encoders] == [0, 0], "ffmpeg could not encode the test media"
    finally:
        for e in encoders:
            e.kill()
    return made


@pytest.fixture
def media(published: Path, encoded: Path) -> Path:
    """Both media files copied into this test's published folder (before the origin starts and publishes them)."""
    for made in encoded.iterdir():
        shutil.copyfile(made, published / made.name)
    return published


def _cold_gateway(nodes: ProcessGroup, tmp_path: Path, origin_url: str, name: str) -> str:
    edge = nodes.start("edge", "--cache", str(tmp_path / f"edge-{name}"), "--parent", origin_url, name=f"edge-{name}")
    return start_peer(nodes, tmp_path, edge.url, "127.0.0.1", name).urls["gateway"]


def _timed(*cmd: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - started


async def test_ffprobe_reads_an_mp4_with_its_index_at_the_end(tmp_path, nodes, media, origin):
    url = _cold_gateway(nodes, tmp_path, origin.url, "p") + "/moov-at-end.mp4"
    proc, took = _timed("ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", url)
    assert proc.returncode == 0 and "504" not in proc.stderr, proc.stderr
    assert float(proc.stdout) == pytest.approx(20.0, abs=0.1)
    assert took < BOUND, f"ffprobe took {took:.1f} s through a cold gateway"


async def test_ffmpeg_seeks_to_the_middle_through_a_cold_gateway(tmp_path, nodes, media, origin):
    url = _cold_gateway(nodes, tmp_path, origin.url, "p") + "/moov-at-end.mp4"
    frame = tmp_path / "frame.png"
    proc, took = _timed("ffmpeg", "-v", "error", "-ss", "10", "-i", url, "-frames:v", "1", "-y", str(frame))
    assert proc.returncode == 0, proc.stderr
    assert frame.stat().st_size > 1000
    assert took < BOUND, f"a seek took {took:.1f} s through a cold gateway"


async def test_ffprobe_reads_a_webm(tmp_path, nodes, media, origin):
    url = _cold_gateway(nodes, tmp_path, origin.url, "p") + "/clip.webm"
    proc, took = _timed("ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0", url)
    assert proc.returncode == 0 and proc.stdout.strip() == "vp8", proc.stderr
    assert took < BOUND, f"ffprobe took {took:.1f} s through a cold gateway"
