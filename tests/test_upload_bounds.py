"""What one requester or one neighbour may cost a peer, end to end: pieces in flight, and HAVE streams.

A requester that asks for many pieces at once and reads none is refused
(429) beyond a few, and the peer's memory stays flat; a neighbour whose HAVE
stream floods or sends an endless line has that stream closed, once logged,
and the download goes on from the edge (docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from pathlib import Path

import aiohttp
import conftest
import pytest
from aiohttp import web
from conftest import DoubleServer, announce_empty, complete, make_file, post, start_p2p_edge, until

from edgeswarm.policy import bitfield

pytestmark = pytest.mark.integration  # starts daemons as subprocesses

REGIONS = "regions:\n  - {name: east, isp: att, networks: [127.1.0.0/16, 127.0.0.0/16, 127.9.0.0/16]}\n"
SIZE = 8 * 1024 * 1024  # 32 pieces of 256 KiB


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def unread_piece_requests(upload: str, cid: str, n: int, address: str, peer_id: str) -> list[socket.socket]:
    """``n`` connections from ``address``, each asking for a piece as ``peer_id`` and reading nothing."""
    host, port = upload.removeprefix("http://").rsplit(":", 1)
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((address, 0))
        s.connect((host, int(port)))
        s.sendall(f"GET /piece/{cid}/{i % 32} HTTP/1.1\r\nHost: x\r\nX-Edgeswarm-Peer: {peer_id}\r\n\r\n".encode())
        socks.append(s)
    return socks


def answer_statuses(socks: list[socket.socket]) -> dict[str, int]:
    """The status line each connection has received so far ("" for none)."""
    counts: dict[str, int] = {}
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(12).decode(errors="replace")[9:12]
        except BlockingIOError:
            head = ""
        counts[head] = counts.get(head, 0) + 1
    return counts


async def test_unread_piece_requests_from_one_requester_are_refused_and_cost_no_memory(tmp_path, nodes, origin, published, regions, http):
    make_file(published / "f.bin", SIZE)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    victim = nodes.start(  # no upload cap: answers go out as fast as the socket takes them, the case that held memory
        "peer", *("--cache", str(tmp_path / "v"), "--edge", edge.url, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"), name="v"
    )
    await post(http, victim, "/f.bin")
    await until(lambda: complete(http, victim), 60, "the victim did not complete")
    cid = (await conftest.status(http, victim.urls["gateway"]))["swarms"][0]["id"]
    before = rss_kb(victim.pid)
    socks = unread_piece_requests(victim.urls["upload"], cid, 400, "127.9.0.1", "atk")
    try:
        await asyncio.sleep(3)
        grown = rss_kb(victim.pid) - before
        statuses = answer_statuses(socks)
        print(f"400 unread requests: answers {statuses}; the victim's RSS grew {grown} kB")
        assert statuses.get("429", 0) >= 380, statuses  # a few in flight, the rest refused
        assert grown < 60_000  # main's +100 MB (a piece held per request), with room for a busy machine
        headers = {"X-Edgeswarm-Peer": "honest"}
        connector = aiohttp.TCPConnector(local_addr=("127.9.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as other,
            other.get(f"{victim.urls['upload']}/piece/{cid}/0", headers=headers) as resp,
        ):
            assert resp.status == 200 and len(await resp.read()) == 256 * 1024
        st = await conftest.status(http, victim.urls["gateway"])
        assert st["events"].get("upload_busy", 0) >= 380, st["events"]
    finally:
        for s in socks:
            s.close()


class HostileNeighbour(DoubleServer):
    """A tracker-listed neighbour holding nothing, whose HAVE stream floods heartbeats or sends an endless line."""

    def __init__(self, addr: str, mode: str):
        self.host, self.mode = addr, mode
        self.streams = 0  # HAVE subscriptions opened to it
        self.cut = 0  # ... that the subscriber closed

    async def have(self, request: web.Request) -> web.StreamResponse:
        if "x-ndjson" not in request.headers.get("Accept", ""):
            return web.json_response({"bitfield": bitfield.encode((), self.pieces)})
        self.streams += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            if self.mode == "flood":
                while True:  # about 600 kB/s of heartbeats
                    await resp.write(b"{}\n" * 2000)
                    await asyncio.sleep(0.01)
            await resp.write(b'{"have": [')
            while True:  # one line that never ends
                await resp.write(b"0," * 32768)
                await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError):
            self.cut += 1
        return resp

    async def piece(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="not held")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/have/{cid}", self.have)
        app.router.add_get("/piece/{cid}/{i}", self.piece)

    async def start(self, edge: str, cid: str, pieces: int) -> None:
        self.pieces = pieces
        await self.__aenter__()
        await announce_empty(edge, self.host, f"hostile-{self.host}", self.port, cid, pieces)


@pytest.mark.parametrize("mode", ["flood", "endless"])
async def test_a_hostile_have_stream_is_closed_once_logged_and_the_download_completes(
    tmp_path, nodes, origin, published, regions, http, mode
):
    data = make_file(published / "f.bin", SIZE)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions, "--upload-limit", "2MB/s")
    async with http.get(edge.url + "/manifest/f.bin") as r:
        cid = (await r.json())["id"]
    hostile = [HostileNeighbour(f"127.1.0.{n}", mode) for n in (61, 62)]
    for h in hostile:
        await h.start(edge.url, cid, 32)
    try:
        victim = conftest.start_peer(nodes, tmp_path, edge.url, "127.1.0.63", "v")
        started = time.monotonic()
        async with asyncio.timeout(40), http.get(victim.urls["gateway"] + "/f.bin") as resp:
            assert resp.status == 200
            body = await resp.read()
        took = time.monotonic() - started
        print(f"{mode}: the download took {took:.1f} s; streams opened {[h.streams for h in hostile]}, cut {[h.cut for h in hostile]}")
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        assert took < 25  # 8 MiB at the edge's 2 MB/s is about 4 s
        await until(lambda: _all_cut(hostile), 10, "a hostile stream was never closed")
        assert all(h.streams == 1 for h in hostile), "a stream closed for abuse was reopened within its back-off"
    finally:
        for h in hostile:
            await h.__aexit__()
    log = (tmp_path / "logs" / "v.log").read_text()
    assert log.count("HAVE stream closed") == 2, log[-3000:]  # one line per hostile stream
    assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]


async def _all_cut(hostile: list[HostileNeighbour]) -> bool:
    return all(h.cut for h in hostile)


async def _held_seed(tmp_path, nodes, origin, published, regions, http):
    """A peer at 127.1.0.1 holding a whole file, with no upload cap (answers leave as fast as the socket takes them)."""
    make_file(published / "f.bin", SIZE)
    edge = start_p2p_edge(nodes, tmp_path, origin.url, regions)
    seed = nodes.start(
        "peer", *("--cache", str(tmp_path / "s"), "--edge", edge.url, "--listen", "127.1.0.1:0", "--gateway", "127.0.0.1:0"), name="s"
    )
    await post(http, seed, "/f.bin")
    await until(lambda: complete(http, seed), 60, "the seed did not complete")
    return seed, (await conftest.status(http, seed.urls["gateway"]))["swarms"][0]["id"]


async def _piece_status(upload: str, cid: str, address: str, peer_id: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{upload}/piece/{cid}/1", headers={"X-Edgeswarm-Peer": peer_id}) as resp,
    ):
        await resp.read()
        return resp.status


async def test_a_stranger_stating_a_neighbours_id_does_not_use_up_its_places(tmp_path, nodes, origin, published, regions, http):
    """Ids are public (the tracker's answers list them); one stated from another address is another requester."""
    seed, cid = await _held_seed(tmp_path, nodes, origin, published, regions, http)
    socks = unread_piece_requests(seed.urls["upload"], cid, 4, "127.9.0.66", "victim")  # the most pieces one id may have in flight
    try:
        await asyncio.sleep(1)
        assert answer_statuses(socks).get("429", 0) == 0  # all four in flight
        assert await _piece_status(seed.urls["upload"], cid, "127.9.0.2", "victim") == 200  # the real one, at its address
    finally:
        for s in socks:
            s.close()


async def test_one_address_running_many_ids_holds_at_most_half_the_upload_slots(tmp_path, nodes, origin, published, regions, http):
    """Ids cost nothing: seven from one address took all six slots of a seed (docs/security.md)."""
    seed, cid = await _held_seed(tmp_path, nodes, origin, published, regions, http)
    socks = [s for i in range(7) for s in unread_piece_requests(seed.urls["upload"], cid, 1, "127.9.0.66", f"sybil{i}")]
    try:
        await asyncio.sleep(1)
        statuses = answer_statuses(socks)
        assert statuses.get("200", 0) == 3 and statuses.get("429", 0) == 4, statuses
        assert await _piece_status(seed.urls["upload"], cid, "127.9.0.2", "honest") == 200  # a slot is left for another address
    finally:
        for s in socks:
            s.close()
