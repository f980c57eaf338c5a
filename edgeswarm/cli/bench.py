"""``edgeswarm bench serve|swarm|router|players|tracker``: benchmarks against a reference measured in the same run."""

from __future__ import annotations

import argparse
import sys

from edgeswarm.cli import options
from edgeswarm.cli.preheat import share as preheat_share
from edgeswarm.protocol.units import parse_rate, parse_size


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against a reference measured in the same run")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = bsub.add_parser(
        "serve",
        help="a warm edge against nginx, with wrk",
        description="Serve one file from a warm edge and from nginx on loopback, load both with wrk at the same concurrency, and print throughputs and their ratio.",
    )
    b.add_argument("--size", type=options.size, default=parse_size("64MiB"), metavar="SIZE", help="file size (default 64MiB)")
    b.add_argument("--duration", type=int, default=10, metavar="SECONDS", help="wrk run length per case (default 10)")
    b.add_argument("--connections", type=int, default=16, metavar="N", help="wrk concurrent connections (default 16)")
    b.add_argument(
        "--protected", action="store_true", help="publish the file protected: the edge decrypts it (AES-128-CTR) for every request"
    )
    b.add_argument(
        "--workers",
        type=options.count,
        metavar="N",
        help="worker processes of the edge and of nginx alike (default: one per usable core, the edge's default)",
    )
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.set_defaults(run=run_serve)

    b = bsub.add_parser(
        "swarm",
        help="a crowd of peers against the theoretical lower bound",
        description="N peers with capped uploads, in R regions of one capped p2p edge (strict locality, daemons' defaults "
        "otherwise), want one file at once; prints the time until all are complete beside max(F/u_s, F/d_min, N*F/(u_s+sum u_i)), "
        "the P2P share, the bytes that crossed regions and whether every copy is the origin's.",
    )
    b.add_argument(
        "--mode",
        choices=["stream", "get", "post"],
        default="stream",
        help="stream: a plain GET to every gateway at once, read at full speed (players pressing play together); "
        "get: N `edgeswarm get` at once; post: POST to every gateway, then read the copies back (default stream)",
    )
    b.add_argument("--peers", type=options.count, default=20, metavar="N", help="peers in the crowd (default 20)")
    b.add_argument(
        "--regions",
        type=options.count,
        default=1,
        metavar="R",
        help="regions (127.R.0.0/16), peers dealt round robin (default 1; at most 254)",
    )
    b.add_argument("--size", type=options.size, default=parse_size("16MiB"), metavar="SIZE", help="file size (default 16MiB)")
    b.add_argument(
        "--edge-upload", type=options.rate, default=parse_rate("2MB/s"), metavar="RATE", help="edge upload cap u_s (default 2MB/s)"
    )
    b.add_argument(
        "--peer-upload", type=options.rate, default=parse_rate("1MB/s"), metavar="RATE", help="each peer's upload cap u_i (default 1MB/s)"
    )
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=options.path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")
    b.set_defaults(run=run_swarm)

    b = bsub.add_parser(
        "preheat",
        help="a flash crowd on a region's edges, cold and after edgeswarm preheat",
        description="An origin, a parent edge with a capped upload, two region edges under it; N clients read one file through "
        "them at once, on fresh caches, once cold and once after preheat. Prints the bytes the edges took from their parent "
        "during the crowd and the crowd's time for each, and the ratios. No target.",
    )
    b.add_argument("--clients", type=options.count, metavar="N", help="readers at once (default 32; with --peers, 12 peers' gateways)")
    b.add_argument("--size", type=options.size, default=16 * 1024 * 1024, metavar="SIZE", help="the file (default 16MiB)")
    b.add_argument(
        "--parent-rate", type=options.rate, default="20MB/s", metavar="RATE", help="the parent edge's --upload-limit (default 20MB/s)"
    )
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=options.path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")
    b.add_argument(
        "--peers",
        type=preheat_share,
        metavar="SHARE",
        help="measure preheating peers instead: a p2p edge, volunteering peers and a crowd of peers' gateways, cold and after "
        "preheat --peers SHARE (25%% or 0.25); --clients is then the crowd",
    )
    b.add_argument("--volunteers", type=options.count, default=4, metavar="N", help="with --peers: volunteering peers (default 4)")
    b.add_argument(
        "--edge-rate", type=options.rate, default="8MB/s", metavar="RATE", help="with --peers: the edge's --upload-limit (default 8MB/s)"
    )
    b.add_argument(
        "--peer-rate", type=options.rate, default="2MB/s", metavar="RATE", help="with --peers: every peer's --upload-limit (default 2MB/s)"
    )
    b.set_defaults(run=run_preheat)

    b = bsub.add_parser(
        "router",
        help="the router's decisions per second, by HTTP (302) and by DNS",
        description="A router in front of four edges in two regions: wrk asks it for random paths (302s), a UDP client keeps "
        "64 DNS queries in flight; prints decisions per second for each, and for the policy alone in process. No target.",
    )
    b.add_argument("--duration", type=options.count, default=10, metavar="SECONDS", help="length of each way's run (default 10)")
    b.add_argument("--connections", type=options.count, default=32, metavar="N", help="wrk concurrent connections (default 32)")
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=options.path, metavar="DIR", help="keep logs here (default: a temporary directory)")
    b.set_defaults(run=run_router)

    b = bsub.add_parser(
        "players",
        help="ffprobe and a seek through a cold gateway against a cold edge",
        description="Make a moov-at-end MP4 and a WebM with ffmpeg, publish them through an origin, and time ffprobe on each and "
        "`ffmpeg -ss` to the middle of the MP4 straight against a cold p2p edge and through a cold peer gateway (with its own cold "
        "edge): fresh nodes with empty caches for every request, only the origin shared, daemons' defaults. Prints the medians "
        "and gateway/edge per request against the target of 1.5 x (issue 12). Needs ffmpeg and ffprobe.",
    )
    b.add_argument(
        "--runs", type=options.count, default=3, metavar="N", help="requests per case and way, each on fresh cold nodes (default 3)"
    )
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=options.path, metavar="DIR", help="keep media, caches and logs here (default: a temporary directory)")
    b.set_defaults(run=run_players)

    b = bsub.add_parser(
        "tracker",
        help="simulated announces against the tracker, memory and Redis stores",
        description="Drive the tracker service in this process (no daemons, no HTTP) with simulated announces: N peers of one "
        "region join contents of P pieces, then random peers announce updates for a while. Prints announces per second "
        "(wall and per CPU second of this process: one core) and the p50/p99 answer time, for the memory store and for "
        "Redis (a redis-server the bench starts). Goal (issue 13): >= 5 000 announces/s on one core, p99 < 50 ms.",
    )
    b.add_argument("--peers", type=options.count, default=100_000, metavar="N", help="simulated peers, one region (default 100000)")
    b.add_argument("--contents", type=options.count, default=10, metavar="N", help="contents, peers dealt round robin (default 10)")
    b.add_argument("--pieces", type=options.count, default=1000, metavar="N", help="pieces per content (default 1000)")
    b.add_argument("--duration", type=options.positive, default=10.0, metavar="SECONDS", help="length of the update phase (default 10)")
    b.add_argument("--concurrency", type=options.count, default=16, metavar="N", help="announces in flight at once (default 16)")
    b.add_argument(
        "--stores", default="memory,redis", metavar="LIST", help="stores to measure, comma-separated: memory, redis (default both)"
    )
    b.add_argument("--json", type=options.output_file, metavar="FILE", help="also write the figures here")
    b.set_defaults(run=run_tracker)


def run_preheat(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_preheat

    if args.peers is None:
        return bench_preheat.run(args.clients or 32, args.size, args.parent_rate, args.json, args.workdir)
    setup = bench_preheat.PeerSetup(args.volunteers, args.clients or 12, args.size, args.peers, args.edge_rate, args.peer_rate)
    return bench_preheat.run_peers(setup, args.json, args.workdir)


def run_serve(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_serve

    return bench_serve.run(args.size, args.duration, args.connections, args.json, args.protected, args.workers)


def run_swarm(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_swarm

    if args.regions > 254:
        print("edgeswarm bench swarm: --regions is at most 254 (127.R.0.0/16 each)", file=sys.stderr)
        return 2
    crowd = bench_swarm.Crowd(args.mode, args.peers, args.regions, args.size, args.edge_upload, args.peer_upload)
    return bench_swarm.run(crowd, args.json, args.workdir)


def run_router(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_router

    return bench_router.run(args.duration, args.connections, args.json, args.workdir)


def run_players(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_players

    return bench_players.run(args.runs, args.json, args.workdir)


def run_tracker(args: argparse.Namespace) -> int:
    from edgeswarm.measure import bench_tracker

    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or set(stores) - {"memory", "redis"}:
        print(f"edgeswarm bench tracker: --stores takes memory and/or redis, not {args.stores!r}", file=sys.stderr)
        return 2
    return bench_tracker.run(args.peers, args.contents, args.pieces, args.duration, args.concurrency, stores, args.json)
