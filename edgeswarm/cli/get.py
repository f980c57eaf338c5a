"""``edgeswarm get``: download one whole file through the swarm, like wget."""

from __future__ import annotations

import argparse
import socket
from urllib.parse import urlsplit

from edgeswarm.cli import options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "get",
        help="download one whole file through the swarm, like wget",
        description="Download a file from an edge and its peers, verify every piece, and write it out.",
        epilog="example:\n  edgeswarm get http://edge.example:8080/updates/os-2.1.img -o os.img",
        formatter_class=options.FORMATTER,
    )
    p.add_argument(
        "url", metavar="URL", help="the file at an edge or a router, such as http://edge:8080/path/file (with --router: or /path/file)"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write it, its missing folders made as curl --create-dirs does; - for standard output (default: the "
        "file's name, here)",
    )
    options.cache(p, "keep pieces here, so a rerun resumes (default: a temporary dir)", required=False)
    p.add_argument("--edge", type=options.url, action="append", default=[], metavar="URL", help="further edges to use (repeatable)")
    p.add_argument("--router", type=options.url, metavar="URL", help="the edges come from this router (URL may then be just the path)")
    p.add_argument(
        "--listen",
        type=options.listen_address,
        metavar="HOST:PORT",
        help="upload server while downloading (default 0.0.0.0:0, or [::]:0 when the file's, the router's or the first "
        "edge's URL names an IPv6 address: connections leave from the listener's IP version)",
    )
    options.upload_limit(p, "upload cap while downloading, such as 2MB/s (default: none)")
    p.add_argument(
        "--stall-timeout",
        type=options.positive,
        default=60.0,
        metavar="SECONDS",
        help="give up when nothing arrives for this long (default 60)",
    )
    options.origin_key(
        p,
        "the origin's public key (PEM) to check every piece against (default: the one pinned in --cache by an earlier run, "
        "else the one the edge serves, which a compromised edge could forge)",
    )
    options.credentials(p, "the download")
    options.log_flags(p, "warning", access_log=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from edgeswarm.node.daemon import setup_logging
    from edgeswarm.roles import get

    setup_logging(args.log_level)
    return get.run(
        args.url,
        args.output,
        args.cache,
        args.listen or wildcard_for(args.router or args.url, *args.edge),
        args.upload_limit,
        args.edge,
        args.stall_timeout,
        options.token(args),
        args.ca,
        args.router,
        args.origin_key,
    )


def wildcard_for(*urls: str) -> tuple[str, int]:
    """The default --listen: the wildcard of the first URL's IP version (a path has none), IPv4's for a host name.
    ``get http://[::1]:8080/f`` refused to start, "this node listens on IPv4 only" (an adversarial session)."""
    from edgeswarm.node.upstream import source_family  # run's: --help loads no aiohttp

    host = next((urlsplit(u).hostname for u in urls if "://" in u), None)
    return ("::", 0) if source_family(host) == socket.AF_INET6 else ("0.0.0.0", 0)
