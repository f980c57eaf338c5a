"""The ``edgeswarm`` command: one program, a subcommand per role or tool."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from pathlib import Path

from edgeswarm.daemon import setup_logging
from edgeswarm.signing import KeyFileError
from edgeswarm.units import UnitError, parse_listen, parse_size

EPILOG_ORIGIN = """\
example (p2pd scenario 1, a single server):
  edgeswarm origin --publish /srv/media --listen 0.0.0.0:8000

Files appear at their relative path (/srv/media/films/a.mp4 -> /films/a.mp4)
within about a second of being written, and disappear when deleted.  Hidden
files and directories (.name) are not published, nor are top-level names
reserved for node endpoints (manifest, content, piece, have, announce, key,
origin-key, healthz, status, metrics).
"""

EPILOG_EDGE = """\
examples (p2pd scenario 3, origin plus caches):
  edgeswarm edge --cache /var/cache/es --parent http://origin:8000 --listen 0.0.0.0:8080
  edgeswarm edge --cache /var/cache/es2 --parent http://mid:8080 \\
      --sibling http://edge3:8080 --max-cache 50GB --only-origin cdn.example.com \\
      --internal 10.0.0.0/8

The origin's public key is pinned on first contact (stored in CACHE/origin.pub)
unless given with --origin-key; manifests signed by any other key are refused.
"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a network: {text!r} (expected CIDR such as 10.0.0.0/8)") from None
    return text


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, default_listen: str) -> None:
    p.add_argument(
        "--listen",
        type=_listen,
        default=default_listen,
        metavar="HOST:PORT",
        help=f"address to serve on (default {default_listen}; port 0 picks a free one)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity (default info)")
    p.add_argument("--access-log", action="store_true", help="log every request")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeswarm",
        description="Hybrid CDN-P2P content delivery: an origin, edge caches, and (soon) peers that share with each other.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "origin",
        help="publish a directory (p2pd server mode)",
        epilog=EPILOG_ORIGIN,
        formatter_class=fmt,
        description="Publish every file under DIR, with signed manifests, over HTTP.",
    )
    p.add_argument("--publish", type=Path, required=True, metavar="DIR", help="directory to publish")
    p.add_argument("--key", type=Path, metavar="FILE", help="Ed25519 signing key (PEM), created if missing (default STATE/origin.key)")
    p.add_argument("--state", type=Path, metavar="DIR", help="where manifests are kept across restarts (default DIR/.edgeswarm)")
    p.add_argument(
        "--scan-interval", type=_positive, default=1.0, metavar="SECONDS", help="how often DIR is checked for changes (default 1)"
    )
    _common(p, "127.0.0.1:8000")

    p = sub.add_parser(
        "edge",
        help="cache the origin's content near users (p2pd cache mode)",
        epilog=EPILOG_EDGE,
        formatter_class=fmt,
        description="Serve the origin's namespace from a verified piece cache, fetching only what is asked for.",
    )
    p.add_argument("--cache", type=Path, required=True, metavar="DIR", help="cache directory (kept across restarts)")
    p.add_argument("--parent", type=_url, required=True, metavar="URL", help="origin or parent edge to fetch misses from")
    p.add_argument(
        "--sibling",
        type=_url,
        action="append",
        default=[],
        metavar="URL",
        help="edge to ask first for pieces it already holds (repeatable)",
    )
    p.add_argument("--max-cache", type=_size, metavar="SIZE", help="cache quota such as 50GB or 512MiB (default: no limit)")
    p.add_argument(
        "--only-origin",
        action="append",
        default=[],
        metavar="HOST",
        help="serve files only for requests addressed to this host name (repeatable; p2pd -A)",
    )
    p.add_argument(
        "--internal",
        type=_cidr,
        action="append",
        default=[],
        metavar="CIDR",
        help="only these clients may cause fetches of uncached content; others get cached content or 403 (repeatable; p2pd -n)",
    )
    p.add_argument(
        "--origin-key", type=Path, metavar="FILE", help="origin public key to pin (default: learned from the parent on first start)"
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="give up on an upstream request after this long: 504 (default 10)",
    )
    p.add_argument(
        "--revalidate",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="re-check a cached manifest with the parent after this long (default 1)",
    )
    _common(p, "127.0.0.1:8080")

    p = sub.add_parser(
        "demo",
        help="run an origin and two tiers of edges on loopback and fetch through them",
        description="Start an origin, a mid-tier edge and an edge on loopback, fetch a file through them, and report what crossed each hop.",
    )
    p.add_argument("--size", type=_size, default=parse_size("64MiB"), metavar="SIZE", help="size of the demo file (default 64MiB)")
    p.add_argument("--workdir", type=Path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")

    p = sub.add_parser("bench", help="benchmarks against a reference measured in the same run")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = bsub.add_parser(
        "serve",
        help="a warm edge against nginx, with wrk",
        description="Serve one file from a warm edge and from nginx on loopback, load both with wrk at the same concurrency, and print throughputs and their ratio.",
    )
    b.add_argument("--size", type=_size, default=parse_size("64MiB"), metavar="SIZE", help="file size (default 64MiB)")
    b.add_argument("--duration", type=int, default=10, metavar="SECONDS", help="wrk run length per case (default 10)")
    b.add_argument("--connections", type=int, default=16, metavar="N", help="wrk concurrent connections (default 16)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except (KeyFileError, OSError) as exc:
        print(f"edgeswarm {args.command}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "origin":
        from edgeswarm import origin

        setup_logging(args.log_level)
        if not args.publish.is_dir():
            print(f"edgeswarm origin: {args.publish} is not a directory", file=sys.stderr)
            return 2
        state = args.state or args.publish / ".edgeswarm"
        asyncio.run(origin.run(args.publish, args.listen, state, args.key or state / "origin.key", args.scan_interval, args.access_log))
        return 0
    if args.command == "edge":
        from edgeswarm import edge

        setup_logging(args.log_level)
        node = edge.Edge(
            args.cache,
            args.parent,
            args.sibling,
            args.max_cache,
            args.only_origin,
            args.internal,
            args.timeout,
            args.revalidate,
            args.origin_key,
        )
        asyncio.run(edge.run(node, args.listen, args.access_log))
        return 0
    if args.command == "demo":
        from edgeswarm import demo

        return demo.run(args.size, args.workdir)
    if args.command == "bench":
        from edgeswarm import bench_serve

        return bench_serve.run(args.size, args.duration, args.connections, args.json)
    raise AssertionError(args.command)
