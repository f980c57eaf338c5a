"""``edgeswarm demo``: the CDN half on loopback, step by step, with what crossed each hop.

An origin, a mid-tier edge and two leaf edges that are siblings of each other
(p2pd scenario 3 with a hierarchy), all real daemons.  The demo fetches
through them, checks every byte, stops the origin to show that cached
content survives it, and reports the counters each node keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from edgeswarm.process import NodeProcess, ProcessGroup
from edgeswarm.units import format_bytes

MiB = 1024 * 1024


def run(size: int, workdir: Path | None) -> int:
    console = Console()
    keep = workdir is not None
    root = workdir or Path(tempfile.mkdtemp(prefix="edgeswarm-demo-"))
    try:
        with ProcessGroup(root / "logs") as group:
            return asyncio.run(_demo(console, group, root, size))
    except RuntimeError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"files and logs kept in {root}")


def _publish(root: Path, size: int) -> bytes:
    film = root / "publish" / "films" / "big-buck.mp4"
    film.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    film.write_bytes(data)
    return data


async def _demo(console: Console, group: ProcessGroup, root: Path, size: int) -> int:
    data = _publish(root, size)
    digest = hashlib.sha256(data).hexdigest()
    with console.status("starting an origin, a mid-tier edge and two sibling edges…"):
        origin = group.start("origin", "--publish", str(root / "publish"), name="origin")
        mid = group.start("edge", "--cache", str(root / "mid"), "--parent", origin.url, name="mid")
        a = group.start("edge", "--cache", str(root / "edge-a"), "--parent", mid.url, name="edge-a")
        b = group.start("edge", "--cache", str(root / "edge-b"), "--parent", mid.url, "--sibling", a.url, name="edge-b")
    for node in (origin, mid, a, b):
        console.print(f"  {Path(node.log_path).stem:<7} {node.url}")
    path = "/films/big-buck.mp4"
    ok = True
    async with aiohttp.ClientSession() as http:
        steps = [
            ("a range of up to 1 MiB in the middle, cold, via edge-a", a, f"bytes={size // 2}-{min(size, size // 2 + MiB) - 1}"),
            ("whole file via edge-a (origin → mid → edge-a)", a, None),
            ("whole file again via edge-a (cache hit)", a, None),
            ("whole file via edge-b (pieces from sibling edge-a)", b, None),
        ]
        for title, node, rng in steps:
            ok &= await _fetch(console, http, node.url + path, rng, data, digest, title)
        origin.stop()
        ok &= await _fetch(console, http, b.url + path, None, data, digest, "whole file via edge-b with the origin stopped")
        async with http.get(mid.url + "/films/unknown.mp4") as resp:
            console.print(f"  an unpublished file with the origin down: {resp.status} {(await resp.text()).strip()}")
        stats = {name: await _status(http, n) for name, n in (("mid", mid), ("edge-a", a), ("edge-b", b))}
    _report(console, stats, size)
    console.print("[green]all bytes verified[/green]" if ok else "[red]some transfers were wrong[/red]")
    return 0 if ok else 1


async def _fetch(console, http, url: str, rng: str | None, data: bytes, digest: str, title: str) -> bool:
    started = time.monotonic()
    async with http.get(url, headers={"Range": rng} if rng else {}) as resp:
        body = await resp.read()
    took = time.monotonic() - started
    if rng:
        first, last = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        good = resp.status == 206 and body == data[first : last + 1]
    else:
        good = resp.status == 200 and hashlib.sha256(body).hexdigest() == digest
    mark = "[green]ok[/green]" if good else f"[red]FAILED ({resp.status})[/red]"
    console.print(f"  {mark} {title}: {format_bytes(len(body))} in {took:.2f} s ({len(body) / MiB / max(took, 1e-6):.0f} MiB/s)")
    return good


async def _status(http: aiohttp.ClientSession, node: NodeProcess) -> dict:
    async with http.get(node.url + "/status") as resp:
        return await resp.json()


def _report(console: Console, stats: dict[str, dict], size: int) -> None:
    table = Table(title="bytes per hop, from each node's own counters")
    for col in ("node", "from parent", "from siblings", "to clients", "to other nodes", "cached"):
        table.add_column(col, justify="right")
    for name, st in stats.items():
        by_kind = {k: sum(r["bytes"] for r in st["bytes_received"] if r["kind"] == k) for k in ("parent", "sibling")}
        sent = st["bytes_sent"]
        table.add_row(
            name,
            format_bytes(by_kind["parent"]),
            format_bytes(by_kind["sibling"]),
            format_bytes(sent.get("client", 0)),
            format_bytes(sent.get("node", 0)),
            format_bytes(st["cache_bytes"]),
        )
    console.print(table)
    delivered = sum(st["bytes_sent"].get("client", 0) for st in stats.values())
    from_origin = sum(r["bytes"] for r in stats["mid"]["bytes_received"] if r["kind"] == "parent")
    console.print(
        f"clients received {format_bytes(delivered)}; the origin sent {format_bytes(from_origin)} "
        f"({from_origin / max(delivered, 1):.0%} of it, the file is {format_bytes(size)})"
    )
