"""Closing the loop: the simulator's model run on the very sessions a VoD lab run played.

The lab knows, for each viewer, when playback started, how long it watched,
its region, its video and its upload tier.  Fed to the model of Huang, Li and
Ross (``model.vod_series``), that gives what the edges *should* have sent with
no-prefetch P2P, and the bound no scheme can beat; the lab measured what they
*did* send.  Both are compared as savings against the pure-CDN load of the
same sessions (the model's n·r against the bytes the players read), so the
rate scale drops out.

The model plays the edge's startup rule too (picker.py, "Startup"): a viewer
who arrives once another viewer of its video in its region is playing, or
has played (``_late``), takes its first ``STARTUP_BYTES`` from the edge, so
the model's edge sends those bytes and its fluid serves the rest of that view.  The plain fluid
model's savings (``fluid_savings``) are reported beside it.

Tolerance: the lab's savings must be within ``TOLERANCE`` (0.10, absolute:
issue 10's target, where it was 0.15) of the model's no-prefetch savings, and
must not beat the bound.  Why any: the model moves bits as a fluid at exactly
r, the lab moves 256 KiB pieces and its players buffer.  Three effects push the lab's edge load up - the
first viewer's startup burst (2 s of video, fetched faster than r), the read-ahead a
quitter never plays (up to 16 pieces), the edge's half-second patience before
it covers a busy holder - and two push it down: read-ahead lets a viewer hold
pieces sooner than the fluid model says, so it serves later arrivals more,
and (unless ``leave_after_watch``) a viewer's daemon keeps serving after it
stops watching.  Each is worth a few per cent of a 6-20 s session's bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeswarm.policy.engine import STARTUP_BYTES
from edgeswarm.sim import model

TOLERANCE = 0.10
STEP = 0.25  # seconds; divides the model's 5-minute bin


def compare(result: dict) -> dict | None:
    """Model figures for a VoD lab result, beside the lab's; None for other kinds."""
    s = result["scenario"]
    views = [u for u in result["users"] if u.get("startup_s") is not None]
    if s["kind"] != "vod" or not views:
        return None
    regions = tuple(result["regions"])
    videos = sorted({u["video"] for u in views})
    r = s["vod"]["bitrate_kbps"]
    region = np.array([regions.index(u["region"]) for u in views])
    content = np.array([videos.index(u["video"]) for u in views])
    up = np.array([u["up_kbps"] for u in views])
    watch = np.array([u["watch_s"] for u in views], dtype=float)
    start = np.array([u["arrival_s"] + u["startup_s"] for u in views])
    # a late viewer's first STARTUP_BYTES come from the edge: its fluid session starts that much video later
    window_s = STARTUP_BYTES * 8 / 1000 / (r * s.get("rate_scale", 1))
    head = np.where(_late(views), np.minimum(window_s, watch), 0.0)

    def kbits_of(shift: np.ndarray) -> dict[str, np.ndarray]:
        sessions = model.sessions(
            start=start + shift,
            duration=watch - shift,
            region=region,
            content=content,
            up=up,
            rate=np.full(len(views), r),
            step=STEP,
        )
        series = model.vod_series(sessions, regions, r, 1 / 3, STEP)
        return {kind: series.rates[kind].sum(axis=0) * STEP for kind in model.RATE_SERIES}  # per region, kbit at 2007 rates

    fluid = kbits_of(np.zeros(len(views)))
    kbits = kbits_of(head)
    kbits["p2p"] = kbits["p2p"] + np.bincount(region, head * r, minlength=len(regions))  # and the startups the edge sends
    kbits["cdn"], kbits["bound"] = fluid["cdn"], fluid["bound"]  # the same demand; no scheme beats the bound
    kbits["fluid"] = fluid["p2p"]
    out: dict[str, Any] = {"tolerance": TOLERANCE, "startup_window_s": round(window_s, 3), "regions": {}}
    for i, name in enumerate(regions):
        out["regions"][name] = _row(kbits, i, result["regions"][name]["savings"])
    total = {kind: np.array([v.sum()]) for kind, v in kbits.items()}
    out["total"] = _row(total, 0, result["savings"])
    return out


def _late(views: list[dict]) -> list[bool]:
    """Whether each view arrived once another view of its video in its region was playing or had played: its startup came
    from the edge (by the engine's rule a viewer done watching counts too; a seed the operator placed would not, and the
    lab's VoD has none)."""
    return [
        any(
            o is not u and o["region"] == u["region"] and o["video"] == u["video"] and o["arrival_s"] + o["startup_s"] <= u["arrival_s"]
            for o in views
        )
        for u in views
    ]


def _row(kbits: dict[str, np.ndarray], i: int, lab_savings: float | None) -> dict:
    cdn = float(kbits["cdn"][i])
    model_savings = 1 - float(kbits["p2p"][i]) / cdn if cdn else 0.0
    fluid_savings = 1 - float(kbits["fluid"][i]) / cdn if cdn else 0.0
    bound_savings = 1 - float(kbits["bound"][i]) / cdn if cdn else 0.0
    lab = lab_savings or 0.0
    return {
        "lab_savings": round(lab, 4),
        "model_savings": round(model_savings, 4),
        "fluid_savings": round(fluid_savings, 4),
        "bound_savings": round(bound_savings, 4),
        "difference": round(lab - model_savings, 4),
        "agrees": abs(lab - model_savings) <= TOLERANCE and lab <= bound_savings + 0.02,
    }
