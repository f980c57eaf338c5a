"""``edgeswarm demo``: the whole system in about a minute, on loopback, with nothing to set up.

Two lab runs on the same shape of deployment - an origin, two regions each
with an edge and a dozen peers on tiered access links: a flash crowd for a
software update, then a short video-on-demand session.  It ends with what an
operator wants to know: how much the peers carried, what the edges saved,
how fast users got the file or started playing, and whether they stalled,
with the plots' location.  Every daemon is stopped at the end, whatever happens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.table import Table

from edgeswarm.measure import lab, labreport, scenario


def scenarios(peers: int) -> list[scenario.Scenario]:
    crowd = scenario.override(scenario.load("flash-crowd"), peers=peers)
    vod = scenario.override(scenario.load("vod"), peers=peers, rate=2.0)
    vod.vod = dataclasses.replace(vod.vod, duration_s=12.0, videos=2)
    return [crowd, vod]


def run(out: Path, peers: int = 12, workdir: Path | None = None) -> int:
    console = labreport.report_console()
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)
    results = []
    for s in scenarios(peers):
        console.rule(f"{s.name}: {s.description}")
        try:
            result = lab.execute(s, console, workdir=workdir / s.name if workdir else None)
        except lab.Interrupted:
            console.print("[yellow]demo interrupted; every daemon it started has been stopped[/yellow]")
            return 130
        except lab.LabError as exc:
            console.print(f"[red]demo: the {s.name} run failed:[/red] {exc}")
            return 1
        result["plots"] = [str(p) for p in labreport.plot(result, out)]
        labreport.print_report(console, result)
        results.append(result)
        (out / "demo.json").write_text(json.dumps(results, indent=1) + "\n")  # after each run: an interrupted demo's says what it did
    console.rule("summary")
    console.print(summary(results))
    console.print(f"plots and figures (demo.json) in {out.resolve()}/")
    return 0


def _clear_previous(out: Path) -> None:
    """Remove what the last demo wrote in ``out`` (its demo.json and the plots it lists, nothing else): a demo
    interrupted after its first run left that run's plots beside the previous demo's, and the previous demo.json,
    which described neither (an adversarial session)."""
    previous = out / "demo.json"
    try:
        runs = json.loads(previous.read_text())
        plots = [Path(p) for r in runs for p in r.get("plots", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return  # none, or not a demo's: left alone
    for path in plots:
        if path.parent.resolve() == out.resolve() and path.suffix == ".png":
            path.unlink(missing_ok=True)
    previous.unlink(missing_ok=True)


def summary(results: list[dict]) -> Table:
    table = Table(title="what P2P assistance did")
    for col in ("run", "P2P share", "edges saved", "users", "time to file or to play", "rebuffering"):
        table.add_column(col)
    for r in results:
        users = r["users"]
        if r["scenario"]["kind"] == "download":
            worst = max(x.get("max_over_bound") or 0 for x in r["regions"].values())
            times = sorted(u["complete_s"] for u in users if u["complete_s"] is not None)
            waited = f"median {times[len(times) // 2]:.1f} s, last {times[-1]:.1f} s ({worst:.2f}× the bound)"
            rebuf = "-"
        else:
            pb = r["playback"]
            waited = f"startup median {pb['startup_median_s']:.2f} s, p95 {pb['startup_p95_s']:.2f} s, worst {pb['startup_max_s']:.2f} s"
            rebuf = f"{pb['rebuffering']:.2%} ({pb['stalls']} stall{'' if pb['stalls'] == 1 else 's'})"
        table.add_row(r["scenario"]["name"], f"{r['p2p_share']:.1%}", f"{r['savings']:.1%}", str(len(users)), waited, rebuf)
    return table
