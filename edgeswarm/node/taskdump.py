"""``kill -USR1 PID``: a running node's asyncio tasks, each with its chain of awaits, in its log.

A process that hangs says where it waits: faulthandler's thread stacks show
only the event loop in ``select``.  ``Servers.start`` installs the handler on
every daemon's (and ``get``'s) loop; the process runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import signal
import traceback
from types import FrameType

log = logging.getLogger("edgeswarm")


def dump_tasks_on_sigusr1(loop: asyncio.AbstractEventLoop, role: str) -> None:
    """``kill -USR1 PID``: every asyncio task's stack in the log, one block; the process runs on (a hang says where it waits)."""
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # a loop outside the main thread: no signals
        loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("%s", task_stacks(role), extra={"lines": True}))


def task_stacks(role: str) -> str:
    """Each task of the running loop: its name, whether it is being cancelled, its chain of awaits (outermost first)
    down to the future it waits on.  Task.print_stack shows a suspended coroutine's outermost frame only."""
    tasks = sorted(asyncio.all_tasks(), key=lambda t: (len(t.get_name()), t.get_name()))
    out = io.StringIO()
    out.write(f"{role}: SIGUSR1: the stacks of {len(tasks)} asyncio tasks\n")
    for task in tasks:
        cancelling = f", cancelling {task.cancelling()}" if task.cancelling() else ""
        out.write(f"--- {task.get_name()}{cancelling}:\n")
        frames, innermost = _await_chain(task.get_coro())
        out.writelines(traceback.StackSummary.extract(((f, f.f_lineno) for f in frames), lookup_lines=True).format())
        waits = getattr(task, "_fut_waiter", None)  # asyncio's own: the future the task sleeps on
        out.write(f"    awaiting {_short(waits if waits is not None else innermost)}\n")
    return out.getvalue().rstrip("\n")


def _await_chain(coro: object) -> tuple[list[FrameType], object]:
    """The frames of ``coro`` and of what it awaits, in turn (coroutines, generators, async generators), and the
    first awaited object that has no frame (a future)."""
    frames: list[FrameType] = []
    obj: object = coro
    while obj is not None and len(frames) < 100:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
        if obj is not None and type(obj).__name__ == "async_generator_asend":  # anext(gen), async for: names no generator
            obj = _running_async_gen(frame) or obj
    return frames, obj


def _running_async_gen(frame: FrameType) -> object | None:
    """The async generator ``frame`` is inside (``async for`` over a local, an asynccontextmanager's ``self.gen``)."""
    local = frame.f_locals
    for value in (*local.values(), getattr(local.get("self"), "gen", None)):
        if inspect.isasyncgen(value) and value.ag_running:
            return value
    return None


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 300 else text[:300] + "..."
