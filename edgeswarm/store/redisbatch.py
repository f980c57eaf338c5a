"""Script calls that are waiting at the same time go to Redis in one pipeline: one write and one read for all of them.

An edge's announces arrive concurrently; each costs one Lua script call (its
record and sample) and one more (its share report).  Sent one by one, every
call is a socket write and a read wake-up, and on loopback the kernel's
share of that (counted as the edge's CPU) costs more than the tracker's
policy.  ``ScriptBatcher`` queues the calls made while the event loop is
busy and sends them together as soon as it gets back to the queue: nothing
waits for a timer, and a lone call goes out alone at once.  Each script
still runs atomically in Redis, in the order the calls were made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

MAX_BATCH = 256  # calls in one pipeline, at most: a bounded reply to read and parse at once


class ScriptBatcher:
    """Queue ``redis.commands.core.Script`` calls and send them in pipelines; each caller awaits its own result."""

    def __init__(self, redis: Any, failure: Callable[[BaseException], BaseException]):
        """``failure`` turns a connection-level error into what every waiting caller gets (StoreUnavailable)."""
        self.redis = redis
        self.failure = failure
        self._queue: list[tuple[Any, list[str], asyncio.Future[Any]]] = []
        self._flushing = False
        self.batches = 0  # pipelines sent: calls / batches is the coalescing a test or bench can see
        self.calls = 0

    async def call(self, script: Any, args: list[str]) -> Any:
        """Run ``script`` with no keys and ``args`` in the next pipeline; its reply, or the error Redis gave it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((script, args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._start)
        return await future

    def _start(self) -> None:
        asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send what is queued, and what queues meanwhile, until the queue is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[tuple[Any, list[str], asyncio.Future[Any]]]) -> None:
        import redis.exceptions as rex

        self.batches += 1
        self.calls += len(batch)
        try:
            replies = await self._pipeline(batch)
            missing = {id(script): script for (script, _, _), reply in zip(batch, replies, strict=True) if _no_script(reply)}
            if missing:  # a Redis that restarted or was flushed: load the scripts, send their calls again (once)
                for script in missing.values():
                    script.sha = await self.redis.script_load(script.script)
                again = [i for i, reply in enumerate(replies) if _no_script(reply)]
                for i, reply in zip(again, await self._pipeline([batch[i] for i in again]), strict=True):
                    replies[i] = reply
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            self._fail(batch, self.failure(exc))
            return
        except Exception as exc:  # anything else: each caller sees it, the batcher goes on
            self._fail(batch, exc)
            return
        except BaseException as exc:  # cancelled: so are the callers
            self._fail(batch, exc)
            raise
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: list[tuple[Any, list[str], asyncio.Future[Any]]]) -> list[Any]:
        """EVALSHA each call in one pipeline (not ``Script(client=pipe)``: that asks SCRIPT EXISTS first, a round trip more)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, args, _ in batch:
                pipe.evalsha(script.sha, 0, *args)
            return list(await pipe.execute(raise_on_error=False))

    @staticmethod
    def _fail(batch: list[tuple[Any, list[str], asyncio.Future[Any]]], error: BaseException) -> None:
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)


def _no_script(reply: object) -> bool:
    import redis.exceptions as rex

    return isinstance(reply, rex.NoScriptError)
