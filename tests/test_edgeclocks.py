"""A peer judges a neighbour's swarm ticket by the clock of the edge that signed it (policy/edgeclocks.py), read off the
tickets that edge issues to it: with fixed clocks, and a Peer's checks driven directly (no sockets).

A peer whose clock ran more than the 5 s leeway slow refused every neighbour's ticket as "not valid yet" and uploaded
nothing, with no line in its log (an adversarial session, /tmp/adv-clock 3).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeswarm.policy.edgeclocks import MAX_ROUND_TRIP, EdgeClocks
from edgeswarm.roles.config import PeerConfig
from edgeswarm.roles.peer import Peer
from edgeswarm.trust import tokens
from edgeswarm.trust.signing import load_or_create_private_key, public_pem

EDGE, OTHER = "http://127.0.0.1:9", "http://127.0.0.2:9"
LEEWAY = tokens.LEEWAY
HOUR = 3600.0
CID = "c" * 64


# ----- the rule, with fixed clocks ---------------------------------------------------------------------------------------


def test_an_edge_is_read_at_the_midpoint_of_the_round_trip_and_carried_forward_on_the_monotonic_clock():
    clocks = EdgeClocks()
    assert clocks.now(EDGE, 100.0, 5000.0) == 5000.0 and clocks.ahead(EDGE, 100.0, 5000.0) is None  # not read: ours
    # asked at monotonic 100, answered at 102 (wall 5002): the edge signed at 8602 by its clock, an hour ahead of ours
    assert clocks.heard(EDGE, 8602.0, 100.0, 102.0, 5002.0, LEEWAY) == pytest.approx(HOUR + 1)  # midpoint 101: 8602 - 101
    assert clocks.now(EDGE, 110.0, 5010.0) == pytest.approx(8611.0)
    assert clocks.now(EDGE, 110.0, 1_000_000.0) == pytest.approx(8611.0)  # our wall clock stepped: no matter
    assert clocks.now(OTHER, 110.0, 5010.0) == 5010.0  # no other edge's clock moves
    assert clocks.ahead(EDGE, 110.0, 5010.0) == pytest.approx(HOUR + 1)


def test_a_clock_is_said_once_when_it_parts_from_ours_and_once_when_it_agrees_again():
    clocks = EdgeClocks()
    assert clocks.heard(EDGE, 1001.0, 0.0, 0.0, 1000.0, LEEWAY) is None  # within the leeway from the start: nothing to say
    assert clocks.heard(EDGE, 1010.0, 1.0, 1.0, 1001.0, LEEWAY) == pytest.approx(9.0)  # 9 s ahead: said
    assert clocks.heard(EDGE, 1011.0, 2.0, 2.0, 1002.0, LEEWAY) is None  # still apart: not said again at every announce
    assert clocks.heard(EDGE, 1003.0, 3.0, 3.0, 1003.0, LEEWAY) == 0.0  # agrees again: said
    assert clocks.heard(EDGE, 1004.0, 4.0, 4.0, 1004.0, LEEWAY) is None


@pytest.mark.parametrize("sent, received", [(0.0, MAX_ROUND_TRIP + 0.1), (5.0, 4.0)])
def test_an_answer_too_slow_to_read_a_clock_by_or_a_nonsense_one_reads_nothing(sent, received):
    clocks = EdgeClocks()
    assert clocks.heard(EDGE, 9000.0, sent, received, 1000.0, LEEWAY) is None
    assert clocks.ahead(EDGE, received, 1000.0) is None


def test_a_sleep_forgets_the_readings_and_the_next_one_is_not_said_again():
    clocks = EdgeClocks()
    assert clocks.heard(EDGE, 1000.0 + HOUR, 0.0, 0.0, 1000.0, LEEWAY) == HOUR
    clocks.forget()  # the monotonic clock stood still for the sleep: a reading carried over it would be that far behind
    assert clocks.now(EDGE, 1.0, 5000.0) == 5000.0
    assert clocks.heard(EDGE, 5000.0 + HOUR, 1.0, 1.0, 5000.0, LEEWAY) is None  # as far apart as before: said already
    assert clocks.ahead(EDGE, 1.0, 5000.0) == HOUR


# ----- a Peer's checks -----------------------------------------------------------------------------------------------------


@pytest.fixture
def managed(tmp_path: Path) -> tuple[Peer, Ed25519PrivateKey, Ed25519PrivateKey]:
    """A peer with a token and two edges whose swarm keys it holds (as learn_ticket_keys leaves them)."""
    key = tmp_path / "origin.pub"
    key.write_bytes(public_pem(load_or_create_private_key(tmp_path / "origin.key").public_key()))
    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(EDGE, OTHER), origin_key=key, token="a.b.c"))
    edge, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    peer.ticket_keys |= {EDGE: edge.public_key(), OTHER: other.public_key()}
    return peer, edge, other


def announced(peer: Peer, edge: str, key: Ed25519PrivateKey, ahead: float) -> None:
    """An announce answer from ``edge``, whose clock runs ``ahead`` of ours, with our own ticket in it."""
    mono = time.monotonic()
    ours = tokens.issue_ticket(key, peer.peer_id, "alice", CID, 900, now=time.time() + ahead)
    peer._read_clock(edge, [{"peers": []}, {"ticket": ours}], (mono - 0.01, mono, time.time()))


@pytest.mark.parametrize("ahead", [10.0, HOUR, -HOUR])
async def test_a_neighbours_ticket_is_judged_by_the_clock_of_the_edge_that_signed_it(managed, ahead, caplog):
    """An edge 10 s or an hour ahead of this machine (this machine's clock slow), or an hour behind (fast by more than a
    ticket's life): a ticket it just signed for a neighbour was refused, 401, by this machine's clock."""
    peer, edge, _ = managed
    with caplog.at_level(logging.INFO, "edgeswarm.roles.peer"):
        announced(peer, EDGE, edge, ahead)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and f"{abs(ahead):.0f} s {'behind' if ahead > 0 else 'ahead of'} edge {EDGE}" in said[0], said
    assert "set the clock (NTP)" in said[0]
    fresh = tokens.issue_ticket(edge, "b1", "bob", CID, 900, now=time.time() + ahead)
    ticket = await peer.verify_ticket(fresh, CID, "b1")
    assert ticket.expires == pytest.approx(time.time() + 900, abs=2)  # by this machine's clock: a HAVE stream ends then
    assert peer._edge_status(EDGE)["clock_ahead_s"] == pytest.approx(ahead, abs=1)
    stale = tokens.issue_ticket(edge, "b1", "bob", CID, 900, now=time.time() + ahead - 1000)  # expired 100 s ago, by the edge
    with pytest.raises(tokens.OutOfDateError, match="expired 100 s ago"):
        await peer.verify_ticket(stale, CID, "b1")


async def test_an_edges_clock_judges_only_its_own_tickets(managed):
    """The bound: an edge's clock, read off tickets its key signed, moves no other edge's; a ticket signed with another
    key (a neighbour's, a stranger's) reads no clock."""
    peer, edge, other = managed
    announced(peer, EDGE, edge, -HOUR)  # EDGE an hour behind: its expired tickets are still good by its clock
    announced(peer, OTHER, edge, HOUR)  # signed with EDGE's key, not OTHER's: OTHER's clock stays unread
    assert peer._edge_status(OTHER).get("clock_ahead_s") is None
    old = time.time() - HOUR - 60  # issued a minute ago by EDGE's clock, for two
    assert (await peer.verify_ticket(tokens.issue_ticket(edge, "b1", "bob", CID, 120, now=old), CID, "b1")).peer_id == "b1"
    with pytest.raises(tokens.OutOfDateError, match="expired"):  # OTHER's clock is ours: its hour-old ticket is one
        await peer.verify_ticket(tokens.issue_ticket(other, "b1", "bob", CID, 120, now=old), CID, "b1")


async def test_a_ticket_refused_for_its_times_is_said_once_a_minute_with_the_clocks(managed, caplog):
    """A refusal was only counted in /status: its user and the operator saw nothing."""
    peer, _, other = managed
    ahead = tokens.issue_ticket(other, "b1", "bob", CID, 900, now=time.time() + HOUR)  # OTHER's clock is not read yet
    with caplog.at_level(logging.WARNING, "edgeswarm.roles.peer"):
        for _ in range(3):
            with pytest.raises(tokens.OutOfDateError, match="not valid yet"):
                await peer.verify_ticket(ahead, CID, "b1")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert f"edge {OTHER}" in said[0] and "3600 s in the future" in said[0] and "this machine's clock" in said[0]
    assert "set it (NTP)" in said[0]


async def test_other_refusals_are_as_before(managed):
    peer, _, other = managed
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(tokens.TokenError, match="not signed by any of this peer's edges"):
        peer._signed_ticket(tokens.issue_ticket(stranger, "b1", "bob", CID, 900), CID, None)
    with pytest.raises(tokens.TokenError, match="this ticket is peer b1's"):
        await peer.verify_ticket(tokens.issue_ticket(other, "b1", "bob", CID, 900), CID, "b2")
    with pytest.raises(tokens.TokenError, match="not signed by any"):  # only the edges asked for: a sub-tracker's promoters
        peer._signed_ticket(tokens.issue_ticket(other, "b1", "bob", CID, 900), CID, [EDGE])
    with pytest.raises(tokens.TokenError, match="no edge keys"):
        peer._signed_ticket(tokens.issue_ticket(other, "b1", "bob", CID, 900), CID, [])
    with pytest.raises(tokens.TokenError, match="malformed"):
        peer._signed_ticket("x.y", CID, None)
