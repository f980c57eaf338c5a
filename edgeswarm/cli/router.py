"""``edgeswarm router``: send each client to the best healthy edge of its region, by HTTP 302, JSON and DNS."""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

from edgeswarm.cli import options

MAX_TTL = 2**31 - 1  # seconds, RFC 2181 §8
EPILOG = """\
examples (two regions behind one router):
  edgeswarm router --regions regions.yaml --edge http://10.1.0.5:8080,east,1Gbit/s \\
      --edge http://10.2.0.5:8080,west,1Gbit/s --listen 0.0.0.0:8090 --dns-port 5353 --dns-name cdn.example.com
  curl -L http://router:8090/films/a.mp4 -o a.mp4          # 302 to an edge of the client's region
  dig @router -p 5353 cdn.example.com                        # A record of that edge
  curl 'http://router:8090/edges?path=films/a.mp4'           # ranked edges, JSON (peer --router uses it)
  curl -X POST http://127.0.0.1:8090/register -H 'Content-Type: application/json' \\
      -d '{"url": "http://10.1.0.6:8080", "region": "east", "capacity": "100MB/s"}'
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "router",
        help="send each client to the best healthy edge of its region: HTTP 302, JSON for peers, DNS",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
        description="Map a client's address to its region (the edges' region map) and to an up edge of it, keeping a path on "
        "the same edges (rendezvous hashing) and moving paths off edges that run hot; answer with a 302, with JSON "
        "(GET /edges?path=P) and with DNS A records; poll every edge's /status to mark it down or up.",
    )
    p.add_argument(
        "--regions",
        type=options.path,
        required=True,
        metavar="FILE",
        help="region map: CIDR -> ISP and region, as the edges use (required: it names the regions edges may serve, "
        "--default-region among them)",
    )
    p.add_argument(
        "--edge",
        action="append",
        default=[],
        metavar="URL,REGION,CAPACITY",
        help="an edge, its region and what it may send, such as http://10.1.0.5:8080,east,1Gbit/s (repeatable)",
    )
    p.add_argument("--edge-list", type=options.path, metavar="FILE", help="YAML or JSON {edges: [{url, region, capacity}, ...]}")
    p.add_argument(
        "--register-secret-file",
        type=options.path,
        metavar="FILE",
        help="POST /register needs Authorization: Bearer <the file's last line> (default: no secret, loopback only)",
    )
    p.add_argument(
        "--default-region", type=options.name, metavar="NAME", help="region of clients the map does not place (default: refuse them)"
    )
    _health_flags(p)
    _dns_flags(p)
    options.tls_server(p)
    options.connection_limits(p)
    options.cors(p, "the router's redirects and answers")
    options.daemon(p, "127.0.0.1:8090")
    p.set_defaults(run=run)


def _health_flags(p: argparse.ArgumentParser) -> None:
    health = p.add_argument_group("health (docs/operations.md#the-router-health-and-failover)")
    health.add_argument(
        "--poll-interval",
        type=poll_interval,
        default=2.0,
        metavar="SECONDS",
        help="each edge's /status, this often (default 2; at least 0.1)",
    )
    health.add_argument(
        "--poll-timeout", type=options.positive, metavar="SECONDS", help="a poll not answered by then fails (default: half the interval)"
    )
    health.add_argument(
        "--down-after", type=options.count, default=1, metavar="N", help="failed polls in a row that make an edge down (default 1)"
    )
    health.add_argument(
        "--status-token-file",
        type=options.path,
        metavar="FILE",
        help="send the token on this file's last line with each /status poll: needed for edges started with --require-token "
        "(a token from `edgeswarm token issue` that covers the path /; default: none)",
    )
    health.add_argument(
        "--ca", type=options.path, metavar="FILE", help="verify HTTPS edges' certificates against this CA (PEM; default: the system's)"
    )
    health.add_argument("--up-after", type=options.count, default=2, metavar="N", help="good polls in a row that bring it back (default 2)")
    health.add_argument(
        "--max-error-rate", type=float, default=0.5, metavar="X", help="5xx share of an interval's answers that fails a poll (default 0.5)"
    )
    health.add_argument(
        "--hot-load", type=float, default=0.8, metavar="X", help="egress / capacity above which an edge sheds paths (default 0.8)"
    )


def _dns_flags(p: argparse.ArgumentParser) -> None:
    dns = p.add_argument_group("DNS")
    dns.add_argument("--dns-port", type=int, metavar="PORT", help="answer DNS on this UDP port (0: a free one; default: no DNS)")
    dns.add_argument("--dns-host", metavar="HOST", help="address for DNS (default: the --listen host)")
    dns.add_argument(
        "--dns-name", default="cdn.example.com", metavar="NAME", help="the name answered, and names under it (default cdn.example.com)"
    )
    dns.add_argument("--dns-ttl", type=options.count_or_zero, default=5, metavar="SECONDS", help="TTL of the answers (default 5)")
    dns.add_argument("--dns-answers", type=options.count, default=1, metavar="N", help="A records per answer, best first (default 1)")


def run(args: argparse.Namespace) -> int:
    """The table from the flags and files, checked before anything listens."""
    from edgeswarm.node.daemon import setup_logging
    from edgeswarm.policy import routing
    from edgeswarm.protocol import registration
    from edgeswarm.protocol.cors import CorsPolicy
    from edgeswarm.roles import router
    from edgeswarm.roles.announce import load_region_map
    from edgeswarm.trust import tls

    setup_logging(args.log_level)
    regions = load_region_map(args.regions)
    names = [r.name for r in regions.regions]
    if not 0 <= args.max_error_rate <= 1 or not args.hot_load > 0:
        raise ValueError("--max-error-rate is a share from 0 to 1, and --hot-load a positive share of capacity")
    if args.dns_port is not None and not 0 <= args.dns_port <= 65535:
        raise ValueError(f"--dns-port {args.dns_port} is not a port")
    if args.dns_ttl > MAX_TTL:
        raise ValueError(f"--dns-ttl is at most {MAX_TTL} seconds (RFC 2181), not {args.dns_ttl}")
    labels = args.dns_name.rstrip(".").split(".")
    if not all(0 < len(label) <= 63 for label in labels) or len(args.dns_name) > 253:
        raise ValueError(f"--dns-name {args.dns_name!r} is not a DNS name (labels of 1-63 characters, 253 in all)")
    thresholds = routing.Thresholds(args.down_after, args.up_after, args.max_error_rate, routing.Thresholds.min_requests, args.hot_load)
    table = routing.RoutingTable(thresholds)
    specs = [registration.parse_edge_flag(text, names) for text in args.edge]
    if args.edge_list is not None:
        specs += registration.load_edge_list(args.edge_list, names)
    twice = sorted(url for url, n in collections.Counter(s.url for s in specs).items() if n > 1)
    if twice:  # the last one won without a word (an --edge lost to the --edge-list's entry)
        raise ValueError(f"edge {twice[0]} is listed twice (by --edge and --edge-list, in any spelling): list it once")
    now = time.monotonic()
    for spec in specs:
        table.add(spec, now)
    secret = options.secret(args.register_secret_file)
    config = router.RouterConfig(
        args.poll_interval,
        args.poll_timeout,
        args.dns_name.rstrip("."),
        args.dns_ttl,
        args.dns_answers,
        secret,
        args.default_region,
        status_token=options.secret(args.status_token_file),
        ca=tls.client_context(args.ca),
        cors=CorsPolicy.from_flags(args.cors_origin),
    )
    ssl_context = tls.server_options(args.tls_cert, args.tls_key)
    router_node = router.Router(regions, table, config)
    dns = (args.dns_host or args.listen[0], args.dns_port) if args.dns_port is not None else None
    asyncio.run(router.run(router_node, args.listen, dns, args.access_log, options.limits(args), ssl_context))
    return 0


def poll_interval(text: str) -> float:
    """``--poll-interval``: 0.0001 was taken, and each poll asks every edge for its /status (an adversarial session)."""
    value = options.positive(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"expected at least 0.1 seconds (each poll asks every edge for its /status), got {text!r}")
    return value
