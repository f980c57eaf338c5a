"""edgeswarm.policy.sources: ranking sources by measured throughput, with back-off for failures."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeswarm.policy.sources import ALPHA, BASE_BACKOFF, MAX_BACKOFF, SourceRanking


def test_an_unknown_source_is_unmeasured_and_available():
    r = SourceRanking()
    assert r.rate("edge") is None
    assert r.available("edge", 0.0)


def test_first_sample_is_taken_as_is_then_smoothed():
    r = SourceRanking()
    r.success("edge", 1000, 2.0)
    assert r.rate("edge") == 500.0
    r.success("edge", 3000, 1.0)
    assert r.rate("edge") == pytest.approx(ALPHA * 3000 + (1 - ALPHA) * 500)
    assert r.rate("edge") == pytest.approx(1250.0)


def test_one_fast_sample_does_not_outweigh_history():
    r = SourceRanking()
    for _ in range(10):
        r.success("steady", 1000, 1.0)
    r.success("steady", 1_000_000, 1.0)
    assert r.rate("steady") < 1_000_000 / 2


def test_smoothing_converges_to_a_new_steady_rate():
    r = SourceRanking()
    r.success("e", 100, 1.0)
    for _ in range(50):
        r.success("e", 10_000, 1.0)
    assert r.rate("e") == pytest.approx(10_000, rel=1e-6)


@pytest.mark.parametrize("seconds", [0.0, -1.0, 1e-12])
def test_an_instant_transfer_does_not_divide_by_zero(seconds):
    r = SourceRanking()
    r.success("e", 1000, seconds)
    assert r.rate("e") == pytest.approx(1000 / 1e-6)


def test_backoff_doubles_up_to_the_cap():
    r = SourceRanking()
    backoffs = [r.failure("peer", 100.0) for _ in range(8)]
    assert backoffs == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoffs[0] == BASE_BACKOFF and max(backoffs) == MAX_BACKOFF


def test_a_failed_source_is_set_aside_until_its_backoff_ends():
    r = SourceRanking()
    assert r.failure("peer", 10.0) == 2.0
    assert not r.available("peer", 10.0)
    assert not r.available("peer", 11.999)
    assert r.available("peer", 12.0)
    assert r.failure("peer", 12.0) == 4.0  # a repeat offence, counted from the new failure time
    assert not r.available("peer", 15.9)
    assert r.available("peer", 16.0)


def test_success_clears_the_record():
    r = SourceRanking()
    for _ in range(4):
        r.failure("peer", 0.0)
    r.success("peer", 100, 1.0)
    assert r.available("peer", 0.0)
    assert r.failure("peer", 0.0) == BASE_BACKOFF


def test_failure_keeps_the_measured_rate():
    r = SourceRanking()
    r.success("e", 5000, 1.0)
    r.failure("e", 0.0)
    assert r.rate("e") == 5000.0


def test_sources_are_independent():
    r = SourceRanking()
    r.failure("a", 0.0)
    r.failure("a", 0.0)
    r.success("b", 10, 1.0)
    assert r.failure("c", 0.0) == BASE_BACKOFF
    assert r.rate("a") is None and r.rate("b") == 10.0
    assert r.available("b", 0.0) and not r.available("a", 0.0)


def test_ranked_fastest_first_then_unmeasured_in_given_order():
    r = SourceRanking()
    r.success("slow", 100, 1.0)
    r.success("fast", 10_000, 1.0)
    r.success("mid", 1000, 1.0)
    assert r.ranked(["new1", "slow", "fast", "new2", "mid"], 0.0) == ["fast", "mid", "slow", "new1", "new2"]
    assert r.ranked(["new2", "new1"], 0.0) == ["new2", "new1"]
    assert r.ranked([], 0.0) == []


def test_ranked_leaves_out_sources_that_are_set_aside():
    r = SourceRanking()
    r.success("fast", 10_000, 1.0)
    r.success("slow", 100, 1.0)
    r.failure("fast", 50.0)
    assert r.ranked(["fast", "slow", "new"], 51.0) == ["slow", "new"]
    # back, at its old rank: ranked last until it delivered again, the fastest edge late once was never asked again by
    # a player's reads, all urgent (a review)
    assert r.ranked(["fast", "slow", "new"], 52.0) == ["fast", "slow", "new"]


def test_ranked_only_returns_what_it_was_given():
    r = SourceRanking()
    r.success("elsewhere", 10**9, 1.0)
    assert r.ranked(["a", "b"], 0.0) == ["a", "b"]


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.integers(0, 10**6)), max_size=8),
    st.sets(st.sampled_from("abcdefgh")),
    st.permutations(list("abcdefgh")),
)
def test_ranked_is_the_available_sources_sorted_by_rate(rates, failed, order):
    r = SourceRanking()
    for source, rate in rates.items():
        if rate is not None:
            r.success(source, rate, 1.0)
    for source in failed:
        r.failure(source, 0.0)
    ranked = r.ranked(order, 1.0)
    assert set(ranked) == set(order) - failed
    measured = [r.rate(s) or 0.0 for s in ranked]
    assert measured == sorted(measured, reverse=True)
    # ties (including all unmeasured sources) keep the caller's order
    for x, y in itertools.pairwise(ranked):
        if (r.rate(x) or 0.0) == (r.rate(y) or 0.0):
            assert order.index(x) < order.index(y)
    assert r.ranked(order, 1.0 + BASE_BACKOFF) == sorted(order, key=lambda s: -(r.rate(s) or 0.0))


def test_revive_ends_the_back_off_and_keeps_the_rate():
    r = SourceRanking()
    r.success("edge", 1000, 1.0)
    for _ in range(5):
        r.failure("edge", 0.0)  # a dead edge: set aside for 32 s
    r.revive("edge")  # it answers announces again
    assert r.available("edge", 0.0) and r.rate("edge") == 1000
    assert r.failure("edge", 1.0) == BASE_BACKOFF  # a new failure starts the back-off over


def test_when_every_source_is_set_aside_one_is_probed_a_second():
    """A gateway whose only edge came back waited out a back-off that grew during the outage (13 s after 40 s)."""
    r = SourceRanking()
    for _ in range(6):
        r.failure("a", 0.0)  # 32 s
    r.failure("b", 0.0)  # 2 s
    assert r.probe(["a", "b"], 0.5) is None  # not right after they failed
    assert r.probe(["a", "b"], 1.0) == "b"  # the one whose back-off ends first
    assert r.probe(["a", "b"], 1.5) is None  # at most once a PROBE_EVERY
    assert r.probe(["a"], 2.0) == "a"
    assert r.probe(["a", "c"], 9.0) is None  # c is available: nothing to probe
    assert r.probe([], 9.0) is None


def test_requests_sent_before_a_failure_that_fail_after_it_do_not_double_the_back_off():
    """Several corrupt pieces fetched at once from one sibling set it aside 8, 16 and 32 s within milliseconds (an
    adversarial session): a request sent before the source's last failure fails in the same episode."""
    r = SourceRanking()
    assert r.failure("sib", 10.0, began=9.0) == BASE_BACKOFF
    assert r.failure("sib", 10.001, began=9.0) == BASE_BACKOFF  # in flight when it failed: not doubled
    assert r.failure("sib", 10.5, began=9.5) == BASE_BACKOFF  # the same back-off, from its latest failure
    assert not r.available("sib", 12.4) and r.available("sib", 12.5)
    assert r.failure("sib", 13.0, began=12.5) == 2 * BASE_BACKOFF  # sent after: a repeat offence
    assert r.failure("sib", 13.5, began=12.75) == 2 * BASE_BACKOFF  # sent before the episode's first failure: the same one
    assert r.failure("sib", 30.0, began=12.0) == 2 * BASE_BACKOFF  # a slow one from before, ending after the back-off
    r.success("sib", 1000, 1.0)
    assert r.failure("sib", 40.0, began=12.0) == BASE_BACKOFF  # a success since: a first failure again


def test_a_failure_is_news_as_its_episode_starts_as_its_back_off_grows_and_once_a_minute_after():
    r = SourceRanking()
    said = []
    for t in range(0, 200):  # a dead edge asked every second
        r.failure("edge", float(t), float(t) - 0.5)
        said.append(r.news("edge", float(t)))
    assert [t for t, s in enumerate(said) if s] == [0, 1, 2, 3, 4, 5, 65, 125, 185]  # 2 ... 60 s, then one a minute
    r.success("edge", 1000, 1.0)
    r.failure("edge", 300.0)
    assert r.news("edge", 300.0)  # a new episode is said at once


def test_an_answer_to_a_request_sent_before_the_last_failure_revives_nothing():
    """An edge's pieces asked before it refused our token, arriving after, each ended the download's pause, and it was
    asked again at once, a few times a second (a review of the fix for an adversarial session's finding)."""
    r = SourceRanking()
    r.failure("edge", 5.0, began=4.0)
    r.revive("edge", began=4.5)
    assert not r.available("edge", 5.5)
    r.revive("edge", began=5.5)
    assert r.available("edge", 5.6)
