"""``edgeswarm bench preheat``: a flash crowd on a region's edges, with and without ``edgeswarm preheat`` first.

An origin behind a parent edge whose upload is capped (the backbone link a
region's edges fill from), and a region of two edges under it.  N clients
read one file through the region's edges at the same moment.  Run twice on
fresh caches: cold (the crowd's requests make the edges fetch from the parent
as they go), and preheated (``preheat`` read the file through both edges
first).  Printed for each: the bytes the region's edges took from their parent
while the crowd ran, and the time until the last client had the whole file;
then the ratios.  No target: the figures are what they are on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from edgeswarm.measure.process import NodeProcess, ProcessGroup
from edgeswarm.protocol.units import format_bytes
from edgeswarm.roles import preheat

FILE = "release.img"


@dataclass
class Run:
    mode: str  # cold | preheated
    clients: int
    size: int
    parent_bytes: int  # what the region's edges received from their parent during the crowd
    crowd_s: float  # until the last client had every byte
    preheat_s: float  # the preheat itself (0 when cold)
    preheat_parent_bytes: int  # what the edges took from their parent during the preheat (0 when cold)


async def _received_from_parent(edges: list[NodeProcess], http: aiohttp.ClientSession) -> int:
    total = 0
    for edge in edges:
        async with http.get(edge.url + "/status") as reply:
            doc = await reply.json()
        total += sum(row["bytes"] for row in doc["bytes_received"])
    return total


async def _crowd(edges: list[NodeProcess], clients: int, size: int) -> float:
    """``clients`` readers at once, spread over the edges; seconds until the last one finished its whole file."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def one(i: int) -> None:
            got = 0
            async with http.get(f"{edges[i % len(edges)].url}/{FILE}") as reply:
                reply.raise_for_status()
                async for chunk in reply.content.iter_chunked(1 << 16):
                    got += len(chunk)
            if got != size:
                raise RuntimeError(f"client {i} got {got} of {size} bytes")

        await asyncio.gather(*(one(i) for i in range(clients)))
    return time.monotonic() - started


def _one_run(work: Path, mode: str, clients: int, size: int, parent_rate: str) -> Run:
    with ProcessGroup(work / mode / "logs") as nodes:
        origin = nodes.start("origin", "--publish", str(work / "pub"), name="origin")
        parent = nodes.start("edge", "--cache", str(work / mode / "parent"), "--parent", origin.url, "--upload-limit", parent_rate)
        edges = [nodes.start("edge", "--cache", str(work / mode / f"e{i}"), "--parent", parent.url, name=f"e{i}") for i in range(2)]
        took = 0.0
        if mode == "preheated":
            t0 = time.monotonic()
            results = asyncio.run(preheat.preheat(preheat.Plan([FILE], [e.url for e in edges])))
            took = time.monotonic() - t0
            bad = [r for r in results if r.outcome == preheat.FAILED]
            if bad:
                raise RuntimeError(f"preheat failed: {bad[0].edge}: {bad[0].error}")

        async def measure() -> tuple[int, float]:
            async with aiohttp.ClientSession() as http:
                before = await _received_from_parent(edges, http)
                seconds = await _crowd(edges, clients, size)
                return await _received_from_parent(edges, http) - before, seconds

        async def before_crowd() -> int:
            async with aiohttp.ClientSession() as http:
                return await _received_from_parent(edges, http)

        early = asyncio.run(before_crowd())
        parent_bytes, seconds = asyncio.run(measure())
    return Run(mode, clients, size, parent_bytes, seconds, took, early)


def run(clients: int, size: int, parent_rate: str, json_path: Path | None, workdir: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeswarm-bench-preheat-") as tmp:
        work = workdir or Path(tmp)
        (work / "pub").mkdir(parents=True, exist_ok=True)
        (work / "pub" / FILE).write_bytes(os.urandom(size))
        runs = [_one_run(work, mode, clients, size, parent_rate) for mode in ("cold", "preheated")]
    cold, warm = runs
    print(f"flash crowd: {clients} clients, one {format_bytes(size)} file, 2 edges under a parent capped at {parent_rate}")
    for r in runs:
        extra = f"  (the preheat before: {format_bytes(r.preheat_parent_bytes)}, {r.preheat_s:.2f} s)" if r.mode == "preheated" else ""
        print(f"  {r.mode:<9} edges took {format_bytes(r.parent_bytes):>10} from their parent; crowd done in {r.crowd_s:6.2f} s{extra}")
    egress = f"{cold.parent_bytes / warm.parent_bytes:.1f}x" if warm.parent_bytes else "n/a (none after preheat)"
    print(f"  cold/preheated: parent egress during the crowd {egress}, crowd time {cold.crowd_s / warm.crowd_s:.2f}x")
    if json_path is not None:
        json_path.write_text(json.dumps({"runs": [asdict(r) for r in runs], "parent_rate": parent_rate}, indent=2) + "\n")
    return 0
