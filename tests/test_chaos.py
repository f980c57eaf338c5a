"""`edgeswarm chaos`: the fault schedule as a scenario states it, and a short run through every kind of fault."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeswarm.measure import chaos, scenario

SHORT = """\
kind: download
tiers: verizon
rate_scale: 16
edge_upload: 4MB/s
size: 2MiB
arrival: poisson
rate: 1
timeout_s: 150
regions: [{name: east, peers: 2}, {name: west, peers: 2}]
faults:
  - {at: 1, kill: edge-east}
  - {at: 2, restart: edge-east}
  - {at: 2, kill: peer-west-1, for: 2}
  - {at: 7, corrupt_peer: {count: 1, region: east}, for: 4}
  - {at: 7, sybil: {ids: 200, region: west}, for: 4}
  - {at: 8, slowloris: {connections: 40, target: edge-west}, for: 4}
  - {at: 8, disk_full: edge-west, for: 3}
  - {at: 9, lying_parent: {lie: wrong-bytes, region: east}, for: 4}
  - {at: 9, bloating_peer: {count: 1, region: east, rate: 1MB/s}, for: 4}
"""


def running(work: Path) -> list[str]:
    """Processes whose command line names the run's directory: its daemons and victims, if any survived."""
    ps = subprocess.run(["pgrep", "-af", str(work)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if "pgrep" not in line]


def _s() -> scenario.Scenario:
    return scenario.from_doc({"regions": [{"name": "east", "peers": 2}, {"name": "west", "peers": 2}]})


def test_the_shipped_schedule_has_every_kind_of_fault():
    s = scenario.load("chaos")
    assert {f.kind for f in chaos.parse_faults(s.faults, s)} == set(chaos.FAULT_KINDS)


def test_short_forms_defaults_and_targets():
    f = chaos.parse_faults(
        [
            {"at": 5, "kill": "edge-east"},
            {"at": 6, "corrupt_peer": 2},
            {"at": 7, "sybil": {"ids": 50, "region": "west"}},
            {"at": 8, "slowloris": 10, "for": 3},
            {"at": 9, "lying_parent": "old-version"},
        ],
        _s(),
    )
    assert [(x.kind, x.target, x.duration) for x in f] == [
        ("kill", "edge-east", 0.0),  # a kill lasts until a restart, unless `for` restarts it
        ("corrupt_peer", "edge-east", chaos.LASTS),  # doubles attack the first region unless told
        ("sybil", "edge-west", chaos.LASTS),
        ("slowloris", "edge-east", 3.0),
        ("lying_parent", "edge-east", chaos.LASTS),
    ]
    assert f[1].options == {"count": 2, "region": "east"} and f[3].options["connections"] == 10


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"at": 1, "explode": "edge-east"}, "one fault kind of kill"),
        ({"kill": "edge-east"}, "'at' must be"),
        ({"at": -1, "kill": "edge-east"}, "'at' must be"),
        ({"at": 1, "kill": "edge-north"}, "node must be one of"),
        ({"at": 1, "kill": "peer-east-3"}, "node must be one of"),
        ({"at": 1, "disk_full": "peer-east-1"}, "only an edge's disk"),
        ({"at": 1, "sybil": {"ids": 0}}, "ids must be an integer"),
        ({"at": 1, "sybil": {"count": 3}}, "sybil takes ids, region, not count"),
        ({"at": 1, "lying_parent": "fibs"}, "lie is one of"),
        ({"at": 1, "bloating_peer": {"rate": "fast"}}, "rate"),
        ({"at": 1, "kill": "origin", "for": "soon"}, "'for' must be"),
        ({"at": 1, "kill": "origin", "restart": "origin"}, "one fault kind"),
        ("kill edge-east", "a fault is a mapping"),
    ],
)
def test_a_bad_fault_is_refused_with_a_reason(doc, message):
    with pytest.raises(ValueError, match=message):
        chaos.parse_faults([doc], _s())


def test_a_scenario_with_a_bad_fault_is_a_scenario_error():
    with pytest.raises(scenario.ScenarioError, match=r"faults\[0\]: kill: node"):
        scenario.from_doc({"faults": [{"at": 1, "kill": "edge-mars"}]})
    with pytest.raises(scenario.ScenarioError, match="faults need kind: download"):
        scenario.from_doc({"kind": "vod", "faults": [{"at": 1, "kill": "origin"}]})


def test_fill_leaves_what_it_is_asked_to(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    if free > 8 << 30:  # not filling a big disk to test this: a tmpfs of our own needs root
        if os.geteuid() != 0:
            pytest.skip("needs a small filesystem (root, to mount a tmpfs)")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(tmp_path)], check=True)
    try:
        chaos._fill(tmp_path / "ballast", 1 << 20)
        left = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
        assert 0 < left <= (1 << 20) + (64 << 10)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], capture_output=True)


def test_chaos_without_faults_is_refused():
    proc = subprocess.run([sys.executable, "-m", "edgeswarm", "chaos", "flash-crowd"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "has no faults" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_short_run_through_every_kind_of_fault(tmp_path):
    path = tmp_path / "short-chaos.yaml"
    path.write_text(SHORT)
    out, work = tmp_path / "chaos.json", tmp_path / "work"
    cmd = [sys.executable, "-m", "edgeswarm", "chaos", str(path), "--json", str(out), "--workdir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    assert out.exists(), text
    c = json.loads(out.read_text())["chaos"]
    assert {f["kind"] for f in c["faults"]} == set(chaos.FAULT_KINDS)
    for f in c["faults"]:  # each fault was made and recovered from, or says why it was skipped
        if f["skipped"]:
            continue
        assert f["started_s"] >= f["at"] and f["ended_s"] >= f["started_s"] + f["for_s"], f
        if f["kind"] in chaos.PREPARED:  # their doubles were started with the deployment: the fault is on at its time
            assert f["details"]["in_effect_after_s"] < 5, f
        assert f["recover_s"] is not None and f["probes"]["ok"] >= 1, f
    disk = next(f for f in c["faults"] if f["kind"] == "disk_full")
    assert disk["skipped"] or disk["details"]["ballast_bytes"] > 0
    kill = next(f for f in c["faults"] if f["kind"] == "kill" and f["target"] == "edge-east")
    assert kill["probes"]["failed"] >= 1  # the probe did notice the edge was down
    corrupt = next(f for f in c["faults"] if f["kind"] == "corrupt_peer")
    assert all(d is not None and d["kind"] == "corrupting" for d in corrupt["details"]["doubles"].values())  # it ran, and said what it did
    assert corrupt["details"]["victim_asked"] == 202
    loris = next(f for f in c["faults"] if f["kind"] == "slowloris")
    assert next(iter(loris["details"]["doubles"].values()))["opened"] >= 40
    # what was delivered: every byte checked, none wrong
    assert c["checked"]["reads"] > 10 and c["checked"]["bytes"] >= 4 * 2 * 2**20
    assert c["corrupt_reads"] == [] and c["corrupt_bytes"] == 0
    assert c["downloads"]["completed"] == c["downloads"]["expected"] == 4
    assert c["data_lost"]["copies"] == 0 and c["crashes"] == []
    assert c["worst_rss"]["bytes"] > 10 << 20 and c["worst_rss"]["node"]
    assert proc.returncode == 0, text
    assert "faults" in proc.stdout and "corrupt bytes delivered" in proc.stdout
    assert running(work) == []  # nothing left running
    assert not any(Path(p).is_mount() for p in work.iterdir())  # and no tmpfs left mounted


@pytest.mark.integration
def test_interrupt_stops_every_process_and_unmounts(tmp_path):
    path, work = tmp_path / "full.yaml", tmp_path / "work"
    path.write_text(SHORT.replace("at: 8, disk_full", "at: 0, disk_full"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeswarm", "chaos", str(path), "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not any("victim-" in line for line in running(work)):  # victims start last: the deployment is up
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert running(work) == []
    assert str(work) not in Path("/proc/mounts").read_text()
