"""One node per cache directory: a second edge, peer or ``get --cache`` on a directory in use stops at start, saying so.

Two nodes on one cache each count the pieces against their own quota and
evict the other's, share one peer id (``CACHE/peer_id``: the tracker takes
them for one peer) and one origin pin, and two edges book one ledger under one
name.  So a node holds an exclusive ``flock`` on ``CACHE/node.lock`` while it
runs.  The lock belongs to the open file, not to the process: the workers an
edge's supervisor forks share it, and it goes with the last of them, however
they end (SIGKILL included), so a restart never finds a stale lock.  The file
says who holds it, for the message the next node prints.  On a file system
without locks (some network ones) the node starts unguarded, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from edgeswarm.store.piecestore import CacheError, make_cache

log = logging.getLogger("edgeswarm.store")
LOCK_NAME = "node.lock"


def hold(root: Path, role: str) -> int | None:
    """Make ``root`` a cache (``make_cache``) and lock it for this process and its forks; the lock's descriptor (kept
    open for as long as the node runs), None where locks are not supported, or CacheError naming the node holding it."""
    make_cache(root)
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CacheError(f"cache {root} is unusable: {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another node"
        os.close(fd)
        raise CacheError(
            f"cache {root} is in use by {holder}: give each node a --cache of its own (two on one directory evict each "
            "other's pieces and share one peer id)"
        ) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise CacheError(f"cache {root}: cannot lock {path}: {exc.strerror or exc}") from None
        log.warning("cache %s: its file system cannot lock %s (%s): nothing stops a second node on it", root, path, exc.strerror)
        return None
    with contextlib.suppress(OSError):  # who holds it is for the next node's message only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"edgeswarm {role} (pid {os.getpid()})\n".encode(), 0)
    return fd


@contextlib.contextmanager
def held(root: Path, role: str) -> Iterator[None]:
    """``hold`` for the length of a with block (a node run in this process)."""
    fd = hold(root, role)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def abandoned(root: Path) -> bool:
    """Whether ``root`` is a cache no process holds (its node ended, however: SIGKILL too); False for one held, or for
    a directory that is no cache (no lock file, or not ours to open)."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
