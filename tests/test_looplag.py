"""How late the event loop runs (node/looplag.py): what the edge sheds announces by."""

from __future__ import annotations

import asyncio
import time

import pytest

from edgeswarm.node.looplag import SHED_LAG, TICK, LoopLag


def test_a_late_tick_is_remembered_and_fades_and_an_overdue_one_counts_at_once():
    lag = LoopLag()
    assert not lag.late(100.0)  # no tick yet: nothing known
    lag.note(0.0, due=10.05)
    assert lag.lateness(10.0) == 0.0 and not lag.late(10.0)
    assert lag.late(10.05 + SHED_LAG + 0.01)  # the loop has not come round to the tick: it runs late now
    lag.note(0.8, due=10.9)
    assert lag.late(10.9)
    lag.note(0.0, due=10.95)
    assert lag.lateness(10.95) == pytest.approx(0.4)  # halved per tick on time
    lag.note(0.0, due=11.0)
    assert not lag.late(11.0)


async def test_a_blocked_loop_is_late_before_its_watcher_wakes():
    lag = LoopLag()
    watcher = asyncio.create_task(lag.watch())
    try:
        await asyncio.sleep(3 * TICK)
        loop = asyncio.get_running_loop()
        assert not lag.late(loop.time())
        time.sleep(SHED_LAG + 0.1)  # a turn of the loop that runs long: what 30 announces of a flood did
        assert lag.late(loop.time())
        await asyncio.sleep(10 * TICK)
        assert not lag.late(loop.time())
    finally:
        watcher.cancel()
