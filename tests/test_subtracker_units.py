"""The sub-tracker's answers and checks, in this process (roles/subtracker.py; the daemons' test is test_subtracker.py)."""

from __future__ import annotations

import asyncio

import aiohttp
from conftest import serve_app
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.errors import HttpError
from edgeswarm.node.daemon import make_app
from edgeswarm.node.metrics import Metrics
from edgeswarm.policy import bitfield
from edgeswarm.protocol.manifest import Manifest
from edgeswarm.roles.subtracker import SubTracker
from edgeswarm.trust import tokens

PIECE = 256 * 1024
M = Manifest("a.bin", 4 * PIECE, "application/octet-stream", PIECE, ("0" * 64,) * 4, 0)
CID = "c" * 64
KEY = Ed25519PrivateKey.generate()


async def _verify(raw: str | None, cid: str, peer_id: str | None) -> tokens.Ticket:
    if raw is None:
        raise tokens.TokenError(401, "a swarm ticket is required")
    ticket = tokens.verify_ticket(raw, [KEY.public_key()], cid)
    if ticket.peer_id != peer_id:
        raise tokens.TokenError(403, "not yours")
    return ticket


async def _manifest(cid: str) -> Manifest:
    if cid != CID:
        raise HttpError(404, "unknown")
    return M


def _doc(peer_id: str, port: int, have: set[int], **extra: object) -> dict:
    doc = {"peer_id": peer_id, "port": port, "content": CID, "pieces": 4, "have": bitfield.encode(have, 4)}
    return (
        doc
        | {"uploaded": 0, "downloaded": 0, "event": "update", "ticket": tokens.issue_ticket(KEY, peer_id, "-", CID, 60, region="east")}
        | extra
    )


def _sub(held: set[int] | None = None) -> SubTracker:
    return SubTracker(_verify, _manifest, lambda cid: held, "me")


async def _post(port: int, body: object) -> tuple[int, dict | str]:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/announce", json=body) as r:
        return r.status, (await r.json() if r.status == 200 else await r.text())


def _app(sub: SubTracker):
    app = make_app(Metrics("peer"))
    app.router.add_post("/announce", sub.post_announce)
    return app


async def test_it_answers_only_while_promoted():
    sub = _sub()
    async with serve_app(_app(sub)) as port:
        assert (await _post(port, _doc("a", 7001, set())))[0] == 404
        sub.start(10, "east")
        assert (await _post(port, _doc("a", 7001, set())))[0] == 200
        sub.stop()
        code, text = await _post(port, _doc("a", 7001, set()))
        assert code == 404 and "announce to your edge" in str(text)


async def test_answers_rank_its_announcers_its_edges_peers_and_itself_never_the_asker():
    sub = _sub(held={0, 1, 2, 3})
    sub.start(10, "east")
    listed = [{"peer_id": "far", "url": "http://127.0.0.9:7009", "have": bitfield.encode({0}, 4), "complete": False, "region": "east"}]
    sub.edge_listed(CID, 4, listed)
    async with serve_app(_app(sub)) as port:
        await _post(port, _doc("a", 7001, {1}))
        code, answer = await _post(port, _doc("b", 7002, set()))
        assert code == 200 and isinstance(answer, dict) and "ticket" not in answer
        urls = [p["url"] for p in answer["peers"]]
        assert urls[0] == f"http://127.0.0.1:{port}"  # itself, a seed, first
        assert set(urls) == {f"http://127.0.0.1:{port}", "http://127.0.0.1:7001", "http://127.0.0.9:7009"}
        assert all(p["region"] == "east" for p in answer["peers"])
    assert sub.status()["contents"] == 2 and sub.status()["announcers"] == 2 and sub.peers_known() == 3


async def test_seeds_its_edge_said_the_operator_placed_are_placed_in_its_answers_too():
    sub = _sub()
    sub.start(10, "east")
    whole = bitfield.encode({0, 1, 2, 3}, 4)
    volunteer = {"peer_id": "vol", "url": "http://127.0.0.1:7009", "have": whole, "complete": True, "region": "east", "placed": True}
    viewer = {"peer_id": "done", "url": "http://127.0.0.8:7008", "have": whole, "complete": True, "region": "east"}
    sub.edge_listed(CID, 4, [{"peer_id": "bad"}, volunteer, viewer])  # an entry it cannot read is skipped, not misaligned
    async with serve_app(_app(sub)) as port:
        await _post(port, _doc("vol", 7009, {0, 1, 2, 3}))  # the volunteer announces here too: its record here is the one ranked
        await _post(port, _doc("seed", 7001, {0, 1, 2, 3}))  # a viewer done watching, announcing here
        code, answer = await _post(port, _doc("b", 7002, set()))
    assert code == 200 and isinstance(answer, dict)
    placed = {p["url"]: p.get("placed", False) for p in answer["peers"]}
    assert placed == {"http://127.0.0.1:7009": True, "http://127.0.0.8:7008": False, "http://127.0.0.1:7001": False}


async def test_its_edges_placed_seeds_are_forgotten_with_the_edges_listing():
    sub = _sub()
    sub.start(0.01, "east")
    whole = bitfield.encode({0, 1, 2, 3}, 4)
    sub.edge_listed(CID, 4, [{"peer_id": "v", "url": "http://127.0.0.1:7009", "have": whole, "complete": True, "placed": True}])
    sub.heard[CID] = sub.heard[CID]._replace(when=sub.heard[CID].when - 10.0)  # three intervals of silence
    await asyncio.sleep(0.05)  # an interval since the last expiry
    async with serve_app(_app(sub)) as port:
        await _post(port, _doc("a", 7001, set()))  # an announce runs the expiry
        assert CID not in sub.heard
        await _post(port, _doc("v", 7009, {0, 1, 2, 3}))  # the seed announces here, whole
        code, answer = await _post(port, _doc("b", 7002, set()))
    assert code == 200 and isinstance(answer, dict)
    assert [p.get("placed", False) for p in answer["peers"] if p["url"] == "http://127.0.0.1:7009"] == [False]  # forgotten with it


async def test_batches_answer_each_item_and_keep_the_edges_limits():
    sub = _sub()
    sub.start(10, "east")
    async with serve_app(_app(sub)) as port:
        item = {k: v for k, v in _doc("a", 7001, set()).items() if k not in ("peer_id", "port")}
        code, answer = await _post(port, {"peer_id": "a", "port": 7001, "contents": [item, {**item, "content": "d" * 64}]})
        assert code == 200 and isinstance(answer, dict)
        assert answer["contents"][CID]["peers"] == [] and answer["contents"]["d" * 64]["error"]["status"] == 403  # the ticket is CID's
        assert (await _post(port, {"peer_id": "a", "port": 7001, "contents": [item] * 101}))[0] == 400
        code, answer = await _post(port, {"peer_id": "a", "port": 7001, "contents": [item] * 2})  # one content's work, twice
        assert code == 400 and "more than once" in str(answer)
        assert (await _post(port, _doc("a", 7001, set(), relay=True)))[0] == 400  # relayed peers announce to their edge
        assert (await _post(port, _doc("a", 7001, set(), ip="10.0.0.1")))[0] == 400  # nobody names an address
        statuses = [(await _post(port, _doc("a", 7001, set())))[0] for _ in range(260)]
        assert 429 in statuses  # the edge's rate per sender (20 a second, 200 at once)


async def test_a_replayed_token_users_ticket_from_another_address_is_another_peer():
    """A managed peer shows its ticket to every peer it fetches from; replayed at a sub-tracker from another address it
    moved the user's peer there (others were handed the attacker's URL) and a replayed 'stopped' removed it."""
    sub = _sub()
    sub.start(10, "east")
    ticket = tokens.issue_ticket(KEY, "alice-peer", "alice", CID, 60, region="east")
    async with serve_app(_app(sub)) as port:
        assert (await _post(port, _doc("alice-peer", 7001, set(), ticket=ticket)))[0] == 200
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as s:
            body = _doc("alice-peer", 9999, set(), ticket=ticket, event="stopped")
            async with s.post(f"http://127.0.0.1:{port}/announce", json=body) as r:
                assert r.status == 200
        code, answer = await _post(port, _doc("bob", 7002, set()))
        assert code == 200 and isinstance(answer, dict)
        assert [p["url"] for p in answer["peers"]] == ["http://127.0.0.1:7001"]  # alice's peer, where it is


async def test_a_peer_of_another_region_is_refused_whatever_its_ticket_says_else():
    """The sub-tracker lists its announcers as of its own region: a west host with a west ticket was handed to east
    peers as east, and they traded with it under strict locality (an adversarial session)."""
    sub = _sub()
    sub.start(10, "east")
    async with serve_app(_app(sub)) as port:
        west = tokens.issue_ticket(KEY, "w", "-", CID, 60, region="west")
        code, why = await _post(port, _doc("w", 7001, set(), ticket=west))
        assert code == 403 and "region west, not of this sub-tracker's east" in str(why)
        code, why = await _post(port, _doc("u", 7002, set(), ticket=tokens.issue_ticket(KEY, "u", "-", CID, 60)))  # unmapped
        assert code == 403
        assert (await _post(port, _doc("e", 7003, set())))[0] == 200
