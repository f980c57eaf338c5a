"""Fixtures that start real edgeswarm daemons as subprocesses on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from edgeswarm.process import ProcessGroup


def make_file(path: Path, size: int) -> bytes:
    """Random content (never compressible, never accidentally equal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def nodes(tmp_path: Path, request):
    """A ProcessGroup in tmp_path; on failure the daemons' logs are printed."""
    group = ProcessGroup(tmp_path / "logs")
    yield group
    group.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for node in group.nodes:
            print(f"----- {node.log_path.name} -----\n{node.log_text()[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def status(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/status") as resp:
        assert resp.status == 200
        return await resp.json()


def received_from(st: dict, kind: str) -> int:
    return sum(row["bytes"] for row in st["bytes_received"] if row["kind"] == kind)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


@pytest.fixture
def published(tmp_path: Path) -> Path:
    d = tmp_path / "pub"
    d.mkdir()
    return d


@pytest.fixture
def origin(nodes: ProcessGroup, published: Path):
    return nodes.start("origin", "--publish", str(published), "--scan-interval", "0.2")
