"""Requests held until something changes: a volunteer's preheat-orders poll, a gateway's blocking playlist reload.

A held request answers as soon as the thing it waits for changes, or at the
end of its wait; ``wake`` answers all of them at once.  At shutdown
``close`` answers every held request now and every later one at once, so a
stopping node does not sit out its server's shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        """Something changed: every request held now is answered."""
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Until the next ``wake`` or ``close``, or ``seconds`` at most (at once when closed)."""
        if self.closed or not seconds > 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)

    async def until(self, future: asyncio.Future, seconds: float) -> None:
        """Until ``future`` is done, ``close``, or ``seconds`` at most; its outcome is dropped (a pending one cancelled).

        For a shielded shared fetch (edge.share): cancelling the shield leaves
        the fetch running for the others waiting on it.
        """
        stop = asyncio.ensure_future(self.wait(seconds))
        try:
            await asyncio.wait({future, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen: the caller reads what the fetch stored, not its result
