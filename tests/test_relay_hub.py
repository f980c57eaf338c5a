"""The relay's wire format and its limits, in one process: the edge's real RelayHub, and a relayed peer played by a test.

The test's WebSocket client stands where a relayed peer would and answers as
the test says: rightly, with too many bytes, not at all, or by hanging up.
What the hub must do each time is the contract of docs/protocol.md#relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from conftest import serve_app
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.policy.engine import host_of
from edgeswarm.protocol import relay
from edgeswarm.protocol.manifest import Manifest, SignedManifest
from edgeswarm.roles.relay import RelayClient, RelayHub, RelayLimits, relayed_middleware


def signed_file(path: str, data: bytes, piece: int) -> SignedManifest:
    """The manifest of ``data`` in pieces of ``piece`` bytes, signed by a key of its own."""
    pieces = tuple(hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece))
    return SignedManifest.sign(Manifest(path, len(data), "application/octet-stream", piece, pieces, 0), Ed25519PrivateKey.generate())


PIECE = 256 * 1024
DATA = os.urandom(2 * PIECE)
MANIFEST = signed_file("f.bin", DATA, PIECE)
CID = MANIFEST.content_id
PEER = "hidden-peer"
KEY = "-----BEGIN PUBLIC KEY-----\nTHE EDGE'S OWN KEY\n-----END PUBLIC KEY-----\n"  # the edge's /swarm-key in these tests
FORGED = b"-----BEGIN PUBLIC KEY-----\nATTACKER'S KEY\n-----END PUBLIC KEY-----\n"
# a whole HTTP answer in a relayed body: read as the answer to the requester's next request if the body reached its connection
INJECTED = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\nContent-Length: %d\r\n\r\n%s" % (len(FORGED), FORGED)

Answer = Callable[[aiohttp.ClientWebSocketResponse, relay.Request], Awaitable[None]]


# -- the wire format -----------------------------------------------------------------------
def test_frames_round_trip_and_anything_else_is_refused():
    for frame in (
        relay.Request(7, f"/piece/{CID}/1", {"X-Edgeswarm-Peer": "p"}, "192.0.2.1"),
        relay.Request(8, f"/have/{CID}", {}, "2001:db8::1"),
        relay.Head(7, 429, {"Retry-After": "2"}),
        relay.End(7),
        relay.End(7, "broke off"),
        relay.Cancel(9),
    ):
        assert relay.decode(relay.encode(frame)) == frame
    assert relay.split_data(relay.data_frame(5, b"abc")) == (5, b"abc")
    for bad in (
        "[]",
        '{"id": -1, "cancel": true}',
        '{"id": 1, "status": 99}',
        '{"id": 1, "status": 200, "headers": {"a": 1}}',
        json.dumps({"id": 1, "path": "/status", "headers": {}, "remote": "x"}),  # only the two upload endpoints cross
        json.dumps({"id": 1, "path": f"/piece/{CID}/../../x", "headers": {}, "remote": "x"}),
        json.dumps({"id": 1, "path": f"/piece/{CID}/1", "headers": {}}),  # no requester address
    ):
        with pytest.raises(ValueError):
            relay.decode(bad)
    with pytest.raises(ValueError):
        relay.split_data(b"\x00\x01")


def test_only_the_statuses_and_headers_an_upload_server_sends_pass_a_relay():
    assert relay.vet(relay.Head(1, 429, {"Retry-After": "2", "Content-Length": "17", "X-Other": "x"})) == ({"Retry-After": "2"}, 17)
    assert relay.vet(relay.Head(1, 200, {"Content-Type": "application/x-ndjson"})) == ({"Content-Type": "application/x-ndjson"}, None)
    for status in (100, 101, 204, 206, 304, 302, 416, 502, 599):  # no body, or never answered by a peer's upload server
        with pytest.raises(ValueError, match=f"status {status}"):
            relay.vet(relay.Head(1, status, {}))
    for headers in (
        {"Content-Type": "text/plain\r\nX-Injected: 1"},
        {"Retry-After": "1\nX"},
        {"Content-Type": "\u00e9\u2028"},
        {"Content-Length": "-1"},
    ):
        with pytest.raises(ValueError):
            relay.vet(relay.Head(1, 200, headers))


def test_only_listed_headers_cross_a_relay():
    picked = relay.pick({"Authorization": "Bearer t", "Cookie": "x", "Host": "evil", "X-Edgeswarm-Peer": "p"}, relay.REQUEST_HEADERS)
    assert picked == {"Authorization": "Bearer t", "X-Edgeswarm-Peer": "p"}


def test_a_relay_id_is_the_address_groups_then_the_identitys_and_a_ban_holds_the_address_part():
    a = RelayHub.relay_id("192.0.2.1", None, "p1")
    b = RelayHub.relay_id("192.0.2.1", None, "p2")
    c = RelayHub.relay_id("192.0.2.2", None, "p1")
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", a) and a != b and a != c
    assert a.split("-")[0] == b.split("-")[0] != c.split("-")[0]
    assert RelayHub.relay_id("192.0.2.1", "alice", "p1") != a  # a token user's peer is its own identity
    # a receiver's ban of one relayed peer holds its address's other ids, never the relay's other peers
    assert host_of(f"http://edge:8080/relay/{a}") == host_of(f"http://edge:8080/relay/{b}") != host_of(f"http://edge:8080/relay/{c}")
    assert host_of(f"http://edge:8080/relay/{a}") != host_of("http://edge:8080")
    assert host_of("http://192.0.2.9:6881") == "192.0.2.9"


# -- the hub and a relayed peer played by the test --------------------------------------------
@contextlib.asynccontextmanager
async def hub_with_peer(
    answer: Answer, limits: RelayLimits | None = None, manifest: SignedManifest = MANIFEST
) -> AsyncIterator[tuple[str, RelayHub]]:
    """An edge's relay on loopback and one relayed peer connected to it that answers with ``answer``; yields its relay URL."""
    hub = RelayHub(limits or RelayLimits(requests=2, timeout=0.5), {manifest.content_id: manifest}.get)
    app = make_app(Metrics("edge"))

    async def connect(request: web.Request) -> web.StreamResponse:
        return await hub.connect(request, None)

    app.router.add_get("/relay", connect)
    app.router.add_get("/relay/{rid}/{tail:.*}", hub.forward)
    app.router.add_get("/swarm-key", _swarm_key)  # one of the edge's own endpoints, on the same connections
    app.on_shutdown.append(lambda _: hub.close())
    async with serve_app(app) as port, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{port}"
        ws = await session.ws_connect(f"{base}/relay", headers={"X-Edgeswarm-Peer": PEER})
        tasks: set[asyncio.Task] = set()

        async def serve() -> None:
            async for msg in ws:
                frame = relay.decode(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
                if isinstance(frame, relay.Request):
                    task = asyncio.create_task(answer(ws, frame))
                    tasks.add(task)

        server = asyncio.create_task(serve())
        while not hub.links:
            await asyncio.sleep(0.01)
        try:
            yield hub.url_for(base, "127.0.0.1", None, PEER), hub
        finally:
            server.cancel()
            for task in tasks:
                task.cancel()
            await ws.close()


async def send_body(ws: aiohttp.ClientWebSocketResponse, req: relay.Request, body: bytes) -> None:
    """A 200 with ``body``, as fast as the link takes it: the peer does not wait for the requester."""
    await ws.send_str(relay.encode(relay.Head(req.id, 200, {"Content-Type": "application/octet-stream"})))
    for start in range(0, len(body), 60_000):
        await ws.send_bytes(relay.data_frame(req.id, body[start : start + 60_000]))
    await ws.send_str(relay.encode(relay.End(req.id)))


def piece_of(req: relay.Request, data: bytes, piece: int) -> bytes:
    index = int(req.path.rsplit("/", 1)[1])
    return data[index * piece : (index + 1) * piece]


def sending(data: bytes, piece: int) -> Answer:
    """A relayed peer holding ``data`` in pieces of ``piece`` bytes, answering each request with its piece whole."""
    return lambda ws, req: send_body(ws, req, piece_of(req, data, piece))


async def send_piece(ws: aiohttp.ClientWebSocketResponse, req: relay.Request, extra: bytes = b"") -> None:
    await send_body(ws, req, piece_of(req, DATA, PIECE) + extra)


async def test_a_piece_crosses_the_relay_whole_and_is_counted():
    async with hub_with_peer(send_piece) as (url, hub), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/piece/{CID}/1") as resp:
            assert resp.status == 200 and await resp.read() == DATA[PIECE:]
        assert hub.status()["bytes_out"] == PIECE and hub.status()["requests_in_flight"] == 0


BIG = os.urandom(4 << 20)  # 1 MiB pieces: a file over 1 GiB has pieces this large
BIG_MANIFEST = signed_file("big.bin", BIG, 1 << 20)


async def test_a_large_piece_reaches_a_requester_slower_than_its_relayed_peer():
    """More than 256 KiB waiting for the requester cut the request at once: pieces over 256 KiB (files over 512 MiB)
    failed whenever the peer sent faster than the edge wrote, half of them at loopback speed (a review).  A whole piece
    now waits for its requester."""
    cid = BIG_MANIFEST.content_id
    async with hub_with_peer(sending(BIG, 1 << 20), RelayLimits(requests=2, timeout=2.0), BIG_MANIFEST) as (url, hub):
        async with aiohttp.ClientSession() as http:
            for index in range(2):
                async with http.get(f"{url}/piece/{cid}/{index}") as resp:
                    got = bytearray()
                    async for chunk in resp.content.iter_chunked(32 * 1024):
                        got += chunk
                        await asyncio.sleep(0.01)  # about 3 MB/s: slower than the peer
                    assert resp.status == 200 and bytes(got) == BIG[index << 20 : (index + 1) << 20]
        assert hub.links and hub.status()["requests_in_flight"] == 0


HUGE = os.urandom(8 << 20)  # 4 MiB pieces: a file over 8 GiB has pieces this large
HUGE_MANIFEST = signed_file("huge.bin", HUGE, 4 << 20)


async def test_a_requester_that_stops_reading_holds_none_of_its_relayed_peers_other_requests():
    """The relay paused the peer's link while one requester's queue drained: each requester that stopped reading held
    every other request of that peer 5 s, and several dropped the link (its pings went unanswered; a review)."""
    cid = HUGE_MANIFEST.content_id
    async with hub_with_peer(sending(HUGE, 4 << 20), RelayLimits(requests=4, timeout=2.0), HUGE_MANIFEST) as (url, hub):
        host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
        stalled = []
        for _ in range(2):  # connections that ask and read nothing, their receive buffers small: the edge's writes wait
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall(f"GET {url.split(port, 1)[1]}/piece/{cid}/0 HTTP/1.1\r\nHost: e\r\n\r\n".encode())
            stalled.append(sock)
        try:
            await asyncio.sleep(0.5)
            started = time.monotonic()
            async with aiohttp.ClientSession() as http, http.get(f"{url}/piece/{cid}/1") as resp:
                assert resp.status == 200 and await resp.read() == HUGE[4 << 20 :]
            assert time.monotonic() - started < 3, time.monotonic() - started
            assert hub.links
        finally:
            for sock in stalled:
                sock.close()


async def test_a_relayed_peer_that_sends_more_than_the_piece_is_cut():
    async with hub_with_peer(lambda ws, req: send_piece(ws, req, b"x" * 100)) as (url, hub), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/piece/{CID}/0") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert hub.status()["bytes_out"] <= PIECE


async def test_a_silent_relayed_peer_is_a_504_within_the_relays_timeout():
    async def never(ws, req):
        await asyncio.sleep(3600)

    async with hub_with_peer(never) as (url, _), aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.get(f"{url}/piece/{CID}/0") as resp:
            assert resp.status == 504 and "did not answer within 0.5 s" in await resp.text()
        assert time.monotonic() - started < 3


async def test_requests_beyond_the_relays_limit_are_told_to_retry():
    async def slow(ws, req):
        await asyncio.sleep(0.4)
        await send_piece(ws, req)

    async with hub_with_peer(slow, RelayLimits(requests=2, timeout=5)) as (url, _), aiohttp.ClientSession() as http:

        async def get() -> tuple[int, str | None]:
            async with http.get(f"{url}/piece/{CID}/0") as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        got = await asyncio.gather(*(get() for _ in range(4)))
        assert sorted(s for s, _ in got) == [200, 200, 429, 429]
        assert all(retry == "1" for s, retry in got if s == 429)


async def test_a_relayed_peer_that_hangs_up_mid_request_is_a_quick_502_and_then_503():
    async with contextlib.AsyncExitStack() as stack:

        async def hang_up(ws, req):
            await ws.close()

        url, hub = await stack.enter_async_context(hub_with_peer(hang_up, RelayLimits(timeout=30)))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        started = time.monotonic()
        async with http.get(f"{url}/piece/{CID}/0") as resp:
            assert resp.status == 502 and "disconnected" in await resp.text()
        async with http.get(f"{url}/piece/{CID}/0") as resp:
            assert resp.status == 503 and "not connected" in await resp.text()
        assert time.monotonic() - started < 3 and hub.status()["peers"] == 0


async def test_a_piece_of_a_content_the_relay_does_not_know_is_refused_before_the_peer_is_asked():
    asked = []

    async def count(ws, req):
        asked.append(req)

    async with hub_with_peer(count) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/piece/{'b' * 64}/0") as resp:
            assert resp.status == 404
        async with http.get(f"{url}/piece/{CID}/2") as resp:  # past the last piece
            assert resp.status == 404
    assert asked == []


async def test_only_the_peers_own_relay_client_may_name_a_requesters_address():
    class Host:  # what RelayClient reads of its peer at construction: nothing yet
        pass

    client = RelayClient(Host())  # type: ignore[arg-type]
    app = make_app(Metrics("peer"))
    app.middlewares.append(relayed_middleware(client))
    app.router.add_get("/have/{cid}", _remote)
    async with serve_app(app) as port, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/have/{CID}"
        async with http.get(url) as resp:
            assert await resp.text() == "127.0.0.1"
        async with http.get(url, headers={relay.RELAYED_FOR_HEADER: f"{client.secret} 192.0.2.5"}) as resp:
            assert await resp.text() == "192.0.2.5"
        async with http.get(url, headers={relay.RELAYED_FOR_HEADER: "guess 192.0.2.5"}) as resp:
            assert resp.status == 403


async def _swarm_key(_: web.Request) -> web.Response:
    return web.Response(text=KEY)


def hostile(status: int, headers: dict[str, str], body: bytes = INJECTED) -> Answer:
    """A relayed peer answering every request with this head and body."""

    async def answer(ws: aiohttp.ClientWebSocketResponse, req: relay.Request) -> None:
        await ws.send_str(json.dumps({"id": req.id, "status": status, "headers": headers}))
        await ws.send_bytes(relay.data_frame(req.id, body))
        await ws.send_str(relay.encode(relay.End(req.id)))

    return answer


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (204, {}, INJECTED),  # no body may follow a 204: this one would be read as the next answer
        (101, {}, INJECTED),
        (100, {}, INJECTED),
        (304, {}, INJECTED),
        (599, {}, INJECTED),  # no status a peer's upload server answers
        (200, {"Content-Type": "text/plain\r\nX-Injected: 1"}, INJECTED),
        (429, {"Retry-After": "1\nX-Injected: yes"}, INJECTED),
        (200, {"Content-Type": "\u00e9\u2028"}, INJECTED),
        (200, {"Content-Length": "10"}, INJECTED),  # a piece's answer is its manifest's length, whatever the peer says
        (404, {"Content-Length": "10"}, INJECTED),  # a body longer than it declared
        (404, {"Content-Length": "1000"}, INJECTED),  # and shorter
    ],
)
async def test_a_relayed_answer_that_could_desync_the_requesters_connection_never_reaches_it(status, headers, body, caplog):
    """A clean 502 or a cut connection; the requester's next request on its pooled connection gets the edge's own answer."""
    caplog.set_level(logging.INFO)
    async with hub_with_peer(hostile(status, headers, body)) as (url, hub):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:  # one connection, reused if it may be
            async with http.get(f"{url}/piece/{CID}/0") as resp:
                try:
                    text: str | None = await resp.text()
                except aiohttp.ClientPayloadError:
                    text = None  # cut: the answer had started
                assert text is None or (resp.status == 502 and "refused" in text), (resp.status, text)
            async with http.get(url.split("/relay/")[0] + "/swarm-key") as resp:
                assert resp.status == 200 and await resp.text() == KEY
        assert hub.status()["events"]["bad_frames"] == 1
    assert "Traceback" not in caplog.text and not any(record.exc_info for record in caplog.records)


async def test_a_head_request_is_not_passed_down_a_relay():
    """A HEAD's answer has no body: the relayed peer's piece would be read as the requester's next answer."""
    async with hub_with_peer(send_piece) as (url, _), aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        async with http.head(f"{url}/piece/{CID}/0") as resp:
            assert resp.status == 405
        async with http.get(url.split("/relay/")[0] + "/swarm-key") as resp:
            assert resp.status == 200 and await resp.text() == KEY


async def test_a_relayed_peer_that_sends_bad_frames_is_closed_after_ten_in_a_few_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="edgeswarm.roles.relay")
    async with hub_with_peer(send_piece) as (url, hub), aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url.split("/relay/")[0] + "/relay", headers={"X-Edgeswarm-Peer": "garbage"})
        before = len(caplog.records)
        for i in range(500):
            if ws.closed:
                break
            with contextlib.suppress(ConnectionError):
                await ws.send_str("not json" if i % 2 else json.dumps({"id": 5, "status": 9999}))
        async with asyncio.timeout(5):
            msg = await ws.receive()
            while msg.type != aiohttp.WSMsgType.CLOSE:
                msg = await ws.receive()
        assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION and "10 bad frames" in msg.extra
        assert len(caplog.records) - before <= 8, [r.getMessage() for r in caplog.records[before:]]
        assert hub.status()["events"]["closed_bad_frames"] == 1
        async with http.get(f"{url}/piece/{CID}/1") as resp:  # the well-behaved peer's relay is untouched
            assert resp.status == 200 and await resp.read() == DATA[PIECE:]


async def _remote(request: web.Request) -> web.Response:
    return web.Response(text=request.remote or "")


async def test_relayed_peers_are_counted_per_address_or_per_token_user():
    """As the tracker counts live ids: without a token, an address's peers share its places; a token user's are its
    own (token users behind one carrier-grade NAT address shared its 16 relay places: an adversarial session)."""
    hub = RelayHub(RelayLimits(per_address=2, timeout=0.5), {}.get)
    app = make_app(Metrics("edge"))

    async def connect(request: web.Request) -> web.StreamResponse:
        return await hub.connect(request, request.headers.get("X-Test-User"))

    app.router.add_get("/relay", connect)
    app.on_shutdown.append(lambda _: hub.close())
    async with serve_app(app) as port, aiohttp.ClientSession() as session:
        base, held = f"http://127.0.0.1:{port}/relay", []

        async def join(peer: str, user: str | None = None) -> int:
            headers = {"X-Edgeswarm-Peer": peer, **({"X-Test-User": user} if user else {})}
            try:
                held.append(await session.ws_connect(base, headers=headers))
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            return 101

        assert [await join(p) for p in ("a", "b", "c")] == [101, 101, 429]  # the address's two places
        assert [await join(p, u) for p, u in (("d", "dora"), ("e", "dora"), ("f", "erin"), ("g", "dora"))] == [101, 101, 101, 429]
        for ws in held:
            await ws.close()


@pytest.mark.parametrize(
    ("stopping", "said"), [(False, "502 relayed peer 127.0.0.1/p: relay shutting down"), (True, "503 this node is stopping")]
)
async def test_a_relay_closed_by_a_demotion_is_no_stop_of_the_node(stopping: bool, said: str):
    """A promoted peer that is demoted closes its relay and goes on running: a request through it then was answered "this
    node is stopping" (a review), which only a node that stops says."""
    from edgeswarm.roles.relay import _Pending

    hub = RelayHub(RelayLimits(timeout=5.0), {}.get)
    await hub.close(stopping=stopping)
    pending = _Pending()
    pending.queue.put_nowait(relay.End(1, "relay shutting down"))  # the relayed peer's WebSocket, closed by close()
    with pytest.raises(HttpError) as refused:
        await hub._head(pending, "127.0.0.1/p")
    assert f"{refused.value.status} {refused.value.message}" == said
