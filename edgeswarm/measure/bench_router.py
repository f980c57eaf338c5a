"""``edgeswarm bench router``: the router's decisions per second, by HTTP (302s) and by DNS.

A real router (a process) in front of four real edges in two regions, polled
as usual.  wrk asks it for random paths (each a 302, so each a decision: the
client's region, then the rendezvous ranking); a UDP load generator in this
process keeps a window of DNS queries for random names in flight and counts
the answers.  Also timed: the policy alone (routing.py's ``decide`` in
process), the ceiling the I/O sits on.  No target: figures to compare runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dnslib import DNSRecord
from rich.console import Console
from rich.table import Table

from edgeswarm.measure.bench_serve import BenchError, parse_wrk
from edgeswarm.measure.process import ProcessGroup
from edgeswarm.policy.routing import EdgeSpec, RoutingTable, Sample
from edgeswarm.roles.config import EdgeConfig

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.0.0.0/16, 127.1.0.0/16]}\n  - {name: west, isp: verizon, networks: [127.2.0.0/16]}\n"
DNS_NAME = "cdn.bench"
WINDOW = 64  # DNS queries in flight


def run(duration: int, connections: int, json_path: Path | None, workdir: Path | None = None) -> int:
    console = Console(stderr=True)
    if shutil.which("wrk") is None:
        console.print("bench router: needs wrk (Debian package wrk)")
        return 2
    root = workdir or Path(tempfile.mkdtemp(prefix="edgeswarm-bench-router-"))
    try:
        result = _measure(console, root, duration, connections)
    except BenchError as exc:
        console.print(f"bench router: {exc}")
        return 1
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    _report(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _measure(console: Console, root: Path, duration: int, connections: int) -> dict:
    (root / "pub").mkdir(parents=True, exist_ok=True)
    (root / "regions.yaml").write_text(REGIONS)
    with ProcessGroup(root / "logs") as nodes:
        origin = nodes.start("origin", "--publish", str(root / "pub"))
        edges = [
            (nodes.start("edge", *EdgeConfig(cache=root / f"e{n}", parent=origin.url).argv(), host=f"127.10.0.{n}", name=f"e{n}"), region)
            for n, region in ((1, "east"), (2, "east"), (3, "west"), (4, "west"))
        ]
        args = ["--regions", str(root / "regions.yaml"), "--dns-port", "0", "--dns-name", DNS_NAME]
        for node, region in edges:
            args += ["--edge", f"{node.url},{region},1Gbit/s"]
        router = nodes.start("router", *args, name="router")
        with urllib.request.urlopen(router.url + "/status", timeout=10) as resp:
            status = json.load(resp)
        if sum(e["state"] == "up" for e in status["edges"]) != len(edges):
            raise BenchError(f"not every edge is up at the router: {status['edges']}")
        with console.status(f"HTTP: wrk -t1 -c{connections} -d{duration}s, random paths"):
            http = _http(root, router.url, duration, connections)
        with console.status(f"DNS: {WINDOW} queries in flight for {duration} s"):
            dns = asyncio.run(_dns(status["dns"]["port"], duration))
        rss = _rss_kib(router.proc.pid) if router.proc is not None else None
    return {
        "duration_s": duration,
        "connections": connections,
        "edges": len(edges),
        "http": http,
        "dns": dns,
        "policy": _policy(),
        "router_rss_kib": rss,
        "cpus": os.cpu_count(),
    }


def _http(root: Path, url: str, duration: int, connections: int) -> dict:
    script = root / "paths.lua"
    script.write_text(
        'math.randomseed(7)\nrequest = function()\n  return wrk.format("GET", "/films/" .. math.random(1, 1000000) .. ".mp4")\nend\n'
    )
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed: {(proc.stderr or proc.stdout)[-500:]}")
    figures = parse_wrk(proc.stdout)
    if figures["failures"]:
        raise BenchError(f"{figures['failures']} of wrk's requests failed (not a 302)")
    return {"decisions_per_s": figures["req_per_s"], "p50_ms": figures.get("p50_ms"), "p99_ms": figures.get("p99_ms")}


class _DnsLoad(asyncio.DatagramProtocol):
    """Keeps WINDOW queries in flight; one answered (or lost for 1 s) sends the next."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        # built once: the client's own dnslib work would otherwise cost about as much as the router's
        self.packets = [DNSRecord.question(f"n{rng.randrange(1_000_000)}.{DNS_NAME}").pack() for _ in range(4096)]
        self.answered = self.refused = self.lost = 0
        self.pending: dict[int, float] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.next_id = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        for _ in range(WINDOW):
            self.send()

    def send(self) -> None:
        self.next_id = (self.next_id + 1) % 65536
        packet = self.packets[self.rng.randrange(len(self.packets))]
        self.pending[self.next_id] = time.monotonic()
        assert self.transport is not None
        self.transport.sendto(self.next_id.to_bytes(2, "big") + packet[2:])

    def datagram_received(self, data: bytes, addr) -> None:
        qid = int.from_bytes(data[:2], "big")
        if self.pending.pop(qid, None) is None:
            return
        if data[3] & 0x0F == 0 and int.from_bytes(data[6:8], "big") > 0:  # NOERROR with an answer
            self.answered += 1
        else:
            self.refused += 1
        self.send()

    def expire(self) -> None:
        now = time.monotonic()
        for qid in [q for q, at in self.pending.items() if now - at > 1.0]:
            del self.pending[qid]
            self.lost += 1
            self.send()


async def _dns(port: int, duration: int) -> dict:
    loop = asyncio.get_running_loop()
    load = _DnsLoad(random.Random(7))
    started = time.monotonic()
    transport, _ = await loop.create_datagram_endpoint(lambda: load, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port))
    try:
        while time.monotonic() - started < duration:
            await asyncio.sleep(0.1)
            load.expire()
    finally:
        transport.close()
    elapsed = time.monotonic() - started
    if load.refused:
        raise BenchError(f"{load.refused} DNS queries were answered without a record")
    return {"decisions_per_s": load.answered / elapsed, "lost": load.lost}


def _policy(n: int = 200_000) -> dict:
    """routing.py alone: decisions per second for four up edges, two per region, random keys."""
    table = RoutingTable()
    for k, region in enumerate(("east", "east", "west", "west"), 1):
        spec = EdgeSpec(f"http://127.10.0.{k}:8080", region, 125e6)
        table.add(spec, 0.0)
        table.health[spec.url].succeeded(Sample(1.0, 0, 0, 0), table.thresholds)
    keys = [f"films/{k}.mp4" for k in range(n)]
    started = time.perf_counter()
    for key in keys:
        table.decide("east", key)
    return {"decisions_per_s": n / (time.perf_counter() - started)}


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _report(r: dict) -> None:
    table = Table(title=f"router decisions per second ({r['edges']} edges, 2 regions, {r['duration_s']} s per way, {r['cpus']} CPUs)")
    for col in ("way", "decisions/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right" if col != "way" else "left")
    h = r["http"]
    table.add_row(f"HTTP 302 (wrk -t1 -c{r['connections']})", f"{h['decisions_per_s']:,.0f}", _ms(h.get("p50_ms")), _ms(h.get("p99_ms")))
    table.add_row(f"DNS A ({WINDOW} in flight, 1 client)", f"{r['dns']['decisions_per_s']:,.0f}", "", "")
    table.add_row("policy alone (in process)", f"{r['policy']['decisions_per_s']:,.0f}", "", "")
    Console().print(table)
    print(f"router RSS after the run: {r['router_rss_kib']} KiB; DNS queries lost: {r['dns']['lost']}", file=sys.stdout)


def _ms(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else ""
