"""store/redisbatch.py against a real redis-server: concurrent script calls share pipelines, each caller gets its own reply or error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from redisserver import redis_server, redis_url  # noqa: F401 - fixtures

from edgeswarm.policy.peerstore import StoreUnavailable
from edgeswarm.store.redisbatch import ScriptBatcher

pytestmark = pytest.mark.integration
ECHO = "return ARGV[1] .. ':' .. redis.call('INCR', 'calls')"
FAIL = "return redis.error_reply('no ' .. ARGV[1])"


@pytest.fixture
async def client(redis_url):  # noqa: F811 - the fixture
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    await r.aclose()


def batcher(client) -> ScriptBatcher:
    return ScriptBatcher(client, lambda exc: StoreUnavailable(str(exc)))


async def test_concurrent_calls_share_pipelines_in_call_order(client):
    b, echo = batcher(client), client.register_script(ECHO)
    replies = await asyncio.gather(*(b.call(echo, [f"c{i}"]) for i in range(50)))
    assert replies == [f"c{i}:{i + 1}" for i in range(50)]  # each its own reply, run in the order called
    assert b.calls == 50
    assert b.batches < 50


async def test_a_lone_call_goes_out_at_once(client):
    b, echo = batcher(client), client.register_script(ECHO)
    assert await asyncio.wait_for(b.call(echo, ["one"]), 5) == "one:1"
    assert await b.call(echo, ["two"]) == "two:2"
    assert (b.calls, b.batches) == (2, 2)


async def test_an_error_reaches_its_caller_only(client):
    b, echo, fail = batcher(client), client.register_script(ECHO), client.register_script(FAIL)
    results = await asyncio.gather(b.call(echo, ["a"]), b.call(fail, ["luck"]), b.call(echo, ["b"]), return_exceptions=True)
    assert results[0] == "a:1" and results[2] == "b:2"
    assert isinstance(results[1], Exception) and "no luck" in str(results[1])


async def test_a_failing_command_or_lua_error_reaches_its_caller_only_and_nothing_is_none(client):
    b, echo = batcher(client), client.register_script(ECHO)
    await client.set("text", "x")
    wrong, broken, nothing = "return redis.call('INCR', 'text')", "error('boom')", "redis.call('INCR', 'n')"
    results = await asyncio.gather(
        b.call(echo, ["a"]), b.call(wrong, []), b.call(broken, []), b.call(nothing, []), b.call(echo, ["b"]), return_exceptions=True
    )
    assert results[0] == "a:1" and results[4] == "b:2" and results[3] is None
    assert isinstance(results[1], Exception) and "not an integer" in str(results[1])
    assert isinstance(results[2], Exception) and "boom" in str(results[2])
    assert await client.get("n") == "1"  # the calls ran, each on its own
    assert b.batches < 5


async def test_scripts_flushed_from_redis_are_loaded_again(client):
    b, echo = batcher(client), client.register_script(ECHO)
    assert await b.call(echo, ["x"]) == "x:1"
    await client.script_flush()
    assert await asyncio.gather(b.call(echo, ["y"]), b.call(echo, ["z"])) == ["y:2", "z:3"]


async def test_redis_down_is_the_stores_error_for_every_caller(redis_server):  # noqa: F811 - the fixture
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_connect_timeout=1.0)
    try:
        b, echo = batcher(r), r.register_script(ECHO)
        redis_server.stop()
        results = await asyncio.gather(*(b.call(echo, [str(i)]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(e, StoreUnavailable) for e in results)
        redis_server.start()
        assert (await b.call(echo, ["back"])).startswith("back:")  # the batcher goes on once Redis is back
    finally:
        await r.aclose()


async def test_a_connection_redis_closed_while_idle_is_replaced_not_failed(client):
    """Redis closes clients idle past its ``timeout`` (managed ones often do), and CLIENT KILL does at once: the batch
    after was a 503 and an outage in the edge's log, every quiet spell (an adversarial session)."""
    b, echo = batcher(client), client.register_script(ECHO)
    assert await b.call(echo, ["a"]) == "a:1"
    assert await client.client_kill_filter(_type="normal", skipme=True) >= 1  # the batcher's own connection
    await asyncio.sleep(0.2)  # the close reaches this side
    assert await b.call(echo, ["b"]) == "b:2"


async def test_a_hung_redis_fails_the_calls_queued_behind_a_batch_with_it_and_later_ones_at_once(redis_server):  # noqa: F811
    """A hung Redis (SIGSTOP, a failover's pause): each batch waited out its timeout after the one before, so under
    200 announces a second their 503s came 15 s, then 27 s late (an adversarial session).  The calls queued behind a
    batch that fails fail with it, and while one is out to try the store again, a new call fails at once."""
    import os
    import signal

    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=1.0)
    try:
        b, echo = batcher(r), r.register_script(ECHO)
        assert await b.call(echo, ["up"]) == "up:1"  # the script loaded, the connection made
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            first = asyncio.ensure_future(b.call(echo, ["first"]))
            await asyncio.sleep(0.1)  # out, waiting for its answer
            behind = [asyncio.ensure_future(b.call(echo, [str(i)])) for i in range(20)]
            with pytest.raises(StoreUnavailable):
                await first
            await asyncio.sleep(0)  # their futures' callbacks
            assert all(f.done() for f in behind), "calls queued behind the failed batch waited for a batch of their own"
            assert all(isinstance(f.exception(), StoreUnavailable) for f in behind)

            trial = asyncio.ensure_future(b.call(echo, ["trial"]))
            await asyncio.sleep(0.1)
            with pytest.raises(StoreUnavailable):  # at once, while the trial is out
                await b.call(echo, ["meanwhile"])
            assert not trial.done()
            with pytest.raises(StoreUnavailable):
                await trial
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert (await b.call(echo, ["back"])).startswith("back:")  # a batch gets through: calls wait for theirs again
        assert (await asyncio.gather(b.call(echo, ["x"]), b.call(echo, ["y"])))[1].startswith("y:")
    finally:
        await r.aclose()


async def test_a_full_redis_refuses_a_batch_whole_though_its_calls_free_before_they_write(client):
    """Over ``maxmemory`` under noeviction, Redis refused a script's first write only, and each announce's first is a
    removal, which a full Redis allows: records of announces answered 503 were written, Redis at 4.8 times its
    ``maxmemory`` (an adversarial session).  The batch's script is refused whole, before it runs."""
    b = batcher(client)
    frees_then_writes = "redis.call('ZREMRANGEBYSCORE', 'nokey', '(0', 5) redis.call('HSET', 'written', ARGV[1], 'x') return 1"
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")
    try:
        results = await asyncio.gather(*(b.call(frees_then_writes, [str(i)]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(e, StoreUnavailable) and "maxmemory" in str(e) for e in results), results
        assert await client.exists("written") == 0
    finally:
        await client.config_set("maxmemory", "0")
    assert await b.call(frees_then_writes, ["room"]) == 1


async def test_a_failure_long_over_fails_no_call_of_the_next_burst(redis_server):  # noqa: F811 - the fixture
    """The breaker outlived its outage: cleared only by a batch that got through, so seconds after Redis came back, of a
    burst of 50 calls the first went out to try the store and the 49 others failed at once with the old error (a
    review).  A call fails at once behind a trial only while the failure is recent."""
    import os
    import signal

    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=1.0)
    try:
        b, echo = batcher(r), r.register_script(ECHO)
        assert await b.call(echo, ["up"]) == "up:1"
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):
                await b.call(echo, ["hung"])
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(1.5)  # Redis answers again; nothing was asked of it meanwhile
        results = await asyncio.gather(*(b.call(echo, [str(i)]) for i in range(20)), return_exceptions=True)
        assert not [e for e in results if isinstance(e, BaseException)], results
    finally:
        await r.aclose()


@contextlib.asynccontextmanager
async def far(url: str, delay: float) -> AsyncIterator[str]:
    """The URL of a proxy in front of ``url``'s Redis whose answers come ``delay`` seconds late: a Redis far away."""
    target = urlsplit(url)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, late: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(late)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def join(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(relay(cr, sw, 0.0), relay(sr, cw, delay))

    proxy = await asyncio.start_server(join, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/0"
    finally:
        proxy.close()


async def test_a_redis_far_away_reconnects_within_the_timeout_each_step_has(redis_url):  # noqa: F811 - the fixture
    """A Redis 0.4 s away (a round trip) under a 1 s timeout: the connection's handshake and the batch's command were
    timed together once it had to reconnect, so each try timed out and dropped it again, for good (a review, with a
    Redis 0.8 s away and the edge's 2 s).  The handshake has a timeout of its own."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with far(redis_url, 0.4) as url:
        r = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=1.0)
        try:
            b, echo = batcher(r), r.register_script(ECHO)
            assert await b.call(echo, ["a"]) == "a:1"
            await admin.client_kill_filter(_type="normal", skipme=True)  # its connection closed: the next batch connects again
            await asyncio.sleep(0.2)
            assert await b.call(echo, ["b"]) == "b:2"
        finally:
            await r.aclose()
            await admin.aclose()


async def test_a_script_first_used_while_the_batchers_script_loads_is_in_what_runs(redis_url):  # noqa: F811 - the fixture
    """The load's answer was kept as the script's id: a script grown while it loaded (an edge's first report or stop
    after a Redis restart) kept the older one's, and every call of the new body failed "attempt to call a nil value"
    until Redis forgot its scripts (a review)."""
    import redis.asyncio as aioredis

    async with far(redis_url, 0.1) as url:
        r = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            b = batcher(r)
            one, two = "return 'one:' .. ARGV[1]", "return 'two:' .. ARGV[1]"
            assert await b.call(one, ["0"]) == "one:0"
            await r.script_flush()  # as after a restart: the next batch loads the script again
            first = asyncio.ensure_future(b.call(one, ["1"]))
            await asyncio.sleep(0.15)  # its EVALSHA refused, the load out
            assert await asyncio.gather(first, b.call(two, ["1"])) == ["one:1", "two:1"]
            assert await asyncio.gather(*(b.call(two, [str(i)]) for i in range(3))) == ["two:0", "two:1", "two:2"]
        finally:
            await r.aclose()


async def test_a_batch_the_store_refuses_whole_is_the_stores_error_not_a_bug(client, redis_url):  # noqa: F811
    """A script refused whole with an error reply Redis does not give for its state (an ACL without EVALSHA, a Redis
    before 7.0 that cannot compile the batch's shebang) reached each caller as itself: every announce a 500 and a
    traceback (a review).  It is the store's failure, as when it is unreachable: a 503 that says why."""
    import redis.asyncio as aioredis

    await client.execute_command("ACL", "SETUSER", "noscripts", "on", ">pw", "~*", "&*", "+@all", "-evalsha", "-script")
    limited = aioredis.Redis.from_url(redis_url.replace("redis://", "redis://noscripts:pw@"), decode_responses=True)
    try:
        results = await asyncio.gather(*(batcher(limited).call(ECHO, [str(i)]) for i in range(3)), return_exceptions=True)
        assert all(isinstance(e, StoreUnavailable) and "permission" in str(e) for e in results), results
    finally:
        await limited.aclose()
        await client.execute_command("ACL", "DELUSER", "noscripts")
