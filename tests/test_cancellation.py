"""Tasks stop when cancelled: no ``asyncio.wait_for`` in edgeswarm.

On Python 3.11, ``asyncio.wait_for`` returns normally when the task awaiting
it is cancelled just as its awaitable completes (an event set in the same
loop turn): the cancel is lost.  A loop such as the peer's announcer then runs
on, and ``Peer.stop``'s gather of its tasks waits forever - an ``edgeswarm
get`` that idled after its download until CI's 60 s timeout.
``asyncio.timeout`` keeps the cancel; the code uses it everywhere.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import sys
from pathlib import Path

import edgeswarm

ROOT = Path(edgeswarm.__file__).parent


def wait_for_calls(source: str, name: str) -> list[str]:
    """``name:line`` of every ``asyncio.wait_for(...)`` call in ``source``."""
    return [
        f"{name}:{node.lineno}"
        for node in ast.walk(ast.parse(source, name))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "wait_for"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "asyncio"
    ]


def test_edgeswarm_never_calls_asyncio_wait_for():
    found = [hit for path in sorted(ROOT.rglob("*.py")) for hit in wait_for_calls(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "use asyncio.timeout: wait_for loses a cancel on Python 3.11 (module docstring)"


def test_the_scan_sees_a_wait_for():
    assert wait_for_calls("async def f(e):\n    await asyncio.wait_for(e.wait(), 1)\n", "x.py") == ["x.py:2"]


async def _announcer(wake: asyncio.Event, timeout_cm: bool) -> None:
    """The shape of the peer's announce loop: wait for a wake-up or the interval, then work, forever."""
    while True:
        wake.clear()
        with contextlib.suppress(TimeoutError):
            if timeout_cm:
                async with asyncio.timeout(10):
                    await wake.wait()
            else:
                await asyncio.wait_for(wake.wait(), 10)


async def _stops(timeout_cm: bool) -> bool:
    wake = asyncio.Event()
    task = asyncio.create_task(_announcer(wake, timeout_cm))
    await asyncio.sleep(0.01)
    wake.set()  # something to announce...
    await asyncio.sleep(0)  # ...the wait has its answer, the loop has not run yet
    task.cancel()  # and the peer stops
    done, _ = await asyncio.wait({task}, timeout=1.0)
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    return bool(done)


async def test_a_loop_waiting_with_asyncio_timeout_stops_when_cancelled_as_it_wakes():
    assert await _stops(timeout_cm=True)


async def test_the_race_is_real_where_wait_for_swallows_it():
    """The reason for the rule, on this interpreter: 3.12 rewrote wait_for over asyncio.timeout, and there it stops too."""
    assert await _stops(timeout_cm=False) is (sys.version_info >= (3, 12))
