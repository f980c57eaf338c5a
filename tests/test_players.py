"""Players on a cold gateway: ffprobe and ffmpeg open media as players do, through a peer that holds nothing yet.

A player reads an MP4's index from its end (``moov`` after ``mdat``, ffmpeg's
default) or seeks far into a file on a second connection while the first is
still open.  Each open read gets its own urgent window in the engine, so
neither waits behind the other.  Before, the second read waited for the
gateway's read timeout (30 s) and got a 504.  The bound below is a third of that
timeout: generous for a 10 MB file on loopback, and far from a stall.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
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


class Mpv:
    """mpv playing ``url`` headless, driven through its JSON IPC socket as a user's keys would drive it."""

    def __init__(self, url: str, folder: Path):
        self.socket_path = folder / "mpv.sock"
        self.log = folder / "mpv.log"  # a file: a pipe read only at the end fills at 64 KiB, and mpv would block
        # mpv reads up to 150 MiB ahead of a network stream: a long film's seeks leave that window and go to the
        # gateway, a 10 MB file's would not; a small demuxer cache makes this file's seeks do what a film's do
        cache = ("--demuxer-max-bytes=512KiB", "--demuxer-max-back-bytes=256KiB")
        self.proc = subprocess.Popen(
            ["mpv", "--no-config", "--vo=null", "--ao=null", "--speed=2", *cache, "--msg-level=all=v",
             f"--input-ipc-server={self.socket_path}", url],
            stdout=(out := self.log.open("wb")), stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()  # the child has its own
        self.deadline = time.monotonic() + 60
        while not self.socket_path.exists():
            assert self.proc.poll() is None and time.monotonic() < self.deadline, "mpv did not open its IPC socket"
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.socket_path))
        self.sock.settimeout(max(0.1, self.deadline - time.monotonic()))
        self.lines = self.sock.makefile("r")
        self.requests = 0

    def send(self, *command: object) -> int:
        self.requests += 1
        self.sock.sendall(json.dumps({"command": list(command), "request_id": self.requests}).encode() + b"\n")
        return self.requests

    def next_event(self, *names: str) -> dict:
        """The next event (or reply) whose ``event`` is one of ``names``; mpv's other messages are passed over."""
        while True:
            line = self.lines.readline()
            assert line, f"mpv quit:\n{self.finish()[-3000:]}"
            message = json.loads(line)
            if message.get("event") in names:
                return message

    def position(self) -> float:
        request = self.send("get_property", "time-pos")
        while True:
            message = json.loads(self.lines.readline())
            if message.get("request_id") == request:
                return message["data"]

    def finish(self) -> str:
        self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.sock.close()
        self.proc.kill()
        self.proc.wait()


@pytest.mark.skipif(shutil.which("mpv") is None, reason="mpv not installed (./dev test installs it as root)")
async def test_mpv_plays_and_seeks_through_a_cold_gateway(nodes, media, origin):
    """README's `mpv http://127.0.0.1:1111/films/a.mp4`: mpv opens the file on a cold gateway (its index at the end),
    seeks forward, back and forward again while the gateway still fetches it, and plays to the end, every seek
    landing where asked."""
    with tempfile.TemporaryDirectory(prefix="mpv") as short:  # a socket's path has room for 107 bytes: not pytest's
        url = _cold_gateway(nodes, Path(short), origin.url, "p") + "/moov-at-end.mp4"
        mpv = Mpv(url, Path(short))
        try:
            mpv.send("observe_property", 1, "paused-for-cache")
            mpv.next_event("playback-restart")  # playing from the start
            for target in (15, 3, 12):
                mpv.send("seek", target, "absolute")
                mpv.next_event("playback-restart")
                assert mpv.position() == pytest.approx(target, abs=1.0)
            end = mpv.next_event("end-file")
            log = mpv.finish()
        finally:
            mpv.close()
    assert end.get("reason") == "eof", f"mpv ended with {end}:\n{log[-3000:]}"
    assert mpv.proc.returncode == 0, log[-3000:]
    assert log.count("stream level seek") >= 3, f"mpv's seeks stayed in its cache, not through the gateway:\n{log[-3000:]}"
    assert "error" not in log.lower(), log[-3000:]
