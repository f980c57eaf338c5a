"""bench serve: wrk's report is read right, and the benchmark runs end to end on a small file.

Figures are not asserted (a shared VM makes them noise at 1 s), only that
they are real, consistent with each other, and that nothing is left running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeswarm.measure.bench_serve import parse_wrk

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses

WRK = """\
Running 1s test @ http://127.0.0.1:1/file.bin
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    0.30ms   3.00ms   90.00%
    Req/Sec   502.00     10.00   520.00     80.00%
  Latency Distribution
     50%  850.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.50s
  500 requests in 1.00s, 500.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:    499.50
Transfer/sec:      1.50GB
"""


def test_parse_wrk_reads_rates_failures_and_latency():
    r = parse_wrk(WRK)
    assert r["req_per_s"] == 499.5
    assert r["Bps"] == 1.5 * 1024**3  # wrk's units are binary
    assert (r["non_2xx"], r["socket_errors"], r["failures"]) == (3, 3, 6)
    assert r["p50_ms"] == pytest.approx(0.85) and r["p99_ms"] == pytest.approx(2500)


def _pids(pattern: str) -> set[str]:
    """Processes whose command line matches: nginx workers are named only "nginx: worker process"."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="needs nginx and wrk on PATH (Debian packages; ./dev test installs them as root)",
)
def test_bench_serve_smoke(tmp_path: Path):
    nginx_before = _pids("^nginx: ")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "edgeswarm", "bench", "serve", "--size", "4MiB", "--duration", "1", "--connections", "2"]
    started = time.monotonic()
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert set(figures["cases"]) == {"1 MiB ranges", "whole file"}
    for case in figures["cases"].values():
        assert case["edge"]["Bps"] > 0 and case["nginx"]["Bps"] > 0
        assert case["edge"]["failures"] == 0 and case["nginx"]["failures"] == 0
        assert case["ratio"] == pytest.approx(case["edge"]["Bps"] / case["nginx"]["Bps"], abs=1e-3)
    assert figures["size"] == 4 * 1024 * 1024 and figures["connections"] == 2 and figures["cpus"] >= 1
    assert figures["steal_pct_max"] is None or 0 <= figures["steal_pct_max"] <= 100
    assert "target edge" in proc.stdout
    assert _pids("edgeswarm-bench-serve-") == set(), "origin, edge or nginx master left running"  # all name the workdir
    assert _pids("^nginx: ") <= nginx_before, "an nginx worker left running"
    assert took < 20, f"smoke run took {took:.1f} s"


@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="needs nginx and wrk on PATH (Debian packages; ./dev test installs them as root)",
)
def test_bench_serve_protected_smoke(tmp_path: Path):
    """The edge decrypts for every wrk request: no failed request means every one carried a valid token."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "edgeswarm", "bench", "serve", "--size", "4MiB", "--duration", "1", "--connections", "2", "--protected"]
    proc = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["protected"] is True and figures["target"]["met"] is False
    for case in figures["cases"].values():
        assert case["edge"]["Bps"] > 0 and case["edge"]["failures"] == 0
    assert "protected file" in proc.stdout
    assert _pids("edgeswarm-bench-serve-") == set()
