"""``edgeswarm lab`` and ``edgeswarm chaos``: a deployment of real daemons through a scenario, with or without faults."""

from __future__ import annotations

import argparse
import sys

from edgeswarm.cli import options

EPILOG_LAB = """\
scenarios shipped (edgeswarm/measure/scenarios/):
  flash-crowd     a software update everyone wants at once (Verizon tiers)
  vod             Zipf-popular videos, Poisson arrivals, early quits (AT&T tiers)
  vod-model       VoD shaped like the simulator's model, to compare the two
  churn           peers crash mid-download and rejoin to resume
  live            24 viewers follow a 3-minute low-latency HLS stream made by ffmpeg during the run
  live-segments   the same stream as whole segments only, as an RFC 8216 player plays it
  relay           a flash crowd where a third of the peers cannot accept connections (--netns)
  relay-promoted  relay, with the edges promoting fast reachable peers to relays (--netns)
  subtracker      relay-promoted with promotion in east only, then a steady minute (--netns)
  chaos           every kind of fault in turn (see edgeswarm chaos --help)

examples:
  edgeswarm lab flash-crowd
  edgeswarm lab vod --peers 6 --json vod.json
  sudo edgeswarm lab flash-crowd --netns     # real links: namespaces and tc
"""


EPILOG_CHAOS = """\
faults (in the scenario's `faults:` list, at seconds after the start; `for:` how long it lasts):
  kill / restart NODE      SIGKILL a daemon (origin, edge-REGION, peer-REGION-N); restart it on its port
  disk_full edge-REGION    the edge's cache is a tmpfs (root); filled to the last MiB, then freed
  corrupt_peer / bloating_peer / sybil / lying_parent / slowloris
                           misbehaving nodes (edgeswarm/measure/doubles.py) against a region, with a fresh victim peer

examples:
  sudo edgeswarm chaos --json chaos.json      # the shipped schedule: every kind of fault
  edgeswarm chaos my-faults.yaml --peers 2
"""


def add_parser(sub) -> None:
    """``lab`` then ``chaos``: one run, the second with a fault schedule."""
    p = sub.add_parser(
        "lab",
        help="run a whole deployment of real daemons through a scenario and report what P2P saved",
        description="Start an origin, one edge per region and the scenario's peers on this machine, play the users "
        "(downloads, viewers, churn), then report bytes by source, P2P share per region, bytes that crossed regions, "
        "completion times against the lower bound, startup delay and rebuffering, with a table, JSON and PNG plots.",
        epilog=EPILOG_LAB,
        formatter_class=options.FORMATTER,
    )
    p.add_argument("scenario", metavar="SCENARIO", help="a shipped scenario (listed below) or a scenario YAML file")
    _scenario_flags(p, lab=True)
    p.set_defaults(run=run)

    p = sub.add_parser(
        "chaos",
        help="a lab run under a schedule of faults: kills, a full disk, lying and flooding nodes; what got through",
        description="Run a lab download scenario with its fault schedule (kill, restart, disk_full, corrupt_peer, bloating_peer, "
        "lying_parent, sybil, slowloris) and report downloads completed, corrupt bytes delivered (every read is compared "
        "with the original), data lost, the worst RSS of any process and the time to recover after each fault. "
        "Exit 1 if a wrong byte was delivered or a node crashed. `edgeswarm lab chaos` is the same run.",
        epilog=EPILOG_CHAOS,
        formatter_class=options.FORMATTER,
    )
    p.add_argument("scenario", nargs="?", default="chaos", metavar="SCENARIO", help="a scenario with faults (default: chaos)")
    _scenario_flags(p, lab=False)
    p.set_defaults(run=run)


def _scenario_flags(p: argparse.ArgumentParser, lab: bool) -> None:
    """The scenario's overrides and the run's outputs; a chaos run keeps the scenario's regions, rates and namespaces."""
    p.add_argument("--peers", type=options.count, metavar="N", help="peers per region (default: the scenario's)")
    if lab:
        p.add_argument(
            "--regions", type=options.count, metavar="N", help="this many regions like the scenario's first (default: the scenario's)"
        )
    p.add_argument("--size", metavar="SIZE", help="download size such as 16MiB (default: the scenario's)")
    if lab:
        p.add_argument(
            "--rate-scale", type=options.factor, metavar="X", help="multiply the tiers' 2007 rates by X (default: the scenario's)"
        )
    p.add_argument("--seed", type=int, metavar="N", help="seed for arrivals, tiers and choices (default: the scenario's)")
    until = "give up when users are not done by then" if lab else "end the run by then"
    p.add_argument("--timeout", type=options.positive, metavar="SECONDS", help=f"{until} (default: the scenario's)")
    if lab:
        p.add_argument("--netns", action="store_true", help="every node in its own network namespace, links shaped with tc (root only)")
    what = "every figure, per user and over time" if lab else "every figure, per fault, user and node"
    p.add_argument("--json", type=options.output_file, metavar="FILE", help=f"write {what}, here")
    p.add_argument(
        "--plots", type=options.output_dir, metavar="DIR", help="PNG plots here (default: lab-SCENARIO-plots beside the JSON or here)"
    )
    p.add_argument("--workdir", type=options.path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")


def run(args: argparse.Namespace) -> int:
    from edgeswarm.measure import lab, scenario

    try:
        s = scenario.override(
            scenario.load(args.scenario),
            peers=args.peers,
            region_count=getattr(args, "regions", None),
            size=args.size,
            rate_scale=getattr(args, "rate_scale", None),
            seed=args.seed,
            timeout_s=args.timeout,
        )
        if args.command == "chaos" and not s.faults:
            raise scenario.ScenarioError(f"{args.scenario} has no faults: a chaos run needs a schedule (see docs/chaos.md)")
    except scenario.ScenarioError as exc:
        print(f"edgeswarm {args.command}: {exc}", file=sys.stderr)
        return 2
    return lab.run(s, netns=getattr(args, "netns", False), json_path=args.json, plots=args.plots, workdir=args.workdir)
