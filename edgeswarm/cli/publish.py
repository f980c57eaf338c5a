"""``edgeswarm publish``: upload a file through an edge, resuming where an interrupted upload stopped."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from edgeswarm.cli import options

EPILOG = """\
examples:
  TOKEN=$(edgeswarm token issue --key pub/.edgeswarm/origin.key --user alice --path /users/alice/ --ttl 1d --scope publish)
  edgeswarm publish talk.mp4 --edge http://edge:8080 --token "$TOKEN"                 # -> /users/alice/talk.mp4
  edgeswarm publish talk.mp4 --edge http://edge:8080 --token-file alice.tok --as talks/2026/talk.mp4

The file goes to /users/USER/ (USER: the token's subject), under its own name or
--as.  Run the same command again after an interruption: it asks the origin how
much it holds and sends the rest.  exit status: 0 published, 1 refused or failed
(the reason is printed), 2 bad flags.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "publish",
        help="upload a file through an edge, under /users/USER/ (needs a token with the publish scope)",
        description="Upload FILE through an edge to the origin, which checks its length, SHA-256 and your quota, "
        "signs a manifest and serves it at /users/USER/NAME like any other file. Resumable.",
        epilog=EPILOG,
        formatter_class=options.FORMATTER,
    )
    p.add_argument("file", type=options.path, metavar="FILE", help="the file to publish")
    p.add_argument("--edge", type=options.url, required=True, metavar="URL", help="your edge (or the origin itself)")
    p.add_argument(
        "--as", dest="name", type=options.content_path, metavar="PATH", help="its path under /users/USER/ (default: FILE's name)"
    )
    p.add_argument(
        "--chunk-size",
        type=options.positive_size,
        default="8MiB",
        metavar="SIZE",
        help="bytes per request; an interruption loses at most one (default 8MiB)",
    )
    p.add_argument(
        "--retries", type=options.count, default=5, metavar="N", help="retries of a failed chunk, from the origin's offset (default 5)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.credentials(p, "publish")
    p.set_defaults(run=run)


def target(token: str, name: str | None, file: Path) -> str:
    """The published path: users/<the token's subject>/<--as or the file's name>."""
    from edgeswarm.trust import tokens

    return tokens.publish_prefix(tokens.unverified_subject(token)) + (name or file.name)


def run(args: argparse.Namespace) -> int:
    from edgeswarm.roles import uploader

    token = options.token(args)
    if not token:
        print("edgeswarm publish: a token with the publish scope is needed (--token or --token-file)", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"edgeswarm publish: {args.file} is not a file", file=sys.stderr)
        return 2
    job = uploader.Job(args.file, args.edge, target(token, args.name, args.file), token, args.chunk_size, args.ca, args.retries)
    try:
        done = asyncio.run(_run(job, args.no_progress))
    except uploader.PublishError as exc:
        print(f"edgeswarm publish: {exc}", file=sys.stderr)
        return 1
    resumed = f", resumed at byte {done.resumed_from}" if done.resumed_from else ""
    print(f"published {done.path} ({done.size} B, sha256 {done.sha256}{resumed}; {done.sent} B sent)", file=sys.stderr)
    print(uploader.file_url(args.edge, done.path))  # the URL a player or curl fetches it at: percent-encoded
    print(f"content id {done.content_id}", file=sys.stderr)
    return 0


async def _run(job, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from edgeswarm.roles import uploader

    err = Console(stderr=True)
    columns = (TextColumn(f"publish {job.path}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=quiet or not err.is_terminal) as bar:
        task = bar.add_task("bytes", total=job.file.stat().st_size)

        def retrying(why: str) -> None:  # one line each, above the bar on a terminal
            err.print(f"edgeswarm publish: {why}", markup=False, highlight=False, soft_wrap=True)

        return await uploader.publish(job, lambda n: bar.advance(task, n), lambda offset: bar.update(task, completed=offset), retrying)
