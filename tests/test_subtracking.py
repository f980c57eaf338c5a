"""Where a peer sends each round of announces: its edge or the sub-tracker the edge named (policy/subtracking.py; no sockets)."""

from __future__ import annotations

import itertools

from edgeswarm.measure.lab import _per_s
from edgeswarm.policy.ratelimit import RateMeter
from edgeswarm.policy.subtracking import AnnounceRoute

EDGE, SUB = "http://edge", "http://127.1.0.1:7000"


def test_without_a_named_sub_tracker_every_round_goes_to_the_edge():
    r = AnnounceRoute()
    assert r.target(EDGE, 0, 10, news=False) is None
    r.edge_answered(EDGE, 0, None)
    assert r.target(EDGE, 10, 10, news=False) is None


def test_refreshes_go_to_the_sub_tracker_and_every_other_round_to_the_edge():
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    assert r.target(EDGE, 10, 10, news=False) == SUB  # one interval on: the sub-tracker
    assert r.target(EDGE, 15, 10, news=False) is None  # 1.5 intervals: the edge would soon forget us, and our ticket lapse
    r.edge_answered(EDGE, 20, SUB)
    assert r.target(EDGE, 30, 10, news=False) == SUB


def test_news_goes_to_the_edge():
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    assert r.target(EDGE, 1, 10, news=True) is None  # started, completed, or a content without a ticket


def test_one_round_at_a_time_goes_to_a_sub_tracker_and_the_rounds_meanwhile_go_to_the_edge():
    """The peer does not wait for a round at its sub-tracker: news, and the rounds due while a slow one holds it, go to
    the edge. One that fails after the edge named another sets itself aside, and leaves the new one named."""
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    assert r.target(EDGE, 10, 10, news=False) == SUB
    r.sent(EDGE)
    assert r.target(EDGE, 12, 10, news=False) is None and r.target("http://other", 12, 10, news=False) is None
    r.edge_answered(EDGE, 12, "http://127.1.0.2:7000")  # the edge's answer to a round sent meanwhile names another
    r.joined(SUB, "c1")  # the round out there answered after: what it was told is forgotten with it
    r.failed(EDGE, SUB, 13, 10)
    r.ended(EDGE)
    assert r.named(EDGE) == "http://127.1.0.2:7000" and r.status(13)["set_aside"] == [SUB]
    assert r.target(EDGE, 20, 10, news=False) == "http://127.1.0.2:7000"
    r.edge_answered(EDGE, 40, SUB)
    assert r.event(SUB, "c1") == "started"


def test_a_failed_sub_tracker_is_forgotten_until_the_edge_names_one_again():
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    r.failed(EDGE, SUB, 5, 10)
    assert r.named(EDGE) is None
    assert r.target(EDGE, 10, 10, news=False) is None
    r.edge_answered(EDGE, 10, "http://127.1.0.2:7000")  # the edge's next answer may name another
    assert r.target(EDGE, 20, 10, news=False) == "http://127.1.0.2:7000"
    r.edge_answered(EDGE, 20, None)  # the edge demoted it: no more sub-tracker
    assert r.target(EDGE, 30, 10, news=False) is None
    assert r.status(30)["fallbacks"] == 1


def test_a_failed_sub_tracker_is_set_aside_while_its_edge_may_still_name_it():
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    r.failed(EDGE, SUB, 5, 10)  # killed: the edge demotes it only after three silent intervals, at its next expiry run
    r.edge_answered(EDGE, 5, SUB)  # so its answers name it meanwhile
    assert r.target(EDGE, 14, 10, news=False) is None and r.status(14)["set_aside"] == [SUB]
    r.edge_answered(EDGE, 50, SUB)  # named before its time aside ended: perhaps not demoted yet
    assert r.target(EDGE, 56, 10, news=False) is None and r.status(56)["set_aside"] == []
    r.edge_answered(EDGE, 56, SUB)  # named again after it: a restarted one, promoted again
    assert r.target(EDGE, 66, 10, news=False) == SUB


def test_a_killed_sub_tracker_costs_each_of_its_peers_one_failed_attempt_whenever_it_dies():
    """Set aside for three intervals, a killed one was still named when that ended (its edge demotes it three to four
    intervals after its last announce): its peers failed there twice, about one kill in two (an adversarial session).
    Here every phase of the kill, the edge's expiry runs and the peer's rounds, one interval apart each."""
    interval, worst = 10.0, 0
    for kill, expiry, rounds in itertools.product(range(500, 700, 7), range(0, 100, 9), range(0, 100, 9)):
        worst = max(worst, _failures(kill / 10, expiry / 10, rounds / 10, interval))
    assert worst == 1


def _failures(kill: float, expiry: float, rounds: float, interval: float) -> int:
    """The failed rounds at a sub-tracker killed at ``kill``: it announced to its edge at every multiple of the interval
    till then, the edge expires at ``expiry`` + each interval, the peer's rounds are at ``rounds`` + each interval."""
    last = kill // interval * interval
    demoted = next(e for e in (expiry + n * interval for n in itertools.count()) if e - last > 3 * interval)
    r = AnnounceRoute()
    r.edge_answered(EDGE, rounds - interval, SUB)
    failures = 0
    for n in range(40):
        now = rounds + n * interval
        if r.target(EDGE, now, interval, news=False) == SUB:
            if now < kill:
                r.answered(SUB)
                continue
            r.failed(EDGE, SUB, now, interval)
            failures += 1
        r.edge_answered(EDGE, now, SUB if now < demoted else None)  # the round at the edge, which names it till then
    return failures


def test_a_sub_tracker_that_fails_again_after_its_time_aside_is_set_aside_twice_as_long_until_one_answers():
    """A broken one that still announces to its edge stays promoted: each of its peers paid a failed round every three
    intervals for good (an adversarial session's note). Now 5, 10, 20 ... intervals, at most MAX_SET_ASIDE, and asked
    again after an edge answer since then names it."""
    r = AnnounceRoute()
    now, aside = 0.0, []
    for _ in range(6):
        r.edge_answered(EDGE, now, SUB)
        assert r.target(EDGE, now + 1, 10, news=False) == SUB
        r.failed(EDGE, SUB, now + 1, 10)
        r.edge_answered(EDGE, now + 2, SUB)  # still named: its edge cannot see it fail
        t = now + 2
        while r.target(EDGE, t, 10, news=False) is None:
            r.edge_answered(EDGE, t, SUB)  # rounds at the edge meanwhile, every interval
            t += 10
        aside.append((t - now - 1) / 10)
        now = t
    # intervals from the failure until it is asked again (rounds 10 s apart: the one at the end of its time aside goes to
    # the edge, whose answer names it)
    assert aside == [6.1, 11.1, 21.1, 41.1, 49.1, 49.1]
    r.answered(SUB)  # it answered a round: the next failure sets it aside for five intervals again
    r.failed(EDGE, SUB, now, 10)
    r.edge_answered(EDGE, now + 45, SUB)
    assert r.target(EDGE, now + 49, 10, news=False) is None and r.target(EDGE, now + 50, 10, news=False) is None
    r.edge_answered(EDGE, now + 50, SUB)
    assert r.target(EDGE, now + 51, 10, news=False) == SUB


def test_edges_are_routed_apart_and_a_dropped_edge_is_forgotten():
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    r.edge_answered("http://other", 0, None)
    assert r.target("http://other", 5, 10, news=False) is None and r.target(EDGE, 5, 10, news=False) == SUB
    r.forget(EDGE)
    assert r.target(EDGE, 6, 10, news=False) is None


def test_the_rate_meter_counts_a_second_over_its_window():
    m = RateMeter(window=10)
    for t in range(20):
        m.add(100 + t, 3)
    assert m.total == 60 and 2.7 <= m.rate(119.5) <= 3.3
    assert m.rate(200) == 0 and m.total == 60


def test_the_labs_measure_of_an_edges_announce_load_is_the_growth_of_its_counter_a_second_from_a_phases_start():
    samples = [(0.0, 0, 0), (10.0, 30, 60), (20.0, 40, 80), (30.0, 50, 100)]  # (t, requests, contents): 3 a second, then 1
    assert _per_s(samples, 0.0, 1) == round(50 / 30, 3) and _per_s(samples, 0.0, 2) == round(100 / 30, 3)
    assert _per_s(samples, 10.0, 1) == 1.0  # the linger phase, from the first sample in it
    assert _per_s(samples, 30.0, 1) is None and _per_s(samples, None, 1) is None  # one sample, or no phase: no rate


def test_a_contents_first_round_at_a_sub_tracker_says_started_and_again_after_it_failed_or_was_dropped():
    """A restarted peer told its sub-tracker ``stopped``: an ``update`` then was refused (409) and set it aside."""
    r = AnnounceRoute()
    r.edge_answered(EDGE, 0, SUB)
    assert r.event(SUB, "c1") == "started"
    r.joined(SUB, "c1")
    assert (r.event(SUB, "c1"), r.event(SUB, "c2")) == ("update", "started")
    r.left(SUB, "c1")
    assert r.event(SUB, "c1") == "started"
    r.joined(SUB, "c1")
    r.failed(EDGE, SUB, 5, 10)  # it may have restarted, and forgotten us
    assert r.event(SUB, "c1") == "started"
    r.edge_answered(EDGE, 40, SUB)
    r.joined(SUB, "c1")
    r.edge_answered(EDGE, 50, None)  # demoted: named again later, it may have restarted meanwhile
    assert r.event(SUB, "c1") == "started"
