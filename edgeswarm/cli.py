"""The ``edgeswarm`` command: one program, a subcommand per role or tool."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgeswarm.node.daemon import ServerLimits, setup_logging
from edgeswarm.policy.choker import SLOTS
from edgeswarm.protocol.cors import CorsPolicy, parse_origin
from edgeswarm.protocol.units import UnitError, ascii_decimal, parse_listen, parse_rate, parse_size
from edgeswarm.store.ledger import LedgerError
from edgeswarm.trust.signing import KeyFileError

EPILOG_ORIGIN = """\
example (p2pd scenario 1, a single server):
  edgeswarm origin --publish /srv/media --listen 0.0.0.0:8000

Files appear at their relative path (/srv/media/films/a.mp4 -> /films/a.mp4)
within about a second of being written, and disappear when deleted.  Hidden
files and directories (.name) are not published, nor are top-level names
reserved for node endpoints (manifest, content, piece, have, announce, key,
origin-key, swarm-key, healthz, status, metrics).
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


EPILOG_ROUTER = """\
examples (two regions behind one router):
  edgeswarm router --regions regions.yaml --edge http://10.1.0.5:8080,east,1Gbit/s \\
      --edge http://10.2.0.5:8080,west,1Gbit/s --listen 0.0.0.0:8090 --dns-port 5353 --dns-name cdn.example.com
  curl -L http://router:8090/films/a.mp4 -o a.mp4          # 302 to an edge of the client's region
  dig @router -p 5353 cdn.example.com                        # A record of that edge
  curl 'http://router:8090/edges?path=films/a.mp4'           # ranked edges, JSON (peer --router uses it)
  curl -X POST http://127.0.0.1:8090/register -H 'Content-Type: application/json' \\
      -d '{"url": "http://10.1.0.6:8080", "region": "east", "capacity": "100MB/s"}'
"""


EPILOG_PEER = """\
examples (p2pd scenarios 4 and 5, client contribution):
  edgeswarm peer --cache ~/.cache/edgeswarm --edge http://edge.example:8080
  mpv http://127.0.0.1:1111/films/a.mp4        # streams while it downloads
  edgeswarm peer --cache /tmp/p1 --edge http://e1:8080 --edge http://e2:8080 \\
      --listen 192.0.2.7:6881 --upload-limit 2MB/s --upload-slots 6
  edgeswarm peer --cache /tmp/p2 --router http://router:8090 --listen 192.0.2.7:6881   # its region's edges
"""


EPILOG_LAB = """\
scenarios shipped:
  flash-crowd  a software update everyone wants at once (Verizon tiers)
  vod          Zipf-popular videos, Poisson arrivals, early quits (AT&T tiers)
  churn        peers crash mid-download and rejoin to resume
  chaos        every kind of fault in turn (see edgeswarm chaos --help)

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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    n = ascii_decimal(text)
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return n


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


def _tls_server(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate chain (PEM); needs --tls-key")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM)")


def _connection_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("client connections")
    g.add_argument(
        "--header-timeout",
        type=_positive,
        default=ServerLimits.header_timeout,
        metavar="SECONDS",
        help=f"close a connection whose request line and headers take longer (default {ServerLimits.header_timeout:g})",
    )
    g.add_argument(
        "--idle-timeout",
        type=_positive,
        default=ServerLimits.idle_timeout,
        metavar="SECONDS",
        help=f"close a kept-alive connection idle this long (default {ServerLimits.idle_timeout:g})",
    )
    g.add_argument(
        "--max-connections",
        type=_count,
        metavar="N",
        help="client connections open at once; a new one closes the longest idle (default: half the open-file limit less 64, at most 16384)",
    )


def _cors_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--cors-origin",
        type=_cors_origin,
        action="append",
        metavar="ORIGIN",
        help=f"who may read {what} from a web page on another origin (CORS; repeatable): '*' anyone (the default), "
        "scheme://host[:port] that origin, 'none' nobody",
    )


def _cors_origin(text: str) -> str:
    try:
        return parse_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cors(args: argparse.Namespace) -> CorsPolicy:
    return CorsPolicy.from_flags(args.cors_origin)


def _limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(args.header_timeout, args.idle_timeout, args.max_connections)


def _credentials(p: argparse.ArgumentParser, who: str) -> None:
    g = p.add_argument_group("trust")
    g.add_argument("--token", metavar="TOKEN", help=f"access token (from `edgeswarm token issue`) that {who} sends to edges")
    g.add_argument("--token-file", type=Path, metavar="FILE", help="read the token from this file instead (kept out of ps)")
    g.add_argument("--ca", type=Path, metavar="FILE", help="verify HTTPS edges and parents against this CA (PEM; default: the system's)")


def _token(args: argparse.Namespace) -> str | None:
    """--token or --token-file: the file's last non-empty line, so `token issue > f` works as is."""
    if args.token and args.token_file:
        raise ValueError("give --token or --token-file, not both")
    if args.token_file:
        lines = [line.strip() for line in args.token_file.read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{args.token_file} holds no token")
        return lines[-1]
    return args.token


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
        description="Hybrid CDN-P2P content delivery: an origin, edge caches, and peers that share with each other.",
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
    p.add_argument("--scan-interval", type=_positive, metavar="SECONDS", help="how often DIR is checked for changes (default 1)")
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="GLOB",
        help="encrypt files whose path matches (such as 'films/*' or '*.mp4'; repeatable): nodes hold ciphertext, token holders get the key",
    )
    p.add_argument(
        "--web-seed",
        type=_url,
        action="append",
        default=[],
        metavar="URL",
        help="an edge's public base URL, listed as a web seed in every torrent (repeatable; default: the origin itself)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML with any of these options by name (protect: [GLOB, ...], tls_cert: ...); flags win",
    )
    _tls_server(p)
    _connection_limits(p)
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
    p2p = p.add_argument_group("p2p mode (p2pd -i): the edge as tracker and super peer of its region")
    p2p.add_argument("--p2p", action="store_true", help="track the peers that fetch from this edge and hand them to each other")
    p2p.add_argument(
        "--regions", type=Path, metavar="FILE", help="region map (YAML or JSON: CIDR -> ISP and region); default: one region for all"
    )
    p2p.add_argument(
        "--locality",
        choices=["strict", "prefer"],
        default="prefer",
        help="strict: never hand a peer one of another region; prefer: same region first (default prefer)",
    )
    p2p.add_argument(
        "--announce-interval", type=_positive, default=300.0, metavar="SECONDS", help="how often peers re-announce (default 300)"
    )
    p2p.add_argument(
        "--max-peer-ids",
        type=_count,
        default=16,
        metavar="N",
        help="live peer ids per address (IPv6: per /64) and per token user (default 16)",
    )
    p2p.add_argument(
        "--announce-rate", type=_count, default=20, metavar="N", help="announces a second per address or token user (default 20)"
    )
    p2p.add_argument(
        "--tracker-store",
        default="memory",
        metavar="STORE",
        help="where the swarms and P2P-share totals live: memory (this edge only, the default) or redis://HOST:PORT/DB, "
        "shared by the edges of a region and kept across restarts",
    )
    p2p.add_argument(
        "--max-peer-rate", type=_rate, default=125_000_000, metavar="RATE", help="most a peer may claim to move each way (default 1Gbit/s)"
    )
    p.add_argument("--upload-limit", type=_rate, metavar="RATE", help="cap on what this edge sends, such as 10MB/s or 100Mbit/s")
    trust = p.add_argument_group("trust and accounting")
    trust.add_argument(
        "--require-token",
        action="store_true",
        help="serve files, manifests, pieces and announces only with a valid token for the path (Bearer or ?token=)",
    )
    trust.add_argument(
        "--ledger",
        metavar="PATH_OR_DSN",
        help="usage ledger: an SQLite file, or postgresql://... (default CACHE/ledger.sqlite)",
    )
    trust.add_argument("--name", metavar="NAME", help="this edge's name in a shared ledger (default: host name and cache dir)")
    _cors_flag(p, "this edge's answers")
    reg = p.add_argument_group("registering with routers (edgeswarm router)")
    reg.add_argument("--register-with", type=_url, action="append", default=[], metavar="URL", help="router to register with (repeatable)")
    reg.add_argument("--register-region", metavar="NAME", help="the region this edge serves, as in the routers' region map")
    reg.add_argument(
        "--register-capacity", type=_rate, metavar="RATE", help="what this edge may send, such as 1Gbit/s (routers compare its egress)"
    )
    reg.add_argument("--register-url", type=_url, metavar="URL", help="this edge's URL for clients (default: the address it listens on)")
    reg.add_argument("--register-secret-file", type=Path, metavar="FILE", help="the routers' registration secret (its last line)")
    _credentials(p, "this edge")
    _tls_server(p)
    _connection_limits(p)
    _common(p, "127.0.0.1:8080")

    p = sub.add_parser(
        "router",
        help="send each client to the best healthy edge of its region: HTTP 302, JSON for peers, DNS",
        epilog=EPILOG_ROUTER,
        formatter_class=fmt,
        description="Map a client's address to its region (the edges' region map) and to an up edge of it, keeping a path on "
        "the same edges (rendezvous hashing) and moving paths off edges that run hot; answer with a 302, with JSON "
        "(GET /edges?path=P) and with DNS A records; poll every edge's /status to mark it down or up.",
    )
    p.add_argument("--regions", type=Path, required=True, metavar="FILE", help="region map: CIDR -> ISP and region, as the edges use")
    p.add_argument(
        "--edge",
        action="append",
        default=[],
        metavar="URL,REGION,CAPACITY",
        help="an edge, its region and what it may send, such as http://10.1.0.5:8080,east,1Gbit/s (repeatable)",
    )
    p.add_argument("--edge-list", type=Path, metavar="FILE", help="YAML or JSON {edges: [{url, region, capacity}, ...]}")
    p.add_argument(
        "--register-secret-file",
        type=Path,
        metavar="FILE",
        help="POST /register needs Authorization: Bearer <the file's last line> (default: no secret, loopback only)",
    )
    p.add_argument("--default-region", metavar="NAME", help="region of clients the map does not place (default: refuse them)")
    health = p.add_argument_group("health (docs/operations.md#the-router-health-and-failover)")
    health.add_argument(
        "--poll-interval", type=_positive, default=2.0, metavar="SECONDS", help="each edge's /status, this often (default 2)"
    )
    health.add_argument(
        "--poll-timeout", type=_positive, metavar="SECONDS", help="a poll not answered by then fails (default: half the interval)"
    )
    health.add_argument(
        "--down-after", type=_count, default=1, metavar="N", help="failed polls in a row that make an edge down (default 1)"
    )
    health.add_argument("--up-after", type=_count, default=2, metavar="N", help="good polls in a row that bring it back (default 2)")
    health.add_argument(
        "--max-error-rate", type=float, default=0.5, metavar="X", help="5xx share of an interval's answers that fails a poll (default 0.5)"
    )
    health.add_argument(
        "--hot-load", type=float, default=0.8, metavar="X", help="egress / capacity above which an edge sheds paths (default 0.8)"
    )
    dns = p.add_argument_group("DNS")
    dns.add_argument("--dns-port", type=int, metavar="PORT", help="answer DNS on this UDP port (0: a free one; default: no DNS)")
    dns.add_argument("--dns-host", metavar="HOST", help="address for DNS (default: the --listen host)")
    dns.add_argument(
        "--dns-name", default="cdn.example.com", metavar="NAME", help="the name answered, and names under it (default cdn.example.com)"
    )
    dns.add_argument("--dns-ttl", type=int, default=5, metavar="SECONDS", help="TTL of the answers (default 5)")
    dns.add_argument("--dns-answers", type=_count, default=1, metavar="N", help="A records per answer, best first (default 1)")
    _connection_limits(p)
    _common(p, "127.0.0.1:8090")

    p = sub.add_parser(
        "peer",
        help="the user's daemon: a local gateway for players, sharing with other peers (p2pd client mode)",
        epilog=EPILOG_PEER,
        formatter_class=fmt,
        description="Stream and download through a local gateway, from edges and other peers at once; upload to other peers within a cap.",
    )
    p.add_argument("--cache", type=Path, required=True, metavar="DIR", help="where pieces are kept (resumes after a restart)")
    p.add_argument("--edge", type=_url, action="append", default=[], metavar="URL", help="edge to use (repeatable: the fastest wins)")
    p.add_argument("--router", type=_url, metavar="URL", help="learn this address's edges from a router (GET /edges), and follow it")
    p.add_argument(
        "--gateway",
        type=_listen,
        default="127.0.0.1:1111",
        metavar="HOST:PORT",
        help="local HTTP gateway for players (default 127.0.0.1:1111)",
    )
    p.add_argument("--upload-limit", type=_rate, metavar="RATE", help="upload cap such as 2MB/s, 500KB/s or 20Mbit/s (default: none)")
    p.add_argument(
        "--download-limit",
        type=_rate,
        metavar="RATE",
        help="cap on what this peer fetches from edges and peers, as a slow access link would (default: none)",
    )
    p.add_argument("--upload-slots", type=_count, default=SLOTS, metavar="N", help=f"peers served at once (default {SLOTS})")
    p.add_argument("--max-cache", type=_size, metavar="SIZE", help="cache quota (default: no limit)")
    p.add_argument("--origin-key", type=Path, metavar="FILE", help="origin public key to pin (default: learned from the edge)")
    p.add_argument(
        "--read-timeout",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="a gateway read waiting this long for a piece fails with 504 (default 30)",
    )
    _cors_flag(p, "the gateway's answers (protected content and /status: listed origins only)")
    _credentials(p, "this peer")
    _connection_limits(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity (default info)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--listen",
        type=_listen,
        default="0.0.0.0:6881",
        metavar="HOST:PORT",
        help="upload server for other peers (default 0.0.0.0:6881); outgoing connections leave from HOST when it is not 0.0.0.0",
    )

    p = sub.add_parser(
        "get",
        help="download one whole file through the swarm, like wget",
        description="Download a file from an edge and its peers, verify every piece, and write it out.",
        epilog="example:\n  edgeswarm get http://edge.example:8080/updates/os-2.1.img -o os.img",
        formatter_class=fmt,
    )
    p.add_argument("url", metavar="URL", help="the file at an edge, such as http://edge:8080/path/file (with --router: or /path/file)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write it (default: the file's name, here)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="keep pieces here, so a rerun resumes (default: a temporary dir)")
    p.add_argument("--edge", type=_url, action="append", default=[], metavar="URL", help="further edges to use (repeatable)")
    p.add_argument("--router", type=_url, metavar="URL", help="the edges come from this router (URL may then be just the path)")
    p.add_argument(
        "--listen", type=_listen, default="0.0.0.0:0", metavar="HOST:PORT", help="upload server while downloading (default 0.0.0.0:0)"
    )
    p.add_argument("--upload-limit", type=_rate, metavar="RATE", help="upload cap while downloading")
    p.add_argument(
        "--stall-timeout", type=_positive, default=60.0, metavar="SECONDS", help="give up when nothing arrives for this long (default 60)"
    )
    _credentials(p, "the download")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="log verbosity (default warning)")

    p = sub.add_parser(
        "demo",
        help="the whole system in about a minute: a flash crowd and a VoD session in two regions, then the report",
        description="Start an origin and two regions, each with an edge and a dozen peers on tiered links, on loopback; "
        "run a flash crowd (a software update) and a short video-on-demand session through them; report the P2P share, "
        "what the edges saved, download and startup times and rebuffering, and write plots. Nothing is left running.",
    )
    p.add_argument("--peers", type=_count, default=12, metavar="N", help="peers per region (default 12)")
    p.add_argument(
        "--out", type=Path, default=Path("edgeswarm-demo"), metavar="DIR", help="plots and demo.json go here (default ./edgeswarm-demo)"
    )
    p.add_argument("--workdir", type=Path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")

    p = sub.add_parser(
        "lab",
        help="run a whole deployment of real daemons through a scenario and report what P2P saved",
        description="Start an origin, one edge per region and the scenario's peers on this machine, play the users "
        "(downloads, viewers, churn), then report bytes by source, P2P share per region, bytes that crossed regions, "
        "completion times against the lower bound, startup delay and rebuffering, with a table, JSON and PNG plots.",
        epilog=EPILOG_LAB,
        formatter_class=fmt,
    )
    p.add_argument("scenario", metavar="SCENARIO", help="flash-crowd, vod, churn, or a scenario YAML file")
    p.add_argument("--peers", type=_count, metavar="N", help="peers per region (default: the scenario's)")
    p.add_argument("--regions", type=_count, metavar="N", help="this many regions like the scenario's first (default: the scenario's)")
    p.add_argument("--size", metavar="SIZE", help="download size such as 16MiB (default: the scenario's)")
    p.add_argument("--rate-scale", type=_positive, metavar="X", help="multiply the tiers' 2007 rates by X (default: the scenario's)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for arrivals, tiers and choices (default: the scenario's)")
    p.add_argument("--timeout", type=_positive, metavar="SECONDS", help="give up when users are not done by then (default: the scenario's)")
    p.add_argument("--netns", action="store_true", help="every node in its own network namespace, links shaped with tc (root only)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure, per user and over time, here")
    p.add_argument("--plots", type=Path, metavar="DIR", help="PNG plots here (default: lab-SCENARIO-plots beside the JSON or here)")
    p.add_argument("--workdir", type=Path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")

    p = sub.add_parser(
        "chaos",
        help="a lab run under a schedule of faults: kills, a full disk, lying and flooding nodes; what got through",
        description="Run a lab download scenario with its fault schedule (kill, restart, disk_full, corrupt_peer, bloating_peer, "
        "lying_parent, sybil, slowloris) and report downloads completed, corrupt bytes delivered (every read is compared "
        "with the original), data lost, the worst RSS of any process and the time to recover after each fault. "
        "Exit 1 if a wrong byte was delivered or a node crashed. `edgeswarm lab chaos` is the same run.",
        epilog=EPILOG_CHAOS,
        formatter_class=fmt,
    )
    p.add_argument("scenario", nargs="?", default="chaos", metavar="SCENARIO", help="a scenario with faults (default: chaos)")
    p.add_argument("--peers", type=_count, metavar="N", help="peers per region (default: the scenario's)")
    p.add_argument("--size", metavar="SIZE", help="download size such as 16MiB (default: the scenario's)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for arrivals, tiers and choices (default: the scenario's)")
    p.add_argument("--timeout", type=_positive, metavar="SECONDS", help="end the run by then (default: the scenario's)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure, per fault, user and node, here")
    p.add_argument("--plots", type=Path, metavar="DIR", help="PNG plots here (default: lab-SCENARIO-plots beside the JSON or here)")
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
    b.add_argument(
        "--protected", action="store_true", help="publish the file protected: the edge decrypts it (AES-128-CTR) for every request"
    )
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
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
    b.add_argument("--peers", type=_count, default=20, metavar="N", help="peers in the crowd (default 20)")
    b.add_argument(
        "--regions", type=_count, default=1, metavar="R", help="regions (127.R.0.0/16), peers dealt round robin (default 1; at most 254)"
    )
    b.add_argument("--size", type=_size, default=parse_size("16MiB"), metavar="SIZE", help="file size (default 16MiB)")
    b.add_argument("--edge-upload", type=_rate, default=parse_rate("2MB/s"), metavar="RATE", help="edge upload cap u_s (default 2MB/s)")
    b.add_argument(
        "--peer-upload", type=_rate, default=parse_rate("1MB/s"), metavar="RATE", help="each peer's upload cap u_i (default 1MB/s)"
    )
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=Path, metavar="DIR", help="keep files and logs here (default: a temporary directory)")

    b = bsub.add_parser(
        "router",
        help="the router's decisions per second, by HTTP (302) and by DNS",
        description="A router in front of four edges in two regions: wrk asks it for random paths (302s), a UDP client keeps "
        "64 DNS queries in flight; prints decisions per second for each, and for the policy alone in process. No target.",
    )
    b.add_argument("--duration", type=_count, default=10, metavar="SECONDS", help="length of each way's run (default 10)")
    b.add_argument("--connections", type=_count, default=32, metavar="N", help="wrk concurrent connections (default 32)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=Path, metavar="DIR", help="keep logs here (default: a temporary directory)")

    b = bsub.add_parser(
        "players",
        help="ffprobe and a seek through a cold gateway against a cold edge",
        description="Make a moov-at-end MP4 and a WebM with ffmpeg, publish them through an origin, and time ffprobe on each and "
        "`ffmpeg -ss` to the middle of the MP4 straight against a cold p2p edge and through a cold peer gateway (with its own cold "
        "edge): fresh nodes with empty caches for every request, only the origin shared, daemons' defaults. Prints the medians "
        "and gateway/edge per request against the target of 1.5 x (issue 12). Needs ffmpeg and ffprobe.",
    )
    b.add_argument("--runs", type=_count, default=3, metavar="N", help="requests per case and way, each on fresh cold nodes (default 3)")
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    b.add_argument("--workdir", type=Path, metavar="DIR", help="keep media, caches and logs here (default: a temporary directory)")

    b = bsub.add_parser(
        "tracker",
        help="simulated announces against the tracker, memory and Redis stores",
        description="Drive the tracker service in this process (no daemons, no HTTP) with simulated announces: N peers of one "
        "region join contents of P pieces, then random peers announce updates for a while. Prints announces per second "
        "(wall and per CPU second of this process: one core) and the p50/p99 answer time, for the memory store and for "
        "Redis (a redis-server the bench starts). Goal (issue 13): >= 5 000 announces/s on one core, p99 < 50 ms.",
    )
    b.add_argument("--peers", type=_count, default=100_000, metavar="N", help="simulated peers, one region (default 100000)")
    b.add_argument("--contents", type=_count, default=10, metavar="N", help="contents, peers dealt round robin (default 10)")
    b.add_argument("--pieces", type=_count, default=1000, metavar="N", help="pieces per content (default 1000)")
    b.add_argument("--duration", type=_positive, default=10.0, metavar="SECONDS", help="length of the update phase (default 10)")
    b.add_argument("--concurrency", type=_count, default=16, metavar="N", help="announces in flight at once (default 16)")
    b.add_argument(
        "--stores", default="memory,redis", metavar="LIST", help="stores to measure, comma-separated: memory, redis (default both)"
    )
    b.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")

    # options only: numpy and friends load when a simulation runs
    from edgeswarm.measure import doubles, usage
    from edgeswarm.sim import sim
    from edgeswarm.trust import tokens

    doubles.add_parser(sub)
    tokens.add_parser(sub)
    usage.add_parser(sub)
    sim.add_parser(sub)
    return parser


def _tracker(args: argparse.Namespace):
    from edgeswarm.policy.tracker import Limits
    from edgeswarm.roles.announce import TrackerService, load_region_map
    from edgeswarm.store.redispeers import open_store

    regions = load_region_map(args.regions) if args.regions else None
    limits = Limits(args.max_peer_ids, args.max_peer_ids, args.announce_rate, 10 * args.announce_rate)
    store = open_store(args.tracker_store, 3 * args.announce_interval)  # ValueError for a bad URL: a message and exit 2
    return TrackerService(regions, args.locality, args.announce_interval, limits, args.max_peer_rate, store)


def _apply_config(args: argparse.Namespace) -> None:
    """``origin --config FILE``: YAML naming options as flags do (dashes or underscores); a flag given wins, lists add up."""
    import yaml

    try:
        doc = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{args.config}: not YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{args.config}: expected a mapping of option names to values")
    known: dict[str, Callable[[str], object]] = {
        "state": Path,
        "key": Path,
        "tls_cert": Path,
        "tls_key": Path,
        "protect": list,
        "scan_interval": _positive,
    }
    for name, value in doc.items():
        option = str(name).replace("-", "_")
        kind = known.get(option)
        if kind is None:
            raise ValueError(f"{args.config}: unknown option {name!r} (known: {', '.join(sorted(known))})")
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{args.config}: {name} must be a list of globs")
            args.protect = [*value, *args.protect]
        elif getattr(args, option) is None:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"{args.config}: {name} must be a string or a number")
            try:
                setattr(args, option, kind(str(value)))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{args.config}: {name}: {exc}") from None


def _registration(args: argparse.Namespace):
    """``edge --register-with``: checked here, so that a missing region or a wildcard address stops start-up with a reason."""
    from edgeswarm.node.registrar import Registration

    if not args.register_with:
        return None
    if not args.register_region or not args.register_capacity:
        raise ValueError("--register-with needs --register-region NAME and --register-capacity RATE")
    if args.register_url is None and args.listen[0] in ("", "0.0.0.0", "::"):
        raise ValueError(f"--listen {args.listen[0]} is every address: give --register-url, the URL clients reach this edge at")
    return Registration(
        args.register_with, args.register_region, args.register_capacity, args.register_url, _secret(args.register_secret_file)
    )


def _secret(path: Path | None) -> str | None:
    """A secret file's last non-empty line (so `echo s > f` and editors' trailing newlines both work)."""
    if path is None:
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no secret")
    return lines[-1]


def _router(args: argparse.Namespace) -> int:
    """``edgeswarm router``: the table from the flags and files, checked before anything listens."""
    from edgeswarm.policy import routing
    from edgeswarm.protocol import registration
    from edgeswarm.roles import router
    from edgeswarm.roles.announce import load_region_map

    setup_logging(args.log_level)
    regions = load_region_map(args.regions)
    names = [r.name for r in regions.regions]
    if not 0 <= args.max_error_rate <= 1 or not args.hot_load > 0:
        raise ValueError("--max-error-rate is a share from 0 to 1, and --hot-load a positive share of capacity")
    if args.dns_port is not None and not 0 <= args.dns_port <= 65535:
        raise ValueError(f"--dns-port {args.dns_port} is not a port")
    thresholds = routing.Thresholds(args.down_after, args.up_after, args.max_error_rate, routing.Thresholds.min_requests, args.hot_load)
    table = routing.RoutingTable(thresholds)
    specs = [registration.parse_edge_flag(text, names) for text in args.edge]
    if args.edge_list is not None:
        specs += registration.load_edge_list(args.edge_list, names)
    now = time.monotonic()
    for spec in specs:
        table.add(spec, now)
    secret = _secret(args.register_secret_file)
    config = router.RouterConfig(
        args.poll_interval, args.poll_timeout, args.dns_name.rstrip("."), args.dns_ttl, args.dns_answers, secret, args.default_region
    )
    node = router.Router(regions, table, config)
    dns = (args.dns_host or args.listen[0], args.dns_port) if args.dns_port is not None else None
    asyncio.run(router.run(node, args.listen, dns, args.access_log, _limits(args)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except (KeyFileError, LedgerError, OSError, ValueError) as exc:
        print(f"edgeswarm {args.command}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "origin":
        from edgeswarm.roles import origin
        from edgeswarm.trust import tls

        setup_logging(args.log_level)
        if args.config is not None:
            _apply_config(args)
        args.scan_interval = args.scan_interval or 1.0
        if not args.publish.is_dir():
            print(f"edgeswarm origin: {args.publish} is not a directory", file=sys.stderr)
            return 2
        state = args.state or args.publish / ".edgeswarm"
        ssl_context = tls.server_options(args.tls_cert, args.tls_key)
        origin_node = origin.Origin(args.publish, state, args.key or state / "origin.key", args.scan_interval, args.protect, args.web_seed)
        asyncio.run(origin.run(origin_node, args.listen, args.access_log, ssl_context, _limits(args)))
        return 0
    if args.command == "edge":
        from edgeswarm.roles import edge
        from edgeswarm.store.ledger import Ledger
        from edgeswarm.trust import tls

        setup_logging(args.log_level)
        cors = _cors(args)  # a bad combination stops here, before anything is created
        if args.tracker_store != "memory" and not args.p2p:
            print("edgeswarm edge: --tracker-store is the tracker's: it needs --p2p", file=sys.stderr)
            return 2
        name = args.name or f"{socket.gethostname()}:{args.cache.resolve()}"
        ledger = Ledger(args.ledger or str(args.cache / "ledger.sqlite"), name)
        ssl_context = tls.server_options(args.tls_cert, args.tls_key)
        edge_node = edge.Edge(
            args.cache,
            args.parent,
            args.sibling,
            args.max_cache,
            args.only_origin,
            args.internal,
            args.timeout,
            args.revalidate,
            args.origin_key,
            _tracker(args) if args.p2p else None,
            args.upload_limit,
            require_token=args.require_token,
            token=_token(args),
            ca=tls.client_context(args.ca),
            ledger=ledger,
            cors=cors,
        )
        asyncio.run(edge.run(edge_node, args.listen, args.access_log, ssl_context, _limits(args), _registration(args)))
        return 0
    if args.command == "router":
        return _router(args)
    if args.command == "peer":
        from edgeswarm.roles import peer
        from edgeswarm.trust import tls

        setup_logging(args.log_level)
        cors = _cors(args)
        if not args.edge and not args.router:
            print("edgeswarm peer: give --edge URL (repeatable) or --router URL", file=sys.stderr)
            return 2
        peer_node = peer.Peer(
            args.cache,
            args.edge,
            args.upload_limit,
            args.upload_slots,
            args.origin_key,
            bind=args.listen[0],
            max_cache=args.max_cache,
            read_timeout=args.read_timeout,
            download_limit=args.download_limit,
            token=_token(args),
            ca=tls.client_context(args.ca),
            cors=cors,
            router=args.router,
        )
        asyncio.run(peer.run(peer_node, args.listen, args.gateway, args.access_log, _limits(args)))
        return 0
    if args.command == "get":
        from edgeswarm.roles import get

        setup_logging(args.log_level)
        return get.run(
            args.url,
            args.output,
            args.cache,
            args.listen,
            args.upload_limit,
            args.edge,
            args.stall_timeout,
            _token(args),
            args.ca,
            args.router,
        )
    if args.command in ("lab", "chaos"):
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
    if args.command == "double":
        from edgeswarm.measure import doubles

        return doubles.run(args)
    if args.command == "demo":
        from edgeswarm.measure import demo

        return demo.run(args.out, args.peers, args.workdir)
    if args.command == "sim":
        from edgeswarm.sim import sim

        return sim.run(args)
    if args.command == "token":
        from edgeswarm.trust import tokens

        return tokens.run(args)
    if args.command == "usage":
        from edgeswarm.measure import usage

        return usage.run(args)
    if args.command == "bench" and args.bench == "swarm":
        from edgeswarm.measure import bench_swarm

        if args.regions > 254:
            print("edgeswarm bench swarm: --regions is at most 254 (127.R.0.0/16 each)", file=sys.stderr)
            return 2
        crowd = bench_swarm.Crowd(args.mode, args.peers, args.regions, args.size, args.edge_upload, args.peer_upload)
        return bench_swarm.run(crowd, args.json, args.workdir)
    if args.command == "bench" and args.bench == "router":
        from edgeswarm.measure import bench_router

        return bench_router.run(args.duration, args.connections, args.json, args.workdir)
    if args.command == "bench" and args.bench == "tracker":
        from edgeswarm.measure import bench_tracker

        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        if not stores or set(stores) - {"memory", "redis"}:
            print(f"edgeswarm bench tracker: --stores takes memory and/or redis, not {args.stores!r}", file=sys.stderr)
            return 2
        return bench_tracker.run(args.peers, args.contents, args.pieces, args.duration, args.concurrency, stores, args.json)
    if args.command == "bench" and args.bench == "players":
        from edgeswarm.measure import bench_players

        return bench_players.run(args.runs, args.json, args.workdir)
    if args.command == "bench":
        from edgeswarm.measure import bench_serve

        return bench_serve.run(args.size, args.duration, args.connections, args.json, args.protected)
    raise AssertionError(args.command)
