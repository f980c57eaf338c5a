"""bench serve: runs end to end on a small file (figures are not asserted, only that they are real)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgeswarm.bench_serve import parse_wrk

WRK = """\
Running 1s test @ http://127.0.0.1:1/file.bin
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    0.30ms   3.00ms   90.00%
  500 requests in 1.00s, 500.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:    499.50
Transfer/sec:      1.50GB
"""


def test_parse_wrk_reads_rates_and_failures():
    r = parse_wrk(WRK)
    assert r["req_per_s"] == 499.5 and r["Bps"] == 1.5 * 1024**3 and r["failures"] == 6


@pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None, reason="nginx/wrk not installed (./dev test installs them as root)"
)
def test_bench_serve_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "edgeswarm",
        "bench",
        "serve",
        "--size",
        "4MiB",
        "--duration",
        "1",
        "--connections",
        "2",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    for case in figures["cases"].values():
        assert case["edge"]["Bps"] > 0 and case["nginx"]["Bps"] > 0
        assert case["edge"]["failures"] == 0 and case["nginx"]["failures"] == 0
        assert case["ratio"] == pytest.approx(case["edge"]["Bps"] / case["nginx"]["Bps"], rel=1e-2)
    assert "target edge" in proc.stdout
    left = subprocess.run(["pgrep", "-af", "edgeswarm-bench-serve-"], capture_output=True, text=True)  # its workdir prefix
    assert left.stdout == "", f"processes left behind: {left.stdout}"
