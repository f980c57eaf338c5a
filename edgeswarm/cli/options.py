"""Flag types and the flag groups several subcommands share, each declared once.

Types turn a flag's text into a value or an argparse error that names the
mistake; the groups (listening, logging, TLS, client connections, credentials,
and the cache flags of edge and peer) keep one spelling, type and default for
every subcommand that has them.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from pathlib import Path
from urllib.parse import urlsplit

from edgeswarm.node.daemon import ServerLimits
from edgeswarm.protocol import httpspec, paths
from edgeswarm.protocol.cors import parse_origin
from edgeswarm.protocol.units import UnitError, ascii_decimal, link_local_problem, parse_listen, parse_rate, parse_size

FORMATTER = argparse.RawDescriptionHelpFormatter  # epilogs keep their line breaks


# -- types -----------------------------------------------------------------------------------
def size(text: str) -> int:
    try:
        return parse_size(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_size(text: str) -> int:
    """A size that must hold at least a byte (``publish --chunk-size``: 0 sent a malformed Content-Range)."""
    n = size(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a size of at least one byte, got {text!r}")
    return n


def path(text: str) -> Path:
    """A file or folder flag's value, never empty: ``Path("")`` is the current folder, so an unset variable in a unit
    file (``--publish "$MEDIA"``) published the folder the origin started in, ``/`` under systemd, without a word
    (an adversarial session)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (an unset variable?): name the file or folder")
    return Path(text)


def output_file(text: str) -> Path:
    """A file a long run writes its figures to at its end (``--json``): checked now, so that a directory or a missing
    folder does not cost the run (a lab scenario lost its minutes of figures to it at the end: an adversarial session)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory: give a file's path")
    parent = path.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {str(parent)!r} is not writable")
    return path


def output_dir(text: str) -> Path:
    """A folder a long run fills at its end (``--plots``): made now, so that a path it cannot be is said at once."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder: {exc.strerror or exc}") from None
    return path


def rate(text: str) -> int:
    """A rate of at least a byte a second: ``0MB/s`` (or ``1bit/s``, rounded down) was taken as no cap, the default
    ``--upload-limit`` and ``--download-limit`` mean without one (an adversarial session)."""
    try:
        value = parse_rate(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate of at least 1 byte/s, got {text!r} (leave the flag out for none)")
    return value


def count(text: str) -> int:
    n = ascii_decimal(text)
    if n is None or n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return n


def count_or_zero(text: str) -> int:
    n = ascii_decimal(text)
    if n is None:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return n


def listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a network: {text!r} (expected CIDR such as 10.0.0.0/8)") from None
    return text


def url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bracketed host left open, or a port that is not one
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r} ({exc})") from None
    if (problem := link_local_problem(parts.hostname or "")) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def name(text: str) -> str:
    """A name, pattern or value that must say something (a region, a ledger name, a --protect glob, a token): an empty
    or blank one matched nothing, or everything, or was taken as none (an unset variable), with no word of it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def content_path(text: str) -> str:
    """A file's path in the namespace (``films/a.mp4``; a leading ``/`` is dropped), checked as nodes check request
    paths: ``x/../y.bin`` was resolved by the client's URL handling and replaced ``y.bin`` (an adversarial session)."""
    rel = text.lstrip("/")
    problem = paths.path_problem(rel)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} names no file: {problem}")
    return rel


def host_name(text: str) -> str:
    """A host name a node answers under (``--only-origin``, ``--gateway-host``): as a Host header names it, lower case;
    a port given with it is dropped (the Host's port is never compared)."""
    name = httpspec.host_name(text)
    if not name or not httpspec.is_authority(text.strip().rstrip(".")):
        raise argparse.ArgumentTypeError(
            f"not a host name: {text!r} (give the name, such as cdn.example.com: no scheme, user or path; an IPv6 address "
            "in brackets, such as [fd00::1])"
        )
    return name


def cors_origin(text: str) -> str:
    try:
        return parse_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str, what: str = "a positive number of seconds") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not (value > 0 and math.isfinite(value)):  # nan and inf too: a poll every nan seconds ran 2 000 times a second
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def factor(text: str) -> float:
    """A positive multiplier (``lab --rate-scale``): its error said "seconds"."""
    return positive(text, "a positive factor such as 0.5 or 2")


# -- flag groups -------------------------------------------------------------------------------
def listen(p: argparse.ArgumentParser, default: str, help: str | None = None) -> None:
    """``--listen HOST:PORT``: where a daemon serves."""
    help = help or f"address to serve on (default {default}; port 0 picks a free one)"
    p.add_argument("--listen", type=listen_address, default=default, metavar="HOST:PORT", help=help)


def log_flags(p: argparse.ArgumentParser, default: str = "info", access_log: bool = True) -> None:
    """``--log-level`` and, for daemons, ``--access-log``."""
    levels = ["debug", "info", "warning", "error"]
    p.add_argument("--log-level", default=default, choices=levels, help=f"log verbosity (default {default})")
    if access_log:
        p.add_argument("--access-log", action="store_true", help="log every request")


def daemon(p: argparse.ArgumentParser, default_listen: str) -> None:
    """What every server daemon has: ``--listen``, ``--log-level``, ``--access-log``."""
    listen(p, default_listen)
    log_flags(p)


def tls_server(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", type=path, metavar="FILE", help="serve HTTPS with this certificate chain (PEM); needs --tls-key")
    g.add_argument("--tls-key", type=path, metavar="FILE", help="the certificate's private key (PEM)")


def connection_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("client connections")
    g.add_argument(
        "--header-timeout",
        type=positive,
        default=ServerLimits.header_timeout,
        metavar="SECONDS",
        help=f"close a connection whose request line and headers take longer (default {ServerLimits.header_timeout:g})",
    )
    g.add_argument(
        "--idle-timeout",
        type=positive,
        default=ServerLimits.idle_timeout,
        metavar="SECONDS",
        help=f"close a kept-alive connection idle this long (default {ServerLimits.idle_timeout:g})",
    )
    g.add_argument(
        "--max-connections",
        type=count,
        metavar="N",
        help="client connections open at once; a new one closes the longest idle (default: the open-file limit's share for "
        "connections, beside the node's own and its piece files: 336 under 1024, at most 16384)",
    )


def cors(p: argparse.ArgumentParser, what: str) -> None:
    """``--cors-origin`` (edge and peer): read into the config's ``cors`` policy by ``from_options``."""
    p.add_argument(
        "--cors-origin",
        type=cors_origin,
        action="append",
        metavar="ORIGIN",
        help=f"who may read {what} from a web page on another origin (CORS; repeatable): '*' anyone (the default), "
        "scheme://host[:port] that origin, 'none' nobody",
    )


def limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(args.header_timeout, args.idle_timeout, args.max_connections)


def credentials(p: argparse.ArgumentParser, who: str, to: str = "edges") -> None:
    g = p.add_argument_group("trust")
    g.add_argument("--token", type=name, metavar="TOKEN", help=f"access token (from `edgeswarm token issue`) that {who} sends to {to}")
    g.add_argument("--token-file", type=path, metavar="FILE", help="read the token from this file instead (kept out of ps)")
    g.add_argument("--ca", type=path, metavar="FILE", help="verify HTTPS edges and parents against this CA (PEM; default: the system's)")


def token(args: argparse.Namespace) -> str | None:
    """--token or --token-file: the file's last non-empty line, so `token issue > f` works as is."""
    if args.token and args.token_file:
        raise ValueError("give --token or --token-file, not both")
    return _last_line(args.token_file, "token") if args.token_file else args.token


def secret(path: Path | None) -> str | None:
    """A secret file's last non-empty line (so `echo s > f` and editors' trailing newlines both work)."""
    return None if path is None else _last_line(path, "secret")


def _last_line(path: Path, what: str) -> str:
    """The last non-empty line of a token or secret file; ValueError naming the file (a directory, or bytes that are not
    UTF-8, said "[Errno 21] Is a directory" and "'utf-8' codec can't decode byte 0xff", without the file: an adversarial
    session)."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text (UTF-8): no {what} file") from None
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
    if not lines:
        raise ValueError(f"{path} holds no {what}")
    return lines[-1]


# -- the cache flags of edge and peer (EdgeConfig, PeerConfig) ---------------------------------
def cache(p: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    p.add_argument("--cache", type=path, required=required, metavar="DIR", help=help)


MIN_CACHE = 1_000_000  # bytes: a quota that holds no piece (0, 1B) cached nothing, and an operator meant "no limit" by 0


def cache_size(text: str) -> int:
    """A --max-cache: at least MIN_CACHE (an edge given 0 fetched every request from its parent, without a word)."""
    n = size(text)
    if n < MIN_CACHE:
        raise argparse.ArgumentTypeError(f"expected at least 1MB, got {text!r} (to set no limit, leave --max-cache out)")
    return n


def max_cache(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--max-cache", type=cache_size, metavar="SIZE", help=help)


def origin_key(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--origin-key", type=origin_key_file, metavar="FILE", help=help)


def origin_key_file(text: str) -> Path:
    """An origin key file read now: a missing one, a folder or another file said ``[Errno 2] …`` without the flag's
    name, once the edge had made its cache (an adversarial session)."""
    from edgeswarm.trust.signing import KeyFileError, load_public_key

    file = path(text)
    try:
        load_public_key(file.read_bytes(), text)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    except KeyFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return file


def upload_limit(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--upload-limit", type=rate, metavar="RATE", help=help)
