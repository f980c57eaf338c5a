"""``edgeswarm bench tracker``: simulated announces against the tracker, with no daemons behind them.

The tracker service of an edge (announce.TrackerService: parsing, bitfield,
limits, claim bounds, the store's write and sample, ranking, the share
report) is driven in this process by ``--concurrency`` announces in flight
at once, as an edge's event loop would see them, without HTTP in front: the
figure is the tracker's own cost.  ``--peers`` peers (each on an address of
its own) in one region are dealt round robin over ``--contents`` contents of
``--pieces`` pieces.  First every peer announces ``started`` (the swarms
fill up), then random peers announce ``update`` with a random bitfield for
``--duration`` seconds.  Each store is measured: ``memory``, and ``redis``
against a redis-server the bench starts on a free loopback port (Debian's
redis-server package).

Printed per store and phase: announces a second of wall time, and per
second of this process's CPU time (the "one core" figure: redis-server runs
in a process of its own, its CPU is not counted), and the p50/p99/max time
from an announce's start to its answer.  Anchor (issue 13): wt-tracker
carries 300 k peers on one core; goal >= 5 000 announces/s with p99 < 50 ms.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeswarm.measure.bench_serve import _cpu_ticks, _steal_pct
from edgeswarm.node import collector
from edgeswarm.policy.peerstore import MemoryPeerStore
from edgeswarm.policy.regions import RegionMap
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.roles.announce import TrackerService
from edgeswarm.store.redispeers import RedisPeerStore

PIECE = 256 * 1024
INTERVAL = 300.0  # the edge's default announce interval: the ttl is three of them
GOAL_RATE, GOAL_P99_MS = 5000.0, 50.0
FIELDS = 64  # distinct random bitfields the simulated peers send


@dataclass
class Phase:
    store: str
    phase: str
    announces: int
    wall_s: float
    cpu_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    steal_pct: float | None = None  # CPU the hypervisor gave other guests meanwhile: on a shared VM it swings figures several-fold
    load: float | None = None  # the machine's 1-minute load average at the end (other processes on the same cores)

    @property
    def rate(self) -> float:
        return self.announces / self.wall_s if self.wall_s else 0.0

    @property
    def rate_per_cpu(self) -> float:
        return self.announces / self.cpu_s if self.cpu_s else 0.0


class RedisProcess:
    """A throwaway redis-server: free loopback port, temporary directory, no persistence."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="edgeswarm-bench-redis-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisProcess:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found (install Debian's redis-server package; ./dev bench does)")
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _fields(pieces: int, rng: random.Random) -> list[str]:
    """Random bitfields, from nearly empty to nearly complete, with no bit past the last piece."""
    out = []
    nbits = 8 * ((pieces + 7) // 8)
    for i in range(FIELDS):
        mask = 0
        for p in range(pieces):
            if rng.random() < i / FIELDS:
                mask |= 1 << (nbits - 1 - p)
        out.append(base64.b64encode(mask.to_bytes(nbits // 8, "big")).decode())
    return out


def _address(n: int) -> str:
    return str(ipaddress.IPv4Address(0x0A000000 + n))


async def _drive(svc: TrackerService, jobs, concurrency: int, on_done) -> tuple[list[float], int]:
    """Run every announce of ``jobs`` with ``concurrency`` in flight; each one's time from start to answer."""
    times: list[float] = []
    errors = 0
    it = iter(jobs)

    async def worker() -> None:
        nonlocal errors
        for doc, address, manifest in it:
            t0 = time.perf_counter()
            try:
                await svc.handle(doc, address, manifest)
            except Exception:  # a refusal or a store error: counted, never fatal to the bench
                errors += 1
            times.append(time.perf_counter() - t0)
            on_done()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times, errors


def _phase(store: str, name: str, times: list[float], wall: float, cpu: float, errors: int, ticks) -> Phase:
    ordered = sorted(times)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    top = 1000 * (ordered[-1] if ordered else 0.0)
    return Phase(store, name, len(times), wall, cpu, pct(0.5), pct(0.99), top, errors, _steal_pct(ticks, _cpu_ticks()), os.getloadavg()[0])


async def measure(
    store_name: str, url: str | None, peers: int, contents: int, pieces: int, duration: float, concurrency: int, progress: Progress
) -> list[Phase]:
    rng = random.Random(1)
    regions = RegionMap.from_doc({"regions": [{"name": "east", "isp": "bench", "networks": ["10.0.0.0/8"]}]})
    store = MemoryPeerStore() if url is None else RedisPeerStore(url)
    svc = TrackerService(regions, "prefer", INTERVAL, store=store)
    manifests = [Manifest(f"c{i}.bin", pieces * PIECE, "application/octet-stream", PIECE, ("0" * 64,) * pieces, 0) for i in range(contents)]
    cids = [f"{i:064x}" for i in range(contents)]
    fields = _fields(pieces, rng)

    def doc(n: int, event: str, k: int) -> tuple[dict, str, Manifest]:
        c = n % contents
        body = {
            "peer_id": f"peer{n}",
            "port": 7000,
            "content": cids[c],
            "pieces": pieces,
            "have": fields[(n + k) % FIELDS],
            "uploaded": k * PIECE,
            "downloaded": k * PIECE,
            "event": event,
            "stats": {"edge": k * PIECE, "peer_same_region": k * PIECE, "peer_other_region": 0},
        }
        return body, _address(n), manifests[c]

    phases = []
    try:
        task = progress.add_task(f"{store_name}: {peers:,} peers join", total=peers)
        wall, cpu, ticks = time.perf_counter(), time.process_time(), _cpu_ticks()
        times, errors = await _drive(svc, (doc(n, "started", 0) for n in range(peers)), concurrency, lambda: progress.advance(task))
        phases.append(_phase(store_name, "join", times, time.perf_counter() - wall, time.process_time() - cpu, errors, ticks))
        progress.remove_task(task)

        task = progress.add_task(f"{store_name}: updates for {duration:g} s", total=duration)
        end = time.perf_counter() + duration

        def updates():
            k = 1
            while time.perf_counter() < end:
                yield doc(rng.randrange(peers), "update", k)
                k += 1

        def tick() -> None:
            progress.update(task, completed=min(duration, duration - (end - time.perf_counter())))

        wall, cpu, ticks = time.perf_counter(), time.process_time(), _cpu_ticks()
        times, errors = await _drive(svc, updates(), concurrency, tick)
        phases.append(_phase(store_name, "update", times, time.perf_counter() - wall, time.process_time() - cpu, errors, ticks))
        progress.remove_task(task)
    finally:
        await store.close()
    return phases


def run(peers: int, contents: int, pieces: int, duration: float, concurrency: int, stores: list[str], json_path: Path | None) -> int:
    collector.tune()  # the garbage collector as an edge runs it (node/collector.py)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # a log or a pipe: whole columns rather than 80 characters
    phases: list[Phase] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for name in stores:
            if name == "memory":
                phases += asyncio.run(measure(name, None, peers, contents, pieces, duration, concurrency, progress))
            else:
                try:
                    with RedisProcess() as server:
                        phases += asyncio.run(measure(name, server.url, peers, contents, pieces, duration, concurrency, progress))
                except RuntimeError as exc:
                    console.print(f"[red]redis: {exc}")
                    return 1
    table = Table(title=f"tracker: {peers:,} peers, {contents} contents of {pieces} pieces, {concurrency} announces in flight")
    for col in ("store", "phase", "announces", "per s (wall)", "per CPU s", "p50 ms", "p99 ms", "max ms", "errors", "steal %", "load"):
        table.add_column(col, justify="right" if col not in ("store", "phase") else "left")
    for p in phases:
        table.add_row(
            p.store,
            p.phase,
            f"{p.announces:,}",
            f"{p.rate:,.0f}",
            f"{p.rate_per_cpu:,.0f}",
            f"{p.p50_ms:.2f}",
            f"{p.p99_ms:.2f}",
            f"{p.max_ms:.1f}",
            str(p.errors),
            "-" if p.steal_pct is None else f"{p.steal_pct:g}",
            "-" if p.load is None else f"{p.load:.1f}",
        )
    console.print(table)
    console.print(
        "load: the 1-minute load average on this machine's cores at the end of the phase; above 1 per core, other processes shared them"
    )
    for p in phases:
        if p.phase == "update":
            ok = p.rate_per_cpu >= GOAL_RATE and p.p99_ms < GOAL_P99_MS
            verdict = "meets" if ok else "misses"
            console.print(
                f"{p.store}: {p.rate_per_cpu:,.0f} announces per CPU second, p99 {p.p99_ms:.1f} ms: "
                f"{verdict} the goal (>= {GOAL_RATE:,.0f}/s, p99 < {GOAL_P99_MS:g} ms)"
            )
    if json_path is not None:
        doc = {
            "peers": peers,
            "contents": contents,
            "pieces": pieces,
            "concurrency": concurrency,
            "duration_s": duration,
            "phases": [{**asdict(p), "per_s": p.rate, "per_cpu_s": p.rate_per_cpu} for p in phases],
            "median_ms": {f"{p.store}/{p.phase}": p.p50_ms for p in phases},
        }
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(p.errors == 0 for p in phases) else 1
