"""Viewing sessions for the simulator: synthetic workloads or a CSV trace, as numpy columns.

The simulator works on whole columns (a month holds millions of sessions), so a
trace is a handful of arrays rather than a list of objects.  A session is one
client watching one video (VoD) or fetching one update: it starts at `start`
and stays for `duration` seconds in one region.  Rates are kbit/s, as in the
tier tables of seed 001.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeswarm.errors import EdgeswarmError
from edgeswarm.protocol.units import ascii_decimal
from edgeswarm.sim import tiers as tiermod

DAY = 86400.0

# Figure 4(a) of seed 001: the seven Akamai locations inside AT&T, by state code.
ATT_CITIES = ("IN", "NY", "UT", "NC", "MO", "TX", "VA")
# Figure 4(b): the ten Limelight locations (peering with both ISPs).
LIMELIGHT_CITIES = ("GA", "IL", "DC", "TX", "CA-LA", "FL", "NY", "AZ", "CA-SJ", "WA")
REGION_SETS = {"att7": ATT_CITIES, "limelight10": LIMELIGHT_CITIES}


class TraceError(EdgeswarmError, ValueError):
    """A trace or workload that cannot be simulated; the message says what and where."""


@dataclass
class Trace:
    """Sessions as parallel columns.  NaN in a rate column means unknown: filled from a tier table."""

    start: np.ndarray  # s, float64
    duration: np.ndarray  # s, float64, >= 0
    client: np.ndarray  # int64 client index
    region: np.ndarray  # int64 index into `regions`
    content: np.ndarray  # int64 content index
    up_kbps: np.ndarray  # float64, NaN where unknown
    down_kbps: np.ndarray  # float64, NaN where unknown
    rate_kbps: np.ndarray  # float64 demand rate of an update session, NaN where unknown
    regions: tuple[str, ...]
    span_s: float | None = None  # the workload's length when known (synthetic: --days)
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def end(self) -> np.ndarray:
        return self.start + self.duration


# -- synthetic workloads ------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """What a synthetic trace looks like.  Defaults are the simulator's (see docs/simulator.md)."""

    viewers: int = 100_000  # sessions
    clients: int | None = None  # distinct clients the sessions belong to (default: one each)
    days: float = 7.0
    diurnal: float = 0.5  # amplitude of the daily cycle, 0 (flat) .. 1 (silent at the trough)
    peak_hour: float = 21.0  # when arrivals peak, hours after midnight
    videos: int = 2000
    popularity: str = "zipf"  # or "stretched"
    zipf: float = 1.0
    stretch: float = 0.35  # stretch factor c of the stretched exponential
    length_s: float = 300.0  # median video length (lognormal)
    length_sigma: float = 0.8
    quit_prob: float = 0.3  # a quitter leaves after a uniform fraction of the video
    life_days: float = 0.0  # mean age of a video at its views (exponential); 0: all videos live all along
    regions: tuple[str, ...] = ("r1", "r2", "r3", "r4")
    region_weights: tuple[float, ...] | None = None
    mode: str = "vod"  # "update": durations follow each session's download rate
    bitrate_kbps: float = 400.0
    rate_spread: float = 0.0  # update mode: sigma of the lognormal spread of session rates
    seed: int = 1


def popularity(n: int, kind: str, zipf: float, stretch: float) -> np.ndarray:
    """Request probability of each content by rank.

    Zipf: p_i ∝ i^-s.  Stretched exponential (Guo et al., PODC 2008): the rank
    plot is straight in y^c against log i, y_i^c = b - a·log i; with y_1 = 1 and
    the curve reaching zero just past the last rank, p_i ∝ (1 - ln i / ln(n+1))^(1/c).
    """
    rank = np.arange(1, n + 1, dtype=float)
    if kind == "zipf":
        w = rank**-zipf
    elif kind == "stretched":
        w = (1.0 - np.log(rank) / math.log(n + 1)) ** (1.0 / stretch)
    else:
        raise TraceError(f"unknown popularity {kind!r}: zipf or stretched")
    return w / w.sum()


def diurnal_arrivals(n: int, days: float, amplitude: float, peak_hour: float, rng: np.random.Generator) -> np.ndarray:
    """n sorted arrival times of a Poisson process with intensity ∝ 1 + a·cos(2π(t - peak)/day).

    Given its count, a Poisson process's points are independent with density ∝
    its intensity, so they are drawn by inverting the integrated intensity,
    which is known in closed form and monotone for a <= 1.
    """
    span = days * DAY
    grid = np.linspace(0.0, span, max(2, int(span / 60) + 1))  # minute resolution
    w = 2 * math.pi / DAY
    phase = peak_hour * 3600.0
    cum = grid + amplitude / w * (np.sin(w * (grid - phase)) + math.sin(w * phase))
    return np.sort(np.interp(rng.random(n) * cum[-1], cum, grid))


def _aging_views(w: Workload, p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Views of videos that come out over time and fade: video v is released at a uniform time
    (from well before the start, so the month opens in a steady state) and each of its views comes
    an exponential time after, of mean `life_days`.  Views are drawn until n fall inside the span
    and survive thinning by the daily cycle, so arrivals stay a Poisson process with a diurnal
    intensity while each video's views bunch together, as news and new episodes do."""
    span, tau = w.days * DAY, w.life_days * DAY
    release = rng.uniform(-5 * tau, span, size=w.videos)
    start, content = np.empty(w.viewers), np.empty(w.viewers, dtype=np.int64)
    filled = 0
    while filled < w.viewers:  # in batches: the draws are independent, so order does not matter
        m = min(1 << 20, max(1024, 3 * (w.viewers - filled)))
        c = rng.choice(w.videos, size=m, p=p)
        t = release[c] + rng.exponential(tau, size=m)
        ok = (t >= 0) & (t < span) & (rng.random(m) * (1 + w.diurnal) < _intensity(t, w.diurnal, w.peak_hour))
        k = min(int(ok.sum()), w.viewers - filled)
        start[filled : filled + k], content[filled : filled + k] = t[ok][:k], c[ok][:k]
        filled += k
    order = np.argsort(start)
    return start[order], content[order]


def _intensity(t: np.ndarray, amplitude: float, peak_hour: float) -> np.ndarray:
    return 1 + amplitude * np.cos(2 * math.pi * (t - peak_hour * 3600.0) / DAY)


def synthetic(w: Workload, tiers: tuple[tiermod.Tier, ...]) -> Trace:
    """A workload drawn from `w`; upload and download rates per client from `tiers`.

    Each ingredient has its own random stream, so changing one option (say the number of
    viewers) leaves the others' draws alone: the videos keep their lengths and release times,
    and two runs differ only by what was changed.
    """
    _check_workload(w)
    rng = dict(zip(("time", "length", "quit", "region", "client", "tier", "rate"), _streams(w.seed, 7), strict=True))
    n = w.viewers
    p = popularity(w.videos, w.popularity, w.zipf, w.stretch)
    if w.life_days > 0:
        start, content = _aging_views(w, p, rng["time"])
    else:
        start = diurnal_arrivals(n, w.days, w.diurnal, w.peak_hour, rng["time"])
        content = rng["time"].choice(w.videos, size=n, p=p)
    length = w.length_s * np.exp(w.length_sigma * rng["length"].standard_normal(w.videos))
    watched = np.where(rng["quit"].random(n) < w.quit_prob, rng["quit"].random(n), 1.0)
    n_clients = w.clients or n
    client = rng["client"].permutation(n) if n_clients == n else rng["client"].integers(0, n_clients, size=n)
    # a client lives in one region and keeps its access link in every session
    weights = np.asarray(w.region_weights or [1.0] * len(w.regions), dtype=float)
    region = rng["region"].choice(len(w.regions), size=n_clients, p=weights / weights.sum())[client]
    down, up = tiermod.sample(tiers, n_clients, rng["tier"])
    down, up = down[client], up[client]
    duration = length[content] * watched
    rate = np.full(n, np.nan)
    if w.mode == "update":
        # An update has a size (its length at the nominal rate); each session fetches at
        # its own rate, so slow sessions stay longer and every session moves the same bytes.
        rate = np.minimum(down, w.bitrate_kbps * _unit_lognormal(w.rate_spread, n, rng["rate"]))
        duration = duration * w.bitrate_kbps / rate
    info = {"source": "synthetic", "contents": w.videos, "clients": n_clients}
    return Trace(start, duration, client, region, content, up, down, rate, tuple(w.regions), w.days * DAY, info)


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _unit_lognormal(sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal factors of mean 1 (all ones when sigma is 0), at least 1/10: a session crawling
    at a thousandth of the rate would stay online for weeks."""
    if sigma <= 0:
        return np.ones(n)
    return np.maximum(0.1, np.exp(sigma * rng.standard_normal(n) - sigma**2 / 2))


def _check_workload(w: Workload) -> None:
    checks = [
        (w.viewers >= 1, "--viewers must be at least 1"),
        (w.clients is None or w.clients >= 1, "--clients must be at least 1"),
        (w.days > 0, "--days must be positive"),
        (0 <= w.diurnal <= 1, "--diurnal must be between 0 and 1"),
        (w.videos >= 1, "--videos must be at least 1"),
        (w.zipf >= 0, "--zipf must be ≥ 0"),
        (w.stretch > 0, "--stretch must be positive"),
        (w.length_s > 0 and w.length_sigma >= 0, "--length must be positive and --length-sigma ≥ 0"),
        (0 <= w.quit_prob <= 1, "--quit-prob must be between 0 and 1"),
        (w.life_days >= 0, "--video-life must be ≥ 0"),
        (len(w.regions) >= 1, "at least one region"),
        (w.region_weights is None or len(w.region_weights) == len(w.regions), "one --region-weights entry per region"),
        (w.region_weights is None or (min(w.region_weights) >= 0 < sum(w.region_weights)), "region weights must be ≥ 0, not all 0"),
        (w.bitrate_kbps > 0, "--bitrate must be positive"),
        (w.rate_spread >= 0, "--rate-spread must be ≥ 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise TraceError(message)


def region_names(spec: str) -> tuple[str, ...]:
    """`4` → r1..r4; `att7` / `limelight10` → seed 001's city codes; `a,b,c` → those names."""
    spec = spec.strip()
    count = ascii_decimal(spec)
    if count is not None:
        if count < 1:
            raise TraceError("--regions must be at least 1")
        return tuple(f"r{i}" for i in range(1, count + 1))
    if spec.lower() in REGION_SETS:
        return REGION_SETS[spec.lower()]
    names = tuple(x.strip() for x in spec.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise TraceError(f"--regions {spec!r}: expected a count, att7, limelight10, or distinct comma-separated names")
    return names


# -- CSV traces ---------------------------------------------------------------------------
COLUMNS = {  # canonical name: accepted header spellings
    "time": ("time", "start", "t"),
    "client": ("client", "client_id", "user"),
    "region": ("region",),
    "content": ("content", "video", "object"),
    "duration": ("duration", "duration_s"),
    "upload": ("upload", "up", "upload_kbps", "up_kbps"),
    "download": ("download", "down", "download_kbps", "down_kbps"),
    "rate": ("rate", "rate_kbps"),
}
REQUIRED = ("time", "client", "region", "content", "duration")


def read_csv(path: Path) -> Trace:
    """A trace file: a header naming time, client, region, content, duration (seconds) and
    optionally upload, download and rate (kbit/s; empty cells mean unknown), then one row a session.
    Region, client and content may be any strings."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except csv.Error as exc:
        raise TraceError(f"{path}: not a CSV file ({exc})") from None
    if not rows:
        raise TraceError(f"{path}: empty file (expected a header: {', '.join(REQUIRED)}[, upload])")
    header = rows[0][1]
    where = _header(path, header)
    if len(rows) == 1:
        raise TraceError(f"{path}: no sessions after the header")
    lines = [n for n, _ in rows[1:]]
    body = [r for _, r in rows[1:]]
    for n, r in zip(lines, body, strict=True):
        if len(r) < len(header):
            raise TraceError(f"{path}:{n}: {len(r)} fields, the header has {len(header)}")
    return _columns(body, where, lambda i: f"{path}:{lines[i]}", str(path))


def _header(path: Path, header: list[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    where = {}
    for canon, spellings in COLUMNS.items():
        found = [i for i, h in enumerate(names) if h in spellings]
        if found:
            where[canon] = found[0]
    missing = [c for c in REQUIRED if c not in where]
    if missing:
        raise TraceError(f"{path}: header lacks {', '.join(missing)} (it has: {', '.join(header)}); needed: {', '.join(REQUIRED)}")
    return where


def _columns(body: list[list[str]], where: dict[str, int], at: Callable[[int], str], source: str) -> Trace:
    """Typed columns; `at(i)` names the file and line of body row i for error messages."""

    def text(name: str) -> list[str]:
        return [r[where[name]].strip() for r in body]

    start = _numbers(at, "time", text("time"), optional=False)
    duration = _numbers(at, "duration", text("duration"), optional=False)
    bad = np.flatnonzero(duration < 0)
    if bad.size:
        raise TraceError(f"{at(bad[0])}: negative duration {duration[bad[0]]:g}")
    rates = {
        c: _numbers(at, c, text(c), optional=True) if c in where else np.full(len(body), np.nan) for c in ("upload", "download", "rate")
    }
    for c, v in rates.items():
        bad = np.flatnonzero(v <= 0)
        if bad.size:
            raise TraceError(f"{at(bad[0])}: {c} must be a positive rate in kbit/s, got {v[bad[0]]:g}")
    regions, region = np.unique(np.array(text("region"), dtype=object), return_inverse=True)
    contents, content = np.unique(np.array(text("content"), dtype=object), return_inverse=True)
    clients, client = np.unique(np.array(text("client"), dtype=object), return_inverse=True)
    info = {"source": source, "contents": len(contents), "clients": len(clients)}
    names = tuple(str(x) for x in regions)
    return Trace(start, duration, client, region, content, rates["upload"], rates["download"], rates["rate"], names, None, info)


def _numbers(at: Callable[[int], str], name: str, cells: list[str], optional: bool) -> np.ndarray:
    """Floats, with the line of the first bad cell in the error; empty cells are NaN when optional."""
    values = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            values[i] = float(cell) if cell or not optional else math.nan
        except ValueError:
            raise TraceError(f"{at(i)}: {name} {cell!r} is not a number") from None
        if (cell or not optional) and not math.isfinite(values[i]):
            raise TraceError(f"{at(i)}: {name} {cell!r} is not a finite number")
    return values


# -- rates --------------------------------------------------------------------------------
def fill_rates(t: Trace, tiers: tuple[tiermod.Tier, ...], bitrate_kbps: float, seed: int) -> Trace:
    """Unknown upload/download rates from the tier table (one draw per client, so a client keeps
    its link in every session), and each session's update demand rate: the trace's `rate` where
    given, else the nominal `bitrate_kbps` capped at the client's download rate."""
    rng = np.random.default_rng([seed, 7])
    n_clients = int(t.client.max()) + 1 if len(t) else 0
    down_c, up_c = tiermod.sample(tiers, n_clients, rng)
    up = _fill(t.up_kbps, up_c, t.client)
    down = _fill(t.down_kbps, down_c, t.client)
    # A known upload without a download says which tier the client is on: its download is that tier's.
    need = np.flatnonzero(np.isnan(t.down_kbps) & ~np.isnan(t.up_kbps))
    if need.size:
        tier_up = np.array([x.up_kbps for x in tiers])
        tier_down = np.array([x.down_kbps for x in tiers])
        down[need] = tier_down[np.abs(t.up_kbps[need, None] - tier_up[None, :]).argmin(axis=1)]
    rate = _fill(t.rate_kbps, np.minimum(bitrate_kbps, down), None)
    return replace(t, up_kbps=up, down_kbps=down, rate_kbps=rate)


def _fill(known: np.ndarray, drawn: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """known where it is a number, else drawn (per client when index is given); no copy when complete."""
    gaps = np.flatnonzero(np.isnan(known))
    if not gaps.size:
        return known
    out = known.copy()
    out[gaps] = drawn[index[gaps]] if index is not None else drawn[gaps]
    return out
