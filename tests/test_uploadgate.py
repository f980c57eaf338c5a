"""The upload gate's bounds on pieces in flight, driven directly (policy/uploadgate.py)."""

from __future__ import annotations

from edgeswarm.policy.uploadgate import PER_ADDRESS, PER_PEER, Grant, UploadGate

PIECE = 256 * 1024


def test_one_peer_id_gets_a_few_pieces_at_once_then_429s_until_one_ends():
    gate = UploadGate(slots=6)
    grants = [gate.admit("atk", "10.0.0.1", PIECE) for _ in range(PER_PEER)]
    assert all(isinstance(g, Grant) for g in grants)
    refused = [gate.admit("atk", "10.0.0.1", PIECE) for _ in range(200)]
    assert all(isinstance(r, str) and "peer atk" in r for r in refused)
    assert gate.pieces == PER_PEER and gate.refused["peer"] == 200
    first = grants[0]
    assert isinstance(first, Grant)
    gate.done(first)
    assert isinstance(gate.admit("atk", "10.0.0.1", PIECE), Grant)


def test_varying_the_id_does_not_get_past_the_address_bound():
    gate = UploadGate(slots=6)
    admitted = [gate.admit(f"id{i}", "10.0.0.2", PIECE) for i in range(50)]
    assert sum(isinstance(g, Grant) for g in admitted) == PER_ADDRESS
    assert isinstance(gate.admit("honest", "10.0.0.3", PIECE), Grant)  # another address is still served


def test_the_whole_server_sends_at_most_four_pieces_per_slot_and_a_byte_budget():
    gate = UploadGate(slots=2)
    admitted = [gate.admit(f"p{i}", f"10.0.1.{i}", PIECE) for i in range(10)]
    assert sum(isinstance(g, Grant) for g in admitted) == 8
    assert "every upload slot is busy" in str(gate.admit("late", "10.0.2.1", PIECE))
    big = UploadGate(slots=6, max_bytes=3 * PIECE)
    assert [isinstance(big.admit(f"p{i}", f"10.1.0.{i}", PIECE), Grant) for i in range(4)] == [True, True, True, False]
    # the bytes, not the slots, are what is short: it said "every upload slot is busy" with 1 of 6 in use (64 MiB pieces)
    assert f"3 pieces ({3 * PIECE} bytes) in flight: no room for {PIECE} bytes more" == big.admit("q", "10.1.1.1", PIECE)


def test_one_piece_larger_than_the_byte_budget_is_still_sent_when_nothing_else_is():
    gate = UploadGate(slots=6, max_bytes=PIECE)
    grant = gate.admit("p", "10.0.0.1", 16 * PIECE)
    assert isinstance(grant, Grant)
    assert isinstance(gate.admit("q", "10.0.0.2", PIECE), str)
    gate.done(grant)
    assert gate.pieces == 0 and gate.bytes == 0


def test_ended_answers_leave_no_trace_so_a_long_running_peer_does_not_grow():
    gate = UploadGate(slots=6)
    for i in range(1000):
        grant = gate.admit(f"peer{i}", f"10.2.{i // 250}.{i % 250}", PIECE)
        assert isinstance(grant, Grant)
        gate.done(grant)
    assert gate.pieces == 0 and gate.bytes == 0 and not gate._peers and not gate._addresses


def test_our_own_engines_pace_never_meets_the_gate():
    """Six unchoked neighbours, each a live gateway reading one segment and fetching two ahead, plus one request
    just abandoned: all admitted (64 KiB segment pieces)."""
    gate = UploadGate(slots=6)
    assert all(isinstance(gate.admit(f"n{i}", f"127.1.0.{i}", 64 * 1024), Grant) for i in range(6) for _ in range(4))
