"""The server-load model of Huang, Li and Ross, vectorised: pure functions, no I/O.

VoD (no prefetching): a viewer serves only the video it is watching, and only to
viewers who arrived after it (they need what it already has).  In a (video,
region) group of N viewers with upload rates u_1..u_N in arrival order and video
rate r, the first j viewers need j·r and only the j-1 before the j-th can help,
so the server must send

    S = max over j of ( j·r − Σ_{i<j} u_i )            (always >= r)

and no policy, prefetching or not, can go below the bound max(0, N·r − Σ u_i).
Pure CDN sends N·r.  The limited variant gives peers a third of their upload.

Updates (no deadline, every peer has something to share): per region the
server sends max(0, Σ demand − Σ u) over the sessions online.

Time is sampled every `step` seconds: a session counts at the instants t with
start <= t < start + duration, which is unbiased for a session's bytes when start
times fall anywhere between instants.  Server rates are in kbit/s.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BIN_S = 300.0  # the paper bills 5-minute averages
PERCENTILE = 95.0
CHUNK_PAIRS = 500_000  # (step, session) pairs held at once: bounds memory
RATE_SERIES = ("cdn", "p2p", "limited", "bound")  # the server-rate series computed: one per policy, and the bound


# -- one group, for reference and tests -----------------------------------------------------
def server_rate(u: np.ndarray | list[float], r: float) -> float:
    """No-prefetch server rate of one (video, region) group; u in arrival order."""
    u = np.asarray(u, dtype=float)
    if u.size == 0:
        return 0.0
    before = np.concatenate(([0.0], np.cumsum(u)[:-1]))
    return float(np.max(np.arange(1, u.size + 1) * r - before))


def vod_group_bound(u: np.ndarray | list[float], r: float) -> float:
    """What any policy must still send to a VoD group, a rate: max(0, N·r − Σu).

    Not vocabulary.flash_crowd_bound, which is a time for one file to reach a crowd.
    """
    u = np.asarray(u, dtype=float)
    return max(0.0, u.size * r - float(u.sum()))


def update_rate(demand: np.ndarray | float, supply: np.ndarray | float) -> np.ndarray:
    """Server rate of a region fetching updates: the demand peers cannot cover."""
    return np.maximum(0.0, np.asarray(demand, dtype=float) - np.asarray(supply, dtype=float))


# -- many groups at once ------------------------------------------------------------------
def segment_server_rates(starts: np.ndarray, u: np.ndarray, r: float) -> np.ndarray:
    """server_rate of every segment of u (segments begin at `starts`, each in arrival order).

    S = r + max_j Σ_{i<j} (r − u_i): an exclusive running sum restarted at each
    segment, then a segmented maximum.
    """
    x = r - u
    excl = np.cumsum(x)
    excl -= x  # exclusive prefix over the whole array
    lengths = np.diff(np.append(starts, u.size))
    excl -= np.repeat(excl[starts], lengths)  # restart at each segment
    return r + np.maximum.reduceat(excl, starts)


def segment_bounds(starts: np.ndarray, u: np.ndarray, r: float) -> np.ndarray:
    """vod_group_bound of every segment of u."""
    n = np.diff(np.append(starts, u.size))
    return np.maximum(0.0, n * r - np.add.reduceat(u, starts))


# -- time series ----------------------------------------------------------------------------
@dataclass
class Series:
    """Server rate (kbit/s) at each sampled instant t0 + k·step, per region, for each kind."""

    t0: float
    step: float
    regions: tuple[str, ...]
    rates: dict[str, np.ndarray]  # kind -> (steps, regions)

    @property
    def steps(self) -> int:
        return next(iter(self.rates.values())).shape[0]


@dataclass
class Sessions:
    """A trace reduced to what the model needs, in arrival order, with sampled-instant indices."""

    k0: np.ndarray  # first instant the session is online
    k1: np.ndarray  # one past its last
    region: np.ndarray
    content: np.ndarray
    up: np.ndarray  # kbit/s
    rate: np.ndarray  # demand, kbit/s (VoD: the video rate)
    steps: int
    t0: float


def horizon(start: np.ndarray, end: np.ndarray, span_s: float | None) -> tuple[float, float]:
    """[t0, t1): whole 5-minute bins from the first arrival's bin to the last departure, or over
    the span when the workload has one (a synthetic month is observed for a month, as a trace is)."""
    t0 = math.floor(float(start.min()) / BIN_S) * BIN_S
    last = t0 + span_s if span_s is not None else float(end.max())
    return t0, max(t0 + BIN_S, math.ceil(last / BIN_S) * BIN_S)


def sessions(start, duration, region, content, up, rate, step: float, span_s: float | None = None) -> Sessions:
    """Sample instants of each session: k with start <= t0 + k·step < start + duration."""
    if BIN_S % step:
        raise ValueError(f"step {step:g} s must divide {BIN_S:g} s (5-minute averages)")
    start = np.asarray(start, dtype=float)
    end = start + np.asarray(duration, dtype=float)
    t0, t1 = horizon(start, end, span_s)
    steps = round((t1 - t0) / step)
    order = np.argsort(start, kind="stable")
    k0 = np.ceil((start[order] - t0) / step).astype(np.int64)
    k1 = np.minimum(np.ceil((end[order] - t0) / step), steps).astype(np.int64)
    del end
    region_i, content_i = (np.asarray(a)[order].astype(np.int64, copy=False) for a in (region, content))
    up_f, rate_f = (np.asarray(a)[order].astype(float, copy=False) for a in (up, rate))
    return Sessions(k0, k1, region_i, content_i, up_f, rate_f, steps, t0)


def _per_step(k: tuple[np.ndarray, np.ndarray], region: np.ndarray, weights: np.ndarray, steps: int, nreg: int) -> np.ndarray:
    """Σ weights of the sessions online at each instant, per region (a difference array, then cumsum)."""
    at = np.bincount(k[0] * nreg + region, weights, minlength=(steps + 1) * nreg)
    at -= np.bincount(k[1] * nreg + region, weights, minlength=(steps + 1) * nreg)
    return np.cumsum(at.reshape(steps + 1, nreg), axis=0)[:steps]


def update_series(s: Sessions, regions: tuple[str, ...], limited_share: float, step: float) -> Series:
    """Update mode: pure CDN sends the demand; CDN-P2P the demand peers cannot cover, per region.
    The bound is the full CDN-P2P figure itself: peers are assumed to always have something to share."""
    k, nreg = (s.k0, s.k1), len(regions)
    demand = _per_step(k, s.region, s.rate, s.steps, nreg)
    supply = _per_step(k, s.region, s.up, s.steps, nreg)
    p2p = update_rate(demand, supply)
    rates = {"cdn": np.maximum(demand, 0.0), "p2p": p2p, "limited": update_rate(demand, limited_share * supply), "bound": p2p.copy()}
    return Series(s.t0, step, regions, rates)


def vod_series(
    s: Sessions,
    regions: tuple[str, ...],
    r: float,
    limited_share: float,
    step: float,
    chunk_pairs: int = CHUNK_PAIRS,
    progress: Callable[[int, int], None] | None = None,
) -> Series:
    """VoD mode: per instant and region, Σ over (video, region) groups of n·r, the no-prefetch rate
    (full and limited upload) and the bound.  Instants are processed in chunks of about
    `chunk_pairs` (instant, session) pairs, so memory stays bounded whatever the trace's length."""
    nreg = len(regions)
    online = _per_step((s.k0, s.k1), s.region, np.ones(s.k0.size), s.steps, nreg)
    rates = {"cdn": online * r, **{kind: np.zeros((s.steps, nreg)) for kind in RATE_SERIES[1:]}}
    g = _group_order(s)
    maxlen = int((s.k1 - s.k0).max(initial=0))
    edges = _chunk_edges(online.sum(axis=1), chunk_pairs)
    for a, b in itertools.pairwise(edges):
        _vod_chunk(s, g, int(a), int(b), maxlen, r, limited_share, nreg, rates)
        if progress:
            progress(int(b), s.steps)
    return Series(s.t0, step, regions, rates)


@dataclass
class _Groups:
    rank: np.ndarray  # each session's position in (region, content, arrival) order
    gid: np.ndarray  # by rank: group number
    region: np.ndarray  # by rank
    up: np.ndarray  # by rank


def _group_order(s: Sessions) -> _Groups:
    """Sessions sorted by (region, content, arrival): a rank that, sorted within an instant,
    lays the online viewers out group by group in arrival order."""
    order = np.lexsort((np.arange(s.k0.size), s.content, s.region))  # arrival order breaks ties
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    reg, con = s.region[order], s.content[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = (reg[1:] != reg[:-1]) | (con[1:] != con[:-1])
    return _Groups(rank, np.cumsum(new), reg, s.up[order])


def _chunk_edges(pairs_per_step: np.ndarray, budget: int) -> np.ndarray:
    """Instant boundaries such that each chunk holds about `budget` pairs (at least one instant)."""
    cum = np.cumsum(pairs_per_step)
    total = float(cum[-1]) if cum.size else 0.0
    cuts = np.searchsorted(cum, np.arange(budget, total, budget), side="right")
    return np.unique(np.concatenate(([0], cuts, [pairs_per_step.size])))


def _vod_chunk(s: Sessions, g: _Groups, a: int, b: int, maxlen: int, r: float, share: float, nreg: int, rates: dict) -> None:
    """Add the server rates of instants [a, b) to `rates`."""
    lo, hi = np.searchsorted(s.k0, [a - maxlen, b])
    k0, k1 = np.maximum(s.k0[lo:hi], a), np.minimum(s.k1[lo:hi], b)
    n = np.maximum(k1 - k0, 0)
    total = int(n.sum())
    if total == 0:
        return
    # one entry per (instant, session) pair, keyed by instant then group rank, then sorted
    first = np.repeat(np.cumsum(n) - n, n)
    k = np.repeat(k0 - a, n) + (np.arange(total) - first)
    m = g.rank.size
    key = k * m + np.repeat(g.rank[lo:hi], n)
    del first, k
    key.sort()
    k, rank = np.divmod(key, m)
    del key
    gid = g.gid[rank]
    cut = (k[1:] != k[:-1]) | (gid[1:] != gid[:-1])
    starts = np.concatenate(([0], np.flatnonzero(cut) + 1))
    del cut, gid
    u = g.up[rank]
    cell = k[starts] * nreg + g.region[rank[starts]]
    size = (b - a) * nreg
    for kind, values in (
        ("p2p", segment_server_rates(starts, u, r)),
        ("limited", segment_server_rates(starts, share * u, r)),
        ("bound", segment_bounds(starts, u, r)),
    ):
        rates[kind][a:b] += np.bincount(cell, values, minlength=size).reshape(b - a, nreg)


# -- what is reported ----------------------------------------------------------------------
def five_minute_means(x: np.ndarray, step: float) -> np.ndarray:
    """Means over consecutive 5-minute bins (axis 0 is time; its length a whole number of bins)."""
    per = round(BIN_S / step)
    return x.reshape(x.shape[0] // per, per, *x.shape[1:]).mean(axis=1)


def p95(x: np.ndarray) -> float:
    """95th percentile (numpy's linear interpolation between order statistics)."""
    return float(np.percentile(x, PERCENTILE)) if x.size else 0.0


def figures(rates: dict[str, np.ndarray], step: float) -> dict[str, float]:
    """95th percentiles of 5-minute means in Mbit/s, the mean loads, and the savings against pure CDN."""
    out: dict[str, float] = {}
    for kind in RATE_SERIES:
        bins = five_minute_means(rates[kind], step) / 1000.0
        out[f"{kind}_mbps"] = p95(bins)
        out[f"{kind}_mean_mbps"] = float(bins.mean()) if bins.size else 0.0
    cdn = out["cdn_mbps"]
    for kind, name in (("p2p", "savings"), ("limited", "limited_savings"), ("bound", "bound_savings")):
        out[name] = 1.0 - out[f"{kind}_mbps"] / cdn if cdn > 0 else 0.0
    return out


def summary(series: Series) -> dict:
    """Figures per region and for the total, which is the sum of the regions' series (the bill of
    one CDN), so its percentile is not the sum of the regions' percentiles."""
    regions = {name: figures({k: v[:, i] for k, v in series.rates.items()}, series.step) for i, name in enumerate(series.regions)}
    total: dict[str, object] = {**figures({k: v.sum(axis=1) for k, v in series.rates.items()}, series.step)}
    total["sum_of_region_p95_mbps"] = {k: sum(x[f"{k}_mbps"] for x in regions.values()) for k in RATE_SERIES}
    return {"total": total, "regions": regions}
