"""``edgeswarm origin``: publish a directory, with signed manifests, over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from edgeswarm.cli import options

EPILOG = """\
example (p2pd scenario 1, a single server):
  edgeswarm origin --publish /srv/media --listen 0.0.0.0:8000

Files appear at their relative path (/srv/media/films/a.mp4 -> /films/a.mp4)
within about a second of being written, and disappear when deleted.  Hidden
files and directories (.name) are not published, nor are top-level names
reserved for node endpoints (manifest, content, piece, have, announce, key,
origin-key, swarm-key, healthz, status, metrics, dashboard, torrent, magnet, scrape, preheat,
relay).

Users whose token has the publish scope upload through their edge (PUT, or
`edgeswarm publish FILE --edge URL`) into DIR/users/USER/, within
--user-quota bytes each and at most 16 unfinished uploads each (swept after
24 h untouched). Published paths (uploaded or in DIR) have at most 32
segments of 255 bytes, 1024 bytes in all:
  edgeswarm origin --publish /srv/media --user-quota 5GB --user-quota alice=50GB --user-quota mallory=0
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "origin",
        help="publish a directory (p2pd server mode)",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
        description="Publish every file under DIR, with signed manifests, over HTTP.",
    )
    p.add_argument("--publish", type=options.path, required=True, metavar="DIR", help="directory to publish")
    p.add_argument(
        "--key", type=options.path, metavar="FILE", help="Ed25519 signing key (PEM), created if missing (default STATE/origin.key)"
    )
    p.add_argument("--state", type=options.path, metavar="DIR", help="where manifests are kept across restarts (default DIR/.edgeswarm)")
    p.add_argument("--scan-interval", type=options.positive, metavar="SECONDS", help="how often DIR is checked for changes (default 1)")
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        type=options.name,
        metavar="GLOB",
        help="encrypt files whose path matches (such as 'films/*' or '*.mp4'; repeatable): nodes hold ciphertext, token holders get the key",
    )
    p.add_argument(
        "--web-seed",
        type=options.url,
        action="append",
        default=[],
        metavar="URL",
        help="an edge's public base URL, listed as a web seed in every torrent (repeatable; default: the origin itself)",
    )
    p.add_argument(
        "--user-quota",
        type=user_quota,
        action="append",
        default=[],
        metavar="[USER=]SIZE",
        help="bytes each publishing user may keep under users/USER/ (default 1GB); USER=SIZE for one user; 0 refuses uploads (repeatable)",
    )
    p.add_argument(
        "--config",
        type=options.path,
        metavar="FILE",
        help="YAML with any of these options by name (protect: [GLOB, ...], tls_cert: ...); flags win",
    )
    options.tls_server(p)
    options.connection_limits(p)
    options.daemon(p, "127.0.0.1:8000")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from edgeswarm.node.daemon import setup_logging
    from edgeswarm.roles import origin
    from edgeswarm.trust import tls

    setup_logging(args.log_level)
    if args.config is not None:
        apply_config(args)
    args.scan_interval = args.scan_interval or 1.0
    if not args.publish.is_dir():
        print(f"edgeswarm origin: {args.publish} is not a directory", file=sys.stderr)
        return 2
    state = args.state or args.publish / ".edgeswarm"
    key = args.key or state / "origin.key"
    problem = published_secret(args.publish, {"--state": state, "--key": key, "--tls-key": args.tls_key})
    if problem is not None:
        print(f"edgeswarm origin: {problem}", file=sys.stderr)
        return 2
    ssl_context = tls.server_options(args.tls_cert, args.tls_key)
    quota = quota_policy(args.user_quota, origin.DEFAULT_QUOTA)
    origin_node = origin.Origin(args.publish, state, key, args.scan_interval, args.protect, args.web_seed, quota)
    asyncio.run(origin.run(origin_node, args.listen, args.access_log, ssl_context, options.limits(args)))
    return 0


def published_secret(publish: Path, secrets: dict[str, Path | None]) -> str | None:
    """Why the origin must not start: a secret (its state, with the catalogue's content keys, its signing key, the TLS
    key) inside the published folder under a name the walk publishes (not hidden, as the default .edgeswarm is).

    ``--publish . --state state`` served ``GET /state/origin.key``: anyone could sign manifests every node takes, and
    read the content keys of every protected file (an adversarial session)."""
    root = publish.resolve()
    for flag, secret in secrets.items():
        if secret is None:
            continue
        where = secret.resolve()
        if where == root or root in where.parents:
            rel = where.relative_to(root)
            if not any(part.startswith(".") for part in rel.parts):
                where_said = "is the published folder" if where == root else "lies inside the published folder"
                return (
                    f"{flag} {str(secret)!r} {where_said} {str(publish)!r}, which would serve it to anyone: "
                    "put it elsewhere, or under a hidden name such as .edgeswarm (the default)"
                )
    return None


def user_quota(text: str) -> tuple[str | None, int]:
    """``--user-quota SIZE`` (everyone) or ``USER=SIZE`` (one user): (user or None, bytes)."""
    from edgeswarm.trust.tokens import publish_prefix_problem

    user, sep, size = text.rpartition("=")
    if sep and not user:
        raise argparse.ArgumentTypeError(f"expected SIZE or USER=SIZE, got {text!r}")
    problem = publish_prefix_problem(user) if user else None
    if problem is not None:  # a quota nobody can use: such a user can never publish (al/ice=1GB was taken silently)
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return (user or None, options.size(size))


def quota_policy(given: list[tuple[str | None, int]], default: int):
    """The QuotaPolicy of the --user-quota flags: the last bare SIZE is everyone's, USER=SIZE overrides it."""
    from edgeswarm.policy.quota import QuotaPolicy

    everyone = [n for user, n in given if user is None]
    return QuotaPolicy(everyone[-1] if everyone else default, {user: n for user, n in given if user is not None})


def apply_config(args: argparse.Namespace) -> None:
    """``origin --config FILE``: YAML naming options as flags do (dashes or underscores); a flag given wins, lists add up."""
    from edgeswarm.protocol.yamlfile import read_yaml

    doc = read_yaml(args.config, "config") or {}  # YamlFileError, a ValueError: a message and exit 2
    if not isinstance(doc, dict):
        raise ValueError(f"{args.config}: expected a mapping of option names to values")
    known: dict[str, Callable[[str], object]] = {
        "state": options.path,
        "key": options.path,
        "tls_cert": options.path,
        "tls_key": options.path,
        "protect": list,
        "scan_interval": options.positive,
    }
    seen: dict[str, str] = {}
    for name, value in doc.items():
        option = str(name).replace("-", "_")
        kind = known.get(option)
        if kind is None:
            raise ValueError(f"{args.config}: unknown option {name!r} (known: {', '.join(sorted(known))})")
        if option in seen:  # tls-cert and tls_cert: the second was dropped without a word
            raise ValueError(f"{args.config}: {name!r} and {seen[option]!r} name one option: give it once")
        seen[option] = str(name)
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"{args.config}: {name} must be a list of globs, none empty (as --protect)")
            args.protect = [*value, *args.protect]
        elif getattr(args, option) is None:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"{args.config}: {name} must be a string or a number")
            try:
                setattr(args, option, kind(str(value)))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{args.config}: {name}: {exc}") from None
