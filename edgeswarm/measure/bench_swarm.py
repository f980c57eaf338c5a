"""``edgeswarm bench swarm``: a crowd of peers against the theoretical bound.

N real peers on loopback, spread over R regions (127.R.0.0/16 in the edge's
region map), want one file at the same moment from one p2p edge with strict
locality and a capped upload.  Every daemon runs with its defaults apart from
those caps: no announce interval or other knob is set, since an operator
would not set one either.  ``--mode`` says how the peers ask:

- ``stream`` (default): every peer's gateway gets a plain ``GET`` of the
  file at once and the bench reads every body at full speed - players
  pressing play together;
- ``get``: N ``edgeswarm get`` processes start at once - a software update;
- ``post``: ``POST`` to every gateway (fetch the whole file in the
  background), wait until all are complete, then read every copy back - what
  this benchmark did before it had modes.

The time until the last peer holds the file is printed beside the lower
bound for distributing a file of size F from a server of upload u_s to N
peers of upload u_i and download d_i:

    max(F/u_s, F/d_min, N*F/(u_s + sum u_i))

(d_min is unbounded here: downloads are not capped), with the P2P share - the
bytes peers got from each other over all bytes they got - which is what the
provider saves, the bytes that crossed regions, and whether every copy is the
origin's file (SHA-256).  Targets (issue 10): stream P2P share >= 80 % and
time <= 1.5 x the bound; get >= 85 % and <= 1.3 x.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeswarm.errors import said
from edgeswarm.measure.bench_serve import _cpu_ticks, _steal_pct
from edgeswarm.measure.process import NodeProcess, ProcessGroup
from edgeswarm.policy.vocabulary import (
    BENCH_KEYS,
    EDGE,
    PEER_OTHER_REGION,
    PEER_SAME_REGION,
    TRACKER_FIELDS,
    flash_crowd_bound,
    reported_share,
)
from edgeswarm.protocol.units import format_bytes
from edgeswarm.roles.config import EdgeConfig, PeerConfig
from edgeswarm.roles.uploader import file_sha256

TARGETS = {"stream": (0.80, 1.5), "get": (0.85, 1.3), "post": (0.80, 1.5)}  # (P2P share at least, time / bound at most)
FILE = "update.img"
SOURCES = tuple(BENCH_KEYS.values())  # this JSON's "bytes" keys
SAME, OTHER = BENCH_KEYS[PEER_SAME_REGION], BENCH_KEYS[PEER_OTHER_REGION]


@dataclass(frozen=True)
class Crowd:
    """One run's shape: how the peers ask, how many, in how many regions, the file and the caps (bytes/s)."""

    mode: str
    peers: int
    regions: int
    size: int
    edge_Bps: int
    peer_Bps: int

    def command(self) -> str:
        """The command line that runs this shape: printed and stored with the figures."""
        size = f"{self.size >> 20}MiB" if self.size % (1 << 20) == 0 else str(self.size)
        return (
            f"edgeswarm bench swarm --mode {self.mode} --peers {self.peers} --regions {self.regions} --size {size} "
            f"--edge-upload {_rate(self.edge_Bps)} --peer-upload {_rate(self.peer_Bps)}"
        )


def _rate(bps: int) -> str:
    return f"{bps // 1_000_000}MB/s" if bps % 1_000_000 == 0 else f"{bps}B/s"


def region_of(i: int, regions: int) -> int:
    """Peer i's region number (1..R): round robin, so regions differ in size by one at most."""
    return i % regions + 1


def address(i: int, regions: int) -> str:
    """Peer i's loopback address, inside its region's 127.R.0.0/16."""
    j = i // regions
    return f"127.{region_of(i, regions)}.{j // 250}.{j % 250 + 1}"


def region_map(regions: int) -> dict:
    return {"regions": [{"name": f"r{k}", "isp": "bench", "networks": [f"127.{k}.0.0/16"]} for k in range(1, regions + 1)]}


def url_region(url: str) -> int | None:
    """The region number of a peer's URL (its address is 127.R.x.y), or None for anything else."""
    parts = (urlsplit(url).hostname or "").split(".")
    return int(parts[1]) if len(parts) == 4 and parts[0] == "127" and parts[1].isdigit() else None


def tally(st: dict, region: int) -> Counter[str]:
    """What one peer received, by source: the edge, peers of its region, peers of another.

    The region of a sending peer is read off its address, not taken from the
    receiving peer's own label, so a cross-region byte cannot hide.
    """
    got: Counter[str] = Counter()
    for row in st["bytes_received"]:
        if row["kind"].startswith("peer"):
            got[SAME if url_region(row["source"]) == region else OTHER] += row["bytes"]
        else:
            got[BENCH_KEYS[EDGE]] += row["bytes"]
    return got


def tracker_tally(p2p: dict) -> dict[str, Counter[str]]:
    """Per region, what the edge's peers reported (their final announces): the figures for peers that have exited."""
    keys = {TRACKER_FIELDS[kind]: BENCH_KEYS[kind] for kind in BENCH_KEYS}
    return {name: Counter({k: row.get(f, 0) for f, k in keys.items()}) for name, row in p2p.get("regions", {}).items()}


def share(got: Counter[str]) -> float | None:
    """The P2P share of bytes counted by this JSON's keys."""
    return reported_share(got[SAME] + got[OTHER], sum(got[k] for k in SOURCES))


class Meter:
    """Bytes delivered and peers complete, shared by the mode's workers and the progress display."""

    def __init__(self) -> None:
        self.bytes = 0
        self.complete = 0


def run(crowd: Crowd, json_path: Path | None, workdir: Path | None = None) -> int:
    console = Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="edgeswarm-bench-swarm-"))
    console.print(f"[bold]{crowd.command()}[/bold]")
    try:
        with ProcessGroup(root / "logs") as group:
            result = asyncio.run(_with_progress(console, group, root, crowd))
    except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        if workdir is None:  # the logs say why: they stay, the media and caches (hundreds of MB) go
            for part in root.iterdir():
                if part.is_dir() and part.name != "logs":
                    shutil.rmtree(part, ignore_errors=True)
                elif not part.is_dir():
                    part.unlink(missing_ok=True)
        console.print(f"[red]bench swarm failed:[/red] {said(exc)} (logs in {root / 'logs'})")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]bench swarm interrupted; every process it started has been stopped[/yellow]")
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        return 130
    if workdir is None:  # a failed run's logs stay (above): they named a folder already deleted (an adversarial session)
        shutil.rmtree(root, ignore_errors=True)
    report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["copies_identical"] else 1


async def _with_progress(console: Console, group: ProcessGroup, root: Path, crowd: Crowd) -> dict:
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        return await run_crowd(group, root, crowd, progress)


async def run_crowd(group: ProcessGroup, root: Path, crowd: Crowd, progress: Progress | None = None) -> dict:
    """Start the deployment, run the crowd, and return every figure (the JSON of ``--json``)."""
    digest = _publish(root / "publish", crowd.size)
    (root / "regions.yaml").write_text(json.dumps(region_map(crowd.regions)))
    origin = group.start("origin", "--publish", str(root / "publish"))
    config = EdgeConfig(
        cache=root / "edge", parent=origin.url, p2p=True, regions=root / "regions.yaml", locality="strict", upload_limit=crowd.edge_Bps
    )
    edge = group.start("edge", *config.argv(), name="edge")
    nodes = [] if crowd.mode == "get" else [_start_peer(group, root, crowd, i, edge.url) for i in range(crowd.peers)]
    bound = flash_crowd_bound(crowd.size, crowd.peers, crowd.edge_Bps, [crowd.peer_Bps] * crowd.peers)
    meter, timeline = Meter(), list[tuple[float, int, int]]()
    ticks = _cpu_ticks()
    # every peer's request at the same moment (no connection pool limit), and the run's deadline instead of aiohttp's 300 s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)) as http:
        ask = {"stream": _stream, "post": _post}.get(crowd.mode)
        work = ask(http, nodes, crowd, meter) if ask else _get(root, crowd, edge.url, meter)
        watch = asyncio.create_task(_watch(progress, crowd, bound, meter, timeline))
        try:
            async with asyncio.timeout(10 * bound + 60):
                peers = await work
        except TimeoutError:
            raise TimeoutError(f"only {meter.complete} of {crowd.peers} peers complete after {10 * bound + 60:.0f} s") from None
        finally:
            watch.cancel()
        edge_status = await status(http, edge.url)
        if nodes:
            sts = await asyncio.gather(*(status(http, node.urls["gateway"]) for node in nodes))
            by_region = _sum_regions(crowd, [tally(st, region_of(i, crowd.regions)) for i, st in enumerate(sts)])
        else:
            by_region = tracker_tally(edge_status.get("p2p", {}))
    return _result(crowd, bound, digest, peers, by_region, edge_status, timeline, _steal_pct(ticks, _cpu_ticks()))


def _publish(directory: Path, size: int) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(directory / FILE, "wb") as f:
        for left in range(size, 0, -(1 << 20)):
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def _start_peer(group: ProcessGroup, root: Path, crowd: Crowd, i: int, edge: str) -> NodeProcess:
    config = PeerConfig(cache=root / f"peer{i}", edges=(edge,), upload_limit=crowd.peer_Bps)
    servers = ("--listen", f"{address(i, crowd.regions)}:0", "--gateway", "127.0.0.1:0")
    return group.start("peer", *config.argv(), *servers, name=f"peer{i}")


async def _stream(http: aiohttp.ClientSession, nodes: list[NodeProcess], crowd: Crowd, meter: Meter) -> list[dict]:
    """Every gateway gets a plain GET at the same moment; each body is read at full speed and hashed."""
    started = time.monotonic()

    async def one(i: int, node: NodeProcess) -> dict:
        digest = hashlib.sha256()
        async with http.get(f"{node.urls['gateway']}/{FILE}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"peer {i} answered the GET with {resp.status}: {(await resp.text())[:200]}")
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
                meter.bytes += len(chunk)
        meter.complete += 1
        return {"peer": i, "complete_s": round(time.monotonic() - started, 3), "sha256": digest.hexdigest()}

    return list(await asyncio.gather(*(one(i, node) for i, node in enumerate(nodes))))


async def _post(http: aiohttp.ClientSession, nodes: list[NodeProcess], crowd: Crowd, meter: Meter) -> list[dict]:
    """``POST`` to every gateway, poll until all hold the file, then read every copy back and hash it."""
    started = time.monotonic()
    for i, node in enumerate(nodes):
        async with http.post(f"{node.urls['gateway']}/{FILE}") as resp:
            if resp.status != 202:
                raise RuntimeError(f"peer {i} refused the download: {resp.status} {(await resp.text())[:200]}")
    done: dict[int, float] = {}
    while len(done) < len(nodes):
        sts = await asyncio.gather(*(status(http, node.urls["gateway"]) for node in nodes))
        now = time.monotonic() - started
        swarms = [st["swarms"][0] if st["swarms"] else {"held": 0, "pieces": 1, "complete": False} for st in sts]
        done |= {i: now for i, sw in enumerate(swarms) if sw["complete"] and i not in done}
        meter.bytes = sum(min(crowd.size, crowd.size * sw["held"] // sw["pieces"]) for sw in swarms)
        meter.complete = len(done)
        await asyncio.sleep(0.25)

    async def read_back(i: int, node: NodeProcess) -> dict:
        async with http.get(f"{node.urls['gateway']}/{FILE}") as resp:
            digest = hashlib.sha256()
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
        return {"peer": i, "complete_s": round(done[i], 3), "sha256": digest.hexdigest() if resp.status == 200 else f"HTTP {resp.status}"}

    return list(await asyncio.gather(*(read_back(i, node) for i, node in enumerate(nodes))))


async def _get(root: Path, crowd: Crowd, edge: str, meter: Meter) -> list[dict]:
    """N ``edgeswarm get`` processes started at once; a peer is complete when its output file appears.

    The time includes each process's start-up, as a user's would.  ``get``
    writes each verified piece into the output as it stores it and renames
    the whole file into place right after the last, so its modification time
    is when that peer was done.
    """
    started_wall = time.time()
    procs: list[tuple[subprocess.Popen, Path, Path]] = []
    try:
        for i in range(crowd.peers):
            work = root / f"get{i}"
            work.mkdir(parents=True, exist_ok=True)
            log = work / "get.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        *(
                            sys.executable,
                            "-m",
                            "edgeswarm",
                            "get",
                            f"{edge}/{FILE}",
                            "-o",
                            str(work / FILE),
                            "--cache",
                            str(work / "cache"),
                        ),
                        *("--listen", f"{address(i, crowd.regions)}:0", "--upload-limit", f"{crowd.peer_Bps}B/s"),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            procs.append((proc, work / FILE, log))
        while any(p.poll() is None for p, _, _ in procs):
            meter.complete = sum(out.exists() for _, out, _ in procs)
            meter.bytes = meter.complete * crowd.size
            await asyncio.sleep(0.25)
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(i, p.returncode, log) for i, (p, _, log) in enumerate(procs) if p.returncode != 0]
    if failed:
        i, rc, log = failed[0]
        raise RuntimeError(f"{len(failed)} of {crowd.peers} `edgeswarm get` failed; get {i} exited with {rc}: {log.read_text()[-500:]}")
    return [
        {
            "peer": i,
            "complete_s": round(out.stat().st_mtime - started_wall, 3),
            "download_s": _download_s(log),
            "sha256": await asyncio.to_thread(file_sha256, out),
        }
        for i, (_, out, log) in enumerate(procs)
    ]


def _download_s(log: Path) -> float | None:
    """The download's own time as the ``get`` printed it (from its first piece request, after its start-up and the
    manifest), so that a reader can tell start-up from swarming; None if the line is not there."""
    found = re.search(r" in ([0-9.]+) s \(", log.read_text(errors="replace"))
    return float(found.group(1)) if found else None


async def _watch(progress: Progress | None, crowd: Crowd, bound: float, meter: Meter, timeline: list) -> None:
    """Samples the meter four times a second: the timeline, and the progress bar when there is one."""
    started = time.monotonic()
    total = crowd.size * crowd.peers
    task = progress.add_task(f"{crowd.mode}: {crowd.peers} peers", total=total, state="") if progress else None
    while True:
        now = time.monotonic() - started
        timeline.append((round(now, 2), meter.bytes, meter.complete))
        if progress is not None and task is not None:
            state = f"{format_bytes(meter.bytes)} delivered, {meter.complete}/{crowd.peers} complete, bound {bound:.1f} s"
            progress.update(task, completed=meter.bytes, state=state)
        await asyncio.sleep(0.25)


async def status(http: aiohttp.ClientSession, url: str) -> dict:
    """A node's /status document (the benches' one reader of it)."""
    async with http.get(url + "/status") as resp:
        return await resp.json()


def edge_sent(st: dict) -> int:
    """What an edge's /status says it sent to nodes and clients, in bytes."""
    return int(st["bytes_sent"].get("node", 0) + st["bytes_sent"].get("client", 0))


def _sum_regions(crowd: Crowd, tallies: list[Counter[str]]) -> dict[str, Counter[str]]:
    regions: dict[str, Counter[str]] = {f"r{k}": Counter() for k in range(1, crowd.regions + 1)}
    for i, got in enumerate(tallies):
        regions[f"r{region_of(i, crowd.regions)}"].update(got)
    return regions


def _result(
    crowd: Crowd, bound: float, digest: str, peers: list[dict], by_region: dict[str, Counter[str]], edge: dict, timeline: list, steal
) -> dict:
    times = sorted(p["complete_s"] for p in peers)
    got: Counter[str] = Counter()
    for c in by_region.values():
        got.update(c)
    sent = edge_sent(edge)
    return {
        **asdict(crowd),
        "command": crowd.command(),
        "announce_interval": "default",
        "bound_s": round(bound, 2),
        "all_complete_s": times[-1],
        "median_complete_s": times[len(times) // 2],
        "ratio_to_bound": round(times[-1] / bound, 3),
        **_startups(peers, bound),
        "p2p_share": share(got),
        "bytes": {k: got[k] for k in SOURCES},
        "cross_region_bytes": got[OTHER],
        "regions_detail": {name: {**{k: c[k] for k in SOURCES}, "p2p_share": share(c)} for name, c in by_region.items()},
        "edge_sent_bytes": sent,
        "edge_copies": round(sent / crowd.size, 2),
        "edge_requests": _edge_requests(edge),
        "copies_identical": all(p["sha256"] == digest for p in peers),
        "peers_detail": [{**p, "identical": p["sha256"] == digest} for p in peers],
        "timeline": timeline,
        "steal_pct": steal,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _startups(peers: list[dict], bound: float) -> dict:
    """``get`` mode: how long the processes took from launch to their first request (start-up: the imports, the
    upload server, the manifest), and the slowest download from its own start against the bound."""
    own = [(p["complete_s"], p["download_s"]) for p in peers if p.get("download_s") is not None]
    if not own or len(own) < len(peers):
        return {}
    startups = sorted(done - took for done, took in own)
    return {
        "startup_median_s": round(startups[len(startups) // 2], 2),
        "startup_max_s": round(startups[-1], 2),
        "download_ratio_to_bound": round(max(took for _, took in own) / bound, 3),
    }


def _edge_requests(edge: dict) -> dict[str, int]:
    """What the edge's pieces to peers were for, over all regions: seeded (POST /seed), or a /piece request a reader's
    deadline forced ("urgent"), one a peer fetched otherwise ("background": a fallback, or the file's tail)."""
    out: Counter[str] = Counter()
    for row in edge.get("p2p", {}).get("regions", {}).values():
        out["seeded"] += row.get("seeded", {}).get("sent", 0)
        out.update(row.get("piece_requests", {}))
    return {k: out[k] for k in ("seeded", "urgent", "background")}


def report(console: Console, r: dict) -> None:
    table = Table(
        title=f"{r['mode']}: {r['peers']} peers in {r['regions']} region(s), {format_bytes(r['size'])}, "
        f"edge {_rate(r['edge_Bps'])}, peers {_rate(r['peer_Bps'])} up, daemons' defaults otherwise"
    )
    for col in ("measure", "value"):
        table.add_column(col)
    rows: list[tuple[str, str]] = [
        ("lower bound max(F/u_s, F/d_min, N·F/(u_s+Σu_i))", f"{r['bound_s']:.1f} s"),
        ("last peer complete", f"{r['all_complete_s']:.1f} s"),
        ("median peer complete", f"{r['median_complete_s']:.1f} s"),
        ("time / bound", f"{r['ratio_to_bound']:.2f}"),
        *(
            [
                ("get start-up, launch to first request (median / max)", f"{r['startup_median_s']:.1f} / {r['startup_max_s']:.1f} s"),
                ("slowest download from its own start / bound", f"{r['download_ratio_to_bound']:.2f}"),
            ]
            if "startup_max_s" in r
            else []
        ),
        ("P2P share", _pct(r["p2p_share"])),
        *((f"received from {k.replace('_', ' ')}", format_bytes(r["bytes"][k])) for k in SOURCES),
        ("crossed regions", format_bytes(r["cross_region_bytes"])),
        ("edge sent", f"{format_bytes(r['edge_sent_bytes'])} ({r['edge_copies']:.1f} copies)"),
        ("edge pieces: seeded / urgent / other", " / ".join(str(v) for v in r["edge_requests"].values())),
        ("every copy identical (SHA-256)", "yes" if r["copies_identical"] else "[red]NO[/red]"),
    ]
    for name, c in r["regions_detail"].items():
        rows.append((f"region {name}: P2P share", _pct(c["p2p_share"])))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    want_share, want_ratio = TARGETS[r["mode"]]
    share_ok = r["p2p_share"] is not None and r["p2p_share"] >= want_share
    console.print(f"target P2P share ≥ {want_share:.0%}: {'met' if share_ok else 'NOT met'} ({_pct(r['p2p_share'])})")
    console.print(
        f"target time ≤ {want_ratio} × bound: {'met' if r['ratio_to_bound'] <= want_ratio else 'NOT met'} ({r['ratio_to_bound']:.2f} ×)"
    )
    sys.stdout.flush()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"
