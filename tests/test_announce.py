"""The tracker service behind POST /announce: identity rules and what an announce books in the ledger (no sockets)."""

from __future__ import annotations

import pytest

from edgeswarm.announce import MAX_COUNT, TrackerService
from edgeswarm.httpspec import HttpError

CID = "ab" * 32


def doc(peer: str = "p1", **extra) -> dict:
    return {
        "peer_id": peer,
        "port": 7000,
        "content": CID,
        "pieces": 4,
        "have": "AA==",
        "uploaded": 0,
        "downloaded": 0,
        "event": "update",
        "stats": {"edge": 0, "peer_same_region": 0, "peer_other_region": 0},
        **extra,
    }


@pytest.fixture
def service() -> TrackerService:
    return TrackerService(None, "prefer", 1.0)


def test_a_live_peer_id_stays_at_its_address_without_tokens(service):
    service.handle(doc(), "127.0.0.5", 4)
    with pytest.raises(HttpError) as err:
        service.handle(doc(), "127.0.0.6", 4)
    assert err.value.status == 409
    assert [p.address for p in service.tracker.swarm(CID)] == ["127.0.0.5"]  # refused: nothing changed


def test_users_cannot_squat_each_others_peer_ids(service):
    service.handle(doc(), "127.0.0.5", 4, "alice")
    answer, _ = service.handle(doc(), "127.0.0.6", 4, "bob")  # the same id, another user: another peer
    assert [(p["peer_id"], p["url"]) for p in answer["peers"]] == [("p1", "http://127.0.0.5:7000")]  # no user names to peers
    assert service.status()["users"] == {"alice": 1, "bob": 1}
    service.handle(doc(), "127.0.0.7", 4, "alice")  # alice's peer moved: fine, it is hers
    assert sorted(p.address for p in service.tracker.swarm(CID)) == ["127.0.0.6", "127.0.0.7"]


def test_usage_is_booked_as_the_peer_reports_it(service):
    _, usage = service.handle(doc(usage={"from_this_edge": 50, "from_peers": 30, "uploaded": 100}), "127.0.0.5", 4)
    assert usage == {"reported_from_edge": 50, "reported_from_peers": 30, "reported_uploaded": 100}
    _, usage = service.handle(doc(usage={"from_this_edge": 7}), "127.0.0.5", 4)  # this edge does not book its P2P bytes
    assert usage == {"reported_from_edge": 7}
    _, usage = service.handle(doc(), "127.0.0.5", 4)
    assert usage == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"uploaded": MAX_COUNT + 1},
        {"stats": {"edge": MAX_COUNT + 1}},
        {"usage": {"uploaded": MAX_COUNT + 1}},
        {"usage": {"uploaded": True}},
        {"usage": {"stolen": 5}},
        {"usage": [1, 2]},
        {"ip": "10.0.0.1"},
    ],
)
def test_bad_fields_are_refused_before_any_change(service, bad):
    with pytest.raises(HttpError) as err:
        service.handle(doc(**bad), "127.0.0.5", 4)
    assert err.value.status == 400
    assert service.tracker.peer_count() == 0 and service.status()["regions"] == {}
