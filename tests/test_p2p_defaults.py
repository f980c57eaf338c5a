"""Issue 10's acceptance test: P2P that works untouched.

Twelve gateways in two regions stream the same file at the same moment (players
pressing play together), behind one p2p edge with strict locality. The
daemons run as the README tells a user to run them: the edge with ``--p2p
--regions --locality strict --upload-limit``, each peer with ``--cache --edge
--listen --gateway --upload-limit`` and nothing else - no announce interval,
no tuning. The run is ``edgeswarm bench swarm --mode stream``'s (one copy of
the crowd, the same figures the benchmark reports).

Caps: edge 4 MB/s, peers 2 MB/s, an 8 MiB file: the bound is about 3.6 s and
even an edge that sends everything is done in under 30 s.  The issue asks for
at least 8 gateways; with 8 (4 a region, a P2P ceiling of 75 % at one edge
copy a region) this machine measured 57.6-70.7 % from run to run on 2026-12-02
and the 60 % bar failed about one run in four, in CI too; with 12 (ceiling
83 %) five runs gave 75.5-76.6 %.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeswarm.measure.bench_swarm import Crowd, run_crowd
from edgeswarm.measure.process import ProcessGroup

pytestmark = [pytest.mark.integration, pytest.mark.alone]  # alone: its share bar is timing-bound (./dev test)

# What the README's p2p recipe sets: anything beyond this would be tuning a user does not do.
USER_FLAGS = {
    "origin": {"--publish"},
    "edge": {"--cache", "--parent", "--p2p", "--regions", "--locality", "--upload-limit"},
    "peer": {"--cache", "--edge", "--listen", "--gateway", "--upload-limit"},
}


async def test_gateways_streaming_together_trade_within_their_region(nodes: ProcessGroup, tmp_path: Path):
    crowd = Crowd("stream", peers=12, regions=2, size=8 << 20, edge_Bps=4_000_000, peer_Bps=2_000_000)
    r = await run_crowd(nodes, tmp_path, crowd)
    for node in nodes.nodes:
        assert {a for a in node.args if a.startswith("--")} <= USER_FLAGS[node.role], node.args
    figures = (
        f"P2P share {r['p2p_share']:.1%}, bytes {r['bytes']}, crossed regions {r['cross_region_bytes']}, "
        f"last peer {r['all_complete_s']} s against a bound of {r['bound_s']} s"
    )
    print(figures)
    assert r["copies_identical"], figures
    assert r["cross_region_bytes"] == 0, figures
    assert r["p2p_share"] >= 0.6, figures
