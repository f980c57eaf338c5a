"""``edgeswarm bench players``: what a player's first seconds cost through a cold gateway, against a cold edge.

Players open media in ways a plain download does not: ffprobe reads an MP4
whose index (``moov``) is at the end of the file, a WebM whose cues are at the
end, and ``ffmpeg -ss`` seeks far into a file, each time on a second
connection while the first is still open and unread (issue 12).  The bench
makes that media with ffmpeg in a temporary directory (a ~10 MB H.264 MP4 with
``moov`` after ``mdat``, ffmpeg's default, and a ~5 MB VP8 WebM, 20 s each),
publishes it through an origin, and times three requests:

- ``ffprobe -show_entries format=duration`` on the MP4;
- the same on the WebM;
- ``ffmpeg -ss 10 -i URL -frames:v 1``: a seek to the middle of the MP4.

Each request is made ``--runs`` times (default 3) in two ways, every time
against nodes started for that one request, so that nothing is cold for one
and warm for the other:

- **cold edge**: a new p2p edge (``--p2p``, its own empty cache) whose parent
  is the origin; the request goes straight to the edge;
- **cold gateway**: a new p2p edge as above *and* a new peer daemon (its own
  empty cache) with ``--edge`` that edge; the request goes to the peer's
  gateway, which fetches the manifest and the pieces through the edge, which
  fetches them from the origin.

Only the origin is shared, and it serves from disk.  Every daemon runs with
its defaults.  The medians of the runs and their ratio are printed per
request; target (issue 12): the gateway within 1.5 × the edge for each.
Before the fix the second read stalled until the gateway's read timeout
(30 s) and answered 504.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeswarm.measure.bench_serve import _cpu_ticks, _steal_pct
from edgeswarm.measure.process import ProcessGroup
from edgeswarm.protocol.units import format_bytes
from edgeswarm.roles.config import EdgeConfig, PeerConfig

TARGET = 1.5  # cold gateway / cold edge, at most, per request
DURATION = 20  # seconds of video in each file; the seek goes to the middle
TIMEOUT = 90.0  # per request: three times the gateway's read timeout, so a stall shows as a time and a failure, not a hang
MP4, WEBM = "moov-at-end.mp4", "clip.webm"
SOURCE = ("-f", "lavfi", "-i", f"testsrc2=duration={DURATION}:size=640x360:rate=25", "-pix_fmt", "yuv420p")
MEDIA = {  # file -> ffmpeg codec arguments (as tests/test_players.py makes them)
    MP4: ("-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M"),
    WEBM: ("-c:v", "libvpx", "-deadline", "realtime", "-b:v", "2M"),
}


@dataclass(frozen=True)
class Case:
    """One request as a player makes it: the tool's command line for a URL, and whether its output is right."""

    name: str
    file: str
    argv: Callable[[str, Path], list[str]]  # (url, scratch dir) -> command
    ok: Callable[[subprocess.CompletedProcess, Path], bool]


def _probe(url: str, scratch: Path) -> list[str]:
    return ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", url]


def _probe_ok(proc: subprocess.CompletedProcess, scratch: Path) -> bool:
    try:
        return proc.returncode == 0 and abs(float(proc.stdout) - DURATION) < 0.5
    except ValueError:
        return False


def _seek(url: str, scratch: Path) -> list[str]:
    return ["ffmpeg", "-v", "error", "-ss", str(DURATION // 2), "-i", url, "-frames:v", "1", "-y", str(scratch / "frame.png")]


def _seek_ok(proc: subprocess.CompletedProcess, scratch: Path) -> bool:
    frame = scratch / "frame.png"
    return proc.returncode == 0 and frame.exists() and frame.stat().st_size > 1000


CASES = (
    Case("ffprobe MP4 (moov at end)", MP4, _probe, _probe_ok),
    Case("ffprobe WebM", WEBM, _probe, _probe_ok),
    Case(f"ffmpeg -ss {DURATION // 2} (seek to the middle)", MP4, _seek, _seek_ok),
)
WAYS = ("edge", "gateway")


def median(xs: list[float]) -> float:
    """The middle value (mean of the two middle ones for an even count): a slow outlier on a shared VM does not move it."""
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def summarize(edge_s: list[float], gateway_s: list[float], failures: int, target: float = TARGET) -> dict:
    """A case's figures: medians, gateway/edge ratio and the target's verdict (never met when a request failed)."""
    e, g = median(edge_s), median(gateway_s)
    ratio = round(g / e, 3) if e > 0 else None
    return {
        "edge_s": [round(x, 3) for x in edge_s],
        "gateway_s": [round(x, 3) for x in gateway_s],
        "edge_median_s": round(e, 3),
        "gateway_median_s": round(g, 3),
        "ratio": ratio,
        "failed_requests": failures,
        "target_met": failures == 0 and ratio is not None and ratio <= target,
    }


def missing_tools() -> list[str]:
    return [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]


def run(runs: int, json_path: Path | None, workdir: Path | None = None) -> int:
    console = Console()
    missing = missing_tools()
    if missing:
        console.print(
            f"[yellow]bench players skipped:[/yellow] needs {' and '.join(missing)} (Debian package ffmpeg): `./dev bench players` installs it"
        )
        return 2
    root = workdir or Path(tempfile.mkdtemp(prefix="edgeswarm-bench-players-"))
    console.print(f"[bold]edgeswarm bench players --runs {runs}[/bold]")
    try:
        result = _measure(console, root, runs)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        console.print(f"[red]bench players failed:[/red] {exc} (logs in {root / 'logs'})")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]bench players interrupted; every process it started has been stopped[/yellow]")
        return 130
    report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if any(c["failed_requests"] for c in result["cases"].values()):
        console.print(f"[red]bench players: requests failed[/red]; the daemons' logs are in {root / 'logs'}")
        return 1
    if workdir is None:  # the logs of a run with failures stay, as they say why
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _measure(console: Console, root: Path, runs: int) -> dict:
    publish = root / "publish"
    publish.mkdir(parents=True, exist_ok=True)
    with console.status("making the media with ffmpeg"):
        for name, codec in MEDIA.items():
            subprocess.run(["ffmpeg", "-v", "error", *SOURCE, *codec, str(publish / name)], check=True, timeout=300)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ticks = _cpu_ticks()
    times: dict[str, dict[str, list[float]]] = {c.name: {w: [] for w in WAYS} for c in CASES}
    failures: dict[str, list[str]] = {c.name: [] for c in CASES}
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with ProcessGroup(root / "logs") as group, Progress(*columns, console=console, transient=True) as progress:
        origin = group.start("origin", "--publish", str(publish), name="origin")
        task = progress.add_task("cold nodes, one request each", total=runs * len(CASES) * len(WAYS))
        n = 0
        for r in range(runs):
            for c in CASES:
                for way in WAYS:  # edge first, then gateway, alternating: load drifts over a run, not within a pair
                    n += 1
                    took, problem = _one(root, origin.url, c, way, f"{n:03d}")
                    times[c.name][way].append(took)
                    if problem:
                        failures[c.name].append(f"run {r + 1}, {way}: {problem}")
                    progress.advance(task)
    return {
        "command": f"edgeswarm bench players --runs {runs}",
        "runs": runs,
        "target_ratio": TARGET,
        "cold": "each request on nodes started for it alone: a new --p2p edge (empty cache, parent the origin); for the gateway "
        "also a new peer (empty cache, --edge that edge); only the origin is shared",
        "media": {name: (publish / name).stat().st_size for name in MEDIA},
        "cases": {
            c.name: {
                "file": c.file,
                **summarize(times[c.name]["edge"], times[c.name]["gateway"], len(failures[c.name])),
                "failures": failures[c.name],
            }
            for c in CASES
        },
        "load_1min_at_start": load,
        "steal_pct": _steal_pct(ticks, _cpu_ticks()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _one(root: Path, origin: str, case: Case, way: str, tag: str) -> tuple[float, str | None]:
    """Start cold nodes, time one request through them, stop them: (seconds, what went wrong or None)."""
    scratch = root / "scratch" / tag
    scratch.mkdir(parents=True, exist_ok=True)
    with ProcessGroup(root / "logs") as nodes:
        edge = nodes.start("edge", *EdgeConfig(cache=scratch / "edge", parent=origin, p2p=True).argv(), name=f"{tag}-edge")
        url = edge.url
        if way == "gateway":
            config = PeerConfig(cache=scratch / "peer", edges=(edge.url,))
            peer = nodes.start("peer", *config.argv(), "--gateway", "127.0.0.1:0", name=f"{tag}-peer")
            url = peer.urls["gateway"]
        argv = case.argv(f"{url}/{case.file}", scratch)
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return time.monotonic() - started, f"no answer within {TIMEOUT:.0f} s"
        took = time.monotonic() - started
    if case.ok(proc, scratch):
        return took, None
    return took, f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"


def report(console: Console, r: dict) -> None:
    sizes = ", ".join(f"{name} {format_bytes(size)}" for name, size in r["media"].items())
    table = Table(title=f"median of {r['runs']} run(s), every request on fresh cold nodes ({sizes}); daemons' defaults")
    for col in ("request", "cold edge", "cold gateway", "gateway / edge", f"target ≤ {r['target_ratio']} ×"):
        table.add_column(col, justify="left" if col == "request" else "right")
    for name, c in r["cases"].items():
        verdict = "met" if c["target_met"] else "[red]NOT met[/red]"
        if c["failed_requests"]:
            verdict += f" ({c['failed_requests']} failed)"
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        table.add_row(name, f"{c['edge_median_s']:.2f} s", f"{c['gateway_median_s']:.2f} s", ratio, verdict)
    console.print(table)
    for name, c in r["cases"].items():
        for line in c["failures"]:
            console.print(f"[red]{name}[/red]: {line}")
    notes = [f"load {r['load_1min_at_start']:.1f} at the start" if r["load_1min_at_start"] is not None else ""]
    if r["steal_pct"] is not None:
        notes.append(f"hypervisor steal {r['steal_pct']} %")
    console.print("; ".join(n for n in notes if n))
    sys.stdout.flush()
