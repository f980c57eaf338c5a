"""The README's main command: `edgeswarm demo` runs both scenarios, reports and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeswarm.measure import demo


def test_a_new_demo_removes_what_the_last_one_wrote_and_nothing_else(tmp_path):
    """An interrupted demo left its first run's plots beside the previous demo's plots and demo.json, which described
    neither (an adversarial session): a demo starts by removing the previous demo.json and the plots it lists."""
    out = tmp_path / "out"
    out.mkdir()
    listed = [out / "flash-crowd-share.png", out / "vod-startup.png"]
    for path in [*listed, out / "mine.png"]:
        path.write_bytes(b"png")
    (out / "demo.json").write_text(json.dumps([{"plots": [str(p) for p in listed]}, {"plots": [str(tmp_path / "elsewhere.png")]}]))
    (tmp_path / "elsewhere.png").write_bytes(b"png")
    demo._clear_previous(out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.png"]
    assert (tmp_path / "elsewhere.png").exists()  # not in the demo's folder: not the demo's to remove
    (out / "demo.json").write_text("not json")
    demo._clear_previous(out)
    assert (out / "demo.json").exists()  # not a demo's: left alone


@pytest.mark.integration  # starts daemons as subprocesses
@pytest.mark.timeout(300)  # the demo's own limit below is 240 s: the suite's 120 s default cut it first on a loaded machine
def test_demo_exits_0_with_a_report(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "demo", "--out", str(tmp_path / "out"), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    for words in ("what P2P assistance did", "flash-crowd", "vod", "P2P share", "edges saved", "startup median", "rebuffering"):
        assert words in proc.stdout
    results = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert [r["scenario"]["name"] for r in results] == ["flash-crowd", "vod"]
    assert all(r["p2p_share"] > 0.2 and 0 < r["savings"] < 1 for r in results)
    assert all(u["verified"] for u in results[0]["users"])
    assert sum(1 for p in (tmp_path / "out").glob("*.png")) == 9
    ps = subprocess.run(["pgrep", "-af", str(work)], capture_output=True, text=True)
    assert [line for line in ps.stdout.splitlines() if "pgrep" not in line] == []
