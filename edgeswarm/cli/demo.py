"""``edgeswarm demo``: the whole system in about a minute, on loopback."""

from __future__ import annotations

import argparse

from edgeswarm.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole system in about a minute: a flash crowd and a VoD session in two regions, then the report",
        description="Start an origin and two regions, each with an edge and a dozen peers on tiered links, on loopback; "
        "run a flash crowd (a software update) and a short video-on-demand session through them; report the P2P share, "
        "what the edges saved, download and startup times and rebuffering, and write plots. Nothing is left running.",
    )
    p.add_argument("--peers", type=options.count, default=12, metavar="N", help="peers per region (default 12)")
    p.add_argument(
        "--out",
        type=options.output_dir,
        default="edgeswarm-demo",
        metavar="DIR",
        help="plots and demo.json go here (default ./edgeswarm-demo)",
    )
    p.add_argument("--workdir", type=options.path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from edgeswarm.measure import demo

    return demo.run(args.out, args.peers, args.workdir)
