"""Fixtures that start real edgeswarm daemons as subprocesses on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgeswarm.measure.process import ProcessGroup
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics


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


# Fixtures that start real processes: a test that uses one is an integration test, whichever file it is in.
PROCESS_FIXTURES = {"nodes", "origin", "pg_dsn", "pg_database", "redis_url", "redis_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start daemons, so ``-m "not integration"`` is the fast layer; run their files first.

    ``./dev test`` hands whole files to 3 workers in this order (--dist loadfile, --no-loadscope-reorder): the
    long files start first and the many short ones fill in at the end, instead of a long one starting last.
    """
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    slow = {item.path for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.path not in slow)  # stable: each file keeps its own order


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


async def until(check, timeout: float, what: str):
    """Poll ``check`` (an async callable, truthy when done) until it is, within ``timeout`` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def complete(http: aiohttp.ClientSession, peer) -> dict | None:
    """A peer's /status once every swarm of it is complete, else None."""
    st = await status(http, peer.urls["gateway"])
    return st if st["swarms"] and all(w["complete"] for w in st["swarms"]) else None


async def content_id(http: aiohttp.ClientSession, url: str, path: str, token: str | None = None) -> str:
    """The content id of ``path``'s manifest at ``url``, once the origin has published it (within its scan interval)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 20
    while True:
        async with http.get(f"{url}/manifest/{path}", headers=headers) as r:
            if r.status == 200:
                return (await r.json())["id"]
        assert time.monotonic() < deadline, r.status
        await asyncio.sleep(0.2)


def received_from(st: dict, kind: str) -> int:
    return sum(row["bytes"] for row in st["bytes_received"] if row["kind"] == kind)


def run_cli(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run an edgeswarm command; one still running after ``timeout`` s is failed with its asyncio tasks' stacks (SIGUSR1,
    daemon.dump_tasks_on_sigusr1) and its threads' (faulthandler on SIGABRT), so a hang says where it hung instead of
    only that it did."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):  # a second for the dump (communicate keeps what it read)
                proc.communicate(timeout=1)
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"{' '.join(cmd[2:])} still running after {timeout:g} s; its stacks:\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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


class DoubleServer:
    """A small aiohttp server on a free loopback port, playing a node that misbehaves: subclasses add ``routes``."""

    host = "127.0.0.1"
    url = ""
    port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


async def announce_empty(edge: str, host: str, peer_id: str, port: int, cid: str, pieces: int) -> None:
    """Announce a double as a peer of ``cid`` holding nothing yet, from ``host``: the tracker then hands it out."""
    from edgeswarm.policy import bitfield

    doc = {"peer_id": peer_id, "port": port, "content": cid, "pieces": pieces, "uploaded": 0, "downloaded": 0}
    doc |= {"have": bitfield.encode((), pieces), "event": "started"}
    connector = aiohttp.TCPConnector(local_addr=(host, 0))
    async with aiohttp.ClientSession(connector=connector) as s, s.post(edge + "/announce", json=doc) as r:
        assert r.status == 200, await r.text()


class Misbehaving(DoubleServer):
    """A test double for a bad upstream: proxies to a real node, corrupting or slowing pieces.

    It stands where a parent or sibling would, so an edge meets a node that
    flips bits in piece bodies (``corrupt``), answers slowly (``delay``
    seconds per piece, one at a time), sends piece bodies at ``trickle``
    bytes a second, or never answers at all (``hang``).
    """

    def __init__(self, upstream: str, corrupt: bool = False, delay: float = 0.0, hang: bool = False, trickle: int = 0, busy: str = ""):
        self.upstream = upstream
        self.busy = busy  # pieces answered 503 with this Retry-After, as an origin republishing a replaced file
        self.busy_manifests = False  # manifests too
        self.corrupt, self.delay, self.hang, self.trickle = corrupt, delay, hang, trickle
        self.pieces_served = 0
        self.served_at: list[float] = []  # when each piece left the proxy
        self._lock = asyncio.Lock()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.hang:
            await asyncio.sleep(3600)
        if self.busy and (request.path.startswith("/piece/") or (self.busy_manifests and request.path.startswith("/manifest/"))):
            return web.Response(status=503, text="changed on disk and is being republished", headers={"Retry-After": self.busy})
        headers = {k: v for k, v in request.headers.items() if k != "Host"}
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.get(self.upstream + request.raw_path, headers=headers) as r:
            body = await r.read()
            status, ctype = r.status, r.headers.get("Content-Type", "application/octet-stream")
            etag = r.headers.get("ETag")
        if request.path.startswith("/piece/") and status == 200:
            async with self._lock:
                await asyncio.sleep(self.delay)
            self.pieces_served += 1
            self.served_at.append(time.monotonic())
            if self.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        headers = {"Content-Type": ctype, **({"ETag": etag} if etag else {})}
        if self.trickle and request.path.startswith("/piece/") and status == 200:
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            for at in range(0, len(body), 1024):
                await resp.write(body[at : at + 1024])
                await asyncio.sleep(1024 / self.trickle)
            return resp
        return web.Response(status=status, body=body, headers=headers)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)


@pytest.fixture
def regions(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The test module's ``REGIONS``, written as a region map file for its edges."""
    path = tmp_path / "regions.yaml"
    path.write_text(request.module.REGIONS)
    return path


def start_p2p_edge(nodes: ProcessGroup, tmp_path: Path, parent: str, regions: Path, *extra: str):
    """A p2p edge (tracker and seeder of the regions in ``regions``) named "edge", caching under tmp_path/edge."""
    return nodes.start(
        "edge", *("--cache", str(tmp_path / "edge"), "--parent", parent, "--p2p", "--regions", str(regions), *extra), name="edge"
    )


def start_peer(nodes: ProcessGroup, tmp_path: Path, edge: str, addr: str, name: str, upload: str = "1MB/s"):
    """A peer daemon uploading from ``addr`` (its address is its identity to the tracker), gateway on loopback."""
    return nodes.start(
        "peer",
        *("--cache", str(tmp_path / name), "--edge", edge, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0"),
        *("--upload-limit", upload),
        name=name,
    )


async def post(http: aiohttp.ClientSession, peer, path: str) -> None:
    """Ask a peer's gateway to download ``path`` in the background (202)."""
    async with http.post(peer.urls["gateway"] + path) as resp:
        assert resp.status == 202, await resp.text()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_count(metrics: Metrics, status: int) -> int:
    """Answers a node gave with ``status``, over all endpoints."""
    return sum(n for (s, _), n in metrics.responses.items() if s == status)


@asynccontextmanager
async def serve_handler(handler: Handler, metrics: Metrics) -> AsyncIterator[int]:
    """Our aiohttp app (``make_app``: error middleware, logs, metrics) with ``handler`` at /f, on a free loopback port."""
    app = make_app(metrics)
    app.router.add_get("/f", handler)
    async with serve_app(app) as port:
        yield port


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    """``app`` in this process on a free loopback port (yielded), cleaned up after."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def spare_descriptors(count: int) -> Iterator[None]:
    """This process may open about ``count`` more files (a real, lowered RLIMIT_NOFILE), restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def exhaust() -> list[int]:
    """Open /dev/null until the process is out of descriptors: what other connections would hold."""
    held = []
    with contextlib.suppress(OSError):
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    return held


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at ``mnt`` (``mount -o options``: a disk that really fills, or runs out of inodes), or the test
    skipped where one cannot be mounted (root and mount(8)); unmounted at the end, lazily if a daemon still holds it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk here is a tmpfs of the test's own, and mounting one needs root and mount(8)")
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> Path:
    """A file taking every free byte of ``disk``, written until the file system says it is full."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler
