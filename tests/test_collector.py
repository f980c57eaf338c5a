"""node/collector.py: the garbage collector as a node's process runs it."""

import subprocess
import sys


def test_a_node_freezes_what_it_started_with_and_makes_full_collections_rarer():
    """In a process of its own: freezing and the thresholds are the whole process's."""
    code = (
        "import gc; from edgeswarm.node import collector; "
        "before = gc.get_threshold(); collector.tune(); "
        "print(before[:2] == gc.get_threshold()[:2], gc.get_threshold()[2], gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "100", "True"]
