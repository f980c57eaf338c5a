"""Running edgeswarm daemons as child processes: for the demo, lab, benchmarks and tests.

Each daemon listens on port 0 and logs ``listening on http://HOST:PORT``;
``NodeProcess`` waits for that line in the daemon's log file, so nothing ever
guesses a free port, and keeps the log for whoever needs to read what went
wrong.  ``ProcessGroup`` stops every process it started, whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_LISTENING = re.compile(r"(?:(\w+) )?listening on (https?://\S+)")
_SITES = {"peer": ("upload", "gateway")}  # roles with several servers: wait for all


class NodeProcess:
    def __init__(
        self,
        role: str,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
    ):
        self.role = role
        self.host = host
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", NS]: run the daemon elsewhere
        self.args = args
        self.log_path = log_path
        self.env = env
        self.port = 0  # 0: the kernel picks; a chaos run restarts a node on the port it had
        self.url = ""  # the first server's; ``urls`` has all by label
        self.urls: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        start = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "edgeswarm", self.role, "--listen", f"{self.host}:{self.port}", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start:].decode(errors="replace")
            self.urls = {label: url for label, url in _LISTENING.findall(text)}
            if self.urls and all(label in self.urls for label in _SITES.get(self.role, ())):
                self.url = next(iter(self.urls.values()))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.role} exited with {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.role} did not start within {timeout} s; log: {self.log_path}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The process id of the daemon, once started."""
        if self.proc is None:
            raise RuntimeError(f"{self.role} was never started")
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class ProcessGroup:
    """A context manager that stops every daemon started through it, on any exit."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.nodes: list[NodeProcess] = []

    def start(
        self,
        role: str,
        *args: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
    ) -> NodeProcess:
        name = name or f"{role}{sum(n.role == role for n in self.nodes)}"
        node = NodeProcess(role, list(args), self.workdir / f"{name}.log", env, host, prefix)
        self.nodes.append(node)
        return node.start()

    def stop(self) -> None:
        """SIGTERM to all at once, then wait: a lab of fifty daemons stops in one daemon's time."""
        for node in reversed(self.nodes):
            if node.proc is not None and node.running:
                node.proc.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
