"""The edge's super-seeding policy, rule by rule, and a region of peers trading what it seeds."""

from __future__ import annotations

import json

import pytest

from edgeswarm.policy import bitfield
from edgeswarm.policy.superseed import SEED_CARRIES, SENT_GRACE_S, STALE_COPY_S, UNCONFIRMED_S, RegionStats, SuperSeeder
from edgeswarm.protocol.wire import parse_latency, parse_request

CID = "c" * 64


def test_lowest_piece_the_asker_lacks_and_the_region_has_no_copy_of():
    s = SuperSeeder()
    assert s.choose(1.0, "east", CID, set(), 0, 8) == 0
    assert s.choose(1.0, "east", CID, {0, 1}, 0, 8) == 2
    s.record(1.0, "east", CID, 2, "a")
    assert s.choose(1.0, "east", CID, {0, 1}, 0, 8) == 3


def test_from_skips_pieces_before_the_readers_position():
    s = SuperSeeder()
    assert s.choose(1.0, "east", CID, set(), 5, 8) == 5
    s.record(1.0, "east", CID, 5, "a")
    assert s.choose(1.0, "east", CID, {6}, 5, 8) == 7


def test_none_when_every_lacked_piece_already_went_to_a_live_peer_of_the_region():
    s = SuperSeeder()
    for i in range(4):
        s.record(1.0, "east", CID, i, f"p{i}")
    assert s.choose(1.0, "east", CID, set(), 0, 4) is None
    assert s.choose(1.0, "east", CID, {0, 1, 2, 3}, 0, 4) is None  # a complete asker: nothing to send
    assert s.choose(1.0, "east", CID, set(), 2, 4) is None


def test_a_piece_no_neighbour_of_the_asker_holds_goes_again_once_its_copies_are_old():
    """A copy sent long ago may be evicted (a small --max-cache): an asker that knows no neighbour holding it gets it
    again; a fresh copy is not sent twice, as the asker's neighbours learn of it within a HAVE stream's latency."""
    s = SuperSeeder()
    for i in range(4):
        s.record(1.0, "east", CID, i, "small-cache")
    s.observe(1.0, "east", CID, "small-cache", False)
    assert s.choose(2.0, "east", CID, set(), 0, 4, unseen={1, 2}) is None  # fresh copies: trade for them
    assert s.choose(1.0 + STALE_COPY_S, "east", CID, set(), 0, 4, unseen={1, 2}) == 1
    assert s.choose(1.0 + STALE_COPY_S, "east", CID, set(), 0, 4) is None  # a neighbour of the asker holds them all
    s.record(1.0 + STALE_COPY_S, "east", CID, 1, "asker")
    s.observe(1.0 + STALE_COPY_S, "east", CID, "asker", False)
    assert s.choose(2.0 + STALE_COPY_S, "east", CID, {1}, 0, 4, unseen={1, 2}) == 2
    assert s.choose(2.0 + STALE_COPY_S, "west", CID, set(), 0, 4, unseen={0}) == 0  # another region: no copy there anyway
    assert s.choose(2.0 + STALE_COPY_S, "east", CID, {1, 2}, 0, 4, unseen={1}) is None  # piece 1's newest copy is 1 s old


def test_a_copy_its_recipient_announces_without_stops_counting_once_it_had_time_to_arrive():
    """A peer with a small --max-cache evicted its copies at once and announced without them, and the edge counted them
    for STALE_COPY_S all the same: the next reader of the region crawled on its urgent pieces meanwhile (an adversarial
    session: 4.1 s for an 8 MiB file against 0.2 s).  An announce written before a copy arrived does not forget it."""
    s = SuperSeeder()
    for i in range(4):
        s.record(1.0, "east", CID, i, "small-cache")
    s.observe(1.0 + SENT_GRACE_S / 2, "east", CID, "small-cache", False, lambda: {3})  # sent, not yet arrived
    assert s.choose(1.0 + SENT_GRACE_S, "east", CID, set(), 0, 4) is None
    s.observe(2.0 + SENT_GRACE_S, "east", CID, "small-cache", False, lambda: {3})  # evicted 0-2, kept 3
    assert s.choose(2.0 + SENT_GRACE_S, "east", CID, set(), 0, 4) == 0
    assert s.choose(2.0 + SENT_GRACE_S, "east", CID, {0, 1, 2}, 0, 4) is None  # 3 still counts
    assert s.live_copies("east", CID) == 1
    s.observe(3.0 + SENT_GRACE_S, "east", CID, "small-cache", False, set)
    assert s.live_copies("east", CID) == 0 and s.size() == 0, "the entry goes with its last copy"


def test_a_seeds_copies_count_only_while_the_regions_seeds_can_carry_its_downloaders():
    """A preheated volunteer got every piece once; a crowd of more than SEED_CARRIES downloaders arriving behind it needs
    pieces of its own to trade, so the edge seeds the crowd as if the seed's copies were not there (once per region)."""
    s = SuperSeeder()
    for i in range(4):
        s.record(1.0, "east", CID, i, "seed")
    s.observe(1.0, "east", CID, "seed", True)
    for n in range(SEED_CARRIES):
        s.observe(2.0, "east", CID, f"d{n}", False)
    assert s.choose(1.0, "east", CID, set(), 0, 4) is None  # the seed carries these downloaders: trade with it
    s.observe(3.0, "east", CID, "one-more", False)
    assert s.choose(1.0, "east", CID, set(), 0, 4) == 0  # one more than it carries: the crowd gets its own copy
    s.record(3.0, "east", CID, 0, "d0")
    assert s.choose(1.0, "east", CID, set(), 0, 4) == 1  # and each piece once, as ever
    s.observe(4.0, "east", CID, "seed2", True)  # a second seed: two carry the crowd again
    assert s.choose(1.0, "east", CID, set(), 0, 4) is None
    s.leave("east", CID, "seed2")
    s.retain(5.0, "east", CID, {"seed", "d0", "d1", "d2", "d3"})  # one-more left: four downloaders, one seed
    assert s.choose(1.0, "east", CID, set(), 0, 4) is None
    assert ("east", CID) in s.entries()


def test_downloaders_that_were_there_before_the_seed_was_whole_do_not_count_against_it():
    """A crowd already trading when a seed is placed holds pieces the others lack: the seed's copies keep counting."""
    s = SuperSeeder()
    for n in range(2 * SEED_CARRIES):
        s.observe(float(n), "east", CID, f"d{n}", False)
    for i in range(4):
        s.record(1.0, "east", CID, i, "seed")
    s.observe(20.0, "east", CID, "seed", True)
    assert s.choose(1.0, "east", CID, set(), 0, 4) is None


def test_n_peers_asking_in_turn_get_n_different_pieces():
    s = SuperSeeder()
    got = []
    for n in range(10):
        i = s.choose(1.0, "east", CID, set(), 0, 16)
        s.record(float(n), "east", CID, i, f"p{n}")
        got.append(i)
    assert sorted(set(got)) == got == list(range(10))


def test_a_peers_own_copies_count_so_concurrent_asks_get_different_pieces():
    s = SuperSeeder()
    first = s.choose(1.0, "east", CID, set(), 0, 4)
    s.record(1.0, "east", CID, first, "a")
    assert s.choose(1.0, "east", CID, set(), 0, 4) != first  # the same (stale) bitfield, a second request in flight


def test_regions_and_contents_are_counted_apart():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "a")
    assert s.choose(1.0, "west", CID, set(), 0, 4) == 0
    assert s.choose(1.0, None, CID, set(), 0, 4) == 0  # unmapped peers are a group of their own
    assert s.choose(1.0, "east", "d" * 64, set(), 0, 4) == 0


def test_a_copy_to_a_peer_that_left_no_longer_counts():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "a")
    s.record(1.0, "east", CID, 1, "b")
    s.leave("east", CID, "a")
    assert s.choose(1.0, "east", CID, set(), 0, 2) == 0
    assert s.live_copies("east", CID) == 1


def test_retain_forgets_every_recipient_not_live():
    s = SuperSeeder()
    for i, p in enumerate("abc"):
        s.observe(0.0, "east", CID, p, False)
        s.record(1.0, "east", CID, i, p)
    s.retain(2.0, "east", CID, {"b"})
    assert [s.choose(1.0, "east", CID, {1}, 0, 3), s.live_copies("east", CID)] == [0, 1]


def test_a_copy_to_a_peer_not_announced_yet_counts_until_its_announce_is_overdue():
    """A peer asks for a new content's first pieces before its announce arrives: the copy counts at once (else each
    new live segment left the edge once per asker), and stops counting if no announce follows in time."""
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "early")
    s.record(1.0, "east", CID, 1, "liar")
    assert s.choose(2.0, "east", CID, set(), 0, 3) == 2
    s.observe(1.5, "east", CID, "early", False)  # its announce came
    later = 1.0 + UNCONFIRMED_S + 0.1
    assert s.choose(later, "east", CID, set(), 0, 3) == 1  # the liar's copy is forgotten, the announced one's is not
    assert s.live_copies("east", CID) == 1


def test_retain_keeps_a_recent_unconfirmed_recipient_and_forgets_an_overdue_one():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "old")
    s.record(5.0, "east", CID, 1, "new")
    s.retain(1.0 + UNCONFIRMED_S + 0.1, "east", CID, set())
    assert s.live_copies("east", CID) == 1
    assert s.choose(1.0 + UNCONFIRMED_S + 0.1, "east", CID, set(), 0, 2) == 0


def test_a_failed_send_does_not_count():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "a")
    s.unrecord("east", CID, 0, "a")
    assert s.choose(1.0, "east", CID, set(), 0, 2) == 0
    assert (s.entries(), s.size()) == ([], 0)
    s.unrecord("east", CID, 0, "a")  # twice, or never recorded: nothing to undo


def test_one_peer_sent_a_piece_twice_is_one_copy():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "a")
    s.record(2.0, "east", CID, 0, "a")
    s.leave("east", CID, "a")
    assert (s.live_copies("east", CID), s.size()) == (0, 0)


def test_the_entry_goes_with_the_last_recipient():
    s = SuperSeeder()
    s.record(1.0, "east", CID, 0, "a")
    s.record(1.0, "east", CID, 1, "b")
    s.leave("east", CID, "a")
    assert s.entries() == [("east", CID)]
    s.leave("east", CID, "b")
    s.leave("east", CID, "nobody")
    assert (s.entries(), s.size()) == ([], 0)


def test_memory_is_capped_by_forgetting_the_least_recently_used_first():
    s = SuperSeeder(max_copies=10)
    for n in range(40):
        s.record(float(n), "east", f"{n % 4:064d}", n, f"p{n}")
        assert s.size() <= 10
    assert s.size() == 10
    assert s.choose(1.0, "east", f"{0:064d}", set(), 0, 64) == 0  # forgotten: may go out again, never withheld


def _trade_until_complete(seeder: SuperSeeder, regions: dict[str, int], pieces: int, leave: tuple[str, int] | None = None) -> dict:
    """A round-based region: each peer in turn asks the edge to seed; on 204 it takes a piece it lacks from a neighbour.

    Returns the pieces the edge sent per region.  ``leave`` = (peer, round):
    that peer stops after that round (its copies stop counting).
    """
    peers = {f"{r}{n}": (r, set()) for r, count in regions.items() for n in range(count)}
    for name, (region, _) in peers.items():
        seeder.observe(0.0, region, CID, name, False)
    egress = dict.fromkeys(regions, 0)
    for rnd in range(10 * pieces * len(peers)):
        if all(len(have) == pieces for _, have in peers.values()):
            return egress
        for name, (region, have) in list(peers.items()):
            if len(have) == pieces:
                continue
            index = seeder.choose(float(rnd), region, CID, have, 0, pieces)
            if index is not None:
                seeder.record(float(rnd), region, CID, index, name)
                have.add(index)
                egress[region] += 1
                continue
            held = [i for p, (r, h) in peers.items() if p != name and r == region for i in h - have]
            if held:
                have.add(min(held))
        if leave is not None and rnd == leave[1]:
            region, _ = peers.pop(leave[0])
            seeder.leave(region, CID, leave[0])
    raise AssertionError("the region never completed")


@pytest.mark.parametrize("n", [2, 3, 8, 20])
def test_each_region_costs_the_edge_one_copy_when_its_peers_trade(n):
    assert _trade_until_complete(SuperSeeder(), {"east": n, "west": n + 1}, 32) == {"east": 32, "west": 32}


def test_pieces_that_only_a_departed_peer_got_go_out_again_and_no_more():
    egress = _trade_until_complete(SuperSeeder(), {"east": 4}, 32, leave=("east0", 0))
    assert egress == {"east": 32 + 1}  # east0 got one piece in round 0, and left before passing it on


def test_parse_request():
    have = bitfield.encode({0, 3}, 10)
    assert parse_request(json.dumps({"have": have}).encode(), 10) == ({0, 3}, 0, False, set())
    assert parse_request(json.dumps({"have": have, "from": 9}).encode(), 10) == ({0, 3}, 9, False, set())
    assert parse_request(json.dumps({"have": have, "from": 10}).encode(), 10) == ({0, 3}, 10, False, set())  # a reader at the end
    assert parse_request(json.dumps({"have": have, "whole": True}).encode(), 10) == ({0, 3}, 0, True, set())
    unseen = bitfield.encode({5, 9}, 10)
    assert parse_request(json.dumps({"have": have, "unseen": unseen}).encode(), 10) == ({0, 3}, 0, False, {5, 9})
    for body, word in [
        (b"{nope", "JSON"),
        (b"[]", "object"),
        (json.dumps({}).encode(), "have"),
        (json.dumps({"have": "%%"}).encode(), "have"),
        (json.dumps({"have": bitfield.encode(set(), 17)}).encode(), "have"),
        *[(json.dumps({"have": have, "from": bad}).encode(), "from") for bad in (-1, 11, 1.5, True, "3", None)],
        *[(json.dumps({"have": have, "whole": bad}).encode(), "whole") for bad in (1, "yes", None)],
        *[(json.dumps({"have": have, "unseen": bad}).encode(), "unseen") for bad in (1, "%%", None, bitfield.encode({1}, 17))],
    ]:
        with pytest.raises(ValueError, match=word):
            parse_request(body, 10)


def test_parse_latency():
    assert parse_latency(None) is None
    assert parse_latency({"p50": 0.02, "p95": 1}) == (0.02, 1.0)
    for bad in ({"p50": 0.1}, {"p50": -1, "p95": 1}, {"p50": True, "p95": 1}, {"p50": 0.5, "p95": 0.1}, {"p50": 1, "p95": 1e9}, [1, 2]):
        with pytest.raises(ValueError, match="have_latency"):
            parse_latency(bad)


def test_region_stats_copies_latency_and_bounds():
    st = RegionStats(max_sent_entries=2)
    st.sent("east", "a", "seed", 100)
    st.sent("east", "a", "piece", 50)
    st.sent("west", "a", "seed", 100)
    assert st.copies("east", {"a": 100}) == {"a": 1.5}
    assert st.bytes[("east", "seed")] == 100
    st.sent("east", "b", "seed", 1)  # a third tally: the least recently used goes
    assert st.copies("east", {"a": 100, "b": 1}) == {"b": 1.0}
    for n, (p50, p95) in enumerate([(0.01, 0.05), (0.02, 0.2), (0.03, 0.1)]):
        st.report_latency("east", f"p{n}", (p50, p95))
    assert st.latency("east") == {"p50": 0.02, "p95": 0.2, "peers": 3}
    st.retain_latency({"p0"})
    assert st.latency("east") == {"p50": 0.01, "p95": 0.05, "peers": 1}
    st.retain_latency(set())
    assert st.latency("east") is None and st.regions() == {"east", "west"}
