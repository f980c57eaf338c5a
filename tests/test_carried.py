"""Workers' counters added up so that the sum never goes back (node/carried.py, and the edge's merges of them)."""

from __future__ import annotations

import pytest

from edgeswarm.node.carried import Carried
from edgeswarm.roles.edgeworkers import merge_metrics, merge_status


def test_a_restart_is_carried_over_and_a_silent_worker_counts_its_last():
    c = Carried()
    assert c.take(1, {"a": 5.0, "b": 2.0}, since=100.0) == {"a": 5.0, "b": 2.0}
    assert c.take(1, {"a": 7.0}, since=100.4) == {"a": 7.0, "b": 2.0}  # a report of some keys: the others keep theirs
    assert c.take(1, None) == {"a": 7.0, "b": 2.0}  # it did not answer
    assert c.take(1, {"a": 1.0}, since=160.0) == {"a": 8.0, "b": 2.0}  # started again: from zero, on top of 7
    assert c.take(1, {"a": 3.0, "b": 1.0}, since=160.0) == {"a": 10.0, "b": 3.0}
    assert c.take(2, {"a": 4.0}, since=50.0) == {"a": 4.0}  # each worker its own
    again = Carried.loads(c.dumps())  # the primary's own restart: the state comes back from its file
    assert again.take(1, {"a": 0.0}, since=220.0) == {"a": 10.0, "b": 3.0}


def test_a_worker_restarted_after_the_clock_was_stepped_back_is_a_restart():
    """Its process started "earlier" than its predecessor: taken for the same process, what the predecessor had
    counted was dropped and the edge's sums fell (/tmp/adv-clock 4: 17.4 MB sent where 20 were)."""
    c = Carried()
    assert c.take(1, {"a": 40.0}, since=5000.0) == {"a": 40.0}
    assert c.take(1, {"a": 1.0}, since=5000.0 - 3600 + 30) == {"a": 41.0}  # stepped back an hour, restarted 30 s on
    assert c.take(1, {"a": 2.0}, since=5000.0 - 3600 + 30.4) == {"a": 42.0}  # the same process (within RESTART_SLACK)


@pytest.mark.parametrize("text", ["", "[]", '{"last": {}}', '{"last": {"1": {"a": "x"}}, "since": {}, "carry": {}}'])
def test_a_state_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a carried-counters state"):
        Carried.loads(text)


def metrics(sent: float, started: float) -> str:
    return (
        "# HELP edgeswarm_bytes_sent_total b\n# TYPE edgeswarm_bytes_sent_total counter\n"
        f'edgeswarm_bytes_sent_total{{to="client"}} {sent}\n'
        "# HELP process_start_time_seconds s\n# TYPE process_start_time_seconds gauge\n"
        f"process_start_time_seconds {started}\n"
    )


def test_the_merged_metrics_never_go_back_when_a_worker_restarts_or_does_not_answer():
    """They fell from 46 MB to 18 and back, and Prometheus counted 99.9 MB sent where 30 were (an adversarial session)."""
    c = Carried()
    sent = 'edgeswarm_bytes_sent_total{to="client"} '
    assert sent + "46.0" in merge_metrics([metrics(18, 1000.0), metrics(28, 1000.5)], [1000.0, 1000.5], c).decode()
    assert sent + "46.0" in merge_metrics([metrics(18, 1000.0), None], [1000.0, 0.0], c).decode()  # worker 1 stalled
    restarted = merge_metrics([metrics(18, 1000.0), metrics(1, 1300.0)], [1000.0, 1300.0], c).decode()
    assert sent + "47.0" in restarted  # and was restarted
    assert "process_start_time_seconds 1000.0" in merge_metrics([metrics(18, 1000.0), metrics(2, 1300.0)], [1000.0, 1300.0], c).decode()


def test_the_merged_metrics_tell_a_restart_by_the_workers_start_not_by_process_start_time_seconds():
    """process_start_time_seconds is of /proc/stat btime, which a clock step moves: read again, the same workers would
    all look restarted and their counts be added twice; without /proc it is missing and no restart was ever seen."""
    c = Carried()
    sent = 'edgeswarm_bytes_sent_total{to="client"} '
    assert sent + "46.0" in merge_metrics([metrics(18, 1000.0), metrics(28, 1000.5)], [1000.2, 1000.7], c).decode()
    stepped = [metrics(19, 1000.0 + 3600), metrics(29, 1000.5 + 3600)]  # the same processes, the clock stepped an hour on
    assert sent + "48.0" in merge_metrics(stepped, [1000.2, 1000.7], c).decode()
    unknown = [
        metrics(20, 0.0).replace("process_start_time_seconds 0.0\n", ""),
        metrics(1, 0.0).replace("process_start_time_seconds 0.0\n", ""),
    ]
    assert sent + "50.0" in merge_metrics(unknown, [1000.2, 1300.0], c).decode()  # no /proc: worker 1 restarted all the same


def test_the_merged_status_never_goes_back_when_a_worker_restarts():
    """By each worker's start time as it says it: now - uptime_s moved with the time an answer took, and a primary
    stalled for a second was taken for restarted, what it had sent counted twice for good (a review)."""

    def status(sent: int, started: float, endpoint: int) -> dict:
        return {
            "uptime_s": 1.0,
            "started": started,
            "bytes_sent": {"client": sent},
            "responses_by_endpoint": {"file": {"200": endpoint}},
            "bytes_received": [{"kind": "parent", "source": "http://o:1", "bytes": sent}],
            "evicted_pieces": 1,
            "cache_bytes": 10,
        }

    c = Carried()
    doc = merge_status(status(10, 1000.0, 1), [status(20, 1000.2, 2)], c)
    assert doc["bytes_sent"] == {"client": 30} and doc["responses_by_endpoint"] == {"file": {"200": 3}} and doc["cache_bytes"] == 20
    doc = merge_status(status(10, 1000.0, 1), [None], c)
    assert doc["bytes_sent"] == {"client": 30} and doc["cache_bytes"] == 10  # a gauge of one that did not answer is not known
    doc = merge_status(status(10, 1000.0, 1), [status(5, 1060.0, 1)], c)
    assert doc["bytes_sent"] == {"client": 35} and doc["responses_by_endpoint"] == {"file": {"200": 4}}
    assert doc["bytes_received"] == [{"kind": "parent", "source": "http://o:1", "bytes": 35}] and doc["evicted_pieces"] == 3
