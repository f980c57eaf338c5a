"""edgeswarm.policy.eviction: LFU with dynamic aging, as pure bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.policy.eviction import EvictionPolicy


def filled(capacity: int | None, *keys: str, size: int = 1) -> EvictionPolicy:
    policy = EvictionPolicy(capacity)
    for key in keys:
        assert policy.add(key, size) == []
    return policy


def test_unbounded_policy_never_evicts():
    policy = EvictionPolicy(None)
    for n in range(1000):
        assert policy.add(n, 10**9) == []
    assert len(policy) == 1000 and policy.used == 1000 * 10**9


def test_filling_up_to_exactly_the_quota_evicts_nothing():
    policy = filled(10, "a", "b", size=5)
    assert policy.used == 10 and "a" in policy and "b" in policy


def test_first_in_goes_first_when_nothing_was_read():
    policy = filled(3, "a", "b", "c")
    assert policy.add("d", 1) == ["a"]
    assert policy.add("e", 1) == ["b"]
    assert [k for k in "abcde" if k in policy] == ["c", "d", "e"]


def test_a_hit_item_outlives_colder_ones():
    policy = filled(3, "a", "b", "c")
    policy.hit("a")
    assert policy.add("d", 1) == ["b"]
    assert policy.add("e", 1) == ["c"]
    assert "a" in policy


def test_popular_items_outlive_a_scan_that_would_flush_an_lru():
    """A sweep through many cold items (a crawler, a seek-heavy viewer) evicts the cold items first."""
    policy = filled(10, *(f"hot{n}" for n in range(5)))
    for _ in range(10):
        for n in range(5):
            policy.hit(f"hot{n}")
    for n in range(40):  # an LRU would have dropped every hot item by the 10th of these
        victims = policy.add(f"scan{n}", 1)
        assert victims == ([f"scan{n - 5}"] if n >= 5 else [])  # the oldest cold item, one for one
    assert all(f"hot{n}" in policy for n in range(5))
    assert policy.used == 10
    for n in range(40, 200):  # ...but with aging, unread popularity does not last for ever
        policy.add(f"scan{n}", 1)
    assert not any(f"hot{n}" in policy for n in range(5))


def test_initial_hits_count():
    policy = EvictionPolicy(2)
    policy.add("warm", 1, hits=5)
    policy.add("cold", 1)
    assert policy.add("new", 1) == ["cold"]


def test_old_popularity_fades_with_age():
    """LFU-DA, not plain LFU: each eviction raises the age, so new steadily-read items overtake a stale favourite."""
    policy = EvictionPolicy(2)
    policy.add("old", 1)
    for _ in range(3):
        policy.hit("old")  # priority 4 at age 0
    evicted_old_at = None
    for n in range(10):
        if "old" in policy.add(f"new{n}", 1):
            evicted_old_at = n
        policy.hit(f"new{n}")
    assert evicted_old_at is not None and evicted_old_at > 0  # it survived a while, then went
    assert "old" not in policy


def test_plain_lfu_would_keep_it_for_ever_but_aging_does_not():
    policy = EvictionPolicy(1 + 1)
    policy.add("fav", 1, hits=50)
    for n in range(200):  # each newcomer evicts the previous one and raises the age by one
        policy.add(f"x{n}", 1)
    assert "fav" not in policy


def test_hit_on_an_unknown_or_removed_key_is_ignored():
    policy = filled(2, "a")
    policy.hit("nope")
    assert "nope" not in policy and len(policy) == 1
    policy.remove("a")
    policy.hit("a")
    assert "a" not in policy and policy.used == 0


def test_remove():
    policy = filled(10, "a", "b", size=3)
    policy.remove("a")
    policy.remove("a")  # twice is harmless
    policy.remove("never")
    assert policy.used == 3 and "a" not in policy and len(policy) == 1


def test_a_removed_item_is_never_reported_as_a_victim():
    policy = filled(3, "a", "b", "c")
    policy.remove("a")  # its heap row is now stale
    assert policy.add("d", 1) == []
    assert policy.add("e", 1) == ["b"]


def test_re_adding_replaces_the_size_instead_of_counting_it_twice():
    policy = filled(10, "a", size=4)
    assert policy.add("a", 6) == []
    assert policy.used == 6 and len(policy) == 1


def test_re_adding_resets_popularity():
    policy = filled(2, "a", "b")
    for _ in range(5):
        policy.hit("a")
    policy.add("a", 1)  # a new version: its hits start over, and it is now newer than b
    policy.hit("b")
    assert policy.add("c", 1) == ["a"]


def test_the_item_being_added_is_never_its_own_victim():
    policy = filled(3, "a", "b", "c")
    assert policy.add("big", 5) == ["a", "b", "c"]
    assert "big" in policy and len(policy) == 1 and policy.used == 5  # over quota, but only by itself
    assert policy.add("small", 1) == ["big"]  # no longer protected: the next add makes room
    assert policy.used == 1


def test_the_newcomer_is_protected_even_if_it_is_the_coldest():
    policy = EvictionPolicy(2)
    policy.add("a", 1, hits=10)
    policy.add("b", 1, hits=10)
    assert policy.add("c", 1) == ["a"]  # c has the lowest priority, yet a hot item goes
    assert "c" in policy


def test_several_victims_make_room_for_one_large_item():
    policy = filled(10, *"abcde", size=2)
    policy.hit("b")
    assert policy.add("f", 5) == ["a", "c", "d"]
    assert policy.used == 9


def test_zero_capacity_keeps_only_the_newest():
    policy = EvictionPolicy(0)
    assert policy.add("a", 1) == []
    assert policy.add("b", 1) == ["a"]
    assert len(policy) == 1 and "b" in policy


def test_stale_heap_rows_are_compacted_without_losing_track():
    policy = filled(4, "a", "b", "c", "d")
    for n in range(3000):  # every re-add leaves a stale heap row behind
        policy.add("abcd"[n % 4], 1)
    assert len(policy._heap) <= 4 * len(policy) + 1024 + 1
    policy.hit("a")
    policy.hit("b")
    policy.hit("c")
    assert policy.add("e", 1) == ["d"]
    assert policy.used == 4


# -- model-based property test ------------------------------------------------------------

KEYS = st.sampled_from([f"k{n}" for n in range(12)])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), KEYS, st.integers(1, 40), st.integers(1, 4)),
        st.tuples(st.just("hit"), KEYS),
        st.tuples(st.just("remove"), KEYS),
    ),
    max_size=60,
)


@given(st.one_of(st.none(), st.integers(0, 100)), OPS)
def test_bookkeeping_stays_consistent(capacity, ops):
    policy = EvictionPolicy(capacity)
    model: dict[str, int] = {}  # key -> size, what should be held
    for op in ops:
        if op[0] == "add":
            _, key, size, hits = op
            model.pop(key, None)
            victims = policy.add(key, size, hits)
            assert key not in victims
            assert len(set(victims)) == len(victims)
            assert all(v in model for v in victims)  # only items that were held
            for v in victims:
                del model[v]
            model[key] = size
            used = sum(model.values())
            if capacity is None:
                assert victims == []
            elif size <= capacity:
                assert used <= capacity  # the quota holds...
            else:
                assert list(model) == [key]  # ...or only the oversized newcomer is left
        elif op[0] == "hit":
            policy.hit(op[1])
        else:
            policy.remove(op[1])
            model.pop(op[1], None)
        assert policy.used == sum(model.values())
        assert len(policy) == len(model)
        assert all(k in policy for k in model)


@given(st.integers(1, 100), st.lists(st.tuples(KEYS, st.integers(1, 40)), max_size=60))
def test_eviction_stops_as_soon_as_the_quota_is_met(capacity, adds):
    policy = EvictionPolicy(capacity)
    sizes: dict[str, int] = {}
    for key, size in adds:
        sizes.pop(key, None)
        before = sum(sizes.values()) + size
        victims = policy.add(key, size)
        for v in victims:
            before -= sizes.pop(v)
            if v != victims[-1]:
                assert before > capacity  # still over quota, so another victim was needed
        sizes[key] = size
        if victims:
            assert before <= capacity or list(sizes) == [key]


@pytest.mark.parametrize("capacity", [1, 5, 50])
def test_hits_only_never_evict(capacity):
    policy = filled(capacity, *(str(n) for n in range(capacity)))
    for n in range(500):
        policy.hit(str(n % capacity))
    assert len(policy) == capacity and policy.used == capacity


def test_pinned_items_are_never_victims_and_the_others_still_make_room():
    policy = filled(10, "seed1", "seed2", "a", size=3)
    policy.pinned = lambda key: key.startswith("seed")
    assert policy.add("b", 3) == ["a"]  # the least-used unpinned item goes, the pinned ones stay
    assert policy.add("c", 3) == ["b"]
    assert "seed1" in policy and "seed2" in policy
