"""``edgeswarm peer``: the flags of a ``PeerConfig``, and the user's daemon they start."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgeswarm.cli import options
from edgeswarm.roles.config import PeerConfig

EPILOG = """\
examples (p2pd scenarios 4 and 5, client contribution):
  edgeswarm peer --cache ~/.cache/edgeswarm --edge http://edge.example:8080
  mpv http://127.0.0.1:1111/films/a.mp4        # streams while it downloads
  edgeswarm peer --cache /tmp/p1 --edge http://e1:8080 --edge http://e2:8080 \\
      --listen 192.0.2.7:6881 --upload-limit 2MB/s --upload-slots 6
  edgeswarm peer --cache /tmp/p2 --router http://router:8090 --listen 192.0.2.7:6881   # its region's edges
"""


def add_parser(sub) -> None:
    """Every flag's dest is its PeerConfig field's name, so ``PeerConfig.from_options`` reads them all."""
    d = PeerConfig
    p = sub.add_parser(
        "peer",
        help="the user's daemon: a local gateway for players, sharing with other peers (p2pd client mode)",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
        description="Stream and download through a local gateway, from edges and other peers at once; upload to other peers within a cap.",
    )
    options.cache(p, "where pieces are kept (resumes after a restart)")
    p.add_argument(
        "--edge",
        dest="edges",
        type=options.url,
        action="append",
        default=[],
        metavar="URL",
        help="edge to use (repeatable: the fastest wins)",
    )
    p.add_argument("--router", type=options.url, metavar="URL", help="learn this address's edges from a router (GET /edges), and follow it")
    p.add_argument(
        "--gateway",
        type=options.listen_address,
        default="127.0.0.1:1111",
        metavar="HOST:PORT",
        help="local HTTP gateway for players (default 127.0.0.1:1111)",
    )
    p.add_argument(
        "--seed",
        dest="seeds",
        action="append",
        default=[],
        type=options.content_path,
        metavar="PATH",
        help="managed seeder: keep this path whole, pinned against eviction and announced, without any player asking (repeatable)",
    )
    p.add_argument(
        "--accept-preheat",
        type=options.size,
        metavar="SIZE",
        help="let edges ask this peer to fetch and seed content for its region (edgeswarm preheat --peers), "
        "holding at most SIZE of it at once (default: never)",
    )
    p.add_argument(
        "--unreachable",
        action="store_true",
        help="other peers cannot connect to this one (NAT, firewall): upload through a relay at each edge (a WebSocket out)",
    )
    options.upload_limit(p, "upload cap such as 2MB/s, 500KB/s or 20Mbit/s (default: none)")
    p.add_argument(
        "--download-limit",
        type=options.rate,
        metavar="RATE",
        help="cap on what this peer fetches from edges and peers, as a slow access link would (default: none)",
    )
    p.add_argument(
        "--upload-slots", type=options.count, default=d.upload_slots, metavar="N", help=f"peers served at once (default {d.upload_slots})"
    )
    options.max_cache(p, "cache quota (default: no limit)")
    options.origin_key(p, "origin public key to pin (default: learned from the edge)")
    p.add_argument(
        "--startup-window",
        type=options.size,
        default=d.startup_window,
        metavar="SIZE",
        help="a player starting behind a neighbour well ahead of it (a late viewer) takes this much of the file's start "
        f"from the edge, where neighbours' uplinks are busy with the streams already playing; 0: all from peers, slower "
        f"starts and fewer edge bytes (default {d.startup_window // 1024} KiB)",
    )
    p.add_argument(
        "--read-timeout",
        type=options.positive,
        default=d.read_timeout,
        metavar="SECONDS",
        help=f"a gateway read waiting this long for a piece fails: 504, or 502 naming the wrong answer its last try got (default {d.read_timeout:g})",
    )
    options.cors(p, "the gateway's answers (protected content and /status: listed origins only)")
    p.add_argument(
        "--gateway-host",
        dest="gateway_hosts",
        type=options.host_name,
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the gateway also answers under, as players on other machines may address it (repeatable; "
        "default: IP addresses and localhost only, so that no web page whose DNS name is pointed here reads it: 421)",
    )
    options.credentials(p, "this peer")
    options.connection_limits(p)
    options.log_flags(p)
    options.listen(
        p,
        "0.0.0.0:6881",
        "upload server for other peers (default 0.0.0.0:6881); outgoing connections leave from HOST when it is not 0.0.0.0",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from edgeswarm.node.daemon import setup_logging
    from edgeswarm.roles import peer
    from edgeswarm.store import cachelock

    setup_logging(args.log_level)
    config = PeerConfig.from_options(args, token=options.token(args), bind=args.listen[0])  # a bad --cors-origin stops here
    if not config.edges and not config.router:
        print("edgeswarm peer: give --edge URL (repeatable) or --router URL", file=sys.stderr)
        return 2
    room, quota = config.accept_preheat, config.max_cache
    if room and quota and room >= quota:  # pinned against eviction: past the quota, the cache would outgrow --max-cache
        print(
            f"edgeswarm peer: --accept-preheat ({room:,} bytes) must be less than --max-cache ({quota:,} bytes): preheated "
            "content stays in the cache while ordered, beside what you play (lower --accept-preheat or raise --max-cache)",
            file=sys.stderr,
        )
        return 2
    with cachelock.held(config.cache, "peer"):
        peer_node = peer.Peer(config)
        asyncio.run(peer.run(peer_node, args.listen, args.gateway, args.access_log, options.limits(args)))
    return 0
