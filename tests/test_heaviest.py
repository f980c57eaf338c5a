"""Counts that know their largest (policy/heaviest.py), against a plain scan of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.policy.heaviest import Heaviest


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans()), max_size=200))
def test_the_top_is_always_a_largest_count(steps):
    h, counts = Heaviest(), dict.fromkeys("abcde", 0)
    for key, up in steps:
        if not up and not counts[key]:
            continue
        h.add(key, 1 if up else -1)
        counts[key] += 1 if up else -1
        most = max(counts.values())
        assert h.top() == (None if not most else (h.top()[0], most))  # type: ignore[index]
        assert most == 0 or counts[h.top()[0]] == most  # type: ignore[index]
        assert len(h) == sum(1 for n in counts.values() if n) and all(h.get(k) == n for k, n in counts.items())


def test_the_longest_at_the_top_comes_first_and_bad_steps_are_refused():
    h = Heaviest()
    h.add("x", 1)
    h.add("y", 1)
    assert h.top() == ("x", 1)
    with pytest.raises(ValueError, match="a step of 2"):
        h.add("x", 2)
    with pytest.raises(ValueError, match="counts 0"):
        h.add("z", -1)
    h.add("x", -1)
    assert h.top() == ("y", 1) and h.get("x") == 0
