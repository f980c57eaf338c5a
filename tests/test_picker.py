"""The piece picker, driven directly: no sockets, no clock."""

from __future__ import annotations

from base64 import b64encode

from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.policy import bitfield
from edgeswarm.policy.picker import STARTUP_DECIDE, WORKING, PiecePicker


def test_rarest_first_among_what_the_peer_holds():
    p = PiecePicker(4, seed="me")
    p.whole()
    p.peer_has("a", {0, 1, 2, 3})
    p.peer_has("b", {0, 1, 2})
    p.peer_has("c", {0, 1})
    assert p.pick("a", 0) == 3  # held by one peer only
    p.start("a", 3, 0)
    assert p.pick("b", 0) == 2  # next rarest that b holds
    assert p.pick("c", 0) in (0, 1)


def test_unseen_is_what_we_lack_that_nobody_fetches_and_no_neighbour_holds():
    p = PiecePicker(8, have={0}, seed="me")
    p.whole()
    p.peer_has("a", {1, 2})
    p.start("a", 1, 0.0)
    p.start("edge", 3, 0.0, edge=True)
    assert p.unseen(0) == {4, 5, 6, 7}
    assert p.unseen(6) == {6, 7}  # from the reader's position on
    p.peer_has("a", {1, 2, 4})
    p.peer_gone("a")  # its pieces are no one's now; piece 1, in flight from it, is no longer in flight
    assert p.unseen(0) == {1, 2, 4, 5, 6, 7}


def test_edge_only_fills_what_no_peer_holds_unless_told_to_fall_back():
    p = PiecePicker(3, seed="me")
    p.whole()
    p.peer_has("a", {0, 1})
    assert p.pick("edge", 0, edge=True) == 2
    p.start("edge", 2, 0)
    assert p.pick("edge", 0, edge=True) is None  # peers can deliver 0 and 1
    assert p.pick("edge", 0, edge=True, fallback=True) in (0, 1)


def test_nothing_is_requested_twice_until_the_endgame():
    p = PiecePicker(2, seed="me")
    p.whole()
    p.peer_has("a", {0, 1})
    p.peer_has("b", {0, 1})
    first = p.pick("a", 0)
    p.start("a", first, 0)
    second = p.pick("b", 0)
    assert second != first
    p.start("b", second, 0)
    # endgame: everything is in flight, so a may race b for the other piece, but only once
    assert p.pick("a", 0) == second
    p.start("a", second, 0)
    assert p.pick("c", 0) is None


def test_a_gone_peers_pieces_in_flight_are_picked_again_not_raced_from_nobody():
    """peer_gone left an empty source list per piece the peer was fetching; the endgame then took min() of it and
    the download worker died with a ValueError (an adversarial sub-tracker moving ids; an honest answer can too)."""
    p = PiecePicker(2, seed="me")
    p.whole()
    p.peer_has("a", {0, 1})
    p.peer_has("b", {0, 1})
    p.start("a", 0, 0.0)
    p.start("a", 1, 0.0)
    p.peer_gone("a")
    assert p.in_flight(0) == set() and p.pick("b", 10.0) in (0, 1)


def test_the_edge_races_a_piece_two_peers_are_late_with():
    """Two listed peers that accept requests and never answer held a download's last piece for good: the copy limit
    (ENDGAME_COPIES) kept the edge out of the race. Found with a lying sub-tracker listing such peers."""
    p = PiecePicker(1, seed="me", deadline=2.0)
    p.whole()
    p.peer_has("a", {0})
    p.peer_has("b", {0})
    p.start("a", 0, 0.0)
    p.start("b", 0, 0.0)
    assert p.pick("http://edge", 1.0, edge=True) is None  # not late yet
    assert p.pick("http://edge", 2.5, edge=True) == 0
    p.start("http://edge", 0, 2.5, edge=True)
    assert p.pick("http://edge2", 9.0, edge=True) is None  # an edge already races it


def test_finish_marks_held_and_failure_returns_the_piece():
    p = PiecePicker(2, seed="me")
    p.whole()
    p.peer_has("a", {0, 1})
    i = p.pick("a", 0)
    p.start("a", i, 0)
    p.finish("a", i, ok=False)
    assert p.pick("a", 0) is not None and not p.done()
    p.finish("a", 0, ok=True)
    p.finish("a", 1, ok=True)
    assert p.done() and p.pick("a", 0) is None


def test_streaming_urgent_pieces_first_and_edge_races_a_late_peer():
    p = PiecePicker(100, seed="me", deadline=2.0)
    p.stream(position=10, urgent=2, window=8)
    assert p.missing() == list(range(10, 18))
    p.peer_has("a", set(range(100)))
    assert p.pick("a", 0) == 10
    p.start("a", 10, 0)
    assert p.pick("edge", 1.0, edge=True) is None  # 11 is urgent and a is busy, but no reader waits for it yet
    p.awaited[11] = 1.0
    assert p.pick("edge", 1.2, edge=True) is None  # a reader waits, not yet for `patience`
    assert p.pick("edge", 1.0 + p.patience, edge=True) == 11  # now the edge steps in
    p.start("edge", 11, 1.0)
    assert p.pick("edge", 1.5, edge=True) is None  # a is not late yet, and the rest peers can give
    assert p.pick("edge", 2.5, edge=True) == 10  # a is late with an urgent piece: race it


def test_paused_peers_get_nothing():
    p = PiecePicker(3, seed="me")
    p.whole()
    p.peer_has("a", {0, 1, 2})
    p.paused.add("a")
    assert p.pick("a", 0) is None


def test_while_our_store_cannot_write_only_what_a_reader_waits_for_is_fetched():
    """A full disk: a piece nobody waits for would be thrown away and fetched again; a waited one goes to its reader."""
    p = PiecePicker(8, seed="me")
    p.stream(2, urgent=3, window=6)
    p.peer_has("a", set(range(8)))
    p.only_awaited = True
    assert p.pick("a", 0) is None and p.pick("edge", 0, edge=True, fallback=True) is None and p.pick_spread("a") is None
    p.wait_for(3, 0)
    assert p.pick("a", 0) == 3
    p.only_awaited = False
    assert p.pick("a", 0) == 2


def test_peer_gone_forgets_availability_and_in_flight():
    p = PiecePicker(2, seed="me")
    p.whole()
    p.peer_has("a", {0})
    p.start("a", 0, 0)
    p.peer_gone("a")
    assert p.availability == [0, 0] and p.in_flight(0) == set()
    assert p.pick("edge", 0, edge=True) in (0, 1)


def test_tiebreak_spreads_newcomers_over_pieces():
    pickers = [PiecePicker(64, seed=f"peer{n}") for n in range(20)]
    for p in pickers:
        p.whole()
    firsts = {p.pick("edge", 0, edge=True) for p in pickers}
    assert len(firsts) > 5  # not all chasing the same piece


@given(st.integers(1, 300), st.data())
def test_bitfield_round_trip(count, data):
    held = data.draw(st.sets(st.integers(0, count - 1)))
    assert bitfield.decode(bitfield.encode(held, count), count) == held


@given(st.integers(1, 300), st.binary(max_size=50))
def test_bitfield_rejects_wrong_lengths_and_stray_bits(count, raw):
    text = b64encode(raw).decode()
    try:
        held = bitfield.decode(text, count)
    except ValueError:
        return
    assert len(raw) == (count + 7) // 8 and all(0 <= i < count for i in held)


def test_a_seeding_edge_is_given_urgent_pieces_only():
    """With an edge that seeds, the rest of the window is the seeder's (POST /seed) and the peers'."""
    p = PiecePicker(16, seed="me")
    p.stream(0, 2, 8)
    assert p.pick_urgent("edge", 0, edge=True) == 0  # a reader needs it and no peer holds it
    p.start("edge", 0, 0)
    assert p.pick_urgent("edge", 0, edge=True) == 1
    p.start("edge", 1, 0)
    assert p.pick_urgent("edge", 0, edge=True) is None  # pieces 2..7 are not urgent
    assert p.pick("edge", 0, edge=True) == 2  # the edge without seeding takes them


def test_pieces_ahead_of_the_urgent_window_go_to_peers_rarest_first():
    """Readers that start together: the edge is not given what peers hold ahead of the readers."""
    p = PiecePicker(16, seed="me")
    p.stream(0, 2, 8)
    p.peer_has("a", {5, 6})
    p.peer_has("b", {6})
    assert p.pick("a", 0) == 5  # rarest among what a holds, though 0 and 1 are missing: a does not hold them
    p.start("a", 5, 0)
    assert p.pick("b", 0) == 6
    assert p.pick_urgent("edge", 0, edge=True) == 0
    p.peer_has("b", {0, 6})
    p.urgent = [0]
    assert p.pick_urgent("edge", 0, edge=True) is None  # b holds it: b's worker takes it, in time
    assert p.pick_urgent("edge", 5.0, edge=True) is None  # not awaited by a reader, not in flight: still b's
    p.start("b", 0, 0)
    assert p.pick_urgent("edge", 0.5, edge=True) is None
    assert p.pick_urgent("edge", p.deadline + 0.1, edge=True) == 0  # b is late: the edge races it


def test_what_the_seeder_is_told():
    p = PiecePicker(8, have={0}, seed="me")
    p.stream(3, 2, 4)
    assert p.seed_from() == 3  # the reader's position
    p.start("a", 4, 0)
    assert p.claimed() == {0, 4}  # held or in flight: the edge should pick another
    p.whole()
    assert p.seed_from() == 0


def test_wants_and_urgency():
    p = PiecePicker(8, have={1}, seed="me")
    p.stream(0, 2, 4)
    assert [p.wants(i) for i in range(6)] == [True, False, True, True, False, False]
    assert p.is_urgent(0) and not p.is_urgent(3)
    p.awaited[3] = 0.0
    assert p.is_urgent(3)
    p.whole()
    assert p.wants(5) and not p.wants(1)


def test_with_a_seeding_edge_a_piece_nobody_holds_waits_for_the_region_first():
    """Readers that start together lack the same next piece; the seeder sends it to one of them, the others trade for it."""
    p = PiecePicker(8, seed="me")
    p.stream(0, 2, 8)
    assert p.pick_urgent("edge", 0, edge=True) == 0  # no seeder: nobody holds it, the edge takes it at once
    assert p.pick_urgent("edge", 0, edge=True, seeding=True) is None  # a neighbour is about to hold it
    p.awaited[0] = 0.0
    assert p.pick_urgent("edge", p.patience, edge=True, seeding=True) is None  # the region gets it soon
    assert p.pick_urgent("edge", p.seed_patience, edge=True, seeding=True) == 0  # the reader waited long enough
    p.start("edge", 0, 0)
    assert p.pick("a", 4.5) is None  # a's worker asks; a holds nothing yet
    p.peer_has("a", {1})
    p.awaited[1] = 0.0
    assert p.pick_urgent("edge", 5.0, edge=True, seeding=True) is None  # a has 1 and is idle: a's worker takes it
    assert p.pick_urgent("edge", 0, edge=True, fallback=True, seeding=True) == 1  # peers are not delivering at all


def test_complete_means_every_piece_held_however_it_came():
    p = PiecePicker(3)
    p.stream(0, urgent=2, window=3)  # a player reading, not a whole-file download
    assert not p.complete()
    p.have.update({0, 1, 2})
    assert p.complete() and not p.whole_file


def test_a_holder_nobody_asks_does_not_keep_the_edge_from_a_blocked_reader():
    """Most neighbours have no worker (a few are worked at once): only a worked, idle holder is worth waiting for."""
    p = PiecePicker(8, seed="me")
    p.stream(0, 2, 8)
    p.peer_has("a", {0})  # named by the tracker, but no worker asks it
    p.awaited[0] = 0.0
    assert p.pick_urgent("edge", p.seed_patience, edge=True, seeding=True) == 0
    p.paused.add("b")
    assert p.pick("b", 0.9) is None  # b's worker asked (choked for now) and b then got piece 0
    p.peer_got("b", 0)
    p.paused.discard("b")
    assert p.pick_urgent("edge", 1.0, edge=True, seeding=True) is None  # b is idle and worked: it takes 0
    assert p.pick_urgent("edge", 0.9 + WORKING + 0.1, edge=True, seeding=True) == 0  # b's worker stopped asking


def test_reads_of_a_file_waiting_at_once_past_a_players_are_a_download():
    """A segmented downloader (aria2c -x8) reads eight parts at once: no startup, and the edge steps in for a waiting
    read only as it does for a download (no holder, a late peer), not after ``patience``; a player's two or three
    reads keep both.  Four make a download, and it stays one down to three (a downloader's reads come and go)."""
    p = late_reader(set(range(40)))
    p.stream([0, 10, 20, 30], 4, 16)
    p.start("viewer", 0, 0.0)
    for i in (1, 10, 20, 30):
        p.awaited[i] = 0.0
    assert p.starting(0.0)
    assert p.reads_waiting(4) and p.downloading and not p.starting(0.0), "a download has no startup"
    waited = p.seed_patience + 0.5  # past the patience, and the neighbour not late yet with piece 0 (deadline 2 s)
    assert p.pick_urgent("edge", waited, edge=True, seeding=True) is None, "the neighbour it waits for is busy, not late"
    p.reads_waiting(3)
    assert p.downloading and p.pick_urgent("edge", waited, edge=True, seeding=True) is None
    assert not p.reads_waiting(2) and not p.downloading
    assert p.pick_urgent("edge", waited, edge=True, seeding=True) in (1, 10, 20, 30), "a player's read: the edge after patience"
    assert p.pick_urgent("edge", 2.5, edge=True, seeding=True) == 0, "and for either, a late peer is raced"
    p.start_reader(range(30, 38), 1.0, 8)
    assert p.starting(1.0)
    assert not p.reads_waiting(3), "three from two: still a player's"
    assert p.starting(1.0)


def late_reader(behind: set[int], count: int = 40) -> PiecePicker:
    """A stream reader starting at 0 (urgent 4, window 16) whose one neighbour, still fetching, holds ``behind``."""
    p = PiecePicker(count, seed="me", deadline=2.0)
    p.peer_has("viewer", behind)
    p.stream(0, 4, 16)
    p.start_reader(range(8), 0.0, 8)
    return p


def test_a_reader_starting_behind_a_viewer_takes_its_startup_from_the_edge_and_nothing_else_meanwhile():
    """A late viewer's neighbour carries the streams already playing: the first 8 pieces come from the edge, lowest
    first, the neighbour is asked for none of them, and no read-ahead competes for the viewer's downlink."""
    p = late_reader(set(range(20)))
    assert p.is_urgent(7) and not p.is_urgent(8)
    assert p.pick("viewer", 0.0) is None
    got = []
    for _ in range(8):
        i = p.pick("edge#0", 0.1, edge=True, seeding=True)
        assert i is not None
        p.start("edge#0", i, 0.1, edge=True)
        got.append(i)
    assert got == list(range(8))
    assert p.pick("viewer", 0.2) is None and p.pick_spread("viewer") is None
    for i in got:
        p.finish("edge#0", i, True)
    assert not p.starting(0.3) and p.pick("viewer", 0.3) in range(8, 16)  # started: the rest of the window is the region's


def test_a_crowd_pressing_play_together_trades_its_first_pieces():
    """Neighbours that started with us hold few pieces (fewer than twice the startup) within STARTUP_DECIDE: no startup
    from the edge, and a neighbour heard of later does not make one."""
    p = late_reader({0, 1, 2, 3, 4, 5, 6, 7, 8})
    assert not p.starting(0.0) and p.pick("viewer", 0.0) == 0
    p.peer_has("ahead", set(range(30)))
    assert not p.starting(STARTUP_DECIDE + 0.1)  # decided: the crowd's


def test_a_reader_behind_a_seed_the_operator_placed_trades_its_startup_one_behind_a_viewer_done_watching_does_not():
    placed = PiecePicker(40, seed="me", deadline=2.0)
    placed.peer_has("volunteer", set(range(40)))
    placed.placed("volunteer", True)
    placed.stream(0, 4, 16)
    placed.start_reader(range(8), 0.0, 8)
    assert not placed.starting(0.0) and placed.pick("volunteer", 0.0) == 0
    done = late_reader(set(range(40)))
    assert done.starting(0.0) and done.pick("viewer", 0.0) is None


def test_a_startup_the_edge_does_not_deliver_is_anyones_after_the_deadline():
    p = late_reader(set(range(20)))
    p.start("edge#0", 0, 0.0, edge=True)
    assert p.pick("viewer", 1.0) is None
    assert p.pick("viewer", 2.5) == 1  # the edge is stuck on 0: the neighbour takes the next urgent piece


def test_the_reader_that_has_waited_longest_is_served_first_not_the_one_nearest_the_start():
    """Readers' urgent pieces were taken in file order: with 64 random 1-byte ranges at once, new readers near the start
    kept going first and those near the end waited past the gateway's read timeout (82 of 3 000 answered 504: an
    adversarial session)."""
    p = PiecePicker(100, seed="me")
    p.wait_for(90, now=1.0)  # the oldest read, near the end
    p.wait_for(10, now=2.0)
    p.wait_for(50, now=3.0)
    p.readers_at([10, 50, 90], urgent=1, window=4)
    assert p.urgent == [90, 10, 50] and p.position == 10
    assert p.pick_urgent("http://edge", now=3.0, edge=True, fallback=True) == 90
    whole = PiecePicker(100, seed="me")
    whole.whole()
    for index, since in ((90, 1.0), (10, 2.0), (50, 3.0)):
        whole.wait_for(index, since)
    whole.readers_at([10, 50, 90], urgent=2, window=4)
    assert whole.urgent == [90, 10]  # a download's reads too
