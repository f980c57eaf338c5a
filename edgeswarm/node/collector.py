"""Python's cyclic garbage collector as a long-running node wants it: full collections rare, the start's objects left out.

Why: an edge's tracker holds a record per peer and content (100 000 and more
in a large region), and every announce replaces one, so the oldest
generation keeps growing by a quarter, which is what lets CPython 3.11 run a
full collection every 10 collections of the middle generation.  Each full
collection walks every record: a quarter of a second with the event loop
stopped, 30 of them in `bench tracker`'s minute, a tenth of its CPU.  Full
collections ten times rarer (``OLDEST``) cost 0.6 s of that minute instead of
4.3 s and leave the young generations as they were, so short-lived cycles
(an exception's traceback holding a piece's buffer) go as soon as before.
What the node built before serving (its modules, classes, configuration) lives
as long as the process: frozen, no collection walks it again.
"""

from __future__ import annotations

import gc

OLDEST = 100  # collections of the middle generation between two full ones (CPython's default: 10)


def tune() -> None:
    """Freeze what exists now and make full collections rarer: once, as a node starts serving."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, OLDEST)
