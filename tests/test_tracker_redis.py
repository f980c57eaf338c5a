"""Issue 13, a region larger than one edge: edges in p2p mode sharing their tracker state in a real redis-server.

Raw announces come from the test, bound to 127.1.0.x source addresses (one
machine each, region "east"), so what each edge hands out is exact; the
origin, the edges and redis-server are real processes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import content_id, make_file, sha, status
from redisserver import RedisServer, redis_server, redis_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration
PIECES = 4
PIECE = 256 * 1024
REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
NONE = "AA=="  # the bitfield of none of four pieces
STATS = {"edge": 3 * PIECE, "peer_same_region": 2 * PIECE, "peer_other_region": 0}


def start_edge(nodes, tmp_path: Path, origin, regions: Path, name: str, store: str, *extra: str):
    return nodes.start(
        "edge",
        *("--cache", str(tmp_path / name), "--parent", origin.url, "--p2p", "--regions", str(regions)),
        *("--announce-interval", "5", "--tracker-store", store, *extra),
        name=name,
    )


def doc(cid: str, peer_id: str, event: str = "update", stats: dict | None = None) -> dict:
    return {
        "peer_id": peer_id,
        "port": 9000,
        "content": cid,
        "pieces": PIECES,
        "have": NONE,
        "uploaded": 0,
        "downloaded": 0,
        "event": event,
        **({"stats": stats} if stats else {}),
    }


async def announce(edge: str, addr: str, body: dict) -> tuple[int, dict | str, str | None]:
    """One announce from ``addr``: a machine of its own, as the edge sees it."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(addr, 0))) as s,
        s.post(edge + "/announce", json=body) as r,
    ):
        return r.status, (await r.json() if r.status == 200 else await r.text()), r.headers.get("Retry-After")


def handed(answer: dict) -> set[str]:
    return {p["url"] for p in answer["peers"]}


async def three_peers(http, edge: str) -> tuple[str, set[str], dict]:
    """Three peers of east join f.bin's swarm at ``edge``, each reporting STATS: the content id, their URLs, and the
    region's /status row after them."""
    cid = await content_id(http, edge, "f.bin")
    for i in range(1, 4):
        code, _, _ = await announce(edge, f"127.1.0.{i}", doc(cid, f"p{i}", "started", STATS))
        assert code == 200
    before = (await status(http, edge))["p2p"]["regions"]["east"]
    assert before["bytes_from_edge"] == 3 * STATS["edge"] and before["peers"] == 3
    return cid, {f"http://127.1.0.{i}:9000" for i in range(1, 4)}, before


async def test_two_edges_on_one_redis_hand_each_other_peers_out(tmp_path, nodes, origin, published, regions, http, redis_url):  # noqa: F811
    make_file(published / "f.bin", PIECES * PIECE)
    a = start_edge(nodes, tmp_path, origin, regions, "edge-a", redis_url)
    b = start_edge(nodes, tmp_path, origin, regions, "edge-b", redis_url)
    cid = await content_id(http, a.url, "f.bin")
    code, answer, _ = await announce(a.url, "127.1.0.1", doc(cid, "x", "started"))
    assert code == 200 and handed(answer) == set()
    code, answer, _ = await announce(b.url, "127.1.0.2", doc(cid, "y", "started"))  # to the other edge
    assert code == 200 and handed(answer) == {"http://127.1.0.1:9000"}, answer
    code, answer, _ = await announce(a.url, "127.1.0.1", doc(cid, "x"))
    assert code == 200 and handed(answer) == {"http://127.1.0.2:9000"}, answer
    for edge in (a, b):  # one region, one swarm, whichever edge is asked
        p2p = (await status(http, edge.url))["p2p"]
        assert p2p["store"].startswith("redis://") and p2p["regions"]["east"]["peers"] == 2, p2p
        said = [line for line in edge.log_text().splitlines() if "tracker store: " in line]  # the other workers' said memory
        assert len(said) == 1 and f"tracker store: {redis_url}" in said[0], said


async def test_a_tracker_edge_killed_and_restarted_hands_out_the_same_swarm_at_once(
    tmp_path,
    nodes,
    origin,
    published,
    regions,
    http,
    redis_url,  # noqa: F811
):
    make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin, regions, "edge", redis_url)
    port = edge.url.rsplit(":", 1)[1]
    cid, swarm, before = await three_peers(http, edge.url)

    edge.kill()  # SIGKILL: nothing is written on the way out
    edge = start_edge(nodes, tmp_path, origin, regions, "edge", redis_url, "--listen", f"127.0.0.1:{port}")
    code, answer, _ = await announce(edge.url, "127.1.0.9", doc(cid, "newcomer", "started"))  # the first announce it takes
    assert code == 200 and handed(answer) == swarm, answer
    after = (await status(http, edge.url))["p2p"]["regions"]["east"]
    assert (after["bytes_from_edge"], after["bytes_from_peers_same_region"], after["p2p_share"]) == (
        before["bytes_from_edge"],
        before["bytes_from_peers_same_region"],
        before["p2p_share"],
    )
    assert after["peers"] == 4
    code, _, _ = await announce(edge.url, "127.1.0.1", doc(cid, "p1", stats=STATS))  # the same cumulative figures again
    assert code == 200
    assert (await status(http, edge.url))["p2p"]["regions"]["east"]["bytes_from_edge"] == before["bytes_from_edge"]


async def test_redis_down_files_are_served_announces_get_503_and_the_edge_recovers(
    tmp_path,
    nodes,
    origin,
    published,
    regions,
    http,
    redis_server: RedisServer,  # noqa: F811
):
    data = make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin, regions, "edge", redis_server.url)
    cid = await content_id(http, edge.url, "f.bin")
    assert (await announce(edge.url, "127.1.0.1", doc(cid, "x", "started")))[0] == 200

    redis_server.stop()
    async with http.get(edge.url + "/f.bin") as r:
        assert r.status == 200 and sha(await r.read()) == sha(data)
    code, text, retry = await announce(edge.url, "127.1.0.2", doc(cid, "y", "started"))
    assert code == 503 and "tracker store" in str(text) and "unreachable" in str(text) and retry is not None, (code, text)
    for _ in range(3):  # the edge still answers, and says why the tracker does not: each /status while the outage lasts
        st = await status(http, edge.url)  # (those that do not wait for the store said "no answer within 0.5 s", a hung
        assert "unreachable" in st["p2p"]["store_error"], st["p2p"]  # Redis's words for a refusal: an adversarial session)
        await asyncio.sleep(0.2)
    assert edge.running
    async with http.get(edge.url + "/metrics") as r:  # the region's peers read 0 meanwhile, a swarm gone (an adversarial
        metrics = await r.text()  # session): no sample, and the store said down
    assert "edgeswarm_tracker_store_up 0.0" in metrics and "edgeswarm_region_peers{" not in metrics, metrics
    # counted too, for an alert that a short flap between two scrapes of store_up would escape (an adversarial session)
    assert 'edgeswarm_tracker_store_failures_total{how="unreachable"} 1.0' in metrics, metrics
    assert 'edgeswarm_tracker_store_failures_total{how="refuses"} 0.0' in metrics, metrics

    redis_server.start()  # empty (nothing was saved): peers fill it again with their next announces
    deadline = time.monotonic() + 15
    while (result := await announce(edge.url, "127.1.0.2", doc(cid, "y", "started")))[0] != 200:
        assert time.monotonic() < deadline, result
        await asyncio.sleep(0.3)
    assert (await announce(edge.url, "127.1.0.1", doc(cid, "x")))[0] == 200
    code, answer, _ = await announce(edge.url, "127.1.0.2", doc(cid, "y"))
    assert code == 200 and handed(answer) == {"http://127.1.0.1:9000"}
    log = (tmp_path / "logs" / "edge.log").read_text()
    assert log.count("answering announces 503") == 1, "the outage is logged once, not per announce"
    assert "reachable again" in log


async def test_a_full_read_only_or_hung_redis_is_a_503_and_the_edge_stays_in_rotation(
    tmp_path,
    nodes,
    origin,
    published,
    regions,
    http,
    redis_server: RedisServer,  # noqa: F811
):
    """Redis full (maxmemory, noeviction) or demoted to a read-only replica by a failover: every announce was a 500 with
    a traceback, and /status too; hung (SIGSTOP), /status waited 2 s, past a router's 1 s poll timeout.  Now a 503
    that says why, logged once, and /status answers at once with the reason."""
    import os
    import signal

    import redis

    make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin, regions, "edge", redis_server.url)
    cid = await content_id(http, edge.url, "f.bin")
    assert (await announce(edge.url, "127.1.0.1", doc(cid, "x", "started")))[0] == 200
    admin = redis.Redis.from_url(redis_server.url)
    try:
        for breaks, mends, word in [
            (
                [("CONFIG", "SET", "maxmemory-policy", "noeviction"), ("CONFIG", "SET", "maxmemory", "1")],
                [("CONFIG", "SET", "maxmemory", "0")],
                "OutOfMemoryError",
            ),
            ([("REPLICAOF", "127.0.0.1", "1")], [("REPLICAOF", "NO", "ONE")], "ReadOnlyError"),
        ]:
            for command in breaks:
                admin.execute_command(*command)
            code, text, retry = await announce(edge.url, "127.1.0.2", doc(cid, "y", "started"))
            assert code == 503 and word in str(text) and retry is not None, (code, text)
            # a full Redis still reads, and /status said the store was fine while it refused every announce (an
            # adversarial session): it says the announce's refusal; a replica refuses the expiry's deletes too
            st = await status(http, edge.url)
            assert word in st["p2p"].get("store_error", ""), st["p2p"]
            async with http.get(edge.url + "/metrics") as resp:
                assert "edgeswarm_tracker_store_up 0.0" in await resp.text()
            for command in mends:
                admin.execute_command(*command)
            deadline = time.monotonic() + 15
            while (await announce(edge.url, "127.1.0.2", doc(cid, "y", "started")))[0] != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
            while "store_error" in (await status(http, edge.url))["p2p"]:  # an announce got through: back, at once or
                assert time.monotonic() < deadline + 10  # after the quiet that follows a failed read (STORE_QUIET_S)
                await asyncio.sleep(0.3)
    finally:
        admin.close()
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        st = await status(http, edge.url)
        assert time.monotonic() - started < 1.0 and "no answer within" in st["p2p"]["store_error"], st["p2p"]
        # and not again while that ask is unanswered, nor after it failed (the client's 2 s timeout): a router polling
        # every second (0.5 s timeout) found each /status 0.51 s late for as long as Redis hung, and sent the region's
        # clients elsewhere (an adversarial session; then 3 polls in 4, once the first ask had failed: a review)
        until = time.monotonic() + 4
        while time.monotonic() < until:
            started = time.monotonic()
            st = await status(http, edge.url)
            assert time.monotonic() - started < 0.25 and "store_error" in st["p2p"], st["p2p"]
            await asyncio.sleep(0.3)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while "store_error" in (await status(http, edge.url))["p2p"]:  # the ask left waiting is answered: figures again
        assert time.monotonic() < deadline, "the store's figures did not come back"
        await asyncio.sleep(0.2)
    log = (tmp_path / "logs" / "edge.log").read_text()
    assert "Traceback" not in log and log.count("answering announces 503") == 3, "each outage logged once (full, read-only, hung)"


async def test_an_outage_whose_cause_changes_is_said_again(
    tmp_path,
    nodes,
    origin,
    published,
    regions,
    http,
    redis_server: RedisServer,  # noqa: F811
):
    """An outage was logged once, with its first cause: a password set on a running Redis logged "connection closed",
    and the lasting "wrong password" was in no warning (an adversarial session).  A new cause is said again, once."""
    import redis

    make_file(published / "f.bin", PIECES * PIECE)
    edge = start_edge(nodes, tmp_path, origin, regions, "edge", redis_server.url)
    cid = await content_id(http, edge.url, "f.bin")
    assert (await announce(edge.url, "127.1.0.1", doc(cid, "x", "started")))[0] == 200
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.execute_command("CONFIG", "SET", "maxmemory", "1")
        for _ in range(2):
            code, text, _ = await announce(edge.url, "127.1.0.2", doc(cid, "y", "started"))
            assert code == 503 and "OutOfMemoryError" in str(text), (code, text)
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")
        for _ in range(2):
            code, text, _ = await announce(edge.url, "127.1.0.2", doc(cid, "y", "started"))
            assert code == 503 and "ReadOnlyError" in str(text), (code, text)
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.execute_command("CONFIG", "SET", "maxmemory", "0")
        admin.close()
    warnings = [line for line in (tmp_path / "logs" / "edge.log").read_text().splitlines() if "answering announces 503" in line]
    assert len(warnings) == 2 and "OutOfMemoryError" in warnings[0] and "ReadOnlyError" in warnings[1], warnings
