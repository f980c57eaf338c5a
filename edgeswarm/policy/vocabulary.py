"""Words every layer shares, defined once: where a peer's bytes came from, the P2P share, the flash-crowd bound.

Each was written in several modules and the copies had begun to drift.  This
module imports only the standard library, so a policy may use it.

Source kinds.  The code names a kind by its constant (``PEER_SAME_REGION``)
and its value is the spelling of a peer's ``/status`` ``received_by_kind``
and the lab's JSON.  Other documents outside readers parse spell the same
three kinds their own way; those spellings stay as they are on the wire and
are derived here from the one list: a peer's announce ``stats``
(``peer_same_region``), the tracker's per-region rows
(``bytes_from_peers_same_region``) and bench swarm's JSON (``peers_same_region``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# -- source kinds: who sent a peer its bytes ---------------------------------------------------
EDGE = "edge"
PEER_SAME_REGION = "peer-same-region"
PEER_OTHER_REGION = "peer-other-region"
SOURCE_KINDS = (EDGE, PEER_SAME_REGION, PEER_OTHER_REGION)  # /status "received_by_kind", lab JSON
PEER_KINDS = (PEER_SAME_REGION, PEER_OTHER_REGION)

STAT_KEYS = {kind: kind.replace("-", "_") for kind in SOURCE_KINDS}  # a peer's announce "stats"
BENCH_KEYS = {EDGE: "edge", PEER_SAME_REGION: "peers_same_region", PEER_OTHER_REGION: "peers_other_region"}
TRACKER_FIELDS = {kind: f"bytes_from_{key}" for kind, key in BENCH_KEYS.items()}  # the tracker's region rows
STAT_KINDS = tuple(STAT_KEYS.values())

SHARE_DIGITS = 4  # the P2P share as status, tracker, lab and bench JSON report it


def peer_kind(same_region: bool) -> str:
    """The kind of a byte a peer sent: same region or not."""
    return PEER_SAME_REGION if same_region else PEER_OTHER_REGION


def peer_bytes(received: Mapping[str, int]) -> int:
    """Bytes from peers of any region, out of a count by source kind."""
    return sum(received.get(kind, 0) for kind in PEER_KINDS)


def p2p_share(from_peers: float, total: float) -> float | None:
    """The share of received bytes that peers sent: what the hybrid saves the edges; None before any byte."""
    return from_peers / total if total else None


def reported_share(from_peers: float, total: float) -> float | None:
    """p2p_share as JSON reports it: SHARE_DIGITS decimals."""
    share = p2p_share(from_peers, total)
    return None if share is None else round(share, SHARE_DIGITS)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of a non-empty list: the have-latency percentiles peers report and edges summarise."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- bounds --------------------------------------------------------------------------------------
def flash_crowd_bound(size: int, n: int, server_up: float, peer_up: list[float], min_down: float | None = None) -> float:
    """Seconds: no schedule can deliver a file of ``size`` bytes to all ``n`` peers faster.

    max(F/u_s, F/d_min, N·F/(u_s + Σu_i)) (seed 003): the server must send one
    copy, the slowest peer must receive one, and the swarm's total upload must
    carry N.  ``server_up`` may be infinite (an unlimited edge).  Not the same
    bound as ``model.vod_group_bound``, a server rate for VoD viewers.
    """
    terms = [size / server_up, n * size / (server_up + sum(peer_up))]
    if min_down:
        terms.append(size / min_down)
    return max(terms)
