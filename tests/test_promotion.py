"""The promotion policy (policy/promotion.py): whom an edge promotes to relay for its region, and when it demotes them."""

from __future__ import annotations

import pytest

from edgeswarm.policy.promotion import WINDOW, Promoter, PromotionRules, rendezvous

RULES = PromotionRules(min_upload_Bps=1000, min_uptime_s=10, per_region=2)
CID = "c" * 64


def announce_at_rate(p: Promoter, key: str, rate: float, start: float, end: float, region: str = "east") -> bool:
    """One announce a second from ``start`` to ``end`` (a clock of seconds), its upload counter growing at ``rate``."""
    promoted = False
    for t in range(int(start), int(end) + 1):
        promoted = p.observe(t, key, f"http://{key}:1", region, CID, int(rate * t))
    return promoted


def test_a_peer_is_promoted_only_with_the_upload_and_the_uptime():
    p = Promoter(RULES)
    assert not announce_at_rate(p, "fast", 5000, 0, 9)  # fast, but 9 s of uptime
    assert announce_at_rate(p, "fast", 5000, 10, 10)  # 10 s: promoted
    assert not announce_at_rate(p, "slow", 500, 0, 20)  # long enough, too slow
    assert p.status()["promoted"] == ["http://fast:1"] and p.promotions == 1


def announce_batch(p: Promoter, key: str, now: float, counters: dict[str, int]) -> bool:
    """One batch announce at ``now``: its items observed one after another, microseconds apart (as the edge does)."""
    promoted = False
    for i, (cid, uploaded) in enumerate(counters.items()):
        promoted = p.observe(now + i * 1e-6, key, f"http://{key}:1", "east", cid, uploaded)
    return promoted


def test_a_peer_announcing_several_contents_in_a_batch_is_measured_over_real_time():
    """Each item of a batch was a sample: the window spanned microseconds, and a peer uploading 50 B/s was measured at
    MB/s and promoted at a 100 KB/s threshold (an adversarial session)."""
    p = Promoter(PromotionRules(min_upload_Bps=100_000, min_uptime_s=2))
    cids = [f"{i:064x}" for i in range(8)]
    for rnd in range(8):  # 100 bytes more for one content every 2 s: 50 B/s
        assert not announce_batch(p, "slow", 2.0 * rnd, {c: 100 * (rnd + 1) if c == cids[5] else 0 for c in cids})
    assert 45 <= p.seen["slow"].best <= 55 and not p.promoted
    for rnd in range(8):  # 300 KB more every 2 s over the eight contents: 150 KB/s, promoted
        promoted = announce_batch(p, "fast", 2.0 * rnd, {c: 37_500 * rnd for c in cids})
    assert promoted and 145_000 <= p.seen["fast"].best <= 155_000


def test_a_reading_closer_than_a_second_to_the_last_sample_brings_it_up_to_date():
    """A news announce (a content started or completed) just after a round: the round's sample, not a rate over 0.3 s."""
    p = Promoter(RULES)
    for t in range(5):
        p.observe(t, "a", "http://a:1", "east", CID, 100 * t)  # 100 B/s
    p.observe(4.3, "a", "http://a:1", "east", "d" * 64, 5000)  # 5 KB in 0.3 s: over 4.3 s, 1.2 KB/s
    assert list(p.seen["a"].samples) == [*((t, t, 100 * t) for t in range(4)), (4, 4.3, 5400)]
    assert 1200 <= p.seen["a"].best <= 1300


def test_a_batch_that_straddles_a_samples_first_second_is_no_rate_over_microseconds():
    p = Promoter(RULES)
    p.observe(0.0, "a", "http://a:1", "east", CID, 0)
    p.observe(0.9999995, "a", "http://a:1", "east", CID, 100)  # a batch's first item, in the first sample
    p.observe(1.0000005, "a", "http://a:1", "east", "d" * 64, 100)  # its next, a sample of its own a microsecond later
    assert p.seen["a"].best == 0.0


def test_a_content_announced_again_with_its_counter_kept_is_not_counted_twice():
    """A peer still reading a content it said stopped for keeps its upload counter, and announces it again from there:
    its bytes were in the total twice, and the measure jumped by them (a review)."""
    p = Promoter(RULES)
    other = "d" * 64
    for t in range(4):
        p.observe(t, "a", "http://a:1", "east", CID, 100 * t)
        p.observe(t, "a", "http://a:1", "east", other, 1_000_000)  # sent once, long ago
    p.observe(4, "a", "http://a:1", "east", other, 1_000_000, stopped=True)
    p.observe(5, "a", "http://a:1", "east", other, 1_000_000)  # again, its counter kept
    p.observe(5, "a", "http://a:1", "east", CID, 500)
    assert p.seen["a"].samples[-1][2] == 1_000_500 and p.seen["a"].best == 100.0
    p.observe(6, "a", "http://a:1", "east", other, 1_000_000, stopped=True)
    p.observe(7, "a", "http://a:1", "east", other, 0)  # again from 0: what it sent before stays in its total
    assert p.seen["a"].samples[-1][2] == 1_000_500


@pytest.mark.parametrize("gap", [0.5, 0.8, 0.95, 1.2])
def test_a_peer_announcing_more_than_once_a_second_is_measured(gap: float):
    """A reading that took the last sample's place (its time too) kept such a peer at one sample for good: measured at
    0 and never promoted (a review), where a peer that announces often is the busiest (a live viewer, a seeder)."""
    p = Promoter(PromotionRules(min_upload_Bps=100_000, min_uptime_s=10))
    t, up, promoted = 1000.0, 0, False
    while t < 1030:
        promoted = p.observe(t, "a", "http://a:1", "east", CID, up)
        t, up = t + gap, up + int(1_000_000 * gap)  # 1 MB/s
    assert promoted and 0.9e6 <= p.seen["a"].best <= 1.1e6


def test_at_most_per_region_are_promoted_and_other_regions_count_apart():
    p = Promoter(RULES)
    for key in ("a", "b", "c"):
        announce_at_rate(p, key, 5000, 0, 12)
    announce_at_rate(p, "w", 5000, 0, 12, region="west")
    assert sorted(p.promoted) == ["a", "b", "w"]  # c found east full


def test_a_promoted_peer_stays_while_idle_or_slower_as_its_neighbours_ask_less():
    p = Promoter(RULES)
    assert announce_at_rate(p, "a", 5000, 0, 12)
    base = 5000 * 12
    for t in range(13, 13 + 2 * WINDOW):  # idle: nobody asks it for anything
        assert p.observe(t, "a", "http://a:1", "east", CID, base)
    for t in range(30, 30 + 2 * WINDOW):  # slower: a tenth of the threshold
        assert p.observe(t, "a", "http://a:1", "east", CID, base + 100 * (t - 29))
    assert p.demotions == 0


def test_a_silent_or_stopped_peer_is_demoted_and_its_relayed_peers_go_elsewhere():
    p = Promoter(RULES)
    announce_at_rate(p, "a", 5000, 0, 12)
    announce_at_rate(p, "b", 5000, 0, 12)
    rids = [f"{i:012x}-{i:012x}" for i in range(40)]
    assert {p.relay_for("east", r) for r in rids} == {"http://a:1", "http://b:1"}  # spread over both
    assert p.relay_for("west", rids[0]) is None
    assert sorted(p.expire(100, 30)) == ["a", "b"]
    assert p.relay_for("east", rids[0]) is None and p.demotions == 2
    assert announce_at_rate(p, "c", 5000, 200, 212)
    p.observe(213, "c", "http://c:1", "east", CID, 0, stopped=True)  # its only content: it left
    assert not p.promoted and p.demotions == 3
    assert p.take_demoted() == [
        ("a", "it stopped announcing"),
        ("b", "it stopped announcing"),
        ("c", "it said stopped for the last content it announced here"),
    ]
    assert p.take_demoted() == []  # each once


def test_a_promoted_peer_that_drops_one_of_its_contents_stays_promoted_until_it_has_none_left():
    """``stopped`` for one content (evicted, a live segment left behind) demoted the whole peer, silently: its relayed
    and sub-tracked peers moved, and it served --promote-uptime again before it could be promoted again (a session)."""
    p = Promoter(RULES)
    other = "d" * 64
    assert announce_at_rate(p, "a", 5000, 0, 12)
    assert p.observe(12, "a", "http://a:1", "east", other, 40_000)
    assert p.observe(13, "a", "http://a:1", "east", other, 40_000, stopped=True)  # the other one evicted
    assert p.observe(14, "a", "http://a:1", "east", CID, 5000 * 14)
    assert p.observe(20, "a", "http://a:1", "east", other, 0)  # fetched again: its counter from 0 is no restart
    assert p.seen["a"].samples[-1] == (20, 20, 5000 * 14 + 40_000)  # what it sent of the dropped one still counts
    assert p.observe(21, "a", "http://a:1", "east", CID, 5000 * 14, stopped=True)
    assert p.demotions == 0 and p.take_demoted() == []
    assert not p.observe(22, "a", "http://a:1", "east", other, 0, stopped=True)  # none left here: it has left
    assert p.demotions == 1 and p.take_demoted() == [("a", "it said stopped for the last content it announced here")]
    assert "a" not in p.seen


def test_a_restart_or_a_move_starts_the_measure_again():
    p = Promoter(RULES)
    assert announce_at_rate(p, "a", 5000, 0, 12)
    assert p.observe(13, "a", "http://a:2", "east", CID, 5000 * 13) is False  # a new port: a new peer to the promoter
    assert p.demotions == 1
    assert announce_at_rate(p, "b", 5000, 0, 12)
    assert p.observe(13, "b", "http://b:1", "east", CID, 10) is False  # its counter went back: a restart
    assert p.demotions == 2
    assert p.take_demoted() == [("a", "it moved to http://a:2"), ("b", f"it restarted (its upload counter for {CID[:12]} went back)")]


def test_a_reachable_peer_is_assigned_a_sub_tracker_of_its_region_never_itself():
    p = Promoter(RULES)
    announce_at_rate(p, "a", 5000, 0, 12)
    announce_at_rate(p, "b", 5000, 0, 12)
    picks = {p.tracker_for("east", f"addr:10.0.0.{i}/x", f"http://10.0.0.{i}:1") for i in range(40)}
    assert picks == {"http://a:1", "http://b:1"}  # spread over both
    assert p.tracker_for("west", "addr:w/x", "http://w:1") is None  # none promoted there
    assert p.tracker_for("east", "a", "http://a:1") is None  # a promoted peer tracks itself at its edge
    assert p.tracker_for("east", "z", "http://a:1") == "http://b:1"  # never the asker's own URL
    assert p.status()["subtracker_assignments"] == 41


def test_a_peer_promoted_after_it_was_assigned_a_sub_tracker_counts_as_assigned_no_more():
    p = Promoter(RULES)
    announce_at_rate(p, "a", 5000, 0, 12)
    announce_at_rate(p, "b", 0, 0, 12)  # b announces, uploading nothing yet: assigned to a
    assert p.tracker_for("east", "b", "http://b:1") == "http://a:1"
    assert p.status()["subtracker_assignments"] == 1
    for t in range(13, 20):  # then b uploads, and earns its own promotion: its answers say "promoted", not "tracker"
        p.observe(t, "b", "http://b:1", "east", CID, 5000 * (t - 12))
    assert "b" in p.promoted and p.status()["subtracker_assignments"] == 0


def test_a_sub_trackers_departure_moves_only_its_own_peers():
    p = Promoter(RULES)
    announce_at_rate(p, "a", 5000, 0, 12)
    announce_at_rate(p, "b", 5000, 0, 12)
    keys = [f"addr:10.0.0.{i}/x" for i in range(40)]
    before = {k: p.tracker_for("east", k, f"http://{k}:1") for k in keys}
    assert p.assignments() == {
        "http://a:1": sum(v == "http://a:1" for v in before.values()),
        "http://b:1": 40 - p.assignments()["http://a:1"],
    }
    p.observe(13, "b", "http://b:1", "east", CID, 0, stopped=True)
    assert p.assignments() == {"http://a:1": sum(v == "http://a:1" for v in before.values())}  # b's peers count nowhere until asked
    after = {k: p.tracker_for("east", k, f"http://{k}:1") for k in keys}
    assert all(after[k] == "http://a:1" for k in keys)
    assert all(before[k] == after[k] for k in keys if before[k] == "http://a:1")  # a's kept theirs (rendezvous)
    p.forget(keys[0])
    assert p.status()["subtracker_assignments"] == 39


def test_rendezvous_is_stable_and_spreads():
    urls = [f"http://p{i}:1" for i in range(4)]
    picks = [rendezvous(urls, f"k{i}") for i in range(400)]
    assert all(100 - 40 < picks.count(u) < 100 + 40 for u in urls)
    assert [rendezvous(reversed(urls), f"k{i}") for i in range(400)] == picks  # whatever the order
    assert rendezvous([], "k") is None
