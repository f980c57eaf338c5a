"""Promoted peers as sub-trackers (issue 14, item 3): real daemons on loopback.

One peer uploads fast and is promoted; the edge's answers to the others name
it as their tracker, and they send their refreshes there, announcing to the
edge only every other interval: the edge's announce load falls while the
sub-tracker's counter rises, and downloads still complete byte-identical.
The sub-tracker takes only the edge's tickets, for that content and peer.
Killed, it is demoted; its peers go back to the edge and keep working.
A slow one (a test double) holds no peer's news to its edge.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from conftest import DoubleServer, complete, content_id, make_file, post, sha, start_p2p_edge, start_peer, status, until

from edgeswarm.policy import bitfield
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_or_create_private_key, load_private_key

SIZE = 2 * 1024 * 1024  # 8 pieces of 256 KiB
PIECES = 8
REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16]}\n"
SLOW = "2KB/s"  # the other peers' upload cap: far below --promote-upload, so only the fast one is promoted


async def identical(http: aiohttp.ClientSession, peer, data: bytes) -> None:
    async with http.get(peer.urls["gateway"] + "/p.bin") as resp:
        assert resp.status == 200 and sha(await resp.read()) == sha(data)


async def sub_tracked(http: aiohttp.ClientSession, peer, tracker: str) -> bool:
    """``peer`` has had rounds answered by ``tracker``, which its edge names now."""
    route = (await status(http, peer.urls["gateway"]))["announce_route"]
    return tracker in route["named"].values() and route["rounds_answered"] >= 2


async def load(http: aiohttp.ClientSession, edge: str, sub: str) -> tuple[int, int]:
    """(announces the edge received, announces the sub-tracker answered), in all so far."""
    return (await status(http, edge))["announces"]["requests"], (await status(http, sub))["subtracker"]["announces"]


async def test_a_promoted_peer_tracks_for_its_region_and_its_peers_go_back_to_the_edge_when_it_is_killed(
    tmp_path, nodes, origin, published, regions, http
):
    data = make_file(published / "p.bin", SIZE)
    edge = start_p2p_edge(
        nodes, tmp_path, origin.url, regions, "--announce-interval", "1", "--upload-limit", "600KB/s",
        "--promote-upload", "50KB/s", "--promote-uptime", "1",
    )  # fmt: skip
    fast = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "fast", "300KB/s")
    await post(http, fast, "/p.bin")
    await until(lambda: complete(http, fast), 60, "the fast peer's download")
    slow = [start_peer(nodes, tmp_path, edge.url, f"127.1.0.{i}", f"slow{i}", SLOW) for i in (2, 3)]
    for p in slow:
        await post(http, p, "/p.bin")
    promoted = await until(lambda: _promoted(http, edge.url), 60, "a promotion")
    assert promoted == [fast.urls["upload"]]
    for p in slow:
        await until(lambda p=p: complete(http, p), 90, "the slow peers' downloads")
        await until(lambda p=p: sub_tracked(http, p, fast.urls["upload"]), 30, "refreshes at the sub-tracker")
    assert (await status(http, edge.url))["promotion"]["subtracker_assignments"] == 2

    edge_before, sub_before = await load(http, edge.url, fast.urls["gateway"])
    await asyncio.sleep(6)
    edge_after, sub_after = await load(http, edge.url, fast.urls["gateway"])
    at_edge, at_sub = edge_after - edge_before, sub_after - sub_before
    # each interval: the promoted peer at the edge, each other peer at the edge or (every other round) the sub-tracker
    assert at_sub >= 2 and at_sub >= 0.2 * (at_edge + at_sub), (at_edge, at_sub)
    sub = (await status(http, fast.urls["gateway"]))["subtracker"]
    assert sub["active"] and sub["peers_known"] >= 2 and not sub["refused"], sub
    async with http.get(fast.urls["gateway"] + "/metrics") as resp:
        assert "edgeswarm_subtracker_announces_total" in await resp.text()

    viewer = start_peer(nodes, tmp_path, edge.url, "127.1.0.4", "viewer", SLOW)
    await post(http, viewer, "/p.bin")
    await until(lambda: complete(http, viewer), 90, "the viewer's download")
    await identical(http, viewer, data)
    await until(lambda: sub_tracked(http, viewer, fast.urls["upload"]), 30, "the viewer's refreshes at the sub-tracker")
    st = await status(http, viewer.urls["gateway"])
    assert st["swarms"][0]["neighbours"], st["swarms"][0]

    # restarted, a peer told its sub-tracker "stopped" at its shutdown: its first round there says "started", or it is
    # refused (409: an update after a stop) and sets the sub-tracker aside for three intervals (an adversarial session)
    again = slow[0]
    again.stop()
    again.start()
    await until(lambda: sub_tracked(http, again, fast.urls["upload"]), 30, "the restarted peer's refreshes at the sub-tracker")
    assert (await status(http, again.urls["gateway"]))["announce_route"]["fallbacks"] == 0

    fast.kill()
    await until(lambda: _demoted(http, edge.url), 20, "the demotion of the killed peer")
    for p in [*slow, viewer]:
        await until(lambda p=p: _back_at_edge(http, p), 20, "the peers back at their edge")
    late = start_peer(nodes, tmp_path, edge.url, "127.1.0.5", "late", SLOW)
    await post(http, late, "/p.bin")
    await until(lambda: complete(http, late), 90, "a download after the demotion")
    await identical(http, late, data)
    assert (await status(http, edge.url))["promotion"]["subtracker_assignments"] == 0


async def test_a_sub_tracker_takes_only_its_edges_tickets_for_that_content_and_peer(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "p.bin", SIZE)
    make_file(published / "q.bin", SIZE // 2)
    edge = start_p2p_edge(
        nodes, tmp_path, origin.url, regions, "--announce-interval", "1", "--upload-limit", "600KB/s",
        "--promote-upload", "50KB/s", "--promote-uptime", "1",
    )  # fmt: skip
    fast = start_peer(nodes, tmp_path, edge.url, "127.1.0.1", "fast", "300KB/s")
    slow = start_peer(nodes, tmp_path, edge.url, "127.1.0.2", "slow", SLOW)
    await post(http, fast, "/p.bin")
    await until(lambda: complete(http, fast), 60, "the fast peer's download")
    async with http.post(fast.urls["upload"] + "/announce", json={}) as resp:
        assert resp.status == 404, await resp.text()  # not promoted yet: not a sub-tracker
    await post(http, slow, "/p.bin")
    await until(lambda: _promoted(http, edge.url), 60, "a promotion")

    cid, other = await content_id(http, edge.url, "p.bin"), await content_id(http, edge.url, "q.bin")
    key = load_or_create_private_key(tmp_path / "edge" / "swarm.key")
    doc = {"peer_id": "probe", "port": 7000, "content": cid, "pieces": PIECES, "have": bitfield.encode((), PIECES)}
    doc |= {"uploaded": 0, "downloaded": 0, "event": "started"}
    url = fast.urls["upload"] + "/announce"

    async def announce(body: dict) -> tuple[int, dict | str]:
        async with http.post(url, json=body) as resp:
            return resp.status, (await resp.json() if resp.status == 200 else await resp.text())

    assert (await announce(doc))[0] == 401  # no ticket
    forged = tokens.issue_ticket(load_or_create_private_key(tmp_path / "stranger.key"), "probe", "-", cid, 60)
    assert (await announce({**doc, "ticket": forged}))[0] == 401  # not signed by its edge
    assert (await announce({**doc, "ticket": tokens.issue_ticket(key, "probe", "-", other, 60, region="east")}))[
        0
    ] == 403  # another content's
    assert (await announce({**doc, "ticket": tokens.issue_ticket(key, "someone", "-", cid, 60, region="east")}))[0] == 403  # another peer's
    assert (await announce({**doc, "ticket": tokens.issue_ticket(key, "probe", "-", cid, 60, region="west")}))[0] == 403  # another region's
    code, answer = await announce({**doc, "ticket": tokens.issue_ticket(key, "probe", "-", cid, 60, region="east")})
    assert code == 200 and isinstance(answer, dict) and "ticket" not in answer, answer
    urls = {p["url"] for p in answer["peers"]}
    assert fast.urls["upload"] in urls and all(p["peer_id"] != "probe" for p in answer["peers"]), answer  # itself, never the asker

    batch = {"peer_id": "probe", "port": 7000, "contents": [{k: v for k, v in doc.items() if k not in ("peer_id", "port")}]}
    code, answer = await announce(batch)
    assert code == 200 and answer["contents"][cid]["error"]["status"] == 401, answer  # a batch: the item refused, in its place
    async with http.post(url, json={**batch, "contents": []}) as resp:
        assert resp.status == 400
    async with http.post(url, data=b"{", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    st = (await status(http, fast.urls["gateway"]))["subtracker"]
    assert st["refused"]["401"] >= 3 and st["refused"]["403"] == 3, st


async def _promoted(http: aiohttp.ClientSession, edge: str) -> list[str]:
    return (await status(http, edge))["promotion"]["promoted"]


async def _demoted(http: aiohttp.ClientSession, edge: str) -> bool:
    promotion = (await status(http, edge))["promotion"]
    return not promotion["promoted"] and promotion["demotions"] >= 1


async def _back_at_edge(http: aiohttp.ClientSession, peer) -> bool:
    return not (await status(http, peer.urls["gateway"]))["announce_route"]["named"]


async def test_under_require_token_a_sub_tracker_keeps_the_rounds_of_contents_it_does_not_hold(
    tmp_path, nodes, origin, published, regions, http
):
    """Under --require-token a sub-tracker looked up a content it does not hold with no token (the edge said 401), and
    one refused content failed a peer's whole round: the sub-tracker was set aside for up to 48 intervals (an
    adversarial session).  It asks with its own token; a content it still refuses (its user's token does not cover
    the path) goes to the edge, and it keeps the rest of the round."""
    for name, size in (("films/p.bin", SIZE), ("films/q.bin", SIZE // 2), ("music/m.bin", SIZE // 2)):
        make_file(published / name, size)
    key = load_private_key(published / ".edgeswarm" / "origin.key")
    edge = start_p2p_edge(
        nodes, tmp_path, origin.url, regions, "--require-token", "--announce-interval", "1", "--upload-limit", "600KB/s",
        "--promote-upload", "50KB/s", "--promote-uptime", "1",
    )  # fmt: skip

    def peer(name: str, addr: str, upload: str, scope: str):
        args = ("--cache", str(tmp_path / name), "--edge", edge.url, "--listen", f"{addr}:0", "--gateway", "127.0.0.1:0")
        return nodes.start("peer", *args, "--upload-limit", upload, "--token", tokens.issue(key, name, scope, 3600), name=name)

    fast = peer("alice", "127.1.0.1", "300KB/s", "/films/")  # the sub-tracker-to-be: its token covers films only
    await post(http, fast, "/films/p.bin")
    await until(lambda: complete(http, fast), 60, "the fast peer's download")
    slow = peer("bob", "127.1.0.2", SLOW, "/")
    await post(http, slow, "/films/p.bin")
    await until(lambda: _promoted(http, edge.url), 60, "a promotion")
    await until(lambda: complete(http, slow), 90, "the slow peer's download")
    await until(lambda: sub_tracked(http, slow, fast.urls["upload"]), 30, "refreshes at the sub-tracker")

    for path in ("/films/q.bin", "/music/m.bin"):  # not held by the sub-tracker; the second not in its token's scope
        await post(http, slow, path)
    await until(lambda: complete(http, slow), 90, "the slow peer's other downloads")
    before = (await status(http, slow.urls["gateway"]))["announce_route"]["rounds_answered"]
    await until(lambda: _answered_since(http, slow, before + 3), 30, "rounds with every content answered at the sub-tracker or the edge")
    route = (await status(http, slow.urls["gateway"]))["announce_route"]
    assert route["fallbacks"] == 0 and not route["set_aside"], route
    refused = (await status(http, fast.urls["gateway"]))["subtracker"]["refused"]
    assert set(refused) == {"502"}, refused  # music/m.bin alone: the edge refuses its manifest to alice's token
    # and the edge still hears of every content of the slow peer: the refused one's round every round took the place
    # of the round of all contents due every 1.5 intervals, and the edge forgot the others after a ttl (a review)
    for _ in range(8):  # over two ttls (3 intervals of 1 s each)
        regions = (await status(http, edge.url))["p2p"]["regions"]
        assert sum(r.get("swarm_memberships", 0) for r in regions.values()) == 4, regions  # alice's 1, bob's 3
        await asyncio.sleep(1)


async def _answered_since(http: aiohttp.ClientSession, peer, rounds: int) -> bool:
    return (await status(http, peer.urls["gateway"]))["announce_route"]["rounds_answered"] >= rounds


class SlowSubTracker(DoubleServer):
    """A promoted peer that answers each announce batch ``delay`` seconds late, under the peer's 5 s timeout: an
    overloaded uplink, or a hostile peer. It logs each batch of a round (one ends with a batch of fewer than 50)."""

    host = "127.1.0.99"

    def __init__(self, asker: str, delay: float):
        self.asker, self.delay = asker, delay
        self.t0 = time.monotonic()
        self.log: list[str] = []
        self.in_round = False  # a round of the asker's is under way here
        self.round_began = asyncio.Event()

    def say(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:6.1f} s {what}")

    async def announce(self, request: web.Request) -> web.Response:
        items = (await request.json())["contents"]
        if request.remote == self.asker and not self.in_round:
            self.in_round = True
            self.round_began.set()
        self.say(f"got a batch of {len(items)} from {request.remote}")
        await asyncio.sleep(self.delay)
        self.say(f"answered the batch of {len(items)}")
        if request.remote == self.asker and len(items) < 50:  # BATCH: the round's last
            self.in_round = False
        return web.json_response({"interval": 2, "region": "east", "contents": {it["content"]: {"peers": []} for it in items}})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/announce", self.announce)


async def _claim_uploads(edge: str, double: SlowSubTracker, cid: str) -> None:
    """The double announces itself to the edge as a seed of ``cid`` uploading 100 KB/s, which gets it promoted."""
    uploaded = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(double.host, 0))) as s:
        while True:
            doc = {"peer_id": "slowsubtracker01", "port": double.port, "content": cid, "pieces": 1}
            doc |= {"have": bitfield.encode({0}, 1), "uploaded": uploaded, "downloaded": 0, "event": "update" if uploaded else "started"}
            async with s.post(edge + "/announce", json=doc) as r:
                await r.read()
            uploaded += 100_000
            await asyncio.sleep(1)


async def _lists(edge: str, cid: str, url: str) -> bool:
    """Whether the edge's answer to another peer of the region (127.1.0.77) lists ``url`` for ``cid``."""
    doc = {"peer_id": "asker00000000001", "port": 1, "content": cid, "pieces": 1, "have": bitfield.encode((), 1)}
    doc |= {"uploaded": 0, "downloaded": 0, "event": "started"}
    connector = aiohttp.TCPConnector(local_addr=("127.1.0.77", 0))
    async with aiohttp.ClientSession(connector=connector) as s, s.post(edge + "/announce", json=doc) as r:
        answer = await r.json() if r.status == 200 else {}
    return any(p["url"] == url for p in answer.get("peers", []))


async def test_a_slow_sub_tracker_holds_no_news_of_its_peers_to_their_edge(tmp_path, nodes, origin, published, regions, http):
    """A promoted peer answering each batch of 50 in just under the peer's 5 s timeout held the whole round, and with
    it the peer's news (a content completed) to its edge: ceil(contents / 50) x its answer time (an adversarial
    session: 18 s in a big region). The edge hears the news while the sub-tracker still holds the round."""
    names = [f"f{i:03d}.bin" for i in range(120)]  # three batches at the sub-tracker: 50, 50, 20
    for name in [*names, "news.bin"]:
        make_file(published / name, 1000)
    edge = start_p2p_edge(
        nodes, tmp_path, origin.url, regions, "--announce-interval", "2", "--promote-upload", "10KB/s", "--promote-uptime", "2"
    )
    peer = start_peer(nodes, tmp_path, edge.url, "127.1.0.5", "peer")
    async with SlowSubTracker("127.1.0.5", 3.5) as double:
        claims = asyncio.create_task(_claim_uploads(edge.url, double, await content_id(http, edge.url, "f000.bin")))
        try:
            await until(lambda: _promoted(http, edge.url), 30, "the double's promotion")
            for name in names:
                await post(http, peer, "/" + name)
            await until(lambda: complete(http, peer), 60, "the peer's downloads")
            news = await content_id(http, edge.url, "news.bin")
            double.round_began.clear()
            async with asyncio.timeout(60):
                await double.round_began.wait()  # a round of the peer's begins at the sub-tracker
            double.say("news.bin asked of the peer")
            async with http.get(peer.urls["gateway"] + "/news.bin") as resp:
                assert resp.status == 200 and len(await resp.read()) == 1000
            url = peer.urls["upload"]
            await until(lambda: _lists(edge.url, news, url), 60, "the edge's listing of the peer for news.bin")
            double.say("the edge lists the peer for news.bin")
            held = double.in_round
            await until(lambda: _answered_since(http, peer, 1), 30, "a round answered at the sub-tracker")
            route = (await status(http, peer.urls["gateway"]))["announce_route"]  # read before the double closes (a round
            # it holds then fails)
        finally:
            claims.cancel()
    # the log says when the news reached the edge: while the round was still held at the sub-tracker, not after it
    assert held, "\n".join(double.log)
    assert route["named"] and route["fallbacks"] == 0, route  # slow, not failed: it answers under the timeout
