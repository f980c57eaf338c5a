"""How often the origin walks its published folder: ``--scan-interval``, or less often when the walk is costly.

Why: every scan stats every file to see what changed, so its cost grows with
the folder.  An idle origin publishing 20 000 files spent a third of a core
walking it once a second.  The pace keeps walking to ``SCAN_SHARE`` of the
time: a walk that takes 0.34 s comes every 6.8 s.  The time spent hashing
what changed is not the walk's (a new 10 GB file must not hold the next scan
back for minutes).  What needs to be seen sooner is not left to the walk: live playlists
have their own watch (0.25 s), uploads publish themselves, and a file found
changed under a reader asks for a scan at once.
"""

from __future__ import annotations

SCAN_SHARE = 0.05  # at most this share of the time spent walking the folder


def next_wait(minimum: float, walk: float) -> float:
    """Seconds until the next scan: at least ``minimum``, and the last walk (``walk`` seconds) at most SCAN_SHARE of it."""
    return max(minimum, walk / SCAN_SHARE)
