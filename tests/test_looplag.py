"""How late the event loop runs (node/looplag.py): what the edge sheds announces by."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgeswarm.node.looplag import SHED_LAG, TICK, LoopLag


def test_a_late_tick_is_remembered_and_fades_and_an_overdue_one_counts_at_once():
    lag = LoopLag()
    assert not lag.late(100.0, 100.0)  # no tick yet: nothing known
    lag.note(0.0, due=10.05, cpu=1.0)
    assert lag.lateness(10.0, 1.0) == 0.0 and not lag.late(10.0, 1.0)
    assert lag.late(10.05 + SHED_LAG + 0.01, 1.0 + SHED_LAG + 0.1)  # the loop busy, not come round to the tick: late now
    lag.note(0.8, due=10.9, cpu=2.0)
    assert lag.late(10.9, 2.0)
    lag.note(0.0, due=10.95, cpu=2.01)
    assert lag.lateness(10.95, 2.01) == pytest.approx(0.4)  # halved per tick on time
    lag.note(0.0, due=11.0, cpu=2.02)
    assert not lag.late(11.0, 2.02)


def test_a_loop_late_for_want_of_running_is_not_busy():
    """An edge stopped and continued (SIGSTOP, a paused VM) shed the announces queued meanwhile as "too busy ... runs
    6.47 s late", though idle (an adversarial session): late counts as far as the loop spent CPU meanwhile."""
    lag = LoopLag()
    lag.note(0.0, due=10.05, cpu=1.0)
    assert not lag.late(16.5, 1.01)  # 6.45 s overdue, 10 ms of CPU: stopped, not busy
    lag.note(6.45, due=16.55, cpu=1.01)
    assert not lag.late(16.55, 1.01)


async def test_a_busy_loop_is_late_before_its_watcher_wakes():
    lag = LoopLag()
    watcher = asyncio.create_task(lag.watch())
    try:
        await asyncio.sleep(3 * TICK)
        loop = asyncio.get_running_loop()
        assert not lag.late(loop.time(), time.thread_time())
        end = time.thread_time() + SHED_LAG + 0.1  # CPU time: on a loaded machine the loop gets less than the wall's
        while time.thread_time() < end:  # a turn of the loop that runs long: what 30 announces of a flood did
            pass
        assert lag.late(loop.time(), time.thread_time())
        await asyncio.sleep(10 * TICK)
        assert not lag.late(loop.time(), time.thread_time())
    finally:
        watcher.cancel()
