"""``edgeswarm bench swarm``: a flash crowd against the theoretical bound.

N real peers with capped uploads fetch one file at once from one capped
edge.  The time until all are complete is printed beside the lower bound for
distributing a file of size F from a server of upload u_s to N peers of
upload u_i and download d_i:

    max(F/u_s, F/d_min, N*F/(u_s + sum u_i))

(d_min is unbounded here: downloads are not capped), with the P2P share -
the bytes peers got from each other over all bytes they got - which is what
the provider saves.  Targets: P2P share >= 80 %, time <= 1.5 x the bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from edgeswarm.process import ProcessGroup
from edgeswarm.units import format_bytes


def lower_bound(size: int, n: int, server_up: float, peer_up: list[float], min_down: float | None = None) -> float:
    """Seconds: no schedule can deliver the file to all N peers faster."""
    terms = [size / server_up, n * size / (server_up + sum(peer_up))]
    if min_down:
        terms.append(size / min_down)
    return max(terms)


def run(peers: int, size: int, edge_rate: int, peer_rate: int, json_path: Path | None, workdir: Path | None = None) -> int:
    console = Console(stderr=False)
    root = workdir or Path(tempfile.mkdtemp(prefix="edgeswarm-bench-swarm-"))
    try:
        with ProcessGroup(root / "logs") as group:
            result = asyncio.run(_flash_crowd(console, group, root, peers, size, edge_rate, peer_rate))
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]bench swarm failed:[/red] {exc} (logs in {root / 'logs'})")
        return 1
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    _report(console, result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


async def _flash_crowd(console: Console, group: ProcessGroup, root: Path, n: int, size: int, edge_rate: int, peer_rate: int) -> dict:
    publish = root / "publish"
    publish.mkdir(parents=True, exist_ok=True)
    with open(publish / "update.img", "wb") as f:
        for left in range(size, 0, -(1 << 20)):
            f.write(os.urandom(min(left, 1 << 20)))
    with console.status("starting origin, edge and peers"):
        origin = group.start("origin", "--publish", str(publish))
        edge = group.start(
            "edge",
            *("--cache", str(root / "edge"), "--parent", origin.url, "--p2p", "--announce-interval", "1"),
            *("--upload-limit", f"{edge_rate}B/s"),
            name="edge",
        )
        nodes = [
            group.start(
                "peer",
                *("--cache", str(root / f"peer{i}"), "--edge", edge.url, "--listen", f"127.1.{i // 250}.{i % 250 + 1}:0"),
                *("--gateway", "127.0.0.1:0", "--upload-limit", f"{peer_rate}B/s"),
                name=f"peer{i}",
            )
            for i in range(n)
        ]
    done: dict[int, float] = {}
    timeline: list[tuple[float, int]] = []  # (seconds, pieces held by all peers together)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        for node in nodes:
            async with http.post(node.urls["gateway"] + "/update.img") as resp:
                if resp.status != 202:
                    raise RuntimeError(f"peer refused the download: {resp.status} {await resp.text()}")
        bound = lower_bound(size, n, edge_rate, [peer_rate] * n)
        with console.status("") as status:
            while len(done) < n:
                now = time.monotonic() - started
                if now > 10 * bound + 60:
                    raise TimeoutError(f"only {len(done)} of {n} peers complete after {now:.0f} s")
                sts = await asyncio.gather(*(_status(http, node.urls["gateway"]) for node in nodes))
                for i, st in enumerate(sts):
                    if i not in done and st["swarms"] and st["swarms"][0]["complete"]:
                        done[i] = now
                held = sum(st["swarms"][0]["held"] for st in sts if st["swarms"])
                timeline.append((round(now, 2), held))
                status.update(f"{len(done)}/{n} peers complete after {now:.1f} s (bound {bound:.1f} s)")
                await asyncio.sleep(0.25)
        sts = await asyncio.gather(*(_status(http, node.urls["gateway"]) for node in nodes))
        edge_status = await _status(http, edge.url)
    from_peers = sum(st["received_by_kind"].get("peer-same-region", 0) + st["received_by_kind"].get("peer-other-region", 0) for st in sts)
    total = sum(sum(st["received_by_kind"].values()) for st in sts)
    elapsed = max(done.values())
    return {
        "peers": n,
        "size": size,
        "edge_upload_Bps": edge_rate,
        "peer_upload_Bps": peer_rate,
        "bound_s": round(bound, 2),
        "all_complete_s": round(elapsed, 2),
        "ratio_to_bound": round(elapsed / bound, 3),
        "median_complete_s": round(sorted(done.values())[n // 2], 2),
        "p2p_share": round(from_peers / total, 4) if total else None,
        "edge_sent_bytes": edge_status["bytes_sent"].get("node", 0) + edge_status["bytes_sent"].get("client", 0),
        "timeline": timeline,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


async def _status(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/status") as resp:
        return await resp.json()


def _report(console: Console, r: dict) -> None:
    table = Table(
        title=f"flash crowd: {r['peers']} peers, {format_bytes(r['size'])}, edge {format_bytes(r['edge_upload_Bps'])}/s, peers {format_bytes(r['peer_upload_Bps'])}/s up"
    )
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("lower bound max(F/u_s, N·F/(u_s+Σu_i))", f"{r['bound_s']:.1f} s")
    table.add_row("all peers complete", f"{r['all_complete_s']:.1f} s")
    table.add_row("median peer complete", f"{r['median_complete_s']:.1f} s")
    table.add_row("time / bound", f"{r['ratio_to_bound']:.2f}")
    table.add_row("P2P share", f"{r['p2p_share']:.1%}")
    table.add_row("edge sent", f"{format_bytes(r['edge_sent_bytes'])} ({r['edge_sent_bytes'] / r['size']:.1f} copies)")
    console.print(table)
    share_ok = r["p2p_share"] is not None and r["p2p_share"] >= 0.8
    time_ok = r["ratio_to_bound"] <= 1.5
    console.print(f"target P2P share ≥ 80 %: {'met' if share_ok else 'NOT met'} ({r['p2p_share']:.1%})")
    console.print(f"target time ≤ 1.5 × bound: {'met' if time_ok else 'NOT met'} ({r['ratio_to_bound']:.2f} ×)")
    sys.stdout.flush()
