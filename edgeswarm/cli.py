"""The ``edgeswarm`` command: one program, a subcommand per role or tool."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
from pathlib import Path

from edgeswarm.choker import SLOTS
from edgeswarm.daemon import ServerLimits, setup_logging
from edgeswarm.ledger import LedgerError
from edgeswarm.signing import KeyFileError
from edgeswarm.units import UnitError, ascii_decimal, parse_listen, parse_rate, parse_size

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


EPILOG_PEER = """\
examples (p2pd scenarios 4 and 5, client contribution):
  edgeswarm peer --cache ~/.cache/edgeswarm --edge http://edge.example:8080
  mpv http://127.0.0.1:1111/films/a.mp4        # streams while it downloads
  edgeswarm peer --cache /tmp/p1 --edge http://e1:8080 --edge http://e2:8080 \\
      --listen 192.0.2.7:6881 --upload-limit 2MB/s --upload-slots 6
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
                           misbehaving nodes (edgeswarm/doubles.py) against a region, with a fresh victim peer

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
    _credentials(p, "this edge")
    _tls_server(p)
    _connection_limits(p)
    _common(p, "127.0.0.1:8080")

    p = sub.add_parser(
        "peer",
        help="the user's daemon: a local gateway for players, sharing with other peers (p2pd client mode)",
        epilog=EPILOG_PEER,
        formatter_class=fmt,
        description="Stream and download through a local gateway, from edges and other peers at once; upload to other peers within a cap.",
    )
    p.add_argument("--cache", type=Path, required=True, metavar="DIR", help="where pieces are kept (resumes after a restart)")
    p.add_argument("--edge", type=_url, action="append", required=True, metavar="URL", help="edge to use (repeatable: the fastest wins)")
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
    p.add_argument("url", metavar="URL", help="the file at an edge, such as http://edge:8080/path/file")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write it (default: the file's name, here)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="keep pieces here, so a rerun resumes (default: a temporary dir)")
    p.add_argument("--edge", type=_url, action="append", default=[], metavar="URL", help="further edges to use (repeatable)")
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

    from edgeswarm import doubles, sim, tokens, usage  # options only: numpy and friends load when a simulation runs

    doubles.add_parser(sub)
    tokens.add_parser(sub)
    usage.add_parser(sub)
    sim.add_parser(sub)
    return parser


def _tracker(args: argparse.Namespace):
    from edgeswarm.announce import TrackerService
    from edgeswarm.peerstore import open_store
    from edgeswarm.regions import RegionMap
    from edgeswarm.tracker import Limits

    regions = RegionMap.load(args.regions) if args.regions else None
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
    known = {"state": Path, "key": Path, "tls_cert": Path, "tls_key": Path, "protect": list, "scan_interval": _positive}
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
        from edgeswarm import origin, tls

        setup_logging(args.log_level)
        if args.config is not None:
            _apply_config(args)
        args.scan_interval = args.scan_interval or 1.0
        if not args.publish.is_dir():
            print(f"edgeswarm origin: {args.publish} is not a directory", file=sys.stderr)
            return 2
        state = args.state or args.publish / ".edgeswarm"
        ssl_context = tls.server_options(args.tls_cert, args.tls_key)
        node = origin.Origin(args.publish, state, args.key or state / "origin.key", args.scan_interval, args.protect)
        asyncio.run(origin.run(node, args.listen, args.access_log, ssl_context, _limits(args)))
        return 0
    if args.command == "edge":
        from edgeswarm import edge, tls
        from edgeswarm.ledger import Ledger

        setup_logging(args.log_level)
        if args.tracker_store != "memory" and not args.p2p:
            print("edgeswarm edge: --tracker-store is the tracker's: it needs --p2p", file=sys.stderr)
            return 2
        name = args.name or f"{socket.gethostname()}:{args.cache.resolve()}"
        ledger = Ledger(args.ledger or str(args.cache / "ledger.sqlite"), name)
        ssl_context = tls.server_options(args.tls_cert, args.tls_key)
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
            _tracker(args) if args.p2p else None,
            args.upload_limit,
            require_token=args.require_token,
            token=_token(args),
            ca=tls.client_context(args.ca),
            ledger=ledger,
        )
        asyncio.run(edge.run(node, args.listen, args.access_log, ssl_context, _limits(args)))
        return 0
    if args.command == "peer":
        from edgeswarm import peer, tls

        setup_logging(args.log_level)
        node = peer.Peer(
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
        )
        asyncio.run(peer.run(node, args.listen, args.gateway, args.access_log, _limits(args)))
        return 0
    if args.command == "get":
        from edgeswarm import get

        setup_logging(args.log_level)
        return get.run(
            args.url, args.output, args.cache, args.listen, args.upload_limit, args.edge, args.stall_timeout, _token(args), args.ca
        )
    if args.command in ("lab", "chaos"):
        from edgeswarm import lab, scenario

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
        from edgeswarm import doubles

        return doubles.run(args)
    if args.command == "demo":
        from edgeswarm import demo

        return demo.run(args.out, args.peers, args.workdir)
    if args.command == "sim":
        from edgeswarm import sim

        return sim.run(args)
    if args.command == "token":
        from edgeswarm import tokens

        return tokens.run(args)
    if args.command == "usage":
        from edgeswarm import usage

        return usage.run(args)
    if args.command == "bench" and args.bench == "swarm":
        from edgeswarm import bench_swarm

        if args.regions > 254:
            print("edgeswarm bench swarm: --regions is at most 254 (127.R.0.0/16 each)", file=sys.stderr)
            return 2
        crowd = bench_swarm.Crowd(args.mode, args.peers, args.regions, args.size, args.edge_upload, args.peer_upload)
        return bench_swarm.run(crowd, args.json, args.workdir)
    if args.command == "bench" and args.bench == "tracker":
        from edgeswarm import bench_tracker

        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        if not stores or set(stores) - {"memory", "redis"}:
            print(f"edgeswarm bench tracker: --stores takes memory and/or redis, not {args.stores!r}", file=sys.stderr)
            return 2
        return bench_tracker.run(args.peers, args.contents, args.pieces, args.duration, args.concurrency, stores, args.json)
    if args.command == "bench" and args.bench == "players":
        from edgeswarm import bench_players

        return bench_players.run(args.runs, args.json, args.workdir)
    if args.command == "bench":
        from edgeswarm import bench_serve

        return bench_serve.run(args.size, args.duration, args.connections, args.json, args.protected)
    raise AssertionError(args.command)
