"""What `edgeswarm sim` shows: progress while it works, the table, and plots like seed 001's.

Figure 4 of the paper is a bar per region, pure CDN against CDN-P2P; Figure 5
is the load over time and the CDF of 5-minute loads with the 95th percentile
marked.  Both are drawn for either mode: VoD over a month and an update over
two days read the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from edgeswarm.sim.model import RATE_SERIES, Series, five_minute_means

PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
LABELS = {"cdn": "pure CDN", "p2p": "CDN-P2P", "limited": "CDN-P2P (lmt.)", "bound": "lower bound"}
COLORS = {"cdn": "#1f4e9c", "p2p": "#d62728", "limited": "#ff9f40", "bound": "#7f7f7f"}


class Progress:
    """A bar over the sampled instants on a terminal; otherwise a plain line every few seconds."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: RichProgress | None = None
        self._task = TaskID(0)  # the bar's, once there is one
        self._last = 0.0

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn())
            self.bar = RichProgress(*columns, console=self.console, transient=True)
            self.bar.__enter__()
            self._task = self.bar.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def phase(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self._task, description=text)
        else:
            self.console.print(f"sim: {text}", highlight=False)

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self._task, completed=done, total=total)
        elif time.monotonic() - self._last >= PLAIN_EVERY or done == total:
            self._last = time.monotonic()
            self.console.print(f"sim: {done / total:.0%} of the time computed", highlight=False)


def table(console: Console, r: dict) -> None:
    """Per region and in total: 95th percentiles of 5-minute averages, and the savings."""
    t = Table(title=f"edgeswarm sim {r['mode']}: edge load, 95th percentile of 5-minute averages (Mbit/s)")
    for name in ("region", "sessions", "pure CDN", "CDN-P2P", "CDN-P2P (lmt.)", "bound", "savings", "lmt. savings", "bound savings"):
        t.add_column(name, justify="left" if name == "region" else "right")
    sessions = r["trace"]["regions"]
    for name, x in r["regions"].items():
        t.add_row(name, f"{sessions[name]:,}", *_cells(x))
    t.add_section()
    t.add_row("total", f"{r['trace']['sessions']:,}", *_cells(r["total"]), style="bold")
    console.print(t)
    console.print(
        f"total = percentile of the summed series; sum of the regions' percentiles: "
        f"pure CDN {r['total']['sum_of_region_p95_mbps']['cdn']:.1f}, CDN-P2P {r['total']['sum_of_region_p95_mbps']['p2p']:.1f} Mbit/s",
        highlight=False,
    )
    console.print(f"{r['elapsed_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", highlight=False)
    if r.get("plots"):
        console.print(f"plots: {Path(r['plots'][0]).parent}", highlight=False)


def _cells(x: dict) -> list[str]:
    return [
        *(f"{x[f'{k}_mbps']:.1f}" for k in RATE_SERIES),
        f"{x['savings']:.1%}",
        f"{x['limited_savings']:.1%}",
        f"{x['bound_savings']:.1%}",
    ]


def series_json(series: Series) -> dict:
    """The total's 5-minute means (Mbit/s), the data behind the time and CDF plots."""
    means = {k: five_minute_means(v.sum(axis=1), series.step) / 1000.0 for k, v in series.rates.items()}
    n = len(means["cdn"])
    return {
        "bin_s": 300,
        "t0_s": series.t0,
        "total_mbps": {k: np.round(v, 3).tolist() for k, v in means.items()},
        "bins": n,
    }


# -- plots --------------------------------------------------------------------------------
def plot(r: dict, out: Path) -> list[Path]:
    """regions.png (Figure 4), load.png (Figure 5a), cdf.png (Figure 5b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("regions", _bars), ("load", _load), ("cdf", _cdf)):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        draw(ax, r)
        fig.tight_layout()
        path = out / f"{r['mode']}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _kinds(r: dict) -> tuple[str, ...]:
    """The bound is the full CDN-P2P figure in update mode: not drawn twice."""
    return RATE_SERIES if r["mode"] == "vod" else ("cdn", "limited", "p2p")


def _bars(ax, r: dict) -> None:
    names = list(r["regions"])
    kinds = _kinds(r)
    width = 0.8 / len(kinds)
    x = np.arange(len(names))
    for i, k in enumerate(kinds):
        ax.bar(
            x + (i - (len(kinds) - 1) / 2) * width, [r["regions"][n][f"{k}_mbps"] for n in names], width, label=LABELS[k], color=COLORS[k]
        )
    ax.set_xticks(x, names)
    ax.set_ylabel("edge server load (Mbit/s)")
    ax.set_title(f"{r['mode']}: 95th percentile of 5-minute averages per region (cf. seed 001 Fig. 4)")
    top = max((r["regions"][n]["cdn_mbps"] for n in names), default=0)
    ax.set_ylim(0, 1.25 * top or 1)  # room for the legend above the bars
    ax.legend(ncols=len(kinds), loc="upper center", fontsize="small")


def _load(ax, r: dict) -> None:
    s = r["series"]
    hours = (s["t0_s"] + 300 * np.arange(s["bins"])) / 3600.0
    days = hours[-1] - hours[0] > 72 if len(hours) else False
    x = hours / 24 if days else hours
    for k in _kinds(r):
        ax.plot(x, s["total_mbps"][k], label=LABELS[k], color=COLORS[k], linewidth=0.7 if days else 1.0)
    ax.set_xlabel("days" if days else "hours")
    ax.set_ylabel("edge server load (Mbit/s)")
    ax.set_title(f"{r['mode']}: total load, 5-minute averages (cf. seed 001 Fig. 5a)")
    ax.set_ylim(bottom=0)
    ax.legend()


def _cdf(ax, r: dict) -> None:
    s = r["series"]
    for k in _kinds(r):
        v = np.sort(np.asarray(s["total_mbps"][k]))
        if v.size:
            ax.plot(v, 100 * np.arange(1, v.size + 1) / v.size, label=LABELS[k], color=COLORS[k])
        ax.axvline(r["total"][f"{k}_mbps"], color=COLORS[k], linestyle=":", linewidth=1)
    ax.axhline(95, color="#555", linestyle="--", linewidth=0.8, label="95th percentile")
    ax.set_xlabel("edge server load, 5-minute averages (Mbit/s)")
    ax.set_ylabel("CDF (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_title(f"{r['mode']}: CDF of the total load (cf. seed 001 Fig. 5b)")
    ax.legend(loc="lower right")
