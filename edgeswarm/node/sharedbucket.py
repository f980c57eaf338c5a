"""One ``--upload-limit`` for every worker of an edge: a token bucket whose state lives in a shared file.

``edge --workers N`` runs N processes behind one port (roles/edgeworkers.py).
Split into N buckets, the cap either idles (a worker held to 1/N while the
others have nothing to send) or is exceeded (the p2p primary, which serves
every peer, needs all of it).  One bucket in a file that every worker maps
keeps the edge's egress at the cap, however it falls between the workers.

The rule is ``TokenBucket.delay``'s (policy/ratelimit.py); this class only
loads its two figures (tokens, time of the last reservation) before a
reservation and stores them after, under ``lockf`` on the file.  The lock is
held for a few microseconds and never across an ``await``; the kernel drops
it if its holder dies, so a killed worker leaves no bucket locked.  Times are
``time.monotonic()``, one clock for every process of the machine.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

from edgeswarm.policy.ratelimit import TokenBucket

_STATE = struct.Struct("=ddd")  # used (0.0: never, the bucket starts full), tokens, stamp


class SharedTokenBucket(TokenBucket):
    """A ``TokenBucket`` at ``path``, shared by every process that opens the same file with the same rate."""

    def __init__(self, path: str, rate: float | None, burst: float | None = None):
        super().__init__(rate, burst)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < _STATE.size:
                os.ftruncate(self._fd, _STATE.size)  # zeros: never used, a full bucket
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, _STATE.size)

    def delay(self, now: float, nbytes: int) -> float:
        if not self.rate:
            return 0.0
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            used, tokens, stamp = _STATE.unpack_from(self._map)
            if used:
                self._tokens, self._stamp = tokens, stamp
            wait = super().delay(now, nbytes)
            _STATE.pack_into(self._map, 0, 1.0, self._tokens, now)
            return wait
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
