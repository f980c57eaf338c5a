"""When a peer announces to each of its trackers: every interval, soon again after a failure (no sockets)."""

from __future__ import annotations

import pytest

from edgeswarm.node.sleepwatch import QUIET_S, SLEPT_S, SleepWatch
from edgeswarm.roles.peer import MAX_INTERVAL, MIN_INTERVAL, NEWS_BURST, NEWS_WINDOW, AnnounceSchedule, _interval

A, B = "http://a", "http://b"


def test_every_tracker_is_due_at_once_then_every_interval():
    s = AnnounceSchedule(30)
    assert s.due([A, B], 100) == [A, B] and s.wait([A, B], 100) == 0
    s.succeeded(A, 100)
    s.succeeded(B, 105)
    assert s.due([A, B], 129) == [] and s.wait([A, B], 129) == 1
    assert s.due([A, B], 130) == [A]
    assert s.wait([], 0) == 30  # no tracker: nothing to wait for but the interval


def test_a_failed_announce_is_retried_after_1_2_4_s_capped_at_the_interval():
    s = AnnounceSchedule(10)
    delays = [s.failed(A, 0) for _ in range(6)]
    assert delays == [1, 2, 4, 8, 10, 10]
    assert s.succeeded(A, 50) == 6  # it had failed six times
    assert s.failed(A, 60) == 1  # a success starts the back-off over
    assert s.due([A], 60.5) == [] and s.due([A], 61) == [A]


def test_an_unreachable_edge_gets_its_tracker_checked_within_the_first_retry():
    s = AnnounceSchedule(30)
    s.succeeded(A, 0)
    s.unreachable(A, 5)  # a piece fetch from A failed: do not wait until 30
    assert s.wait([A], 5) == 1 and s.due([A], 6) == [A]
    s.failed(A, 6)
    s.failed(A, 7)  # now retrying, next at 9
    s.unreachable(A, 8)  # more failed pieces do not make the retries any faster
    assert s.due([A], 8.5) == [] and s.due([A], 9) == [A]


def test_hurry_never_postpones():
    s = AnnounceSchedule(30)
    s.succeeded(A, 0)
    s.hurry(A, 10)
    assert s.due([A], 10) == [A]
    s.failed(B, 0)  # due at 1
    s.hurry(B, 0, within=5)
    assert s.due([B], 1) == [B]


def test_a_refused_tracker_is_not_asked_again_before_its_retry_after_whatever_news_comes():
    """429 "already has 16 live peer ids; the oldest expires in 654 s": each new content hurried a round at once (four
    refusals a second for minutes, found by an adversarial session)."""
    s = AnnounceSchedule(300)
    s.refused(A, 0, 60)
    s.succeeded(A, 0, started=0)  # the round ends (refused, not failed)
    s.hurry(A, 1)  # news: a new content
    s.hurry(A, 2, within=0.2)
    assert s.due([A], 59.9) == [] and s.due([A], 60) == [A]
    s.hurry(B, 2)  # another edge is not held
    assert s.due([B], 2) == [B]
    s.refused(A, 100, 654)  # a wait past the interval: held an interval at most
    s.hurry(A, 101)
    assert s.due([A], 399) == [] and s.due([A], 400) == [A]


def test_a_refusal_that_also_fails_the_round_keeps_its_retry_after_over_the_back_off():
    """A full tracker's 503 says Retry-After and fails the round: the back-off (1 s, 2 s...) asked it again sooner."""
    s = AnnounceSchedule(300)
    s.refused(A, 0, 5)
    assert s.failed(A, 0) == 5 and s.due([A], 4.9) == [] and s.due([A], 5) == [A]
    s.refused(A, 5, 5)
    assert s.failed(A, 5) == 5  # the second failure's 2 s too
    assert s.failed(A, 20) == 4  # a hold that is over changes nothing


def test_a_hurry_while_an_announce_is_in_flight_is_not_lost():
    """A content created while an announce (without it) was in flight is announced at once, not an interval later."""
    s = AnnounceSchedule(300)
    s.hurry(A, 0.5)  # `get` created its swarm; the announce begun at 0 did not carry it
    s.succeeded(A, 1.0, started=0.0)
    assert s.due([A], 1.0) == [A]
    s.succeeded(A, 2.0, started=1.0)  # that announce carried it: next in an interval
    assert s.due([A], 2.0) == [] and s.due([A], 302.0) == [A]


def test_a_round_gone_on_to_a_sub_tracker_puts_the_next_one_an_interval_on_and_news_still_goes_at_once():
    """The announce loop does not wait for a round at a sub-tracker: it must not find the edge due again meanwhile, nor
    hold news until the round is answered (a slow one held a peer's news ceil(contents / 50) x its answer time)."""
    s = AnnounceSchedule(30)
    s.succeeded(A, 0.0, started=0.0, full=True)
    s.elsewhere(A, 30.0, started=30.0, full=True)  # a full round, on its way to the sub-tracker A named
    assert s.due([A], 30.0) == [] and s.due([A], 60.0) == [A]
    assert s.full(A, 60.0), "a round due while that one is out carries every content (to the edge)"
    s.hurry(A, 31.0)  # news meanwhile
    assert s.due([A], 31.0) == [A] and not s.full(A, 31.0)
    s.succeeded(A, 31.1, started=31.05, full=False)  # the news round, at the edge
    s.succeeded(A, 40.0, started=30.0, full=True)  # the sub-tracker answers, late
    assert s.due([A], 59.9) == [] and s.due([A], 60.0) == [A]
    s.hurry(A, 80.0)
    s.elsewhere(A, 80.1, started=79.0, full=False)  # hurried after the round began: its hurry stands
    assert s.due([A], 80.1) == [A]


def test_a_full_round_that_fails_at_the_sub_tracker_and_at_the_edge_is_tried_again_with_every_content():
    s = AnnounceSchedule(30)
    s.succeeded(A, 0.0, started=0.0, full=True)
    s.elsewhere(A, 30.0, started=30.0, full=True)
    assert not s.full(A, 31.0)
    s.failed(A, 35.0)  # the sub-tracker failed, and so did the round's fallback to the edge
    assert s.due([A], 36.0) == [A] and s.full(A, 36.0)
    s.elsewhere(B, 0.0, started=0.0, full=True)  # a first round, likewise
    s.failed(B, 5.0)
    assert s.full(B, 6.0)


def test_a_round_between_two_intervals_carries_only_news():
    """A peer that gains a content every half second (a live stream's parts) hurries a round each time: those
    rounds carry only the new contents, and every content is announced once an interval all the same."""
    s = AnnounceSchedule(300)
    assert s.full(A, 0), "the first round carries everything"
    s.succeeded(A, 1.0, started=0.0, full=True)
    s.hurry(A, 10)
    assert s.due([A], 10) == [A] and not s.full(A, 10), "a hurried round carries news only"
    s.succeeded(A, 10.2, started=10.1, full=False)
    assert s.wait([A], 10.2) == pytest.approx(300 - 9.2), "and does not put the full round off"
    assert s.full(A, 301) and s.due([A], 301) == [A]
    s.unreachable(A, 50)
    assert s.full(A, 51), "checking an edge that failed asks it something, news or not"


def test_the_full_round_follows_the_interval_an_edge_gives():
    """A peer starts with the default interval and learns the edge's from its first answer: a first round with nothing
    to announce must not hold the next full one to the default (a restarted edge waited 300 s for its swarm)."""
    s = AnnounceSchedule(300)
    s.succeeded(A, 0.0, started=0.0, full=True)  # nothing held yet: no request, no answer
    s.hurry(A, 0.5)
    s.interval = 1.0  # the news round's answer names the edge's interval
    s.succeeded(A, 0.6, started=0.55, full=False)
    assert s.due([A], 1.0) == [A] and s.full(A, 1.0)


def test_news_hurries_at_most_a_burst_of_rounds_then_one_each_window_share():
    """420 files opened in a row hurried a round each, past the edge's 20 announces a second: 429s for seconds (an
    adversarial session).  Four rounds may go at once; then news waits for the oldest of them to be NEWS_WINDOW old."""
    s = AnnounceSchedule(300)
    t = 0.0
    for _ in range(NEWS_BURST):  # a burst goes at once: `get`'s first rounds are not delayed
        s.hurry(A, t)
        assert s.due([A], t) == [A]
        s.began(A, t + 0.001)
        s.succeeded(A, t + 0.01, started=t + 0.001)  # the round begins just after the news that hurried it
        t += 0.05
    s.hurry(A, t)
    assert s.due([A], t) == [] and s.due([A], NEWS_WINDOW + 0.01) == [A]  # the 5th waits for the 1st to be NEWS_WINDOW old
    s.hurry(B, t)  # another tracker has rounds of its own
    assert s.due([B], t) == [B]
    rounds = 0
    t = 10.0
    while t < 20.0:  # news every 10 ms for 10 s: at most NEWS_BURST rounds a window
        s.hurry(A, t)
        if s.due([A], t):
            s.began(A, t + 0.001)
            s.succeeded(A, t + 0.002, started=t + 0.001)
            rounds += 1
        t = round(t + 0.01, 2)
    assert rounds <= NEWS_BURST * (10 / NEWS_WINDOW + 1) and rounds / 10 < 20 / 3  # three such peers behind one address


def test_each_tracker_is_announced_to_at_its_own_interval():
    """An edge answering an hour (or a number too large for a float) stopped a peer's announces to every edge, and
    left it out of every swarm (an adversarial session)."""
    s = AnnounceSchedule(300)
    s.given(A, 1.0)
    s.given(B, 3600.0)
    s.succeeded(A, 100)
    s.succeeded(B, 100)
    assert s.due([A, B], 101) == [A] and s.due([A, B], 3699) == [A] and s.due([A, B], 3700) == [A, B]
    assert s.failed(A, 200) == 1 and s.failed(A, 201) == 1  # A's back-off is capped at its own interval


@pytest.mark.parametrize(
    "given, kept",
    [(300, 300.0), ("300", 300.0), (0, MIN_INTERVAL), (-5, MIN_INTERVAL), (int("9" * 400), MAX_INTERVAL), ("1e999", MAX_INTERVAL)],
)
def test_an_answers_interval_is_kept_within_bounds(given, kept):
    assert _interval(given) == kept


@pytest.mark.parametrize("given", ["nan", None, [], "soon"])
def test_an_interval_that_is_no_number_is_refused(given):
    with pytest.raises((ValueError, TypeError)):
        _interval(given)


def test_a_machine_that_slept_announces_to_every_tracker_at_once_with_every_content():
    """A laptop's suspend stops the monotonic clock the schedule runs on, while tickets and the trackers' expiry of
    silent peers run on wall clocks: a woken peer waited out its interval (up to 300 s) with an expired ticket,
    its neighbours answering 401 (an adversarial session)."""
    watch = SleepWatch(wall=1_000.0, monotonic=50.0)
    assert watch.slept(wall=1_005.0, monotonic=55.0) == 0  # the clocks moved together
    assert SLEPT_S > 5 and watch.slept(wall=1_015.0, monotonic=60.0) == 0  # a small step (NTP setting the clock)
    assert watch.slept(wall=1_920.0, monotonic=65.0) == 900  # 15 minutes asleep
    assert watch.slept(wall=1_000.0, monotonic=70.0) == 0  # a clock set back is no sleep
    assert watch.slept(wall=1_100.0, monotonic=75.0) == 0  # ... and forward again: no sleep within QUIET_S of the last
    assert 65 + QUIET_S < 140.0 and watch.slept(wall=2_065.0, monotonic=140.0) == 900  # later, another 15 minutes
    s = AnnounceSchedule(300)
    s.succeeded(A, 0)
    s.succeeded(B, 0)
    s.refused(B, 60, 60)  # a 429: nothing before 120, sleep or not
    s.began(A, 64)  # a round to A in flight (news only) when the machine is found to have slept
    assert s.due([A, B], 65) == [] and not s.full(A, 65)
    s.woke(65)
    assert s.due([A, B], 65) == [A] and s.full(A, 65) and s.due([B], 120) == [B] and s.full(B, 120)
    s.succeeded(A, 66, started=64, full=False)  # the round in flight is answered: it does not put A's off an interval
    assert s.due([A], 66) == [A] and s.full(A, 66)
    s.succeeded(A, 67, started=66)
    assert s.due([A], 68) == [] and s.due([A], 367) == [A]  # then every interval, as before


async def test_a_sub_tracker_is_shown_the_ticket_of_the_edge_that_named_it(tmp_path):
    """A peer of two edges showed the sub-tracker one edge named the other edge's ticket (the newest, whichever edge gave
    it), which it refused (401) at every round (an adversarial soak)."""
    import json

    from multidict import CIMultiDict, CIMultiDictProxy

    from edgeswarm.node.upstream import Reply
    from edgeswarm.roles.config import PeerConfig
    from edgeswarm.roles.peer import Peer

    peer = Peer(PeerConfig(cache=tmp_path / "peer", edges=(A, B)))
    cid = "c" * 64
    peer._take_answer(cid, 4, {"ticket": "from-a", "peers": []}, A)
    peer._take_answer(cid, 4, {"ticket": "from-b", "peers": []}, B)  # the newest
    sent = []

    async def request(method, base, path, headers, timeout, doc, limit):
        sent.append(doc)
        body = json.dumps({"contents": {cid: {"peers": []}}}).encode()
        return Reply(200, CIMultiDictProxy(CIMultiDict()), body)

    peer.upstream.request = request  # the sub-tracker: a double
    item = {"content": cid, "pieces": 4, "have": "", "event": "update"}
    for edge, ticket in ((A, "from-a"), (B, "from-b")):
        assert await peer._announce_subtracker(edge, "http://sub", {cid: (item, {}, 4)}, "update") == (None, set())
        assert sent[-1]["contents"][0]["ticket"] == ticket
