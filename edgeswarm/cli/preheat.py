"""``edgeswarm preheat``: fill the edges of a region with content before a release."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgeswarm.cli import options

EPILOG = """\
examples:
  edgeswarm preheat releases/os-2.1.img releases/os-2.1.sig --region east --router http://router:8090
  edgeswarm preheat films/a.mp4 --region east --edge http://10.1.0.5:8080 --edge http://10.1.0.6:8080
  edgeswarm preheat releases/os-2.1.img --region east --router http://router:8090 --peers 25%
exit status: 0 when every path is whole at every edge, 1 when any failed (each failure is named), 2 on bad flags
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "preheat",
        help="fill the edges of a region with content before a release",
        description="Read each PATH through each edge of the region (the body is thrown away), so that every edge fetches "
        "the pieces from its parent now rather than under the release's crowd. Edges whose /status lists a path whole are "
        "not asked again. The region's edges come from --router (GET /edges?region=R) or from --edge.",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
    )
    p.add_argument(
        "paths", nargs="+", type=options.content_path, metavar="PATH", help="content paths, as in the edge's namespace (films/a.mp4)"
    )
    p.add_argument(
        "--region", required=True, type=options.name, metavar="NAME", help="the region whose edges to fill (a name of the router's map)"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--router", type=options.url, metavar="URL", help="learn the region's edges from this router")
    where.add_argument("--edge", type=options.url, action="append", metavar="URL", help="an edge of the region (repeatable)")
    p.add_argument("--concurrency", type=options.count, default=4, metavar="N", help="transfers at once, over all edges (default 4)")
    p.add_argument(
        "--timeout", type=options.positive, default=600.0, metavar="SECONDS", help="one path through one edge, at most (default 600)"
    )
    p.add_argument(
        "--peers",
        type=share,
        metavar="SHARE",
        help="also have this share of the region's volunteering peers (25%% or 0.25) fetch and seed the paths: each p2p edge "
        "hands the order to peers started with --accept-preheat",
    )
    p.add_argument(
        "--peers-for",
        type=duration,
        default="1d",
        metavar="DURATION",
        help="how long the peers keep it pinned and seeded (default 1d; 90s, 15m, 2h, 7d)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    options.credentials(p, "preheat")
    p.set_defaults(run=run)


def share(text: str) -> float:
    from edgeswarm.roles.preheat import parse_share

    try:
        return parse_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> float:
    from edgeswarm.protocol.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 < seconds <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"expected a duration from 1s to 30d, got {text!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    from edgeswarm.roles import preheat

    plan = preheat.Plan(list(args.paths), list(args.edge or []), args.concurrency, options.token(args), args.ca, args.timeout)
    preheat.ssl_for(args.ca)  # a CA that cannot be read: one message naming it, exit 2
    try:
        return asyncio.run(_run(args, plan))
    except preheat.PreheatError as exc:
        print(f"edgeswarm preheat: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, plan) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    from edgeswarm.roles import preheat

    if args.router:
        plan.edges, plan.down = await preheat.region_edges(args.router, args.region, args.ca)
        if not plan.edges and not plan.down:
            raise preheat.PreheatError(f"router {args.router} knows no edge in region {args.region}")
    err = Console(stderr=True)
    columns = (TextColumn(f"preheat {args.region}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=args.no_progress or not err.is_terminal) as bar:
        task = bar.add_task("bytes", total=0)

        def on_bytes(total: int, n: int) -> None:
            if total:
                bar.update(task, total=(bar.tasks[0].total or 0) + total)
            bar.advance(task, n)

        results = await preheat.preheat(plan, on_bytes)
    status = _summary(results, plan)
    if args.peers is not None:
        status = max(status, _orders(await preheat.order_peers(plan, args.region, args.peers, args.peers_for), args))
    return status


def _orders(answers, args: argparse.Namespace) -> int:
    """Per edge and path: how many volunteering peers it has in the region and how many it asked; 1 when an edge refused."""
    failed = 0
    for a in answers:
        if a.error:
            failed += 1
            print(f"edgeswarm preheat: peer orders at {a.edge}: {a.error}", file=sys.stderr)
        for row in a.rows:
            print(f"{a.edge}  {row['path']}: {len(row['chosen'])} of {row['volunteers']} volunteering peers asked (wants {row['wanted']})")
    if failed < len(answers):  # none took the orders: the lines above said why, and nobody was asked
        took = f" (at {len(answers) - failed} of {len(answers)} edges)" if failed else ""
        print(f"preheat: {args.peers:.0%} of the volunteering peers of {args.region} asked to seed for {args.peers_for:g} s{took}")
    return 1 if failed else 0


def _summary(results, plan) -> int:
    """Per edge: bytes read, time, and each path cached / filled / failed; 1 when anything failed."""
    from edgeswarm.roles.preheat import FAILED

    failed = [r for r in results if r.outcome == FAILED]
    for edge in plan.down + plan.edges:
        rows = [r for r in results if r.edge == edge]
        nbytes, seconds = sum(r.nbytes for r in rows), max((r.seconds for r in rows), default=0.0)
        outcomes = ", ".join(f"{r.path}: {r.outcome}" + (f" ({r.error})" if r.error else "") for r in rows)
        print(f"{edge}  {nbytes} B in {seconds:.2f} s  {outcomes}")
    done = len(results) - len(failed)
    print(f"preheat: {done}/{len(results)} path×edge whole, {sum(r.nbytes for r in results)} B read")
    for r in failed:
        print(f"edgeswarm preheat: {r.path} at {r.edge}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
