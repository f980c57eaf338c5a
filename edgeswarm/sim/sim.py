"""`edgeswarm sim vod|update`: the edge load of pure CDN against CDN-P2P at the paper's scale.

A trace (synthetic, or a CSV file) goes through edgeswarm.sim.model; the report is
the 95th percentile of 5-minute averages per region and in total, as CDNs bill
and as seed 001 reports (Tables 2 and 4), with plots like its Figures 4 and 5.
This module only parses options and shows results; numpy, matplotlib and rich
are imported when a run starts, so `edgeswarm --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

# What --preset sets; options given on the command line win.  See docs/calibration.md.
PRESETS: dict[str, dict] = {
    # seed 001 §4.1: MSN Video in AT&T, July 2007, seven Akamai regions.  From the paper: tiers,
    # regions, a month, 17 000 videos, 1.25M clients.  Assumed: the video rate, lengths, quits and
    # the daily cycle.  Fitted: the number of views (pure CDN ≈ 459.5 Mbit/s) and how concentrated
    # viewing is (stretch and video life), which the paper does not report.
    "paper-vod": {
        "mode": "vod",
        "tiers": "att",
        "regions": "att7",
        "days": 31.0,
        "videos": 17_000,
        "clients": 1_250_000,
        "viewers": 8_500_000,
        "bitrate": 400.0,
        "popularity": "stretched",
        "stretch": 0.3,
        "video_life": 0.25,
        "length": 240.0,
        "length_sigma": 0.5,
        "quit_prob": 0.6,
        "diurnal": 0.5,
    },
    # seed 001 §4.2: Windows Update in Verizon, mid-August 2007, four Akamai regions.  From the
    # paper: tiers, regions, 2617 updates, 1.57M clients.  Fitted: the demand rate of an online
    # client (CDN-P2P limited ≈ 66 %) and the update sizes (pure CDN ≈ 166.7 Mbit/s).
    "paper-update": {
        "mode": "update",
        "tiers": "verizon",
        "regions": "4",
        "days": 2.0,
        "videos": 2617,
        "clients": 1_570_000,
        "viewers": 1_570_000,
        "bitrate": 280.0,
        "zipf": 1.0,
        "length": 47.0,
        "length_sigma": 0.5,
        "quit_prob": 0.0,
        "diurnal": 0.2,
    },
}

DEFAULTS: dict = {
    "viewers": 100_000,
    "clients": None,
    "days": 7.0,
    "diurnal": 0.5,
    "peak_hour": 21.0,
    "videos": 2000,
    "popularity": "zipf",
    "zipf": 1.0,
    "stretch": 0.35,
    "length": 300.0,
    "length_sigma": 0.8,
    "quit_prob": 0.3,
    "video_life": 0.0,
    "regions": "4",
    "region_weights": None,
    "tiers": None,  # att for vod, verizon for update
    "bitrate": 400.0,
    "rate_spread": 0.0,
    "limited_share": 1 / 3,
    "step": 10.0,
    "chunk_pairs": 500_000,
    "seed": 1,
}

EPILOG = """\
examples:
  edgeswarm sim vod                                    # a week, 100 000 viewers, 4 regions
  edgeswarm sim vod --viewers 1000000 --days 30 --json month.json
  edgeswarm sim vod --preset paper-vod --json vod.json # seed 001 §4.1 scale (Table 2)
  edgeswarm sim update --preset paper-update           # seed 001 §4.2 scale (Table 4)
  edgeswarm sim vod --trace views.csv --bitrate 500

trace CSV: a header naming time, client, region, content, duration (seconds),
optionally upload, download (kbit/s) and rate (an update session's demand,
kbit/s); then one row per session.  Region, client and content may be any
strings.  Rates not in the file come from --tiers (one draw per client).

presets (options given explicitly win; docs/calibration.md says why these values):
  paper-vod     vod, att tiers, regions att7, 31 days, 17000 videos, 1.25M clients, 8.5M views,
                400 kbit/s, stretched popularity (stretch 0.3), video life 0.25 days,
                length 240 s (sigma 0.5), quit 0.6, diurnal 0.5
  paper-update  update, verizon tiers, 4 regions, 2 days, 2617 updates, 1.57M clients and
                sessions, 280 kbit/s, zipf 1.0, length 47 s (sigma 0.5), no quits, diurnal 0.2
"""


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _weights(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError("weights must be ≥ 0 and not all 0")
    return values


def add_parser(sub) -> None:
    """The `sim` subcommand's options (every one says its default)."""
    p = sub.add_parser(
        "sim",
        help="simulate a month of VoD or a software update at paper scale: edge load of pure CDN vs CDN-P2P",
        description="Compute, per region and in total, the edge servers' load over time for pure CDN, CDN-P2P "
        "(a viewer serves only the video it watches, no prefetching), CDN-P2P with a third of the upload, and the "
        "lower bound; report 95th percentiles of 5-minute averages and the savings (seed 001, Tables 2 and 4), "
        "with a table, JSON and plots like Figures 4 and 5.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DEFAULTS
    p.add_argument("mode", choices=["vod", "update"], help="vod: deadline, peers share what they watch; update: no deadline, pooled")
    p.add_argument("--trace", type=Path, metavar="CSV", help="sessions from this file instead of a synthetic workload")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a calibration workload of seed 001 (see below; default none)")
    w = p.add_argument_group("synthetic workload (ignored with --trace)")
    w.add_argument("--viewers", type=_positive(int), metavar="N", help=f"sessions, one video each (default {d['viewers']})")
    w.add_argument(
        "--clients", type=_positive(int), metavar="N", help="distinct clients the sessions are spread over (default: one per session)"
    )
    w.add_argument("--days", type=_positive(float), metavar="D", help=f"length of the workload in days (default {d['days']:g})")
    w.add_argument(
        "--diurnal",
        type=_fraction,
        metavar="A",
        help=f"daily cycle of arrivals, 0 flat .. 1 silent 12 h after the peak (default {d['diurnal']})",
    )
    w.add_argument("--peak-hour", type=float, metavar="H", help=f"hour of peak arrivals (default {d['peak_hour']:g})")
    w.add_argument("--videos", type=_positive(int), metavar="N", help=f"videos (or updates) to choose from (default {d['videos']})")
    w.add_argument("--popularity", choices=["zipf", "stretched"], help="zipf: p_i ∝ i^-S; stretched: stretched exponential (default zipf)")
    w.add_argument("--zipf", type=float, metavar="S", help=f"Zipf exponent (default {d['zipf']})")
    w.add_argument(
        "--stretch", type=_positive(float), metavar="C", help=f"stretch factor of the stretched exponential (default {d['stretch']})"
    )
    w.add_argument(
        "--length",
        type=_positive(float),
        metavar="SECONDS",
        help=f"median video length, lognormal over videos; update mode: an update's size in seconds at --bitrate (default {d['length']:g})",
    )
    w.add_argument("--length-sigma", type=float, metavar="SIGMA", help=f"sigma of log video length (default {d['length_sigma']})")
    w.add_argument(
        "--quit-prob", type=_fraction, metavar="P", help=f"share of viewers who quit after a uniform fraction (default {d['quit_prob']})"
    )
    w.add_argument(
        "--video-life",
        type=float,
        metavar="DAYS",
        help="videos come out over time and a view comes an exponential time of this mean after its video's release; "
        "0: every video is as popular all along (default 0)",
    )
    w.add_argument("--regions", metavar="SPEC", help="N (r1..rN), att7, limelight10, or NAME,NAME,... (default 4)")
    w.add_argument("--region-weights", type=_weights, metavar="W,W,...", help="share of sessions per region (default equal)")
    w.add_argument(
        "--rate-spread", type=float, metavar="SIGMA", help="update mode: lognormal sigma of session rates around --bitrate (default 0)"
    )
    w.add_argument("--seed", type=int, metavar="N", help=f"random seed (default {d['seed']})")
    m = p.add_argument_group("model")
    m.add_argument(
        "--tiers",
        choices=["att", "verizon"],
        help="upload/download tiers for rates a trace lacks (default att for vod, verizon for update)",
    )
    m.add_argument(
        "--bitrate",
        type=_positive(float),
        metavar="KBITPS",
        help=f"video rate r; update mode: each session's demand, capped at its download rate (default {d['bitrate']:g})",
    )
    m.add_argument("--limited-share", type=_fraction, metavar="F", help="share of upload peers give in the limited case (default 1/3)")
    m.add_argument("--step", type=_positive(float), metavar="SECONDS", help=f"sampling step, must divide 300 (default {d['step']:g})")
    m.add_argument(
        "--chunk-pairs",
        type=_positive(int),
        metavar="N",
        help=f"(instant, session) pairs held at once: memory bound (default {d['chunk_pairs']})",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, metavar="FILE", help="write every figure, the parameters, time and memory here")
    o.add_argument("--plots", type=Path, metavar="DIR", help="PNG plots here (default sim-plots beside the JSON, else ./sim-plots)")
    o.add_argument("--no-plots", action="store_true", help="skip the plots")


def resolve(args: argparse.Namespace) -> dict:
    """Each option from the command line, else the preset, else the default."""
    preset = PRESETS.get(args.preset or "", {})
    if preset and preset["mode"] != args.mode:
        raise ValueError(f"preset {args.preset} is for `sim {preset['mode']}`")
    out = {}
    for name, default in DEFAULTS.items():
        given = getattr(args, name, None)
        out[name] = given if given is not None else preset.get(name, default)
    out["tiers"] = out["tiers"] or ("att" if args.mode == "vod" else "verizon")
    out["mode"] = args.mode
    return out


def run(args: argparse.Namespace) -> int:
    """Build the trace, compute the series, report.  Bad input: a message and exit 2."""
    from rich.console import Console

    from edgeswarm.sim.trace import TraceError

    err = Console(stderr=True)
    began = time.monotonic()
    try:
        params = resolve(args)
        params["preset"] = args.preset
        result = simulate(args.mode, params, args.trace, err)
    except (TraceError, ValueError) as exc:
        print(f"edgeswarm sim: {exc}", file=sys.stderr)
        return 2
    result["plots"] = [str(x) for x in _plots(args, result)]
    result["elapsed_s"] = round(time.monotonic() - began, 2)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    from edgeswarm.measure import labreport
    from edgeswarm.sim import simreport

    simreport.table(labreport.report_console(), result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"json: {args.json}")
    return 0


def _plots(args: argparse.Namespace, result: dict) -> list[Path]:
    if args.no_plots:
        return []
    from edgeswarm.sim import simreport

    out = args.plots or (args.json.parent / "sim-plots" if args.json else Path("sim-plots"))
    return simreport.plot(result, out)


def simulate(mode: str, p: dict, trace_path: Path | None, err) -> dict:
    """The run itself: trace, rates, model, figures (as a JSON-ready dict)."""
    from edgeswarm.sim import model, simreport, tiers
    from edgeswarm.sim import trace as tr

    table = tiers.table(p["tiers"])
    with simreport.Progress(err) as progress:
        progress.phase("reading trace" if trace_path else "drawing the workload")
        t = tr.read_csv(trace_path) if trace_path else tr.synthetic(_workload(mode, p), table)
        t = tr.fill_rates(t, table, p["bitrate"], p["seed"])
        progress.phase("sampling sessions")
        s = model.sessions(t.start, t.duration, t.region, t.content, t.up_kbps, t.rate_kbps, p["step"], t.span_s)
        described, regions = _describe(t, s, p["step"]), t.regions
        del t  # the model needs only the sessions from here: memory for the chunks
        progress.phase("computing loads")
        if mode == "vod":
            series = model.vod_series(s, regions, p["bitrate"], p["limited_share"], p["step"], p["chunk_pairs"], progress.update)
        else:
            series = model.update_series(s, regions, p["limited_share"], p["step"])
    figures = model.summary(series)
    return {
        "mode": mode,
        "parameters": {**p, "trace": str(trace_path) if trace_path else None},
        "trace": described,
        **figures,
        "series": simreport.series_json(series),
    }


def _workload(mode: str, p: dict):
    from edgeswarm.sim import trace as tr

    return tr.Workload(
        viewers=p["viewers"],
        clients=p["clients"],
        days=p["days"],
        diurnal=p["diurnal"],
        peak_hour=p["peak_hour"],
        videos=p["videos"],
        popularity=p["popularity"],
        zipf=p["zipf"],
        stretch=p["stretch"],
        length_s=p["length"],
        length_sigma=p["length_sigma"],
        quit_prob=p["quit_prob"],
        life_days=p["video_life"],
        regions=tr.region_names(str(p["regions"])),
        region_weights=p["region_weights"],
        mode=mode,
        bitrate_kbps=p["bitrate"],
        rate_spread=p["rate_spread"],
        seed=p["seed"],
    )


def _describe(t, s, step: float) -> dict:
    """What the trace held: enough to tell two runs apart and to check the scale."""
    import numpy as np

    per_region = np.bincount(t.region, minlength=len(t.regions))
    return {
        **t.info,
        "sessions": len(t),
        "regions": {name: int(n) for name, n in zip(t.regions, per_region, strict=True)},
        "t0_s": s.t0,
        "span_s": s.steps * step,
        "mean_duration_s": float(t.duration.mean()),
        "mean_up_kbps": float(t.up_kbps.mean()),
        "mean_rate_kbps": float(t.rate_kbps.mean()),
        "session_instants": int((s.k1 - s.k0).clip(0).sum()),
    }
