"""`edgeswarm sim` end to end: a small synthetic run, a hand-checkable CSV trace, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeswarm import cli
from edgeswarm.sim import trace

pytestmark = pytest.mark.integration  # starts daemons or tools as subprocesses

FIGURES = ("cdn_mbps", "p2p_mbps", "limited_mbps", "bound_mbps", "savings")


def sim(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeswarm", "sim", *args, "--json", str(out), "--plots", str(tmp_path / "plots")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_synthetic_vod(tmp_path):
    proc, r = sim(tmp_path, "vod", "--viewers", "3000", "--days", "1", "--regions", "3", "--videos", "50")
    assert proc.returncode == 0, proc.stderr
    assert set(r["regions"]) == {"r1", "r2", "r3"}
    for x in [r["total"], *r["regions"].values()]:
        assert all(isinstance(x[k], float) for k in FIGURES)
        assert x["bound_mbps"] <= x["p2p_mbps"] <= x["cdn_mbps"]
        assert x["savings"] == pytest.approx(1 - x["p2p_mbps"] / x["cdn_mbps"])
    assert r["trace"]["sessions"] == 3000 and r["elapsed_s"] > 0 and r["peak_rss_mib"] > 0
    assert r["parameters"]["tiers"] == "att" and r["parameters"]["viewers"] == 3000
    assert len(r["series"]["total_mbps"]["cdn"]) == 288  # a day of 5-minute bins
    assert len(r["plots"]) == 3 and all(Path(p).stat().st_size > 5000 for p in r["plots"])
    assert "total" in proc.stdout and "Traceback" not in proc.stderr


CSV = """time,client,region,content,duration,upload
0,alice,east,news/1,600,128
0,bob,east,news/1,600,768
100,carol,west,film,200,
"""


def test_csv_vod_by_hand(tmp_path):
    """east: alice then bob on one video for 10 minutes; west: carol alone for 200 s."""
    path = tmp_path / "views.csv"
    path.write_text(CSV)
    proc, r = sim(tmp_path, "vod", "--trace", str(path), "--bitrate", "400")
    assert proc.returncode == 0, proc.stderr
    east, west = r["regions"]["east"], r["regions"]["west"]
    assert east["cdn_mbps"] == pytest.approx(0.8)  # 2 · 400 kbit/s all along
    assert east["p2p_mbps"] == pytest.approx(0.672)  # max(400, 800 − 128)
    assert east["limited_mbps"] == pytest.approx((800 - 128 / 3) / 1000)
    assert east["bound_mbps"] == 0  # 800 − 896 < 0
    # west: 400 kbit/s for 200 s of the first 300-s bin, nothing in the second; p95 of (266.7, 0)
    assert west["cdn_mbps"] == pytest.approx(0.95 * 400 * 200 / 300 / 1000)
    assert west["p2p_mbps"] == west["cdn_mbps"]  # alone: the server sends r whatever carol's tier
    assert r["total"]["cdn_mbps"] == pytest.approx((800 + 0.95 * 400 * 200 / 300) / 1000)


def test_csv_update_by_hand(tmp_path):
    path = tmp_path / "updates.csv"
    path.write_text(CSV)
    proc, r = sim(tmp_path, "update", "--trace", str(path), "--bitrate", "300", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    east = r["regions"]["east"]
    assert east["cdn_mbps"] == pytest.approx(0.6)  # 2 · 300 (below both download rates)
    assert east["p2p_mbps"] == 0  # 600 − 896 < 0
    assert east["limited_mbps"] == pytest.approx((600 - 896 / 3) / 1000)
    assert r["plots"] == []


def test_bad_csv_is_a_message_not_a_traceback(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,client,region,duration\n0,a,east,10\n")
    proc, r = sim(tmp_path, "vod", "--trace", str(path))
    assert proc.returncode == 2 and r is None
    assert "lacks content" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("time,client,region,content,duration\n", "no sessions"),
        ("time,client,region,content,duration\n0,a,east,v,-5\n", "bad.csv:2: negative duration"),
        ("time,client,region,content,duration\n0,a,east,v,10\nsoon,b,east,v,10\n", "bad.csv:3: time 'soon' is not a number"),
        ("time,client,region,content,duration,upload\n0,a,east,v,10,fast\n", "upload 'fast' is not a number"),
        ("time,client,region,content,duration,upload\n0,a,east,v,10,0\n", "upload must be a positive rate"),
        ("time,client,region,content,duration\n0,a,east\n", "3 fields, the header has 5"),
        ("time,client,region,content,duration\n0,a,east,v,inf\n", "not a finite number"),
    ],
)
def test_bad_csv_messages(tmp_path, capsys, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert cli.main(["sim", "vod", "--trace", str(path), "--no-plots"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("edgeswarm sim: ") and message in last


def test_preset_of_the_other_mode_is_refused(capsys):
    assert cli.main(["sim", "update", "--preset", "paper-vod"]) == 2
    assert "sim vod" in capsys.readouterr().err


def test_read_csv_names_and_optional_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Start,User,Region,Video,Duration,Down,Rate\n5,u1,NY,a,10,3000,\n1,u2,TX,b,20,,250\n")
    t = trace.read_csv(path)
    assert t.regions == ("NY", "TX") and t.info["contents"] == 2
    assert np.isnan(t.up_kbps).all() and t.down_kbps[0] == 3000 and np.isnan(t.rate_kbps[0])
    filled = trace.fill_rates(t, trace.tiermod.table("verizon"), 400, seed=1)
    assert filled.rate_kbps.tolist()[1] == 250  # the trace's own rate
    assert filled.rate_kbps[0] == 400  # the bitrate, below the 3000 download
    assert set(filled.up_kbps) <= {128, 768}


def test_synthetic_workload_shape():
    w = trace.Workload(viewers=20_000, days=2, videos=100, quit_prob=0.5, regions=("a", "b"), region_weights=(3, 1), diurnal=1.0)
    t = trace.synthetic(w, trace.tiermod.table("att"))
    assert np.all(np.diff(t.start) >= 0) and t.start.max() < 2 * 86400
    assert 0.7 < np.mean(t.region == 0) < 0.8  # weights 3:1
    hour = (t.start % 86400) // 3600
    assert np.mean(hour == 21) > 3 * np.mean(hour == 9)  # evening peak, morning trough
    assert np.mean(np.bincount(t.content, minlength=100)[:10]) > 5 * np.mean(np.bincount(t.content, minlength=100)[50:])
    assert set(np.unique(t.up_kbps)) == {128, 384, 512, 768}


def test_errors_name_the_file_line(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("time,client,region,content,duration\n\n0,a,east,v,10\n\n5,b,east,v,-1\n")
    with pytest.raises(trace.TraceError, match=r"gaps.csv:5: negative duration"):
        trace.read_csv(path)
