"""bench swarm: its accounting is read right, and each mode runs end to end on a small crowd.

Figures are not asserted beyond what must hold in any run (a shared VM makes
times noise): the copies are the origin's, the bytes add up, nothing beats the
bound, and nothing is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgeswarm.cli import build_parser
from edgeswarm.measure.bench_swarm import Crowd, address, region_of, share, tally, tracker_tally, url_region
from edgeswarm.protocol.units import parse_rate, parse_size


def test_peers_are_dealt_round_robin_into_their_regions_block():
    assert [region_of(i, 2) for i in range(5)] == [1, 2, 1, 2, 1]
    assert [address(i, 2) for i in range(4)] == ["127.1.0.1", "127.2.0.1", "127.1.0.2", "127.2.0.2"]
    assert address(500, 1) == "127.1.2.1"
    assert all(url_region(f"http://{address(i, 3)}:6881") == region_of(i, 3) for i in range(600))
    assert url_region("http://127.0.0.1:80") == 0 and url_region("http://edge.example:80") is None


def test_cross_region_bytes_are_read_off_the_senders_address_not_the_receivers_label():
    st = {
        "bytes_received": [
            {"kind": "edge", "source": "http://127.0.0.1:8080", "bytes": 100},
            {"kind": "peer-same-region", "source": "http://127.2.0.1:6881", "bytes": 10},
            {"kind": "peer-same-region", "source": "http://127.2.0.7:6881", "bytes": 5},
            {"kind": "peer-same-region", "source": "http://127.1.0.3:6881", "bytes": 7},  # labelled same, sent from region 1
            {"kind": "peer-other-region", "source": "http://127.1.0.4:6881", "bytes": 3},
        ]
    }
    assert tally(st, 2) == Counter(edge=100, peers_same_region=15, peers_other_region=10)
    assert share(tally(st, 2)) == round(25 / 125, 4)
    assert share(Counter()) is None


def test_tracker_figures_map_onto_the_same_sources():
    p2p = {"regions": {"r1": {"bytes_from_edge": 4, "bytes_from_peers_same_region": 6, "bytes_from_peers_other_region": 0, "peers": 3}}}
    assert tracker_tally(p2p) == {"r1": Counter(edge=4, peers_same_region=6, peers_other_region=0)}
    assert tracker_tally({}) == {}


def test_the_printed_command_runs_the_same_crowd():
    crowd = Crowd("get", 12, 2, 32 << 20, 8_000_000, 2_000_000)
    args = build_parser().parse_args(crowd.command().split()[1:])
    assert (args.mode, args.peers, args.regions, args.size, args.edge_upload, args.peer_upload) == (
        "get",
        12,
        2,
        parse_size("32MiB"),
        parse_rate("8MB/s"),
        parse_rate("2MB/s"),
    )
    assert build_parser().parse_args(["bench", "swarm"]).mode == "stream"


def test_too_many_regions_is_a_message_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "bench", "swarm", "--regions", "255"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "at most 254" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["stream", "get", "post"])
def test_a_small_crowd_runs_end_to_end(mode: str, tmp_path: Path):
    out = tmp_path / "swarm.json"
    cmd = [sys.executable, "-m", "edgeswarm", "bench", "swarm", "--mode", mode, "--peers", "4", "--regions", "2", "--size", "2MiB"]
    cmd += ["--edge-upload", "4MB/s", "--peer-upload", "2MB/s", "--json", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["mode"] == mode and r["copies_identical"] and len(r["peers_detail"]) == 4
    assert r["cross_region_bytes"] == 0  # strict locality
    assert sum(r["bytes"].values()) >= 4 * 2 * 2**20  # every peer got the whole file, from somewhere
    assert r["bytes"]["edge"] <= r["edge_sent_bytes"]
    assert set(r["regions_detail"]) == {"r1", "r2"}
    assert r["all_complete_s"] >= r["bound_s"] * 0.95  # nothing beats the bound (sampling slack)
    assert r["timeline"]
    assert "P2P share" in proc.stdout and "every copy identical" in proc.stdout
    if mode == "get":
        assert not list((tmp_path / "work").glob("get*/.update.img.*.part"))
        assert 0 < r["startup_median_s"] <= r["startup_max_s"] < r["all_complete_s"]  # read off each get's own line
        assert 0 < r["download_ratio_to_bound"] <= r["ratio_to_bound"] and "get start-up" in proc.stdout
    ps = subprocess.run(["pgrep", "-af", str(tmp_path / "work")], capture_output=True, text=True)
    assert [line for line in ps.stdout.splitlines() if "pgrep" not in line] == []  # every daemon and `get` stopped
