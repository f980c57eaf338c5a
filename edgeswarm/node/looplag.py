"""How late a node's event loop runs what is due: the edge sheds announces while it runs late.

An announce flood within every per-address limit (2 000 addresses, batches
of 100) kept an edge's primary worker busy for seconds at a time: its
``/status`` took 0.75-3.4 s, so a router polling with a 1 s timeout took the
edge out of rotation, and its cached files took 2-3.5 s instead of 5 ms (an
adversarial session).  Announces can wait (a peer retries after
``Retry-After``, availability travels on HAVE streams meanwhile); files and
``/status`` should not.  So while the loop runs more than ``SHED_LAG`` late,
announces are answered 503 before their body is read, which costs next to
nothing, and the rest of the loop's work goes on.

Late counts only as far as the loop thread spent CPU meanwhile: a process
stopped and continued (SIGSTOP, a debugger, a paused VM) found its ticks
overdue by the whole stop and shed the announces queued meanwhile, "too busy
... runs 6.47 s late", at an idle edge (an adversarial session).
"""

from __future__ import annotations

import asyncio
import time

TICK = 0.05  # seconds between the watcher's looks: a late tick is the loop's lag
SHED_LAG = 0.25  # seconds late past which announces are shed: a router's 1 s poll timeout keeps room for /status
FADE = 0.5  # a tick on time halves what is remembered of the lag: 0.1-0.2 s after a busy spell, announces are taken again


class LoopLag:
    """The loop's lateness: what its ticks found of late (``note``), and how overdue the next tick is already.

    The second counts as soon as it grows: announces that run to their end
    without waiting (the memory store) all run within one turn of the loop,
    and a turn that ran 30 of them took a second before any tick could
    tell.  Time is the loop's (``loop.time()``) and the loop thread's CPU
    time (``time.thread_time()``), passed in: late is never more than the
    CPU the loop spent meanwhile (module docstring).
    """

    def __init__(self) -> None:
        self.lag = 0.0
        self.due = 0.0  # when the next tick is due; 0: no tick yet
        self.cpu = 0.0  # the loop thread's CPU time at the last tick

    def note(self, late: float, due: float, cpu: float) -> None:
        """A tick ``late`` seconds after it was due, at the loop thread's CPU time ``cpu``: the lag is that, as far as
        the loop was busy, or what is remembered of a larger one, faded; the next tick is due at ``due``."""
        self.lag = max(min(late, cpu - self.cpu), self.lag * FADE)
        self.due, self.cpu = due, cpu

    def lateness(self, now: float, cpu: float) -> float:
        return max(self.lag, min(now - self.due, cpu - self.cpu)) if self.due else self.lag

    def late(self, now: float, cpu: float) -> bool:
        return self.lateness(now, cpu) > SHED_LAG

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        self.due, self.cpu = loop.time() + TICK, time.thread_time()
        while True:
            await asyncio.sleep(max(0.0, self.due - loop.time()))
            now = loop.time()
            self.note(max(0.0, now - self.due), now + TICK, time.thread_time())
