"""store/redisbatch.py against a real redis-server: concurrent script calls share pipelines, each caller gets its own reply or error."""

from __future__ import annotations

import asyncio

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
