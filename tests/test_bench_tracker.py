"""bench tracker runs end to end on a small crowd and reports what it measured.

No figure is asserted beyond what holds in any run (a shared VM makes rates
noise): every announce is counted and answered without error, percentiles
are ordered, and the JSON holds both phases of each store measured.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeswarm.measure import bench_tracker


def check(doc: dict, stores: list[str], peers: int) -> None:
    assert [(p["store"], p["phase"]) for p in doc["phases"]] == [(s, ph) for s in stores for ph in ("join", "update")]
    for p in doc["phases"]:
        assert p["errors"] == 0
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["per_s"] > 0 and p["per_cpu_s"] > 0
        if p["phase"] == "join":
            assert p["announces"] == peers
        else:
            assert p["announces"] > 0


def test_memory_store_small_run(tmp_path: Path):
    out = tmp_path / "bt.json"
    assert bench_tracker.run(300, 3, 100, 0.5, 4, ["memory"], out) == 0
    check(json.loads(out.read_text()), ["memory"], 300)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (Debian's redis-server package)")
def test_both_stores_through_the_cli(tmp_path: Path):
    out = tmp_path / "bt.json"
    args = ["bench", "tracker", "--peers", "200", "--contents", "2", "--pieces", "64", "--duration", "0.5", "--json", str(out)]
    done = subprocess.run([sys.executable, "-m", "edgeswarm", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "announces per CPU second" in done.stdout
    check(json.loads(out.read_text()), ["memory", "redis"], 200)


def test_unknown_store_is_refused():
    done = subprocess.run([sys.executable, "-m", "edgeswarm", "bench", "tracker", "--stores", "mongo"], capture_output=True, text=True)
    assert done.returncode == 2 and "--stores takes memory and/or redis" in done.stderr
