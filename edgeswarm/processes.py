"""Whether a process named by a file (a writer's temporary file, a supervisor's directory, a lab's namespace) still runs.

The one rule of the three places that clean up after a process that died
without doing so itself: such leftovers are removed only once their process
is gone.  A process of another user counts as alive (not ours to judge); a
number that no process can have (0, negative, past what the kernel allows)
as gone: ``os.kill(0, 0)`` would have asked this process group, and a pid of
19 digits raised OverflowError at an edge's start (a temporary file named so).
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Process ``pid`` exists (signal 0 reaches it, or it is another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
