"""``edgeswarm edge``: the flags of an ``EdgeConfig``, and the edge cache they start."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from edgeswarm.cli import options
from edgeswarm.roles.config import EdgeConfig

if TYPE_CHECKING:
    from edgeswarm.node.registrar import Registration

EPILOG = """\
examples (p2pd scenario 3, origin plus caches):
  edgeswarm edge --cache /var/cache/es --parent http://origin:8000 --listen 0.0.0.0:8080
  edgeswarm edge --cache /var/cache/es2 --parent http://mid:8080 \\
      --sibling http://edge3:8080 --max-cache 50GB --only-origin cdn.example.com \\
      --internal 10.0.0.0/8

The origin's public key is pinned on first contact (stored in CACHE/origin.pub)
unless given with --origin-key; manifests signed by any other key are refused.
"""


def add_parser(sub) -> None:
    """Every flag's dest is its EdgeConfig field's name, so ``EdgeConfig.from_options`` reads them all."""
    d = EdgeConfig
    p = sub.add_parser(
        "edge",
        help="cache the origin's content near users (p2pd cache mode)",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
        description="Serve the origin's namespace from a verified piece cache, fetching only what is asked for.",
    )
    options.cache(p, "cache directory (kept across restarts)")
    p.add_argument("--parent", type=options.url, required=True, metavar="URL", help="origin or parent edge to fetch misses from")
    p.add_argument(
        "--sibling",
        dest="siblings",
        type=options.url,
        action="append",
        default=[],
        metavar="URL",
        help="edge to ask first for pieces it already holds (repeatable)",
    )
    options.max_cache(p, "cache quota such as 50GB or 512MiB (default: no limit)")
    p.add_argument(
        "--only-origin",
        type=options.host_name,
        action="append",
        default=[],
        metavar="HOST",
        help="serve files only for requests addressed to this host name (repeatable; p2pd -A)",
    )
    p.add_argument(
        "--internal",
        type=options.cidr,
        action="append",
        default=[],
        metavar="CIDR",
        help="only these clients may cause fetches of uncached content; others get cached content or 403 (repeatable; p2pd -n)",
    )
    options.origin_key(p, "origin public key to pin (default: learned from the parent on first start)")
    p.add_argument(
        "--timeout",
        type=options.positive,
        default=d.timeout,
        metavar="SECONDS",
        help=f"give up on an upstream request after this long, plus a second for each 16 KiB of its body received: 504 (default {d.timeout:g})",
    )
    p.add_argument(
        "--revalidate",
        type=float,
        default=d.revalidate,
        metavar="SECONDS",
        help=f"re-check a cached manifest with the parent after this long (default {d.revalidate:g})",
    )
    p2p = p.add_argument_group("p2p mode (p2pd -i): the edge as tracker and super peer of its region")
    p2p.add_argument("--p2p", action="store_true", help="track the peers that fetch from this edge and hand them to each other")
    p2p.add_argument(
        "--regions",
        type=options.path,
        metavar="FILE",
        help="region map (YAML or JSON: CIDR -> ISP and region); default: one region for all",
    )
    p2p.add_argument(
        "--locality",
        choices=["strict", "prefer"],
        default=d.locality,
        help=f"strict: never hand a peer one of another region; prefer: same region first (default {d.locality})",
    )
    p2p.add_argument(
        "--announce-interval",
        type=options.positive,
        default=d.announce_interval,
        metavar="SECONDS",
        help=f"how often peers re-announce (default {d.announce_interval:g})",
    )
    p2p.add_argument(
        "--max-peer-ids",
        type=options.count,
        default=d.max_peer_ids,
        metavar="N",
        help=f"live peer ids per address (IPv6: per /64) and per token user (default {d.max_peer_ids})",
    )
    p2p.add_argument(
        "--announce-rate",
        type=options.count,
        default=d.announce_rate,
        metavar="N",
        help=f"announces a second per address or token user (default {d.announce_rate})",
    )
    p2p.add_argument(
        "--max-peer-records",
        type=options.count,
        default=d.max_peer_records,
        metavar="N",
        help="(content, peer) records the tracker keeps from its announces, in all; past them a new one takes the place "
        "of one of the sender holding the most (default: 1 000 000, or a quarter of this machine's memory at 4 KiB each "
        "where that is fewer)",
    )
    p2p.add_argument(
        "--tracker-store",
        type=tracker_store,
        default=d.tracker_store,
        metavar="STORE",
        help="where the swarms and P2P-share totals live: memory (this edge only, the default) or redis://HOST:PORT/DB, "
        "shared by the edges of a region and kept across restarts (Redis 7.0 or later)",
    )
    p2p.add_argument(
        "--max-peer-rate",
        type=options.rate,
        default=d.max_peer_rate,
        metavar="RATE",
        help=f"most a peer may claim to move each way (default {d.max_peer_rate * 8 / 1e9:g}Gbit/s)",
    )
    p2p.add_argument(
        "--relay-peers",
        type=options.count_or_zero,
        default=d.relay_peers,
        metavar="N",
        help=f"peers that cannot accept connections (peer --unreachable) relayed at once; 0: none (default {d.relay_peers})",
    )
    p2p.add_argument(
        "--relay-requests",
        type=options.count,
        default=d.relay_requests,
        metavar="N",
        help=f"piece requests in flight through the relay to one relayed peer (default {d.relay_requests})",
    )
    p2p.add_argument(
        "--promote-upload",
        type=options.rate,
        metavar="RATE",
        help="promote reachable peers that upload at least this to relays for their region's unreachable peers (default: never)",
    )
    p2p.add_argument(
        "--promote-uptime",
        type=options.positive,
        default=d.promote_uptime,
        metavar="SECONDS",
        help=f"how long a peer must have announced here before it may be promoted (default {d.promote_uptime:g})",
    )
    _NEEDS["--p2p"] = _flags(p2p, "p2p")
    options.upload_limit(p, "cap on what this edge sends, such as 10MB/s or 100Mbit/s (default: none)")
    trust = p.add_argument_group("trust and accounting")
    trust.add_argument(
        "--require-token",
        action="store_true",
        help="serve files, manifests, pieces and announces only with a valid token for the path (Bearer or ?token=)",
    )
    trust.add_argument(
        "--ledger",
        type=options.name,
        metavar="PATH_OR_DSN",
        help="usage ledger: an SQLite file, or postgresql://... (default CACHE/ledger.sqlite)",
    )
    trust.add_argument(
        "--name", type=options.name, metavar="NAME", help="this edge's name in a shared ledger (default: host name and cache dir)"
    )
    options.cors(p, "this edge's answers")
    reg = p.add_argument_group("registering with routers (edgeswarm router)")
    reg.add_argument(
        "--register-with", type=options.url, action="append", default=[], metavar="URL", help="router to register with (repeatable)"
    )
    reg.add_argument(
        "--register-region", type=options.name, metavar="NAME", help="the region this edge serves, as in the routers' region map"
    )
    reg.add_argument(
        "--register-capacity",
        type=options.rate,
        metavar="RATE",
        help="what this edge may send, such as 1Gbit/s (routers compare its egress)",
    )
    reg.add_argument(
        "--register-url",
        type=options.url,
        metavar="URL",
        help="this edge's URL for clients, registered with routers and where relayed peers are handed out (default: the address "
        "it listens on; for relayed peers, the address their announce reached)",
    )
    reg.add_argument("--register-secret-file", type=options.path, metavar="FILE", help="the routers' registration secret (its last line)")
    _NEEDS["--register-with"] = _flags(reg, "register_with", "register_url")  # the URL is relayed peers' too
    p.add_argument(
        "--workers",
        type=options.count,
        metavar="N",
        help="processes serving the port as one edge, as nginx's worker_processes (default: one per usable core; 1: a single "
        "process; at most 4 a usable core)",
    )
    options.credentials(p, "this edge", "its parent and siblings")
    options.tls_server(p)
    options.connection_limits(p)
    options.daemon(p, "127.0.0.1:8080")
    p.set_defaults(run=run)


def tracker_store(text: str) -> str:
    """``--tracker-store``, checked while the flags are read: a bad URL stops the edge before it creates anything."""
    from edgeswarm.store.redispeers import check_url

    if text == "memory":
        return text
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--tracker-store {text!r}: ")) from None


# a flag that does nothing without another: that flag -> (each dependent flag, its dest, its default)
_NEEDS: dict[str, list[tuple[str, str, object]]] = {}


def _flags(group: argparse._ArgumentGroup, *but: str) -> list[tuple[str, str, object]]:
    return [(a.option_strings[0], a.dest, a.default) for a in group._group_actions if a.dest not in but]


def unused_flag(args: argparse.Namespace) -> str | None:
    """A flag given that nothing would read: the tracker's without --p2p, promotion without relays, a router's
    registration details without --register-with (each was taken without a word that it did nothing: adversarial
    sessions)."""
    for needed, dependents in _NEEDS.items():
        if getattr(args, needed.removeprefix("--").replace("-", "_")):
            continue
        for flag, dest, default in dependents:
            if getattr(args, dest) != default:
                return f"{flag} needs {needed}: without it, nothing reads it"
    if args.promote_upload is not None and args.relay_peers == 0:
        return "--promote-upload promotes peers to relays and sub-trackers: it needs relays (--relay-peers above 0)"
    return None


def run(args: argparse.Namespace) -> int:
    from edgeswarm.node.daemon import setup_logging
    from edgeswarm.node.workers import MAX_PER_CORE, usable_cores
    from edgeswarm.roles import edgeworkers
    from edgeswarm.trust import tls

    setup_logging(args.log_level)
    config = EdgeConfig.from_options(args, token=options.token(args))  # a bad --cors-origin combination stops here
    unused = unused_flag(args)
    if unused is not None:
        print(f"edgeswarm edge: {unused}", file=sys.stderr)
        return 2
    cores = usable_cores()
    if (config.workers or 1) > MAX_PER_CORE * cores:
        print(
            f"edgeswarm edge: --workers {config.workers} is more than {MAX_PER_CORE} a usable core ({cores} here, so at most "
            f"{MAX_PER_CORE * cores}): each worker is a process of its own, of about 50 MB",
            file=sys.stderr,
        )
        return 2
    registration = _registration(config, args.listen[0])  # and so does an incomplete --register-with, before anything is created
    if config.regions is not None:  # a bad map stopped the edge once its cache and swarm key were made
        from edgeswarm.roles.announce import load_region_map

        load_region_map(config.regions)
    ssl_context = tls.server_options(args.tls_cert, args.tls_key)
    tls.client_context(config.ca)  # as --regions: a bad --ca or --ledger said once, before the workers each say it
    if config.ledger is not None:
        from edgeswarm.store.ledger import check_target

        check_target(config.ledger)
    return edgeworkers.run(config, args.listen, args.access_log, ssl_context, options.limits(args), registration)


def _registration(config: EdgeConfig, listen_host: str) -> Registration | None:
    """``--register-with``: checked here, so that a missing region or a wildcard address stops start-up with a reason."""
    from edgeswarm.node.registrar import Registration
    from edgeswarm.trust import tls

    if not config.register_with:
        return None
    if not config.register_region or not config.register_capacity:
        raise ValueError("--register-with needs --register-region NAME and --register-capacity RATE")
    if config.register_url is None and listen_host in ("", "0.0.0.0", "::"):
        raise ValueError(f"--listen {listen_host} is every address: give --register-url, the URL clients reach this edge at")
    return Registration(
        list(config.register_with),
        config.register_region,
        config.register_capacity,
        config.register_url,
        options.secret(config.register_secret_file),
        tls.client_context(config.ca),
    )
