"""An edge's or a peer's piece store, opened once the origin key is pinned: one copy for both.

A node cannot check a manifest before it trusts a key, so its store opens
only after ``originkey.pin``: at once when the key is given or was pinned on a
previous start (a bad key file then stops start-up with its reason), else in
the background while it learns the key from upstream.  Requests that arrive
before that wait a while, then get a 503 with ``Retry-After``.

The cache's directories are made when the node is built (``make_cache`` in
``Edge`` and ``Peer``): a cache that cannot hold them (a file in the way,
read-only, no permission) stops the node with its reason, instead of a
background task failing where nobody looks.  A store
that still fails to open in the background (the disk failing meanwhile) is
tried again, and the 503 says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from edgeswarm.errors import HttpError
from edgeswarm.node.connlimit import file_budget
from edgeswarm.node.daemon import file_limit
from edgeswarm.node.metrics import Metrics
from edgeswarm.node.upstream import Upstream
from edgeswarm.store.piecestore import PieceStore
from edgeswarm.trust import originkey

log = logging.getLogger(__name__)
RETRY_MAX = 30.0  # seconds between tries to open a store that failed in the background


class PinnedStore:
    """The store of a node that keeps its cache in ``cache``; ``waiting`` is the 503's message while the key is unknown."""

    def __init__(self, cache: Path, given_key: Path | None, max_cache: int | None, waiting: str):
        self.cache, self.given_key, self.max_cache = cache, given_key, max_cache
        self.waiting = waiting
        self.one_shot = False  # `get`: a round in which no source could be reached ends the wait (originkey.learn)
        self.store: PieceStore | None = None
        self.worker: tuple[int, int] | None = None  # (index, count) when worker processes share the cache (piecestore.py)
        self.counts_found = False  # a restarted worker's: its quota counts every piece found at start (piecestore.py)
        self.keep_paths: frozenset[str] = frozenset()  # a seeder's paths, pinned from the store's start (PieceStore)
        self.on_drop: Callable[[str], None] = lambda cid: None  # the store's (PieceStore.on_drop)
        self._settled = asyncio.Event()  # open, or every source failed hopelessly (originkey.learn): a wait ends (wait)
        self.problem: str | None = None  # why the store failed to open in the background, until it opens
        self.unlearnt: str | None = None  # why the last try to learn the origin key failed, while it is unknown
        self._checking: asyncio.Task | None = None  # originkey.check_pinned, once at start (kept: a task is weakly held)

    async def start(self, upstream: Upstream, sources: list[str]) -> asyncio.Task | None:
        """Open the store now if the key is known, else in a task (returned, for the node to cancel) while it is learnt.

        Raises, to stop start-up with a reason, for a bad key file (an unusable cache stopped the node already).
        """
        if self.key_known():
            await self.open(upstream, sources)
            return None
        return asyncio.create_task(self._open_in_background(upstream, sources))

    async def _open_in_background(self, upstream: Upstream, sources: list[str]) -> None:
        """``open``, tried again with a growing pause while the disk refuses, logged once per reason."""
        delay = 1.0
        while True:
            try:
                await self.open(upstream, sources)
            # anything else is a bug: said with its traceback and tried again (the task ended without a word, and every
            # request was told "still learning the origin key" for good: an adversarial session)
            except Exception as exc:
                if isinstance(exc, OSError):
                    reason, bug = f"cannot open the piece store in {self.cache}: {exc.strerror or exc}", False
                else:
                    reason, bug = f"learning the origin key failed: {exc.__class__.__name__}: {exc}", True
                if reason != self.problem:
                    log.error("%s; retrying", reason, exc_info=bug)
                self.problem = reason
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
            else:
                if self.problem is not None:
                    log.info("piece store in %s open", self.cache)
                self.problem = None
                return

    def count_write_failures(self, metrics: Metrics) -> None:
        """``edgeswarm_cache_write_failures_total`` in ``metrics``: the writes the store refused (a full or read-only
        disk), an edge's and a peer's alike.  A seeder whose disk was full said so in its /status only, with nothing in
        its /metrics to alert on (an adversarial session)."""
        metrics.counter(
            "cache_write_failures",
            "Writes the cache refused (a full or read-only disk): nothing new is cached while they fail",
            lambda: self.store.write_failures if self.store else 0,
        )

    def key_known(self) -> bool:
        """Given or pinned before: open at start-up, so that a bad key file stops the node instead of a background task."""
        return self.given_key is not None or (self.cache / "origin.pub").exists()

    async def open(self, upstream: Upstream, sources: list[str]) -> PieceStore:
        """Pin the origin key (learning it from ``sources`` if need be), then open the store; KeyFileError for a bad key file."""
        pinned = self.given_key is None and (self.cache / "origin.pub").exists()
        key = await originkey.pin(self.cache, self.given_key, upstream, sources, self._unlearnt, self.one_shot)
        if pinned and (self.worker is None or self.worker[0] == 0):  # one warning an edge, from its first worker
            self._checking = asyncio.create_task(originkey.check_pinned(upstream, sources, key, self.cache / "origin.pub"))
        open_files = file_budget(file_limit()).piece_files  # the share of this process's open-file limit, as its daemon raised it
        self.store = await asyncio.to_thread(
            PieceStore, self.cache, key, self.max_cache, self.worker, open_files, self.counts_found, self.keep_paths
        )
        self.store.on_drop = self.on_drop
        self._settled.set()
        return self.store

    def _unlearnt(self, why: str, hopeless: bool | None) -> None:
        """A try to learn the key failed (``originkey.learn``); ``hopeless``: at a round's end, whether every source
        failed as no retry changes (None within a round)."""
        self.unlearnt = why
        if hopeless:
            self._settled.set()
        elif hopeless is False and self.store is None:  # the sources may yet answer
            self._settled.clear()

    @property
    def opened(self) -> PieceStore:
        """The store, for code that runs only once it is open (a swarm, a piece source: both need a checked manifest first)."""
        if self.store is None:
            raise RuntimeError("the piece store is not open yet")
        return self.store

    async def wait(self, timeout: float) -> PieceStore:
        """The store, waiting up to ``timeout`` seconds for it to open (not at all once no source can serve the key as
        things are configured); else HttpError 503."""
        if self.store is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._settled.wait()
        if self.store is None:
            raise HttpError(503, self._why(), {"Retry-After": "2"})
        return self.store

    def _why(self) -> str:
        """Why the store is not open: the disk's failure, or what the sources said (alone if that is hopeless)."""
        if self.problem is not None:
            return self.problem
        if self.unlearnt is None:
            return self.waiting
        return self.unlearnt if self._settled.is_set() else f"{self.waiting} ({self.unlearnt})"
