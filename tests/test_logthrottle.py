"""Throttle and ThrottledLog: a flood of one kind of log line costs a few lines and one summary."""

import asyncio
import logging

import aiohttp
import pytest

from edgeswarm.node import logthrottle
from edgeswarm.node.logthrottle import Throttle, ThrottledLog


def test_at_most_burst_lines_per_kind_per_interval_then_one_summary():
    t = Throttle(burst=3, interval=10.0)
    shown = [t.admit("bad", 0.1 * n) for n in range(50)]
    assert shown == [True] * 3 + [False] * 47
    assert t.admit("other kind", 1.0)  # kinds are counted apart
    assert t.due(9.9) == []
    assert t.due(10.0) == [("bad", 47)]
    assert t.due(20.0) == []  # each summary once


def test_a_new_interval_logs_again_and_keeps_the_previous_count_for_its_summary():
    t = Throttle(burst=1, interval=10.0)
    assert t.admit("bad", 0.0)
    assert not t.admit("bad", 1.0)
    assert t.admit("bad", 10.0)  # a new window; the old one's count waits for due()
    assert not t.admit("bad", 11.0)
    assert t.due(12.0) == [("bad", 1)]
    assert t.due(20.0) == [("bad", 1)]


def test_throttled_log_writes_lines_and_a_summary_at_their_level(caplog):
    now = [0.0]
    quiet = ThrottledLog(logging.getLogger("test.throttle"), Throttle(burst=2, interval=60.0), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "test.throttle"):
        for n in range(1000):
            quiet.log(logging.INFO, "bad requests", "bad request %d", n)
        quiet.log(logging.DEBUG, "hang-ups", "below the level: neither shown nor counted")
        now[0] = 60.0
        quiet.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "bad request 1",
        "suppressed 998 similar lines: bad requests",
    ]
    assert {r.levelno for r in caplog.records} == {logging.INFO}


async def test_a_bursts_summary_is_written_though_no_line_follows_it(caplog):
    """The count of held-back lines came only with the next line of their kind: after a flood of 429s that ended, never
    (an adversarial session).  ``flushing`` writes it on time."""
    quiet = ThrottledLog(logging.getLogger("test.quiet"), Throttle(burst=2, interval=0.1))
    with caplog.at_level(logging.INFO, logger="test.quiet"):
        flushing = asyncio.create_task(logthrottle.flushing(0.05))  # as a node's servers run it, for every throttled log
        for n in range(7):
            quiet.log(logging.INFO, "refusals", "refused %d", n)
        await asyncio.sleep(0.3)
        flushing.cancel()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1", "suppressed 5 similar lines: refusals"], lines


def test_what_the_last_windows_held_back_is_said_when_the_node_stops(caplog):
    """2 000 refusals and then SIGTERM within the window: 20 lines and no sum, the rest gone (an adversarial session)."""
    quiet = ThrottledLog(logging.getLogger("test.stop"), Throttle(burst=2, interval=60.0))
    with caplog.at_level(logging.INFO, logger="test.stop"):
        for n in range(2000):
            quiet.log(logging.INFO, "refusals", "refused %d", n)
        logthrottle.flush_every()
        assert len(caplog.records) == 2  # the window is not over
        logthrottle.flush_every(ending=True)  # as a node's servers do when they close
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1", "suppressed 1998 similar lines: refusals"], lines


@pytest.mark.integration
async def test_a_node_stopped_within_a_window_says_what_it_held_back(origin):
    """An origin sent 2 000 404s and was stopped within 10 s: its log had 20 lines and no sum (an adversarial session)."""
    async with aiohttp.ClientSession() as http:
        for n in range(60):
            async with http.get(f"{origin.url}/missing-{n}.bin") as r:
                assert r.status == 404
    await asyncio.to_thread(origin.stop)
    log = origin.log_text()
    assert "suppressed 40 similar lines: 404 answers" in log, log[-2000:]
