"""Counters of several worker processes added up so that the sum never goes back: a worker's restart is carried over.

An edge of N workers shows one ``/metrics`` and one ``/status``, each
worker's counters added up.  A worker that restarted counts from zero, and
one that did not answer in time was left out: the edge's counters fell
(46 MB of bytes sent, then 18, then 46 again), and Prometheus, which takes
any fall for a restart of the whole target, reported 99.9 MB sent in a
window where 30 MB were (an adversarial session).  So each worker's last
report is kept: one that does not answer counts with it, and when a worker
started again (its process's start time changed), what it had reached is
added to its new counts from then on.  The state
is a small JSON document the primary worker keeps in the workers' private
directory, so that its own restart is carried over too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

RESTART_SLACK = 1.0  # seconds two start times may differ by and be one start (process_start_time_seconds has 0.01 s)


class Carried:
    """Per worker, the counts it last reported, since when it counts, and what its restarts took: ``take`` gives the
    counts to add up."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, float]] = {}  # worker -> key -> its last count of it
        self._since: dict[str, float] = {}  # worker -> when the process that reported them started
        self._carry: dict[str, dict[str, float]] = {}  # worker -> key -> what it had reached before it counted again

    def take(self, worker: int, report: Mapping[str, float] | None, since: float = 0.0) -> dict[str, float]:
        """The worker's counts as they add up: its ``report`` (None: it did not answer, its last one) plus what its
        restarts took.  ``since``: when the reporting process started; another start is a restart, whose counts
        began again at zero: an earlier one too, a worker restarted after the clock was stepped back (only a later one
        was: its predecessor's counts were dropped and the sums fell).  A report may hold some keys only (a brief
        /status): the others keep their last count."""
        name = str(worker)
        last, carry = self._last.setdefault(name, {}), self._carry.setdefault(name, {})
        if report is not None:
            if abs(since - self._since.get(name, since)) > RESTART_SLACK:
                for key, before in last.items():
                    carry[key] = carry.get(key, 0.0) + before
                last.clear()
            self._since[name] = since
            last.update(report)
        return {key: last.get(key, 0.0) + carry.get(key, 0.0) for key in last.keys() | carry.keys()}

    def dumps(self) -> str:
        return json.dumps({"last": self._last, "since": self._since, "carry": self._carry})

    @classmethod
    def loads(cls, text: str) -> Carried:
        """A state ``dumps`` wrote; ValueError if it is not one (the caller starts afresh)."""
        carried = cls()
        try:
            doc = json.loads(text)
            for part, into in (("last", carried._last), ("carry", carried._carry)):
                for worker, counts in doc[part].items():
                    into[str(worker)] = {str(k): float(v) for k, v in counts.items()}
            carried._since = {str(w): float(t) for w, t in doc["since"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a carried-counters state: {exc}") from None
        return carried
