"""Daemons under a low open-file limit (``prlimit --nofile=64``): every answer whole or a clean 503, no traceback.

Found by an adversarial session: the piece store kept up to 512 descriptors
whatever the limit, so an edge cut every download at the same byte with an
EMFILE traceback from ``PieceStore._open``, and a peer's gateway stopped
accepting while asyncio's accept loop spun.  Now the limit is shared
(connlimit.file_budget), the store closes cached descriptors and retries when
it runs out all the same, and an accept pass ends at its first failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import make_file

from edgeswarm.measure.process import NodeProcess, ProcessGroup

pytestmark = pytest.mark.integration
LIMIT = 64
FILES = 24  # of 4 pieces and a bit: 120 piece files, twice the limit
PIECE = 256 * 1024


def low_limit() -> list[str]:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed: cannot give a daemon a small open-file limit")
    return ["prlimit", f"--nofile={LIMIT}", "--"]


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """(status, body); a body cut short raises (aiohttp checks Content-Length), which is what the test must not see."""
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
        return resp.status, await resp.read()


async def every_file(http: aiohttp.ClientSession, base: str, files: dict[str, bytes]) -> dict[str, int]:
    """All files at once; each must come whole and right, or as a 503 that says why. Returns how many of each status."""
    answers = await asyncio.gather(*(fetch(http, f"{base}/{name}") for name in files))
    statuses: dict[str, int] = {}
    for name, (status, body) in zip(files, answers, strict=True):
        if status == 503:
            assert b"out of file descriptors" in body, body[:200]
        else:
            assert status == 200 and body == files[name], f"{name}: {status}, {len(body)} bytes of {len(files[name])}"
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return statuses


async def publish_files(origin: NodeProcess, pub: Path) -> dict[str, bytes]:
    """FILES files of about a MiB, once the origin serves the last of them."""
    files = {f"f{i}.bin": make_file(pub / f"f{i}.bin", 4 * PIECE + 1000 * i + 1) for i in range(FILES)}
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while (await fetch(http, f"{origin.url}/f{FILES - 1}.bin"))[0] != 200:
            assert time.monotonic() < deadline, "the origin did not publish the files"
            await asyncio.sleep(0.2)
    return files


async def check_under_the_limit(node: NodeProcess, base: str, files: dict[str, bytes]) -> None:
    """One pass file by file (the cache fills: more pieces than descriptors), then all at once, twice."""
    connector = aiohttp.TCPConnector(limit=12)  # under the node's 18 connections: this is about files, not the cap
    async with aiohttp.ClientSession(connector=connector) as http:
        for name, data in files.items():
            assert await fetch(http, f"{base}/{name}") == (200, data)
        for _ in range(2):
            statuses = await every_file(http, base, files)
            assert statuses.get("200", 0) >= FILES // 2, statuses  # a 503 is allowed; most come whole
        assert (await fetch(http, f"{base}/healthz"))[0] == 200
    log = node.log_text()
    assert f"open-file limit {LIMIT}; at most 18 connections" in log
    assert "up to 12 piece files kept open" in log
    assert "Traceback" not in log
    assert log.count("out of system resource") <= 10, "accept() kept running out of descriptors"


async def test_an_edge_under_a_low_file_limit_serves_every_file_whole(nodes: ProcessGroup, origin, published, tmp_path):
    files = await publish_files(origin, published)
    edge = nodes.start(
        "edge", *("--cache", str(tmp_path / "edge"), "--parent", origin.url, "--workers", "1"), name="edge", prefix=low_limit()
    )
    await check_under_the_limit(edge, edge.url, files)


async def test_a_peer_gateway_under_a_low_file_limit_serves_every_file_whole(nodes: ProcessGroup, origin, published, tmp_path):
    files = await publish_files(origin, published)
    edge = nodes.start("edge", *("--cache", str(tmp_path / "edge"), "--parent", origin.url, "--workers", "1"), name="edge")
    peer = nodes.start(
        "peer",
        *("--cache", str(tmp_path / "peer"), "--edge", edge.url, "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0"),
        name="peer",
        prefix=low_limit(),
    )
    await check_under_the_limit(peer, peer.urls["gateway"], files)
    cpu = cpu_seconds(peer.pid)
    await asyncio.sleep(3)
    assert cpu_seconds(peer.pid) - cpu < 0.3, "the idle peer spins"


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
