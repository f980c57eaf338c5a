"""Request collapsing: whoever asks for something while it is being fetched waits for that one fetch.

Edges collapse the fills of a piece and the torrent of a content (a cache's
"collapsed forwarding"); every node collapses its manifest revalidations
(manifestfetch.py), whose readers also need to know when the fetch began.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Joined(NamedTuple, Generic[T]):
    future: asyncio.Future[T]  # the fetch's outcome, shielded: cancelling it leaves the fetch running for the others
    began: float  # when the fetch began (time.monotonic)
    new: bool  # this call started it


class Collapser(Generic[T]):
    """One task per key, awaited by all who ask while it runs.

    Callers get it shielded: a client that hangs up does not cancel the fetch
    the others are waiting for.  Its exception is retrieved when it ends, as
    its waiters may all have gone.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, tuple[asyncio.Task[T], float]] = {}

    def join(self, key: Hashable, start: Callable[[], Coroutine[Any, Any, T]]) -> Joined[T]:
        """The running fetch of ``key``, or one ``start()``\\ ed now."""
        running = self._running.get(key)
        if running is not None:
            return Joined(asyncio.shield(running[0]), running[1], False)
        task = asyncio.create_task(start())
        began = time.monotonic()
        self._running[key] = (task, began)
        task.add_done_callback(functools.partial(self._done, key))
        return Joined(asyncio.shield(task), began, True)

    def _done(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._running.get(key, (None,))[0] is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()
