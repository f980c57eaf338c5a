"""A real, throwaway redis-server for tests: the ``redis_url`` and ``redis_server`` fixtures.

Like pgserver.py for PostgreSQL: the tracker's Redis store is tested against
the server Debian's ``redis-server`` package installs, never a mock.  It
listens on a free loopback port with no persistence (``--save ''``), keeps
its files in a temporary directory, and is gone at the end whatever happens.
Tests skip, saying why, when redis-server or the redis client is missing.

    from redisserver import redis_server, redis_url  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port

START_TIMEOUT = 15.0


def why_unavailable() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server not found on PATH (install Debian's redis-server package: ./dev test does)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python client is not installed"
    return None


class RedisServer:
    """One redis-server process; ``stop``/``start`` again keep its port, so clients reconnect to the same URL."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the server writes to it as long as it runs
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        """SIGKILL: an outage, not a shutdown (nothing is saved anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "redis.log").read_text(errors="replace")[-3000:]
        return "(no log)"


@contextlib.contextmanager
def redis_running() -> Iterator[RedisServer]:
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="edgeswarm-redis-"))
    server = RedisServer(tmp)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


_shared: dict = {"stack": None, "server": None}


def _session_server() -> RedisServer:
    """One server for the whole run, started by its first user and stopped when the interpreter exits."""
    if _shared["server"] is None:
        stack = contextlib.ExitStack()
        _shared["server"] = stack.enter_context(redis_running())
        _shared["stack"] = stack
        atexit.register(stack.close)
    return _shared["server"]


@pytest.fixture
def redis_url() -> str:
    """URL of the run's redis-server, emptied for this test."""
    server = _session_server()
    server.flush()
    return server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and start (outages)."""
    with redis_running() as server:
        yield server
