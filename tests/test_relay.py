"""Relays for peers that cannot accept connections (issue 14, item 2): real daemons on loopback.

An ``--unreachable`` peer announces ``"relay": true``; the tracker hands it
out at ``http://EDGE/relay/<id>``, and its neighbours fetch through that
WebSocket-backed relay exactly as from any peer, verifying every piece.
No privileges are needed: the relayed peer's upload port is never handed
out, so its neighbours can reach it only through the relay (the lab blocks
inbound connections with iptables as well: docs/lab.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import complete, content_id, make_file, post, sha, status, until
from redisserver import redis_url  # noqa: F401 - fixture

from edgeswarm.measure.process import ProcessGroup
from edgeswarm.protocol import havefeed, relay
from edgeswarm.roles.relay import RelayHub

SIZE = 2 * 1024 * 1024  # 8 pieces of 256 KiB
REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"


def start_edge(nodes: ProcessGroup, tmp_path: Path, parent: str, regions: Path, *extra: str):
    return nodes.start(
        "edge",
        *("--cache", str(tmp_path / "edge"), "--parent", parent, "--p2p", "--regions", str(regions), "--announce-interval", "1"),
        *extra,
        name="edge",
    )


def start_peer(nodes: ProcessGroup, tmp_path: Path, edge: str, addr: str, name: str, *extra: str):
    return nodes.start(
        "peer",
        *("--cache", str(tmp_path / name), "--edge", edge, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0", *extra),
        name=name,
    )


async def test_an_unreachable_peer_uploads_through_its_edges_relay(tmp_path, nodes, origin, published, regions, http):
    data = make_file(published / "f.bin", SIZE)
    # the edge sends slowly, so the downloader takes what it can from the relayed seeder
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--upload-limit", "400KB/s")
    seeder = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "hidden", "--unreachable")
    await post(http, seeder, "/f.bin")
    await until(lambda: complete(http, seeder), 90, "the seeder's download")
    relay_up = await until(lambda: _relay_peers(http, edge.url), 10, "the seeder's relay")
    assert relay_up == 1

    downloader = start_peer(nodes, tmp_path, edge.url, "127.1.0.2", "viewer")
    await post(http, downloader, "/f.bin")
    st = await until(lambda: complete(http, downloader), 90, "the downloader's download")
    async with http.get(downloader.urls["gateway"] + "/f.bin") as resp:
        assert resp.status == 200 and sha(await resp.read()) == sha(data)

    from_peers = [row for row in st["bytes_received"] if row["kind"].startswith("peer")]
    assert from_peers, st["bytes_received"]
    assert all(f"{edge.url}/relay/" in row["source"] for row in from_peers), from_peers  # never the seeder's own address
    peer_bytes = sum(row["bytes"] for row in from_peers)
    hidden = await status(http, seeder.urls["gateway"])
    relay_st = (await status(http, edge.url))["relay"]
    assert hidden["uploaded_to_peers"] >= peer_bytes  # every byte the viewer got from peers, the hidden seeder sent
    assert relay_st["bytes_out"] >= peer_bytes  # and the edge carried it
    assert hidden["relay"]["served"].get("piece", 0) >= peer_bytes // (256 * 1024)


async def _relay_peers(http: aiohttp.ClientSession, edge: str) -> int:
    return (await status(http, edge))["relay"]["peers"]


async def test_the_relay_refuses_quickly_what_it_cannot_pass(tmp_path, nodes, origin, published, regions, http):
    """Unknown relay id: a quick 503; a path other than the two upload endpoints: 404; a relay with no peer id: 400."""
    make_file(published / "g.bin", 300_000)
    edge = start_edge(nodes, tmp_path, origin.url, regions)
    cid = "a" * 64
    started = time.monotonic()
    async with http.get(f"{edge.url}/relay/{'0' * 12}-{'1' * 12}/piece/{cid}/0") as resp:
        assert resp.status == 503 and "not connected" in await resp.text()
    assert time.monotonic() - started < 2
    async with http.get(f"{edge.url}/relay/{'0' * 12}-{'1' * 12}/status") as resp:
        assert resp.status == 404
    async with http.get(f"{edge.url}/relay") as resp:
        assert resp.status == 400 and "X-Edgeswarm-Peer" in await resp.text()


async def test_a_relayed_peer_that_leaves_is_a_503_not_a_hang(tmp_path, nodes, origin, published, regions, http):
    """A relayed peer killed: its relay URL answers 503 at once, and the edge forgets it."""
    make_file(published / "h.bin", 600_000)
    edge = start_edge(nodes, tmp_path, origin.url, regions)
    seeder = start_peer(nodes, tmp_path, edge.url, "127.1.0.3", "gone", "--unreachable")
    await post(http, seeder, "/h.bin")
    await until(lambda: complete(http, seeder), 90, "the seeder's download")
    await until(lambda: _relay_peers(http, edge.url), 10, "the relay")
    rid = RelayHub.relay_id("127.1.0.3", None, (await status(http, seeder.urls["gateway"]))["peer_id"])
    seeder.stop()
    await until(lambda: _no_relay(http, edge.url), 10, "the edge to see the relay close")
    cid = (await status(http, edge.url))["contents"][0]["id"]
    started = time.monotonic()
    async with http.get(f"{edge.url}/relay/{rid}/piece/{cid}/0") as resp:
        assert resp.status == 503 and "not connected" in await resp.text()
    assert time.monotonic() - started < 2


async def test_a_peer_refused_a_relay_waits_as_long_as_the_edge_asks(tmp_path, nodes, origin, published, regions, http):
    """A full relay's refusal says how long to wait (Retry-After: 30); the refused peer tried again after 1, 2, 4, 8 s
    (an adversarial session, many peers behind one address): it keeps the edge's wait."""
    make_file(published / "r.bin", 600_000)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--relay-peers", "1")
    first = start_peer(nodes, tmp_path, edge.url, "127.1.0.5", "first", "--unreachable")
    await post(http, first, "/r.bin")
    await until(lambda: _relay_peers(http, edge.url), 30, "the first peer's relay")
    second = start_peer(nodes, tmp_path, edge.url, "127.1.0.6", "second", "--unreachable")
    await post(http, second, "/r.bin")
    refused = f"relay at {edge.url} refused: 503; asked to wait 30 s"
    await until(lambda: asyncio.sleep(0.2, refused in second.log_text()), 30, "the second peer's refusal")
    await asyncio.sleep(8)  # 1, 2 and 4 s: three more tries before
    assert second.log_text().count(f"relay at {edge.url} refused") == 1, second.log_text()
    waits = {}  # worker -> the Retry-After of its refusal: a worker that is not the relays' passes the primary's on
    for _ in range(60):  # a connection each: the kernel deals them to the workers (SO_REUSEPORT)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
                await s.ws_connect(f"{edge.url}/relay", headers={"X-Edgeswarm-Peer": "third"})
        assert refusal.value.headers is not None and refusal.value.status == 503
        waits[refusal.value.headers["X-Edgeswarm-Worker"]] = refusal.value.headers.get("Retry-After")
        if len(waits) == 2:
            break
    assert waits == {"0": "30", "1": "30"}, waits


async def test_a_hostile_relayed_peer_cannot_answer_the_requesters_next_request(tmp_path, nodes, origin, published, regions, http):
    """A 204 (or 101, 304) with a whole forged answer in its body, or a header with a line break: a 502 to the requester,
    whose next request on its pooled connection (GET /swarm-key, the key managed peers check tickets with) is the edge's."""
    make_file(published / "k.bin", 300_000)
    edge = start_edge(nodes, tmp_path, origin.url, regions)
    async with http.get(f"{edge.url}/k.bin") as resp:
        assert resp.status == 200 and await resp.read()
    cid = (await status(http, edge.url))["contents"][0]["id"]
    async with http.get(f"{edge.url}/swarm-key") as resp:
        key = await resp.read()
    forged = b"-----BEGIN PUBLIC KEY-----\nATTACKER'S KEY\n-----END PUBLIC KEY-----\n"
    injected = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nContent-Length: %d\r\n\r\n%s" % (len(forged), forged)
    heads = [(204, {}), (101, {}), (304, {}), (200, {"Content-Type": "text/plain\r\nX-Injected: 1"}), (429, {"Retry-After": "1\nX: y"})]
    answers = iter(heads)

    async def answer(ws: aiohttp.ClientWebSocketResponse, fid: int) -> None:
        code, headers = next(answers)
        await ws.send_str(json.dumps({"id": fid, "status": code, "headers": headers}))
        await ws.send_bytes(relay.data_frame(fid, injected))
        await ws.send_str(relay.encode(relay.End(fid)))

    ws = await http.ws_connect(f"{edge.url}/relay", headers={"X-Edgeswarm-Peer": "evil"})
    serving = asyncio.create_task(_answer_requests(ws, answer))
    rid = RelayHub.relay_id("127.0.0.1", None, "evil")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as victim:  # as a peer's pooled session
            for _ in heads:
                async with victim.get(f"{edge.url}/relay/{rid}/piece/{cid}/0") as resp:
                    assert resp.status == 502 and "refused" in await resp.text()
                async with victim.get(f"{edge.url}/swarm-key") as resp:
                    assert resp.status == 200 and await resp.read() == key
    finally:
        serving.cancel()
        await ws.close()
    assert "Traceback" not in edge.log_text()


async def _answer_requests(ws: aiohttp.ClientWebSocketResponse, answer) -> None:
    """A relayed peer's side of its WebSocket: each request the edge passes down is answered by ``answer``."""
    async for msg in ws:
        with contextlib.suppress(ValueError):
            frame = relay.decode(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
            if isinstance(frame, relay.Request):
                await answer(ws, frame.id)


async def _no_relay(http: aiohttp.ClientSession, edge: str) -> bool:
    return (await status(http, edge))["relay"]["peers"] == 0


def _netns_reason() -> str | None:
    from edgeswarm.measure import netns

    reason = netns.unavailable_reason()
    if reason is None and shutil.which("iptables") is None:
        reason = "iptables is not installed (apt-get install iptables)"
    return reason


async def test_a_firewalled_peer_uploads_through_the_relay_in_namespaces(tmp_path, nodes, published, http):
    """Each node in its own namespace; the seeder's drops every inbound SYN: its neighbour cannot connect, yet gets its pieces.

    The seeder is set up as configuration.md says such a peer may be: its upload server on loopback (it takes no
    connections), its connections out leaving from its machine's address (bound to loopback, none reached the edge)."""
    from edgeswarm.measure import netns

    reason = _netns_reason()
    if reason is not None:
        pytest.skip(f"network namespaces or iptables unavailable: {reason}")
    data = make_file(published / "f.bin", SIZE)
    with netns.Netns(tag="rly", base="10.79") as net:
        hosts = {name: net.add(name, region) for name, region in (("origin", 0), ("edge", 1), ("hidden", 1), ("viewer", 1))}
        net.block_inbound(hosts["hidden"])
        regions = tmp_path / "regions-ns.yaml"
        regions.write_text(f"regions:\n  - {{name: east, isp: att, networks: [{net.region_network(1)}]}}\n")

        def start(role: str, name: str, *args: str, listen: str = ""):
            h = hosts[name]
            return nodes.start(role, *args, name=name, host=listen or h.address, prefix=h.prefix)

        origin = start("origin", "origin", "--publish", str(published), "--scan-interval", "0.2")
        p2p = ("--p2p", "--regions", str(regions), "--announce-interval", "1", "--upload-limit", "400KB/s")
        edge = start("edge", "edge", "--cache", str(tmp_path / "edge"), "--parent", origin.url, *p2p)
        peer_args = ("--edge", edge.url, "--gateway")
        hidden = ("--cache", str(tmp_path / "hidden"), *peer_args, f"{hosts['hidden'].address}:0", "--unreachable")
        seeder = start("peer", "hidden", *hidden, listen="127.0.0.1")
        await post(http, seeder, "/f.bin")
        await until(lambda: complete(http, seeder), 90, "the seeder's download")
        viewer = start("peer", "viewer", "--cache", str(tmp_path / "viewer"), *peer_args, f"{hosts['viewer'].address}:0")
        direct = subprocess.run(
            [*hosts["viewer"].prefix, "curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://{hosts['hidden'].address}:9/"],
            capture_output=True,
        )
        assert direct.returncode == 28, direct  # a timeout: the SYN is dropped, as a NAT or firewall would
        await post(http, viewer, "/f.bin")
        st = await until(lambda: complete(http, viewer), 90, "the viewer's download")
        async with http.get(viewer.urls["gateway"] + "/f.bin") as resp:
            assert resp.status == 200 and sha(await resp.read()) == sha(data)
        from_peers = [row for row in st["bytes_received"] if row["kind"].startswith("peer")]
        assert from_peers and all("/relay/" in row["source"] for row in from_peers), st["bytes_received"]
        assert (await status(http, edge.url))["relay"]["bytes_out"] >= sum(row["bytes"] for row in from_peers)


async def _relaying_for_a_hidden_peer(tmp_path, nodes, origin, published, regions, http):
    """An edge, two reachable peers of which one it promoted, and an unreachable peer holding its relay there."""
    make_file(published / "p.bin", SIZE)
    edge = start_edge(
        nodes, tmp_path, origin.url, regions, "--upload-limit", "600KB/s", "--promote-upload", "20KB/s", "--promote-uptime", "1"
    )
    reachable = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i}", f"r{i}", "--upload-limit", "300KB/s") for i in (1, 2)]
    for p in reachable:
        await post(http, p, "/p.bin")
    for p in reachable:
        await until(lambda p=p: complete(http, p), 90, "the reachable peers' downloads")
    await until(lambda: _promoted(http, edge.url), 30, "a promotion")

    hidden = start_peer(nodes, tmp_path, edge.url, "127.1.0.3", "hidden", "--unreachable")
    await post(http, hidden, "/p.bin")
    await until(lambda: complete(http, hidden), 90, "the hidden peer's download")
    at = await until(lambda: _relay_at(http, hidden), 20, "the hidden peer's relay at a promoted peer")
    relay_peer = next(p for p in reachable if p.urls["upload"] == at)
    assert at in await _promoted(http, edge.url)
    return edge, reachable, hidden, relay_peer


async def test_a_promoted_peer_relays_for_an_unreachable_one_and_is_demoted_when_killed(tmp_path, nodes, origin, published, regions, http):
    edge, reachable, hidden, relay_peer = await _relaying_for_a_hidden_peer(tmp_path, nodes, origin, published, regions, http)
    data = (published / "p.bin").read_bytes()
    for p in reachable:
        if p is not relay_peer:
            p.stop()  # the viewer's peers: the promoted one, and the hidden one through it

    viewer = start_peer(nodes, tmp_path, edge.url, "127.1.0.4", "viewer")
    await post(http, viewer, "/p.bin")
    st = await until(lambda: complete(http, viewer), 90, "the viewer's download")
    async with http.get(viewer.urls["gateway"] + "/p.bin") as resp:
        assert resp.status == 200 and sha(await resp.read()) == sha(data)
    via_promoted = [r for r in st["bytes_received"] if r["source"].startswith(relay_peer.urls["upload"] + "/relay/")]
    assert via_promoted and via_promoted[0]["bytes"] > 0, st["bytes_received"]
    assert (await status(http, relay_peer.urls["gateway"]))["relaying_for"]["bytes_out"] >= via_promoted[0]["bytes"]

    relay_peer.kill()
    await until(lambda: _demoted(http, edge.url, relay_peer.urls["upload"]), 20, "the demotion of the killed peer")
    await until(lambda: _holds_relay_at(http, hidden, None), 20, "the hidden peer back at the edge's relay only")


async def test_a_promoted_peer_holding_a_relay_stops_at_once(tmp_path, nodes, origin, published, regions, http):
    """A relayed peer's WebSocket never ends by itself: a promoted peer took the whole shutdown grace (4 s) to stop
    while one was open, its port bound and the relayed peer unreachable meanwhile (a session's note)."""
    *_, relay_peer = await _relaying_for_a_hidden_peer(tmp_path, nodes, origin, published, regions, http)
    stopped = time.monotonic()
    relay_peer.stop()
    took = time.monotonic() - stopped
    assert took < 3, f"the promoted peer took {took:.1f} s to stop"  # 0.1 s; the grace is 4 s
    assert relay_peer.proc.returncode == 0


@pytest.mark.integration
async def test_a_promoted_peer_that_drops_one_content_stays_promoted_and_each_demotion_is_logged_once(
    tmp_path, nodes, origin, published, regions, http
):
    """``stopped`` for one of a promoted peer's contents (evicted, a live segment left behind) demoted it whole, and
    silently: only demotions of peers that stopped announcing were logged (an adversarial session)."""
    for name in ("a.bin", "b.bin"):
        make_file(published / name, 30_000)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--promote-upload", "50KB/s", "--promote-uptime", "1")
    cid = {name: await content_id(http, edge.url, name) for name in ("a.bin", "b.bin")}
    up = 0

    def item(name: str, event: str) -> dict:
        return {"content": cid[name], "pieces": 1, "have": "gA==", "uploaded": up, "downloaded": 30_000, "event": event}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.1.0.9", 0))) as peer:

        async def announce(*items: dict) -> dict:
            body = {"peer_id": "fastpeer00000001", "port": 6881, "contents": list(items)}
            async with peer.post(edge.url + "/announce", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["contents"]

        await announce(item("a.bin", "started"), item("b.bin", "started"))
        for _ in range(30):  # 300 KB a round of 1.1 s (a.bin's counter): promoted after --promote-uptime
            await asyncio.sleep(1.1)
            up += 300_000
            if (await announce(item("a.bin", "update"), item("b.bin", "update")))[cid["a.bin"]].get("promoted"):
                break
        assert await _promoted(http, edge.url) == ["http://127.1.0.9:6881"]
        await announce(item("a.bin", "update"), item("b.bin", "stopped"))  # b.bin evicted
        up += 300_000
        assert (await announce(item("a.bin", "update")))[cid["a.bin"]].get("promoted") is True
        assert (await status(http, edge.url))["promotion"]["demotions"] == 0
        await announce(item("a.bin", "stopped"))  # its last content here: it has left
    line = "demoted addr:127.1.0.9/fastpeer00000001: it said stopped for the last content it announced here"
    await until(lambda: _logged(edge, line), 10, "the demotion's line")
    promotion = (await status(http, edge.url))["promotion"]
    assert promotion["promoted"] == [] and promotion["demotions"] == 1
    assert edge.log_text().count("demoted ") == 1


async def _logged(node, line: str) -> bool:
    return line in node.log_text()


async def _promoted(http: aiohttp.ClientSession, edge: str) -> list[str]:
    return (await status(http, edge))["promotion"]["promoted"]


async def _demoted(http: aiohttp.ClientSession, edge: str, url: str) -> bool:
    promotion = (await status(http, edge))["promotion"]
    return url not in promotion["promoted"] and promotion["demotions"] >= 1


async def _relay_at(http: aiohttp.ClientSession, peer) -> str | None:
    """The promoted peer whose relay ``peer`` holds open, if any."""
    relay = (await status(http, peer.urls["gateway"]))["relay"]
    return next((v for v in relay["via"].values() if v and relay["edges"].get(v)), None)


async def _holds_relay_at(http: aiohttp.ClientSession, peer, url: str | None) -> bool:
    relay = (await status(http, peer.urls["gateway"]))["relay"]
    vias = {v for v in relay["via"].values()}
    return relay["edges"].get(url, False) if url else not any(vias)


async def _relay_link(stack: contextlib.AsyncExitStack, edge: str, address: str, peer_id: str) -> str | None:
    """A relayed peer's link, held open until ``stack`` closes: the worker that took it, or None if it was not taken."""
    session = await stack.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))))
    try:
        async with asyncio.timeout(5):
            ws = await session.ws_connect(f"{edge}/relay", headers={"X-Edgeswarm-Peer": peer_id})
    except (aiohttp.ClientError, TimeoutError):
        return None
    stack.push_async_callback(ws.close)
    return ws._response.headers.get("X-Edgeswarm-Worker")


async def test_hundreds_of_relayed_peers_leave_every_worker_answering(tmp_path, nodes, origin, published, regions, http):
    """A worker bridges each relayed peer's link to the primary: over a pool of 100 connections (aiohttp's default),
    the 101st and every request that worker passed on after it (announces, /status, relayed pieces) waited for good
    (an adversarial session: about 200 honest --unreachable peers would do it)."""
    make_file(published / "f.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--workers", "2", "--relay-peers", "400")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    async with contextlib.AsyncExitStack() as stack:
        workers: list[str | None] = []
        for n in range(400):  # 16 an address (--max-peer-ids), until the second worker bridges 110 of them
            workers.append(await _relay_link(stack, edge.url, f"127.1.{n // 16}.1", f"relayed{n}"))
            if workers.count("1") >= 110 or workers[-1] is None:
                break
        assert workers.count("1") >= 110 and None not in workers, (workers.count("0"), workers.count("1"), workers.count(None))
        answered = []
        for k in range(6):  # fresh connections: each reaches a worker as the kernel hashes it
            doc = {"peer_id": f"probe{k}", "port": 9, "content": cid, "pieces": 8, "have": "AA==", "uploaded": 0, "downloaded": 0}
            connector = aiohttp.TCPConnector(local_addr=(f"127.1.200.{k + 1}", 0))
            async with (
                aiohttp.ClientSession(connector=connector) as probe,
                probe.post(edge.url + "/announce", json={**doc, "event": "started"}, timeout=aiohttp.ClientTimeout(total=10)) as r,
            ):
                answered.append((r.status, r.headers.get("X-Edgeswarm-Worker")))
        assert all(s == 200 for s, _ in answered), answered


async def test_a_relayed_have_stream_cut_by_its_peer_leaving_is_one_line_on_every_worker(tmp_path, nodes, origin, published, regions):
    """A relayed peer's HAVE stream, subscribed to through either worker, ends when that peer leaves: the worker passing
    it on from the primary cut its client's connection by raising, and aiohttp logged "Error handling request" with a
    traceback for a relayed peer leaving, normal churn (a docs audit, on README's relay recipe)."""
    edge, seeder, rid, cid = await _relayed_seeder(tmp_path, nodes, origin, published, regions, "2")
    streams: list[tuple[str | None, asyncio.Task]] = []
    async with contextlib.AsyncExitStack() as stack:
        for k in range(64):  # connections from addresses of their own, each to a worker as the kernel hashes it, until
            session = await stack.enter_async_context(  # both are reached (12 all went to one worker once in CI)
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(f"127.1.{60 + k}.1", 0)))
            )
            headers = {"Accept": havefeed.CONTENT_TYPE, "X-Edgeswarm-Peer": f"sub{k}"}
            resp = await stack.enter_async_context(session.get(f"{edge.url}/relay/{rid}/have/{cid}", headers=headers))
            assert resp.status == 200, await resp.text()
            streams.append((resp.headers.get("X-Edgeswarm-Worker"), asyncio.ensure_future(_drain(resp))))
            if len(streams) >= 12 and {w for w, _ in streams} == {"0", "1"}:
                break
        assert {w for w, _ in streams} == {"0", "1"}, [w for w, _ in streams]
        seeder.kill()
        ends = await asyncio.wait_for(asyncio.gather(*(t for _, t in streams)), 20)
    assert all(end is not None for end in ends), ends  # every stream was cut, none ended as if whole
    log = edge.log_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


async def test_an_edge_stopping_cleanly_says_no_relayed_peer_disconnected(tmp_path, nodes, origin, published, regions):
    """An edge stopped with SIGTERM (the README recipes' end) closes its relays: each neighbour's HAVE stream through
    one was a WARNING "cut after N bytes: 502 … the relayed peer disconnected", counted as a cut answer, though the peer
    never left (a newcomer's walk through README).  A stop is said as a stop, at INFO."""
    edge, _, rid, cid = await _relayed_seeder(tmp_path, nodes, origin, published, regions, "1")
    async with aiohttp.ClientSession() as http:
        headers = {"Accept": havefeed.CONTENT_TYPE, "X-Edgeswarm-Peer": "sub"}
        streams = []
        for _ in range(3):
            resp = await http.get(f"{edge.url}/relay/{rid}/have/{cid}", headers=headers)
            assert resp.status == 200, await resp.text()
            streams.append(asyncio.ensure_future(_drain(resp)))
        await asyncio.sleep(0.5)
        edge.stop()
        await asyncio.wait_for(asyncio.gather(*streams), 20)
    stop = edge.log_text().split("stopping", 1)[-1]
    assert "WARNING" not in stop and "relayed peer disconnected" not in stop, stop[-3000:]
    assert "this node is stopping" in stop, stop[-3000:]


async def _relayed_seeder(tmp_path, nodes, origin, published, regions, workers: str):
    """An edge with ``workers``, and an --unreachable peer (127.1.0.5) seeding s.bin through its relay: (edge, the
    peer, its relay id, the content's id)."""
    make_file(published / "s.bin", SIZE)
    edge = start_edge(nodes, tmp_path, origin.url, regions, "--workers", workers)
    seeder = start_peer(nodes, tmp_path, edge.url, "127.1.0.5", "hidden", "--unreachable")
    async with aiohttp.ClientSession() as http:
        await post(http, seeder, "/s.bin")
        await until(lambda: complete(http, seeder), 90, "the seeder's download")
        await until(lambda: _relay_peers(http, edge.url), 10, "the relay")
        rid = RelayHub.relay_id("127.1.0.5", None, (await status(http, seeder.urls["gateway"]))["peer_id"])
        cid = (await status(http, edge.url))["contents"][0]["id"]
    return edge, seeder, rid, cid


async def _drain(resp: aiohttp.ClientResponse) -> str | None:
    """Read a streamed answer to its end: None if it ended cleanly, else how it was cut."""
    try:
        async for _ in resp.content.iter_any():
            pass
    except aiohttp.ClientError as exc:
        return type(exc).__name__
    return None


async def test_a_restarted_edge_hands_its_relayed_peers_out_again_at_once(tmp_path, nodes, origin, published, regions, http):
    """A restarted edge keeps no relayed peer (its swarm snapshot leaves them out); they reopened their relays within
    seconds but were handed out again only at their next full announce, an interval later (300 s at the defaults), and
    its viewers took everything from the edge meanwhile (a review).  The edge at its defaults here."""
    make_file(published / "f.bin", SIZE)
    args = ("--cache", str(tmp_path / "edge"), "--parent", origin.url, "--p2p", "--regions", str(regions))
    edge = nodes.start("edge", *args, name="edge")
    seeder = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "hidden", "--unreachable")
    await post(http, seeder, "/f.bin")
    st = await until(lambda: complete(http, seeder), 90, "the seeder's download")
    cid = st["swarms"][0]["id"]
    port = edge.url.rsplit(":", 1)[1]
    edge.stop()
    edge = nodes.start("edge", *args, "--listen", f"127.0.0.1:{port}", name="edge-again")
    handed = await until(lambda: _relayed(http, edge.url, cid), 20, "the relayed seeder handed out by the restarted edge")
    assert handed[0].startswith(f"{edge.url}/relay/")


async def _relayed(http: aiohttp.ClientSession, edge: str, cid: str) -> list[str]:
    """The relay URLs ``edge``'s tracker hands a viewer of ``cid`` (8 pieces) out."""
    body = {"peer_id": "viewer", "port": 9000, "content": cid, "pieces": 8, "have": "AA==", "event": "started"}
    body |= {"uploaded": 0, "downloaded": 0}
    async with http.post(edge + "/announce", json=body) as r:
        peers = (await r.json()).get("peers", []) if r.status == 200 else []
    return [p["url"] for p in peers if "/relay/" in p["url"]]


async def test_edges_sharing_a_store_hand_a_relayed_peer_out_at_a_live_relay_once_one_dies(
    tmp_path,
    nodes,
    origin,
    published,
    regions,
    http,
    redis_url,  # noqa: F811
):
    """Two edges share one Redis tracker store, whose one record of a relayed peer names the relay of the edge that took
    its last announce.  That edge SIGKILLed, the other handed the peer out at the dead relay until the peer's next full
    announce (300 s at the defaults here), though the peer held a live relay at it (an adversarial session): the peer
    now announces again where its relay is open, as soon as it loses one."""
    make_file(published / "f.bin", SIZE)
    edges = {}
    for name in ("edge-a", "edge-b"):
        args = ("--cache", str(tmp_path / name), "--parent", origin.url, "--p2p", "--regions", str(regions))
        edges[name] = nodes.start("edge", *args, "--tracker-store", redis_url, name=name)
    a, b = edges["edge-a"], edges["edge-b"]
    seeder = start_peer(nodes, tmp_path, a.url, "127.1.0.1", "hidden", "--edge", b.url, "--unreachable")
    await post(http, seeder, "/f.bin")
    st = await until(lambda: complete(http, seeder), 90, "the seeder's download")
    cid = st["swarms"][0]["id"]
    for url in (a.url, b.url):
        await until(functools.partial(_relay_peers, http, url), 10, f"the seeder's relay at {url}")
    await until(lambda: _relayed(http, a.url, cid), 20, "the relayed seeder handed out")
    await asyncio.sleep(2)  # its "completed" announces to both edges have landed: the record names the last one's relay
    named = (await _relayed(http, a.url, cid))[0]
    dead, alive = (a, b) if named.startswith(f"{a.url}/relay/") else (b, a)

    dead.kill()

    async def at_a_live_relay() -> bool:
        handed = await _relayed(http, alive.url, cid)
        return bool(handed) and handed[0].startswith(f"{alive.url}/relay/")

    await until(at_a_live_relay, 20, f"{alive.url} to hand the seeder out at its own relay, not at {named}")
    assert f"relay at {dead.url} closed: announcing again to {alive.url}, where ours is open" in seeder.log_text()
