"""Whether the machine slept: a laptop's suspend stops the clock every timer here runs on, not the one tickets expire by.

A node's timers (announce rounds, back-offs, timeouts) run on the monotonic
clock, which stands still while the machine is suspended; tokens, swarm
tickets and a tracker's expiry of silent peers run on wall clocks, which go
on.  A peer that woke after longer than its ticket's life kept showing the
expired ticket to neighbours, who answered 401, and waited out what was left
of its announce interval (up to 5 minutes at the defaults) before it asked
for a new one: everything it read meanwhile came from the edge (an
adversarial session).  A sleep shows as the wall clock having moved more than
the monotonic one since the last look; a clock set forward looks the same,
and is answered the same way (a fresh announce round costs little).
"""

from __future__ import annotations

CHECK_S = 5.0  # seconds between two looks at the clocks, at most: a woken peer announces within this
SLEPT_S = 10.0  # the wall clock moving this much more than the monotonic one is a sleep (NTP slews by far less)
QUIET_S = 60.0  # seconds after a sleep in which no other is reported: a clock stepped back and forth (two time services
# at odds) was a sleep at every forward step, each a full announce round to every edge (a review)


class SleepWatch:
    """Sans-IO: both clocks are passed in at each look."""

    def __init__(self, wall: float, monotonic: float):
        self._offset = wall - monotonic
        self._quiet_until = -float("inf")

    def slept(self, wall: float, monotonic: float) -> float:
        """Seconds the machine slept since the last look (what the wall clock gained on the monotonic one), 0 if none
        or if one was reported less than ``QUIET_S`` ago."""
        offset = wall - monotonic
        gained, self._offset = offset - self._offset, offset
        if gained < SLEPT_S or monotonic < self._quiet_until:
            return 0.0
        self._quiet_until = monotonic + QUIET_S
        return gained
