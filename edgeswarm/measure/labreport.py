"""What a lab run shows: a live progress line, the closing table and the plots.

Kept apart from the lab so the demo can print several runs the same way and
so the lab module is only about running things.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from edgeswarm.policy.vocabulary import EDGE, PEER_OTHER_REGION, PEER_SAME_REGION
from edgeswarm.protocol.units import format_bytes

PLAIN_EVERY = 5.0  # seconds between progress lines when stdout is not a terminal


def report_console() -> Console:
    """The console for reports: wide when there is no terminal (a log or CI), so tables keep their columns."""
    console = Console()
    return console if console.is_terminal else Console(width=150)


class Progress:
    """A bar of users done, with the edges' egress; plain lines every few seconds without a terminal."""

    def __init__(self, console: Console, lab):
        self.console, self.lab = console, lab
        self.bar: RichProgress | None = None
        self._last_line = 0.0
        self._task = TaskID(0)  # the bar's, once there is one

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
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
            self.console.print(f"lab {self.lab.s.name}: {text}")

    def update(self, lab) -> None:
        row: dict[str, Any] = lab.timeline[-1] if lab.timeline else {"edges_Bps": {}, "done": 0}
        egress = sum(row["edges_Bps"].values())
        text = f"{lab.s.name}: edges send {format_bytes(egress)}/s"
        if self.bar is not None:
            self.bar.update(self._task, description=text, total=len(lab.users), completed=row["done"])
        elif time.monotonic() - self._last_line >= PLAIN_EVERY:
            self._last_line = time.monotonic()
            self.console.print(f"  {lab.now():5.1f} s  {row['done']}/{len(lab.users)} users done, {text}")


def print_report(console: Console, r: dict) -> None:
    s = r["scenario"]
    b = r["bytes"]
    title = f"lab {s['name']} ({r['network']}): {sum(x['peers'] for x in r['regions'].values())} peers in {len(r['regions'])} regions, {r['elapsed_s']:.0f} s"
    table = Table(title=title)
    for col in ("region", "peers", "from edge", "from peers", "cross-region", "P2P share", "savings", *_extra_columns(s)):
        table.add_column(col, justify="right" if col != "region" else "left")
    for name, x in r["regions"].items():
        rec = x["received"]
        table.add_row(
            name,
            str(x["peers"]),
            format_bytes(rec[EDGE]),
            format_bytes(rec[PEER_SAME_REGION]),
            format_bytes(rec[PEER_OTHER_REGION]),
            _pct(x["p2p_share"]),
            _pct(x["savings"]),
            *_extra_cells(s, r, name),
        )
    console.print(table)
    console.print(
        f"origin sent {format_bytes(b['origin'])}; edges sent {format_bytes(b['edges_total'])}; "
        f"peers got {format_bytes(sum(b['peers_received'].values()))}, {_pct(r['p2p_share'])} from each other; "
        f"{format_bytes(b['crossed_regions'])} crossed regions; the edges sent {_pct(1 - r['savings'] if r['savings'] is not None else None)} "
        f"of the {format_bytes(r['demand_bytes'])} a pure CDN would have: {_pct(r['savings'])} saved"
    )
    pb = r.get("playback")
    if pb:
        console.print(
            f"startup delay: median {pb['startup_median_s']:.2f} s, p95 {pb['startup_p95_s']:.2f} s, worst {pb['startup_max_s']:.2f} s"
            + (
                f" (first bytes: median {pb['first_byte_median_s']:.2f} s, p95 {pb['first_byte_p95_s']:.2f} s)"
                if "first_byte_p95_s" in pb
                else ""
            )
            + "; "
            f"rebuffering {pb['rebuffering']:.2%} of viewing time; {pb['stalls']} stalls in {pb['views']} views"
        )
    if r.get("live"):
        print_live(console, r["live"])
    rl = r.get("relay")
    if rl:
        how = "behind a firewall that drops inbound connections" if rl["firewalled"] else "announced --unreachable (loopback: no firewall)"
        console.print(
            f"relay: {rl['unreachable_peers']} peers {how} sent {format_bytes(rl['uploaded_by_unreachable'])}, "
            f"{_pct(rl['share_of_peer_uploads'])} of what peers sent each other; the edges relayed {format_bytes(rl['edge_relay_bytes'])}, "
            f"{_pct(rl['edge_relay_share_of_egress'])} of their egress"
            + (
                f"; {rl['promoted_peers']} promoted peers relayed {format_bytes(rl['promoted_relay_bytes'])}"
                if rl["promoted_peers"]
                else ""
            )
        )
    an = r.get("announces")
    if an:
        for region, a in an["regions"].items():
            how = (
                f"promotes ({a['promoted_peers']} promoted at most; {a.get('subtrackers_answering', 0)} answered "
                f"{a['subtracker_announces']} announces as sub-trackers; "
                f"{a.get('subtracker_fallbacks', 0)} rounds fell back to the edge)"
                if a["promotes"]
                else "does not promote"
            )
            linger = (
                f", {_rate(a['linger_requests_per_s'])} over the last {an['linger_s']:g} s"
                if a["linger_requests_per_s"] is not None
                else ""
            )
            console.print(
                f"announces at edge {region} ({a['peers']} peers), which {how}: {_rate(a['requests_per_s'])} requests a second "
                f"over the run{linger}; it relayed {format_bytes(a['relay_bytes'])}"
            )
    m = r.get("model")
    if m:
        t = m["total"]
        verdict = "agrees (within" if t["agrees"] else "DISAGREES (beyond"
        console.print(
            f"model of the same sessions (simulator, no prefetch, late viewers' startups from the edge): {_pct(t['model_savings'])} saved "
            f"(the fluid alone {_pct(t['fluid_savings'])}), bound {_pct(t['bound_savings'])}; "
            f"the lab's {_pct(t['lab_savings'])} {verdict} ±{m['tolerance'] * 100:g} points)"
        )
    if r.get("chaos"):
        print_chaos(console, r["chaos"])
    if r.get("steal_pct") is not None:
        console.print(
            f"machine: the hypervisor took {r['steal_pct']:g} % of the CPU during the run (steal: figures of runs with different steal are not comparable)"
        )
    if r.get("plots"):
        console.print(f"plots: {Path(r['plots'][0]).parent}/")


def print_live(console: Console, lv: dict) -> None:
    """A live run's figures (livelab.py) and its targets, met or missed."""
    copies = ", ".join(f"{region} {'-' if c is None else f'{c:.2f}'}" for region, c in lv["edge_copies_per_segment"].items())
    console.print(
        f"live: {lv['segments_published']} segments and {lv.get('parts_published', 0)} parts published, {lv['files_played']} files played "
        f"({lv.get('parts_played', 0)} of them parts; {lv['segments_wrong']} wrong, "
        f"{lv['segments_skipped']} skipped, {lv['segment_failures']} requests failed and retried); edge copies per segment: {copies}; latency behind live p50 {_secs(lv['latency_p50_s'], 2)} "
        f"({_num(lv['latency_p50_segments'])} segments), p95 {_secs(lv['latency_p95_s'], 2)} ({_num(lv['latency_p95_segments'])} segments) "
        f"against the player's own floor (its start choice, instant delivery) p50 {_num(lv.get('latency_floor_p50_segments'))}, p95 {_num(lv.get('latency_floor_p95_segments'))} segments; "
        f"playlists handed out: {lv['playlists_handed']}, age p95 {_secs(lv['playlist_age_p95_s'], 2)}, max {_secs(lv['playlist_age_max_s'], 2)}"
    )
    for name, t in lv["targets"].items():
        console.print(f"  target {name}: {t['target']:g}, measured {_num(t['measured'])}: {'met' if t['met'] else '[red]MISSED[/red]'}")
    for name, error in list(lv["errors"].items())[:6]:
        console.print(f"  [red]{name}[/red] (first failure): {error[:160]}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def print_chaos(console: Console, c: dict) -> None:
    """A chaos run's faults, one row each, and what it delivered through them."""
    table = Table(title="faults")
    for col in (
        "at",
        "fault",
        "target",
        "for",
        "what the attacker did",
        "probes failed",
        "corrupt bytes",
        "recovered after",
        "first failure",
    ):
        table.add_column(col, justify="left" if col in ("fault", "target", "what the attacker did", "first failure") else "right")
    for f in c["faults"]:
        recovered = f"skipped: {f['skipped']}" if f["skipped"] else _secs(f["recover_s"]) if f["recover_s"] is not None else "not recovered"
        p = f["probes"]
        table.add_row(
            f"{f['at']:g} s",
            f["kind"],
            f["target"],
            f"{f['for_s']:g} s",
            _attack(f["details"]),
            f"{p['failed']}/{p['ok'] + p['failed']}",
            str(f["corrupt_bytes"]),
            recovered,
            f["first_error"][:60],
        )
    console.print(table)
    d, lost, rss = c["downloads"], c["data_lost"], c["worst_rss"]
    console.print(
        f"downloads completed {d['completed']}/{d['expected']} (victims' copies intact: "
        f"{sum(v is True for v in d['victims_intact'].values())}/{len(d['victims_intact'])}); corrupt bytes delivered {c['corrupt_bytes']} "
        f"(of {format_bytes(c['checked']['bytes'])} checked in {c['checked']['reads']} reads); "
        f"data lost {lost['copies']} copies; worst RSS {format_bytes(rss['bytes'])} ({rss['node']}); "
        f"crashes {len(c['crashes'])}"
    )
    for failure in c["failures"]:
        console.print(f"[red]chaos: {failure}[/red]")


def _attack(details: dict) -> str:
    """The doubles' own counters (their /status), in a few words."""
    total: dict[str, int] = {}
    for counts in (details.get("doubles") or {}).values():
        for k, v in (counts or {}).items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    refused = sum(v for k, v in total.items() if k.startswith("announce_") and k[9:].isdigit() and k != "announce_200")
    lies = sum(v for k, v in total.items() if k.startswith("lies_"))
    announced = "announce_200" in total or refused
    parts = [
        (total.get("corrupt_pieces_served"), "bad pieces served"),
        (total.get("bloat_bytes_sent") and format_bytes(total["bloat_bytes_sent"]), "of bloat sent"),
        (total.get("bloated_answers_cut"), "bloated answers cut"),
        (lies, "lies told"),
        (total.get("opened"), f"connections opened, {total.get('open', 0)} still open"),
        (total.get("closed_by_target"), "closed by the node"),
        (announced and str(total.get("announce_200", 0)), "announces accepted"),
        (refused, "refused"),
    ]
    return ", ".join(f"{n} {what}" for n, what in parts if n)


def _extra_columns(s: dict) -> tuple[str, ...]:
    return ("done median", "done last", "bound") if s["kind"] == "download" else ("startup median", "startup p95", "rebuffering")


def _extra_cells(s: dict, r: dict, region: str) -> list[str]:
    x = r["regions"][region]
    if s["kind"] == "download":
        return [_secs(x.get("completion_median_s")), _secs(x.get("completion_max_s")), _secs(x.get("bound_s"))]
    pb = x.get("playback")
    if not pb:
        return ["-", "-", "-"]
    return [_secs(pb["startup_median_s"], 2), _secs(pb["startup_p95_s"], 2), f"{pb['rebuffering']:.2%}"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _secs(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f} s"


# -- plots ---------------------------------------------------------------------------------
def plot(r: dict, out: Path) -> list[Path]:
    """PNG files: bytes by source, P2P share per region, edge egress over time, and per kind
    the completion CDF against the bound or startup delay and rebuffering per viewer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    name = r["scenario"]["name"]
    paths = []
    for title, draw in _figures(r):
        fig, ax = plt.subplots(figsize=(7, 4))
        draw(ax)
        ax.set_title(f"{name}: {title}")
        fig.tight_layout()
        path = out / f"{name}-{title.split(' ')[0].lower().replace('/', '-')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _figures(r: dict):
    yield "bytes by source", lambda ax: _bytes(ax, r)
    yield "P2P-share per region", lambda ax: _share(ax, r)
    yield "egress of edges over time", lambda ax: _timeline(ax, r)
    if r["scenario"]["kind"] == "download":
        yield "completion CDF", lambda ax: _cdf(ax, r)
    else:
        yield "startup delay per viewer", lambda ax: _startup(ax, r)
        yield "rebuffering ratio per viewer", lambda ax: _rebuffer(ax, r)


def _bytes(ax, r: dict) -> None:
    b = r["bytes"]
    labels = ["origin", "edges", "peers (same region)", "peers (other region)"]
    values = [b["origin"], b["edges_total"], b["peers_received"][PEER_SAME_REGION], b["peers_received"][PEER_OTHER_REGION]]
    ax.bar(labels, [v / 2**20 for v in values], color=["#777", "#d62728", "#2ca02c", "#ff7f0e"])
    ax.set_ylabel("MiB sent")


def _share(ax, r: dict) -> None:
    names = list(r["regions"])
    ax.bar(names, [100 * (r["regions"][n]["p2p_share"] or 0) for n in names], color="#2ca02c")
    ax.set_ylabel("% of bytes from peers")
    ax.set_ylim(0, 100)


def _timeline(ax, r: dict) -> None:
    t = [row["t"] for row in r["timeline"]]
    for region in r["regions"]:
        ax.plot(t, [row["edges_Bps"].get(region, 0) * 8 / 1e6 for row in r["timeline"]], label=f"edge {region}")
    ax.plot(t, [row["origin_Bps"] * 8 / 1e6 for row in r["timeline"]], label="origin", color="#777", linestyle="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Mbit/s")
    ax.legend()


def _cdf(ax, r: dict) -> None:
    for region, x in r["regions"].items():
        times = sorted(u["complete_s"] for u in r["users"] if u["region"] == region and u.get("complete_s") is not None)
        if times:
            ax.step(times, [100 * (i + 1) / len(times) for i in range(len(times))], where="post", label=f"{region}")
        if x.get("bound_s"):
            ax.axvline(x["bound_s"], linestyle=":", color="#555")
    ax.axvline(float("nan"), linestyle=":", color="#555", label="lower bound")
    ax.set_xlabel("seconds from asking to the whole file")
    ax.set_ylabel("% of peers complete")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.legend()


def _startup(ax, r: dict) -> None:
    views = [u for u in r["users"] if u.get("startup_s") is not None]
    ax.bar(range(len(views)), [u["startup_s"] for u in views], color=["#1f77b4" if i % 2 else "#aec7e8" for i in range(len(views))])
    ax.set_xlabel("viewer (by name)")
    ax.set_ylabel("seconds to start")


def _rebuffer(ax, r: dict) -> None:
    views = [u for u in r["users"] if u.get("startup_s") is not None]
    ax.bar(range(len(views)), [100 * u["rebuffer_ratio"] for u in views], color="#d62728")
    ax.set_xlabel("viewer (by name)")
    ax.set_ylabel("% of viewing time stalled")


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
