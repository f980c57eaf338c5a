"""Loopback ports for daemons that must be told theirs before they start.

Most tests start daemons on port 0 and read the port from their log.  Some
cannot: a restarted daemon must come back where the others expect it, and
redis-server and PostgreSQL take a port on the command line.  A port the
kernel hands out for a moment (bind to 0, close) is a poor choice there:
it comes from the ephemeral range, so under ``pytest -n`` an outgoing
connection of another test can take it before the daemon binds it.  These
come from below that range, each xdist worker from a band of its own.
"""

from __future__ import annotations

import os
import random
import socket

BAND = 1500  # ports per xdist worker
FIRST = 10_000  # below the kernel's ephemeral range (Linux: 32768 and up by default)


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... under pytest-xdist
    return int(name[2:]) if name[2:].isdigit() else 0


def free_port() -> int:
    """A loopback port nobody listens on now, in this worker's band; never a fixed one."""
    low = FIRST + BAND * _worker()
    for _ in range(500):
        port = random.randrange(low, low + BAND)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {low}-{low + BAND - 1}")
