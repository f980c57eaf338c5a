"""The promotion policy (policy/promotion.py): whom an edge promotes to relay for its region, and when it demotes them."""

from __future__ import annotations

from edgeswarm.policy.promotion import WINDOW, Promoter, PromotionRules

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
    p.observe(213, "c", "http://c:1", "east", CID, 0, stopped=True)
    assert not p.promoted and p.demotions == 3


def test_a_restart_or_a_move_starts_the_measure_again():
    p = Promoter(RULES)
    assert announce_at_rate(p, "a", 5000, 0, 12)
    assert p.observe(13, "a", "http://a:2", "east", CID, 5000 * 13) is False  # a new port: a new peer to the promoter
    assert p.demotions == 1
    assert announce_at_rate(p, "b", 5000, 0, 12)
    assert p.observe(13, "b", "http://b:1", "east", CID, 10) is False  # its counter went back: a restart
    assert p.demotions == 2
