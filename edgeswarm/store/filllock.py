"""One upstream fetch per piece across the worker processes of one edge.

Within a process, concurrent misses for a piece share one task (roles/edge.py,
``share``).  Across an edge's workers, a miss first takes a POSIX record lock
on one byte of ``CACHE/fill.lock`` chosen by the piece's hash: the worker that
gets it fetches and stores the piece, and the others wait for the lock, then
find the piece on disk.  Record locks belong to a process, so a worker never
waits for itself, and the kernel releases a dead worker's locks: a worker
killed mid-fetch delays the others by nothing more than its fetch.  Two
pieces that hash to one byte (one in 2^30) only wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

SLOTS = 1 << 30  # bytes of the lock file a piece may lock (the file stays empty: locks need no data)
POLL_S = 0.01  # how often a waiting worker tries again (a fetch takes milliseconds to seconds)


class FillLocks:
    """Cross-process locks on pieces, each held while one worker fetches it."""

    def __init__(self, cache: Path, wait_s: float):
        self.fd = os.open(cache / "fill.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.wait_s = wait_s  # after this the piece is fetched anyway: a stuck holder must not stall a worker

    @contextlib.asynccontextmanager
    async def hold(self, cid: str, index: int) -> AsyncIterator[bool]:
        """Hold the piece's lock (True), or give up waiting after ``wait_s`` and go on without it (False)."""
        slot = zlib.crc32(f"{cid}/{index}".encode()) % SLOTS
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                held = True
                break
            except OSError:  # EAGAIN or EACCES: another worker fetches it
                if loop.time() >= deadline:
                    held = False
                    break
                await asyncio.sleep(POLL_S)
        try:
            yield held
        finally:
            if held:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot)

    def close(self) -> None:
        os.close(self.fd)
