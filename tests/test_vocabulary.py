"""The shared vocabulary: the spellings outside readers parse, the P2P share and the flash-crowd bound."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from edgeswarm.policy import vocabulary as v


def test_each_document_keeps_its_own_spelling_of_the_three_source_kinds():
    assert v.SOURCE_KINDS == ("edge", "peer-same-region", "peer-other-region")  # /status, lab JSON
    assert v.STAT_KINDS == ("edge", "peer_same_region", "peer_other_region")  # announce "stats"
    assert list(v.TRACKER_FIELDS.values()) == ["bytes_from_edge", "bytes_from_peers_same_region", "bytes_from_peers_other_region"]
    assert list(v.BENCH_KEYS.values()) == ["edge", "peers_same_region", "peers_other_region"]
    assert (v.peer_kind(True), v.peer_kind(False)) == (v.PEER_SAME_REGION, v.PEER_OTHER_REGION)


def test_the_share_counts_peers_of_both_regions_over_every_byte():
    got = Counter({v.EDGE: 75, v.PEER_SAME_REGION: 20, v.PEER_OTHER_REGION: 5})
    assert v.peer_bytes(got) == 25 and v.peer_bytes({}) == 0
    assert v.p2p_share(v.peer_bytes(got), sum(got.values())) == 0.25
    assert v.p2p_share(0, 0) is None and v.reported_share(0, 0) is None
    assert v.reported_share(1, 3) == round(1 / 3, v.SHARE_DIGITS)


def test_the_flash_crowd_bound_is_the_largest_of_its_terms():
    f = 32 << 20
    assert v.flash_crowd_bound(f, 12, 8e6, [2e6] * 12) == pytest.approx(12 * f / 32e6)  # the swarm's total upload
    assert v.flash_crowd_bound(f, 1, 8e6, [2e6]) == pytest.approx(f / 8e6)  # the edge alone
    assert v.flash_crowd_bound(f, 1, 8e6, [2e6], min_down=1e6) == pytest.approx(f / 1e6)  # the slowest download
    assert v.flash_crowd_bound(f, 4, math.inf, [1e6] * 4, min_down=2e6) == pytest.approx(f / 2e6)  # an unlimited edge
