"""`edgeswarm lab`: small real runs of every shipped scenario, its report, and that it leaves nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeswarm.cli.lab import EPILOG_LAB
from edgeswarm.measure import labsim, scenario
from edgeswarm.measure.lab import _Playback, playback
from edgeswarm.policy import engine

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses


def lab(tmp_path: Path, *args: str, timeout: float = 150) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "lab.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "lab", *args, "--json", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def leftovers(workdir: Path) -> list[str]:
    """Processes whose command line names the run's directory: its daemons, if any survived."""
    ps = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if "pgrep" not in line]


def test_flash_crowd(tmp_path):
    proc, r = lab(tmp_path, "flash-crowd", "--peers", "4", "--size", "3MiB")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert all(u["verified"] and u["complete_s"] > 0 for u in r["users"])
    assert len(r["users"]) == 8 and set(r["regions"]) == {"east", "west"}
    for region in r["regions"].values():
        assert region["p2p_share"] > 0.2  # peers did trade
        assert region["completion_max_s"] >= region["bound_s"] * 0.95  # nothing beats the bound (sampling slack)
    assert r["bytes"]["crossed_regions"] == 0  # strict locality
    # every byte a peer got is accounted for by a sender: edges and peers
    got = r["bytes"]["peers_received"]
    assert got["edge"] <= r["bytes"]["edges_total"]
    assert r["demand_bytes"] == 8 * 3 * 2**20
    assert r["timeline"] and r["timeline"][-1]["done"] == 8
    assert len(r["plots"]) == 4 and all(Path(p).stat().st_size > 5000 for p in r["plots"])
    assert "P2P share" in proc.stdout and "plots:" in proc.stdout
    assert leftovers(tmp_path / "work") == []


def test_vod_from_a_scenario_file(tmp_path):
    path = tmp_path / "short-vod.yaml"
    path.write_text(
        "kind: vod\ntiers: att\nrate_scale: 8\narrival: poisson\nrate: 2\n"
        "regions: [{name: north, peers: 4}, {name: south, peers: 3}]\n"
        "vod: {bitrate_kbps: 400, duration_s: 6, videos: 2, quit_prob: 0.5, leave_after_watch: true}\n"
    )
    proc, r = lab(tmp_path, str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    views = r["users"]
    assert len(views) == 7 and all(u["startup_s"] is not None and u["startup_s"] < 6 for u in views)
    assert all(0 <= u["rebuffer_ratio"] < 1 and u["watch_s"] <= 6 for u in views)
    assert all(u["bytes"] >= u["watch_s"] * 400_000 * 0.99 for u in views)  # it got what it watched (400 kbit/s x 8 = 400 kB/s)
    assert len(r["plots"]) == 5
    m = r["model"]["total"]  # the simulator's model of the very sessions played
    assert 0 <= m["model_savings"] <= m["bound_savings"] <= 1
    assert m["lab_savings"] <= m["bound_savings"] + 0.02  # nothing beats the bound
    assert "model of the same sessions" in proc.stdout
    assert "startup delay" in proc.stdout and "rebuffering" in proc.stdout
    assert leftovers(tmp_path / "work") == []


def test_churn(tmp_path):
    proc, r = lab(tmp_path, "churn", "--peers", "4", "--size", "4MiB")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(u["left"] for u in r["users"]) >= 2  # 40 % of 8 crashed and came back
    assert all(u["verified"] for u in r["users"])  # and still ended with the very file
    assert leftovers(tmp_path / "work") == []


def test_interrupt_stops_every_daemon(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeswarm", "lab", "flash-crowd", "--peers", "3", "--size", "64MiB", "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(leftovers(work)) < 1 + 2 + 6:  # origin, 2 edges, 6 peers
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1.5)  # into the run: 6 peers, 64 MiB each, take far longer
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert leftovers(work) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-scenario"], "no scenario 'no-such-scenario'"),
        (["flash-crowd", "--size", "lots"], "size"),
    ],
)
def test_bad_input_is_a_message(tmp_path, args, message):
    proc, r = lab(tmp_path, *args, timeout=30)
    assert proc.returncode == 2 and r is None
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_scenario_file(tmp_path):
    path = tmp_path / "bad.yaml"
    for text, message in [
        ("kind: stream\n", "kind must be one of"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("rate_scale: fast\n", "wrong type"),
        ("regions: [{name: a, peers: 0}]\n", "peers must be 1..250"),
        ("[1, 2]\n", "a mapping"),
        ("kind: live\nlive: {join_s: [5, 200]}\n", "join_s is"),
        ("kind: live\nlive: {start_behind: 0}\n", "start_behind"),
        ("promote_regions: [north]\n", "promote_regions must name regions"),
        ("linger_s: -1\n", "linger_s must not be negative"),
    ]:
        path.write_text(text)
        with pytest.raises(scenario.ScenarioError, match=message):
            scenario.load(str(path))


def test_shipped_scenarios_load():
    assert scenario.shipped() == [
        "chaos",
        "churn",
        "flash-crowd",
        "live",
        "live-segments",
        "relay",
        "relay-promoted",
        "subtracker",
        "vod",
        "vod-model",
    ]
    listed = [line.split()[0] for line in EPILOG_LAB.split("\n\n")[0].splitlines()[1:]]
    assert sorted(listed) == scenario.shipped()  # `lab --help` names every shipped scenario
    relay = scenario.load("relay")
    assert relay.unreachable == 0.34 and relay.promote_upload is None
    assert scenario.load("relay-promoted").promote_upload_Bps == 64_000 and scenario.load("relay-promoted").announce_interval == 5
    sub = scenario.load("subtracker")
    assert sub.promote_regions == ["east"] and sub.linger_s == 60 and sub.promote_upload_Bps == 64_000
    ll = scenario.load("live").live
    assert ll.part_s == 1 and ll.hold_back_s == 3 and scenario.load("live-segments").live.part_s is None
    fc = scenario.load("flash-crowd")
    assert fc.tiers == "verizon" and fc.peers == 24
    assert fc.scaled_Bps(128) == 128_000 * 16 / 8
    s = scenario.override(scenario.load("vod"), peers=2, region_count=3, seed=None)
    assert [r.name for r in s.regions] == ["r1", "r2", "r3"] and s.peers == 6


def test_playback_counts_stalls_exactly():
    """1 byte/s video: start at 2 s buffered, the feed stops at 3 s for 5 s, resume at 1 s buffered."""
    p = _Playback(rate=1.0, watch_s=10)
    p.t0 = 0.0
    p.arrived(0.25, 1, startup_s=2, resume_s=1)  # the first bytes: 1 s of video, not enough to start
    assert p.first_byte == 0.25 and p.startup is None
    p.arrived(0.5, 1, startup_s=2, resume_s=1)  # 2 s of video: plays from 0.5
    assert p.startup == 0.5 and p.first_byte == 0.25
    p.arrived(1.5, 1, startup_s=2, resume_s=1)  # 3 s buffered, 1 s played
    p.arrived(8.0, 1, startup_s=2, resume_s=1)  # ran dry at 3.5, 4 s buffered now: resume
    assert p.stalls == 1 and p.stall_s == pytest.approx(4.5)
    p.arrived(9.0, 6, startup_s=2, resume_s=1)  # all 10 s here: no more stalls
    assert p.remaining(9.0) == pytest.approx(10 - 3 - 1)
    assert p.summary()["rebuffer_ratio"] == pytest.approx(4.5 / 14.5, abs=1e-4)


def test_playback_figures_of_a_vod_run():
    """Startup p95 is numpy's linear percentile over the views; a viewer that never started is not a view."""
    users = [{"startup_s": 0.1 * (i + 1), "first_byte_s": 0.01 * (i + 1), "stall_s": 0.0, "stalls": 0, "watch_s": 10.0} for i in range(20)]
    users[3] |= {"stall_s": 1.0, "stalls": 2}
    users.append({"startup_s": None, "stall_s": 0.0, "stalls": 0, "watch_s": 0.0})
    pb = playback(users)
    assert pb["views"] == 20 and pb["stalls"] == 2
    assert pb["startup_median_s"] == pytest.approx(1.05) and pb["startup_max_s"] == pytest.approx(2.0)
    assert pb["startup_p95_s"] == pytest.approx(0.1 + 0.95 * 19 * 0.1)  # between the 19th and 20th views
    assert pb["first_byte_median_s"] == pytest.approx(0.105) and pb["first_byte_p95_s"] == pytest.approx(0.01 + 0.95 * 19 * 0.01, abs=1e-3)
    assert pb["rebuffering"] == pytest.approx(1 / 201, abs=1e-5)
    assert playback(users[-1:]) is None


def test_model_of_the_lab_sessions():
    """Two viewers of one video from 0 s to 10 s; the first uploads 512 kbit/s >= r = 400, so with
    no prefetch the edge sends only the first one's stream: half of pure CDN; the bound is 2r - 640.
    The second arrives once the first plays, so its first STARTUP_BYTES (3.28 s of video at 400
    kbit/s x 16) come from the edge too; the fluid alone is reported beside."""
    users = [
        {"region": "east", "video": "v.mp4", "arrival_s": 0.0, "startup_s": 0.0, "watch_s": 10.0, "up_kbps": 512},
        {"region": "east", "video": "v.mp4", "arrival_s": 0.1, "startup_s": 0.0, "watch_s": 9.9, "up_kbps": 128},
        {"region": "west", "video": "v.mp4", "arrival_s": 0.0, "startup_s": 0.0, "watch_s": 10.0, "up_kbps": 768},
    ]
    result = {
        "scenario": {"kind": "vod", "rate_scale": 16, "vod": {"bitrate_kbps": 400}},
        "users": users,
        "regions": {"east": {"savings": 0.3}, "west": {"savings": 0.0}},
        "savings": 0.2,
    }
    m = labsim.compare(result)
    east, west = m["regions"]["east"], m["regions"]["west"]
    window_s = engine.STARTUP_BYTES * 8 / 1000 / (400 * 16)
    assert m["startup_window_s"] == pytest.approx(window_s, abs=1e-3) and window_s == pytest.approx(3.28, abs=0.01)
    assert east["fluid_savings"] == pytest.approx(0.5, abs=0.01)
    assert east["model_savings"] == pytest.approx(0.5 - window_s / 19.9, abs=0.02)  # the window's r more from the edge
    assert east["bound_savings"] == pytest.approx(1 - 160 / 800, abs=0.01)  # 2r - (512 + 128) = 160
    assert east["agrees"] and east["difference"] == pytest.approx(0.3 - east["model_savings"], abs=1e-3)
    assert west["model_savings"] == 0.0  # alone: the edge sends it all
    assert west["bound_savings"] == 1.0  # max(0, r - 768): the bound is 0 once u >= r
    assert not labsim.compare({**result, "regions": {"east": {"savings": 0.9}, "west": {"savings": 0.0}}})["regions"]["east"]["agrees"]
    together = [{**users[0], "startup_s": 1.0}, {**users[1], "arrival_s": 0.5}, users[2]]  # before the first one played
    east = labsim.compare({**result, "users": together})["regions"]["east"]
    assert east["model_savings"] == east["fluid_savings"]


def test_the_live_scenario_is_issue_14s():
    """24 viewers in 2 regions join over the first minute of a 3-minute stream of 2 s segments."""
    s = scenario.load("live")
    assert s.kind == "live" and s.peers == 24 and len(s.regions) == 2
    assert s.live.duration_s == 180 and s.live.segment_s == 2
    assert s.live.join_s[0] < s.live.join_s[1] <= 60
