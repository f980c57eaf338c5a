"""Script calls that are waiting at the same time go to Redis as ONE script call: one command, one reply for all of them.

An edge's announces arrive concurrently; each costs one Lua script call (its
record and sample) and one more (its share report).  Sent one by one, every
call is a socket write and a read wake-up, and on loopback the kernel's
share of that (counted as the edge's CPU) costs more than the tracker's
policy.  ``ScriptBatcher`` queues the calls made while the event loop is
busy and sends them together as soon as it gets back to the queue: nothing
waits for a timer, and a lone call goes out alone at once.

Together means one EVALSHA of a script that holds every script the batcher
was given, each as a Lua function, and runs the queued calls in order; the
calls and their arguments (strings) travel as one JSON argument, which
Python's json writes and Redis's cjson reads in C.  A pipeline of one
EVALSHA per call did the same in Redis, but the client library's work per
command and per argument (packing each in Python, reading and checking
each reply, a timeout per read) cost the edge more CPU than ranking the
answer (README: bench tracker).  Each call still runs atomically and in the order
made; an error in one call (``redis.error_reply``, or a failing
``redis.call``, caught by ``pcall``) is that caller's alone, as in a
pipeline, and what the calls before it wrote stays written, as when a script
fails alone.  The batch as a whole is one script run, so no other client's
command runs between its calls (each call's own atomicity was all that was
promised), and Redis is busy for the batch's length (``MAX_BATCH`` calls at most).

The combined script starts with a shebang (``#!lua``, Redis 7.0 and later):
Redis then refuses a batch whole, before it runs, while it is over its
``maxmemory`` under ``noeviction``.  Without it, Redis refused only a
script's first write, and each call's first write is a removal, which a full
Redis allows: every record of 2 060 announces answered 503 was written, and
Redis grew to 4.8 times its ``maxmemory`` (an adversarial session).

A store that stops answering (hung, its host gone) fails fast: when a batch
fails at the connection (a timeout, a closed connection), the calls queued
behind it fail with it, and for a batch's timeout after such a failure, a
call made while another batch is out to try the store fails at once instead
of queueing behind it.  One batch at a time
waited out its 2 s timeout, so a hung Redis under 200 announces a second
answered them after 15 s, then 27 s, and their forwarded requests held 6 650
descriptors (an adversarial session).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

FAIL_FAST_S = 2.0  # how long after a failure calls fail at once behind a trial, when the client sets no timeout
MAX_BATCH = 256  # calls in one script run, at most: a bounded reply to read and parse at once, and a bounded pause of Redis
# error replies that say the server cannot serve now (full with noeviction, a read-only replica after a failover, loading
# its data, a busy script, a failing disk), not that a call was wrong: the store is unavailable, as when unreachable
UNAVAILABLE_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "NOREPLICAS", "MISCONF")


def unavailable_reply(exc: BaseException) -> bool:
    """An error reply of Redis's that is the server's state (``UNAVAILABLE_REPLIES``), whole or from one call of a batch:
    redis-py makes the known ones exceptions of their own (their text without the code), the others keep the code."""
    import redis.exceptions as rex

    known = (rex.OutOfMemoryError, rex.ReadOnlyError, rex.BusyLoadingError, rex.MasterDownError)
    return isinstance(exc, known) or str(exc).startswith(UNAVAILABLE_REPLIES)


# ARGV[1]: the calls as JSON, [[function number, [arguments]], ...] (Redis's Lua has cjson built in).
# A function returning nothing (nil) gives false: a nil would end the array of replies there.
_RUN = """
local out = {}
for c, call in ipairs(cjson.decode(ARGV[1])) do
  local ok, r = pcall(F[call[1]], call[2])
  if not ok then
    if type(r) ~= 'table' or not r.err then r = {err = tostring(r)} end
  elseif r == nil then
    r = false
  end
  out[c] = r
end
return out
"""


def _combined(bodies: list[str]) -> str:
    """One script running any of ``bodies``: each becomes a function of its arguments (a local ``ARGV``), as it would run
    alone; flagged (the shebang: the module docstring) so that a full Redis refuses it whole."""
    functions = "".join(f"F[{n}] = function(ARGV)\n{body}\nend\n" for n, body in enumerate(bodies, 1))
    return f"#!lua\nlocal F = {{}}\n{functions}{_RUN}"


class ScriptBatcher:
    """Queue calls of Lua scripts (texts, or ``redis.commands.core.Script``) and run them in batches; each caller awaits its own result."""

    def __init__(self, redis: Any, failure: Callable[[BaseException], BaseException]):
        """``failure`` turns a connection-level error into what every waiting caller gets (StoreUnavailable)."""
        self.redis = redis
        self.failure = failure
        self._queue: list[tuple[int, list[str], asyncio.Future[Any]]] = []
        self._flushing = False
        self._bodies: dict[str, int] = {}  # script text -> its function's number in the combined script
        self._script = ""  # the combined script of every text in _bodies
        self._sha = ""
        self._task: asyncio.Task[None] | None = None  # the flush under way (a reference: the loop keeps only weak ones)
        self._conn: Any = None  # the connection batches are sent on (_command)
        self._timeout: float | None = None
        self._down: BaseException | None = None  # the last batch's failure at the connection, until one gets through
        self._down_at = 0.0  # when (monotonic): calls fail fast behind a trial only while that failure is recent
        self.batches = 0  # script runs sent: calls / batches is the coalescing a test or bench can see
        self.calls = 0

    async def call(self, script: Any, args: list[str]) -> Any:
        """Run ``script`` (a text, or an object with ``.script``: redis-py's ``Script``) with no keys and ``args`` in the next batch.

        Its reply, or the error Redis gave it.
        """
        if self._down is not None and self._flushing and self._recent():  # the store fails: a batch is out to try it,
            raise self.failure(self._down)  # this call does not wait (a new error each time: one raised again grows its traceback)
        body = script if isinstance(script, str) else script.script
        number = self._bodies.get(body)
        if number is None:
            number = self._bodies[body] = len(self._bodies) + 1
            self._script = _combined(list(self._bodies))
            self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((number, args, future))
        if not self._flushing:
            self._flushing = True
            # the task's first step runs after the callbacks already due (other announces resumed by the last reply): their calls join it
            self._task = asyncio.get_running_loop().create_task(self._flush())
        return await future

    def _recent(self) -> bool:
        """Whether the last failure is recent (within a batch's timeout): one long over, the store quiet since, failed
        every call of a burst while the trial reconnected, with an error seconds old (a review)."""
        return time.monotonic() - self._down_at < (self._timeout or FAIL_FAST_S)

    async def _flush(self) -> None:
        """Send what is queued, and what queues meanwhile, until the queue is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[tuple[int, list[str], asyncio.Future[Any]]]) -> None:
        import redis.exceptions as rex

        self.batches += 1
        self.calls += len(batch)
        calls = json.dumps([(number, call_args) for number, call_args, _ in batch], separators=(",", ":"))
        try:
            try:
                replies = await self._command("EVALSHA", self._sha, "0", calls)
            except rex.NoScriptError:  # the first batch, or a Redis that restarted or was flushed: load the script, send again (once)
                # the script as it is now, which runs every call of this batch; not the load's answer kept as the script's
                # id: a script grown while it loaded (a first report or stop) kept the older one's, and its new calls
                # failed "attempt to call a nil value" until Redis restarted (a review)
                script, sha = self._script, self._sha
                await self._command("SCRIPT", "LOAD", script)
                replies = await self._command("EVALSHA", sha, "0", calls)
            if not isinstance(replies, list) or len(replies) != len(batch):
                raise rex.ResponseError(f"a batch of {len(batch)} script calls got {replies!r:.100} back")
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            self._down, self._down_at = exc, time.monotonic()
            queued, self._queue = self._queue, []  # behind a batch that timed out, each would wait out its own timeout
            self._fail(batch + queued, self.failure(exc))
            return
        except rex.ResponseError as exc:  # the batch's script refused whole (full, read-only, a Redis before 7.0, an ACL):
            self._down = None  # it answered; the store does not serve the tracker, as if unreachable (each announce was a
            self._fail(batch, self.failure(exc))  # 500 and a traceback for a refused script load: a review)
            return
        except Exception as exc:  # anything else: each caller sees it, the batcher goes on
            self._fail(batch, exc)
            return
        except BaseException as exc:  # cancelled: so are the callers
            self._fail(batch, exc)
            raise
        self._down = None
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(self.failure(reply) if unavailable_reply(reply) else reply)
            else:
                future.set_result(reply)

    async def _command(self, *args: str) -> Any:
        """A command (the batch's EVALSHA, its script's load) on the batcher's own connection: one write, one read, within
        the client's command timeout.

        Batches go one at a time, so one connection, taken from the client's
        pool and kept (the client's ``aclose`` closes it with the others),
        serves them all.  Its send and read run under one ``asyncio.timeout``
        instead of redis-py's own (a task per send) and without the pool's
        work per command (taking and returning a connection, its checks and
        metrics): per batch, what the edge's CPU spends besides the script's
        own bytes.  Any failure but an error reply drops the connection (a
        late reply must not be read as the next batch's); the next batch
        connects again, with the client's connect timeout.  So does a batch
        that finds it closed by Redis since the last: Redis closes clients
        idle for its ``timeout`` (managed ones often do), and each announce
        after a quiet spell was a 503 and an outage in the log (an
        adversarial session).
        """
        import hiredis  # packs in C what redis-py's asyncio connection packs in Python (a batch is a few kilobytes)
        import redis.exceptions as rex

        conn = self._conn
        if conn is None:
            pool = self.redis.connection_pool
            self._timeout = pool.connection_kwargs.get("socket_timeout")
            conn = self._conn = await pool.get_connection()
            conn.socket_timeout = None  # bounded below, send and read together
        elif conn.is_connected and await conn.can_read():  # nothing is due between batches: Redis closed it meanwhile
            await conn.disconnect(nowait=True)  # (its idle ``timeout``, CLIENT KILL, a proxy): connected again below
        try:
            if not conn.is_connected:  # each step of the handshake (AUTH, SELECT, CLIENT SETINFO...) within the client's
                conn.socket_timeout = self._timeout  # timeout, as the pool's first connect: under the batch's, a Redis 0.8 s
                try:  # away timed out every batch after one failure, for good (a review)
                    await conn.connect()
                finally:
                    conn.socket_timeout = None
            async with asyncio.timeout(self._timeout):
                command: Any = args  # Any: hiredis's stub types the tuple as one of a single item
                await conn.send_packed_command(hiredis.pack_command(command), check_health=False)
                return await conn.read_response()
        except rex.ResponseError:  # the reply was read whole: the connection is fine
            raise
        except BaseException:
            await conn.disconnect(nowait=True)
            raise

    @staticmethod
    def _fail(batch: list[tuple[int, list[str], asyncio.Future[Any]]], error: BaseException) -> None:
        for _, _, future in batch:
            if not future.done():
                future.set_exception(error)
