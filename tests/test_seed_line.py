"""The edge's seed line (serving.in_line): whole-file askers' seed answers go out one at a time, in order."""

from __future__ import annotations

import asyncio

from edgeswarm.node.serving import in_line


async def _write(log: list[str], name: str, seconds: float) -> None:
    log.append(f"{name} starts")
    await asyncio.sleep(seconds)
    log.append(f"{name} ends")


async def test_bodies_in_line_are_sent_one_after_the_other_in_order():
    line, log = asyncio.Lock(), []
    await asyncio.gather(*(in_line(line, _write(log, name, 0.01), hold=5.0) for name in "abc"))
    assert log == ["a starts", "a ends", "b starts", "b ends", "c starts", "c ends"]


async def test_a_slow_body_lets_the_next_one_start_after_its_hold_and_still_finishes():
    line, log = asyncio.Lock(), []
    await asyncio.gather(in_line(line, _write(log, "slow", 0.3), hold=0.05), in_line(line, _write(log, "next", 0.01), hold=5.0))
    assert log == ["slow starts", "next starts", "next ends", "slow ends"]


async def test_a_body_cancelled_in_line_frees_the_line():
    line, log = asyncio.Lock(), []
    first = asyncio.ensure_future(in_line(line, _write(log, "gone", 10.0), hold=10.0))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.wait_for(in_line(line, _write(log, "next", 0.01), hold=5.0), 1.0)
    assert log == ["gone starts", "next starts", "next ends"]


async def test_an_asker_that_leaves_while_waiting_never_starts_and_the_line_goes_on():
    line, log = asyncio.Lock(), []
    first = asyncio.ensure_future(in_line(line, _write(log, "first", 0.05), hold=5.0))
    waiting = asyncio.ensure_future(in_line(line, _write(log, "left", 0.01), hold=5.0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.wait_for(asyncio.gather(first, in_line(line, _write(log, "next", 0.01), hold=5.0)), 1.0)
    assert log == ["first starts", "first ends", "next starts", "next ends"]
