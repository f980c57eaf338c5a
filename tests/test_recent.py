"""policy.recent.Recent: the one rule by which per-path, per-content and per-token tables stay bounded."""

from edgeswarm.policy.recent import Recent


def test_setting_past_the_limit_forgets_the_least_recently_used():
    table: Recent[str, int] = Recent(3)
    for i, key in enumerate("abcd"):
        table[key] = i
    assert list(table) == ["b", "c", "d"]


def test_setting_again_or_touching_makes_a_key_the_most_recent():
    table: Recent[str, int] = Recent(3)
    table.update(a=1, b=2, c=3)
    table["a"] = 10  # set again: "b" is now the least recent
    assert table.touch("b") == 2  # touched: "c" is
    table["d"] = 4
    assert dict(table) == {"a": 10, "b": 2, "d": 4}
    assert table.touch("c") is None and "c" not in table  # touching an absent key adds nothing


def test_put_names_the_keys_it_forgot():
    """An edge drops the BitTorrent hashes of the torrents its table forgets (roles/edge.py)."""
    table: Recent[str, int] = Recent(2)
    assert table.put("a", 1) == [] and table.put("b", 2) == []
    assert table.put("c", 3) == ["a"]
    table.limit = 1
    assert table.put("d", 4) == ["b", "c"]
