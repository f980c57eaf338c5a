"""``edgeswarm bench preheat``: a flash crowd on a region's edges, with and without ``edgeswarm preheat`` first.

An origin behind a parent edge whose upload is capped (the backbone link a
region's edges fill from), and a region of two edges under it.  N clients
read one file through the region's edges at the same moment.  Run twice on
fresh caches: cold (the crowd's requests make the edges fetch from the parent
as they go), and preheated (``preheat`` read the file through both edges
first).  Printed for each: the bytes the region's edges took from their parent
while the crowd ran, and the time until the last client had the whole file;
then the ratios.  No target: the figures are what they are on this machine.

With ``--peers SHARE`` it measures preheating *peers* instead (``preheat
--peers``): one p2p edge with a capped upload, a region of volunteering peers
(``--accept-preheat``) and a crowd of other peers whose gateways all read the
file at once.  Cold, the crowd's swarm starts from the edge alone; preheated,
that share of the volunteers fetched the file before and seeds it.  Printed
for each: what the edge sent during the crowd, and the crowd's time.  Every
daemon runs with its defaults but for the upload caps (the announce
interval too: volunteers hear of an order by their held poll).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from edgeswarm.measure.bench_swarm import edge_sent, status
from edgeswarm.measure.process import NodeProcess, ProcessGroup
from edgeswarm.protocol.units import format_bytes
from edgeswarm.roles import preheat
from edgeswarm.roles.config import EdgeConfig, PeerConfig

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
        total += sum(row["bytes"] for row in (await status(http, edge.url))["bytes_received"])
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


def _fresh(directory: Path) -> Path:
    """A run's own directory, emptied: a --workdir used before must not hand this run the last one's caches."""
    shutil.rmtree(directory, ignore_errors=True)
    return directory


def _one_run(work: Path, mode: str, clients: int, size: int, parent_Bps: int) -> Run:
    with ProcessGroup(_fresh(work / mode) / "logs") as nodes:
        origin = nodes.start("origin", "--publish", str(work / "pub"), name="origin")
        parent = nodes.start("edge", "--cache", str(work / mode / "parent"), "--parent", origin.url, "--upload-limit", f"{parent_Bps}B/s")
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


def run(clients: int, size: int, parent_Bps: int, json_path: Path | None, workdir: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeswarm-bench-preheat-") as tmp:
        work = workdir or Path(tmp)
        (work / "pub").mkdir(parents=True, exist_ok=True)
        (work / "pub" / FILE).write_bytes(os.urandom(size))
        runs = [_one_run(work, mode, clients, size, parent_Bps) for mode in ("cold", "preheated")]
    cold, warm = runs
    print(f"flash crowd: {clients} clients, one {format_bytes(size)} file, 2 edges under a parent capped at {format_bytes(parent_Bps)}/s")
    for r in runs:
        extra = f"  (the preheat before: {format_bytes(r.preheat_parent_bytes)}, {r.preheat_s:.2f} s)" if r.mode == "preheated" else ""
        print(f"  {r.mode:<9} edges took {format_bytes(r.parent_bytes):>10} from their parent; crowd done in {r.crowd_s:6.2f} s{extra}")
    egress = f"{cold.parent_bytes / warm.parent_bytes:.1f}x" if warm.parent_bytes else "n/a (none after preheat)"
    print(f"  cold/preheated: parent egress during the crowd {egress}, crowd time {cold.crowd_s / warm.crowd_s:.2f}x")
    if json_path is not None:
        json_path.write_text(json.dumps({"runs": [asdict(r) for r in runs], "parent_Bps": parent_Bps}, indent=2) + "\n")
    return 0


# -- preheating peers ----------------------------------------------------------------------------
REGIONS = "regions:\n  - {name: east, isp: bench, networks: [127.1.0.0/16]}\n"


@dataclass
class PeerSetup:
    volunteers: int  # peers started with --accept-preheat
    crowd: int  # other peers, whose gateways all read the file at once
    size: int
    share: float  # preheat --peers
    edge_Bps: int  # the edge's --upload-limit
    peer_Bps: int  # every peer's --upload-limit


@dataclass
class PeerRun:
    mode: str  # cold | preheated
    edge_bytes: int  # what the edge sent during the crowd
    crowd_s: float  # until the last gateway had every byte
    preheat_s: float  # from the order to the last chosen volunteer holding the file (0 when cold)
    preheat_edge_bytes: int  # what the edge sent meanwhile
    seeders: int  # volunteers holding the file whole when the crowd began
    crowd_got: dict[str, int]  # what the crowd's peers received, by source: edge, volunteers, crowd (each other)


async def _edge_sent(http: aiohttp.ClientSession, edge: NodeProcess) -> int:
    return edge_sent(await status(http, edge.url))


async def _whole(http: aiohttp.ClientSession, peer: NodeProcess) -> bool:
    return any(s["path"].strip("/") == FILE and s["complete"] for s in (await status(http, peer.urls["gateway"]))["swarms"])


async def _until(check, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout:g} s")
        await asyncio.sleep(0.1)


async def _peer_crowd(http: aiohttp.ClientSession, crowd: list[NodeProcess], digest: str) -> float:
    started = time.monotonic()

    async def one(peer: NodeProcess) -> None:
        h = hashlib.sha256()
        async with http.get(f"{peer.urls['gateway']}/{FILE}") as reply:
            reply.raise_for_status()
            async for chunk in reply.content.iter_any():
                h.update(chunk)
        if h.hexdigest() != digest:
            raise RuntimeError(f"the gateway {peer.urls['gateway']} gave a copy that differs from the file")

    await asyncio.gather(*(one(p) for p in crowd))
    return time.monotonic() - started


def _peer_run(work: Path, mode: str, setup: PeerSetup, digest: str) -> PeerRun:
    root = _fresh(work / f"peers-{mode}")
    with ProcessGroup(root / "logs") as nodes:
        origin = nodes.start("origin", "--publish", str(work / "pub"), name="origin")
        edge_config = EdgeConfig(
            cache=root / "edge", parent=origin.url, p2p=True, regions=work / "regions.yaml", upload_limit=setup.edge_Bps
        )
        edge = nodes.start("edge", *edge_config.argv(), name="edge")

        def peer(name: str, address: str, **extra: int) -> NodeProcess:
            config = PeerConfig(cache=root / name, edges=(edge.url,), upload_limit=setup.peer_Bps, **extra)  # type: ignore[arg-type]
            return nodes.start("peer", *config.argv(), "--listen", f"{address}:0", "--gateway", "127.0.0.1:0", name=name)

        volunteers = [peer(f"v{i}", f"127.1.0.{i + 1}", accept_preheat=4 * setup.size) for i in range(setup.volunteers)]
        crowd = [peer(f"c{i}", f"127.1.1.{i + 1}") for i in range(setup.crowd)]
        return asyncio.run(_peer_flow(mode, setup, edge, volunteers, crowd, digest))


async def _peer_flow(
    mode: str, setup: PeerSetup, edge: NodeProcess, volunteers: list[NodeProcess], crowd: list[NodeProcess], digest: str
) -> PeerRun:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def registered() -> bool:
            async with http.get(edge.url + "/preheat") as reply:
                return (await reply.json())["volunteers"].get("east", 0) == setup.volunteers

        await _until(registered, "the volunteers had not asked the edge for orders", 30)
        took, before = 0.0, await _edge_sent(http, edge)
        if mode == "preheated":
            t0 = time.monotonic()
            (answer,) = await preheat.order_peers(preheat.Plan([FILE], [edge.url]), "east", setup.share, 3600.0)
            if answer.error:
                raise RuntimeError(f"preheat --peers: {answer.error}")
            wanted = answer.rows[0]["wanted"]

            async def seeded() -> bool:
                return sum(await asyncio.gather(*(_whole(http, v) for v in volunteers))) >= wanted

            await _until(seeded, f"the {wanted} chosen volunteers did not hold the file", 300)
            took = time.monotonic() - t0
        seeders = sum(await asyncio.gather(*(_whole(http, v) for v in volunteers)))
        start = await _edge_sent(http, edge)
        seconds = await _peer_crowd(http, crowd, digest)
        sent = await _edge_sent(http, edge) - start
        got = await _sources(http, crowd)
        return PeerRun(mode, sent, seconds, took, start - before, seeders, got)


async def _sources(http: aiohttp.ClientSession, crowd: list[NodeProcess]) -> dict[str, int]:
    """What the crowd received by source, read off each row's kind and the sending peer's address (volunteers: 127.1.0.x)."""
    got = {"edge": 0, "volunteers": 0, "crowd": 0}
    for peer in crowd:
        for row in (await status(http, peer.urls["gateway"]))["bytes_received"]:
            kind = "edge" if not row["kind"].startswith("peer") else "volunteers" if "//127.1.0." in row["source"] else "crowd"
            got[kind] += row["bytes"]
    return got


def run_peers(setup: PeerSetup, json_path: Path | None, workdir: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeswarm-bench-preheat-") as tmp:
        work = workdir or Path(tmp)
        (work / "pub").mkdir(parents=True, exist_ok=True)
        data = os.urandom(setup.size)
        (work / "pub" / FILE).write_bytes(data)
        (work / "regions.yaml").write_text(REGIONS)
        digest = hashlib.sha256(data).hexdigest()
        runs = [_peer_run(work, mode, setup, digest) for mode in ("cold", "preheated")]
    cold, warm = runs
    print(
        f"flash crowd of peers: {setup.crowd} gateways read one {format_bytes(setup.size)} file at once; {setup.volunteers} volunteers, "
        f"preheat --peers {setup.share:.0%}; edge capped at {format_bytes(setup.edge_Bps)}/s, peers at {format_bytes(setup.peer_Bps)}/s"
    )
    for r in runs:
        extra = (
            f"  (the preheat before: {r.seeders} volunteers seeding, the edge sent {format_bytes(r.preheat_edge_bytes)}, {r.preheat_s:.2f} s)"
            if r.mode == "preheated"
            else ""
        )
        copies, total = r.edge_bytes / setup.size, sum(r.crowd_got.values()) or 1
        parts = ", ".join(f"{100 * n / total:.0f} % {k}" for k, n in r.crowd_got.items())
        print(
            f"  {r.mode:<9} the edge sent {format_bytes(r.edge_bytes):>10} ({copies:.1f} copies); crowd done in {r.crowd_s:6.2f} s;"
            f" the crowd got {parts}{extra}"
        )
    egress = f"{cold.edge_bytes / warm.edge_bytes:.1f}x" if warm.edge_bytes else "n/a (none after preheat)"
    print(f"  cold/preheated: edge egress during the crowd {egress}, crowd time {cold.crowd_s / warm.crowd_s:.2f}x")
    if json_path is not None:
        json_path.write_text(json.dumps({"setup": asdict(setup), "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    return 0
