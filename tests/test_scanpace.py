"""edgeswarm.policy.scanpace: the origin walks its folder at most SCAN_SHARE of the time, and never less often than needed."""

from __future__ import annotations

import pytest

from edgeswarm.policy.scanpace import SCAN_SHARE, next_wait


def test_a_cheap_walk_keeps_the_scan_interval():
    assert next_wait(1.0, 0.002) == 1.0
    assert next_wait(0.2, 0.0) == 0.2


@pytest.mark.parametrize("walk", [0.1, 0.34, 2.0])
def test_a_costly_walk_takes_at_most_its_share_of_the_time(walk):
    """20 000 files: a 0.34 s walk once a second was a third of a core for an idle origin; now one every 6.8 s."""
    wait = next_wait(1.0, walk)
    assert wait >= 1.0 and walk / wait <= SCAN_SHARE + 1e-9
    assert next_wait(1.0, 0.34) == pytest.approx(6.8)


def test_the_pace_follows_the_folder_back_down():
    assert next_wait(1.0, 0.34) > 1.0
    assert next_wait(1.0, 0.01) == 1.0  # files removed: the walk is cheap again, and so is the next wait
