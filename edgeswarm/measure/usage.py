"""`edgeswarm usage report`: what the provider bills from, read out of an edge's usage ledger.

Only options and output live here; edgeswarm.store.ledger does the reading and the
cross-checks.  rich is imported when a report runs, so `edgeswarm --help`
stays quick.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from datetime import UTC, datetime

from edgeswarm.protocol.units import UnitError, parse_duration
from edgeswarm.store.ledger import BY, PERIOD, USAGE_COUNTERS, LedgerError, ReportRow, redact, report

EPILOG = """\
examples:
  edgeswarm usage report --ledger /var/cache/edgeswarm/ledger.sqlite
  edgeswarm usage report --ledger /var/cache/edgeswarm/ledger.sqlite --since 24h --by content
  edgeswarm usage report --ledger postgresql://billing@db.example/edgeswarm --since 2024-05-01 --until 2024-06-01 --csv > may.csv

--since and --until take an ISO 8601 date or date-time (UTC unless it has an
offset: 2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00+02:00) or a time ago
(90m, 24h, 7d, 2w); they select the ledger periods that start at or after
--since and before --until.

served by edge is what the edges measured sending, the billing basis; the other
columns are what users' peers reported.  Flags:
  edge-report-mismatch  a user's report of bytes from an edge differs from what that edge measured
  p2p-report-mismatch   this user's claimed uploads (or downloads) of a content are what nobody else's claims back
  claim-over-bound      the edge cut this user's claims: more than the content, its link or its neighbours allow
A flag means the reports disagree beyond the tolerance; check before crediting them.
"""


def parse_since(text: str, now: float | None = None, flag: str = "--since") -> float:
    """Epoch seconds from an ISO 8601 date/date-time (naive means UTC) or a time ago (90m, 24h, 7d: units.parse_duration with a unit)."""
    try:
        ago = parse_duration(text, unit_required=True)
    except UnitError:
        pass  # not a time ago (a bare number is a date here: 20240501), so perhaps a date
    else:
        since = (time.time() if now is None else now) - ago
        try:
            datetime.fromtimestamp(since, UTC)  # the report's title shows it as a date
        except (OverflowError, OSError, ValueError):  # 99999999d said 'year -271764 is out of range'
            raise ValueError(f"cannot read {flag} {text[:40]!r}: that time ago is before year 1; give a date or a shorter time") from None
        return since
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read {flag} {text!r}: expected an ISO 8601 date or date-time (2024-05-01, 2024-05-01T12:00Z) or a time ago (90m, 24h, 7d)"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)  # ledger periods are in UTC epoch seconds; a local reading would shift bills by hours
    return t.timestamp()


def add_parser(sub) -> None:
    """The `usage` subcommand and its `report` action."""
    p = sub.add_parser(
        "usage",
        help="usage records for billing: bytes per user, content and region",
        description="Read the usage ledger that edges write (SQLite file or PostgreSQL) and report per user, content or region.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usub = p.add_subparsers(dest="usage_command", required=True, metavar="ACTION")
    r = usub.add_parser(
        "report",
        help="totals per user, content or region, with cross-check flags",
        description="Totals of bytes served by edges and reported by peers over the selected periods, one row per user, "
        "content or region, flagged where uploader, downloader and edge reports disagree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--ledger",
        required=True,
        metavar="PATH_OR_DSN",
        help="the edge's SQLite ledger file, or a postgresql:// DSN shared by edges",
    )
    r.add_argument(
        "--since", metavar="T", help="only periods starting at or after T: ISO 8601 (UTC unless an offset) or 90m/24h/7d ago (default: all)"
    )
    r.add_argument(
        "--until",
        metavar="T",
        help="only periods starting before T, as --since: --since 2026-11-01 --until 2026-12-01 is November (default: all)",
    )
    r.add_argument("--by", choices=BY, default="user", help="one row per user, content path or region (default user)")
    r.add_argument("--csv", action="store_true", help="plain CSV on stdout, bytes as integers, for billing systems")


def run(args: argparse.Namespace) -> int:
    """Print the report; a bad --since or an unusable ledger: a one-line message and exit 2."""
    try:
        # "" is no date (an unset shell variable): refused, not read as every period
        since = parse_since(args.since) if args.since is not None else None
        until = parse_since(args.until, flag="--until") if args.until is not None else None
        if since is not None and until is not None and math.ceil(since / PERIOD) * PERIOD >= until:
            # an empty report, exit 0, looked like no usage: periods are whole hours, taken by their start (a review)
            raise ValueError(
                f"no hourly period starts from --since {args.since} and before --until {args.until}: the ledger keeps whole "
                "UTC hours, each in a report when its start is in the window"
            )
        rows = report(args.ledger, since=since, by=args.by, until=until)
    except (LedgerError, ValueError) as exc:
        print(f"edgeswarm usage: {exc}", file=sys.stderr)
        return 2
    if args.csv:
        _csv(rows, args.by)
    else:
        _table(rows, args, since, until)
    return 0


def _csv(rows: list[ReportRow], by: str) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow([by, "edge_sent", "reported_from_edge", "reported_from_peers", "reported_uploaded", "claim_excess", "p2p_share", "flags"])
    for r in rows:
        share = "" if r.p2p_share is None else f"{r.p2p_share:.4f}"
        out.writerow(
            [
                inert(r.key),
                r.edge_sent,
                r.reported_from_edge,
                r.reported_from_peers,
                r.reported_uploaded,
                r.claim_excess,
                share,
                " ".join(r.flags),
            ]
        )


def inert(cell: str) -> str:
    """A name as a spreadsheet reads it as text: one starting with = + - @ (or a tab or CR) is a formula to Excel and
    LibreOffice, so a user named ``=HYPERLINK(...)`` ran in the billing sheet (an adversarial session).  OWASP's
    remedy: a leading apostrophe."""
    return "'" + cell if len(cell) > 1 and cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell  # "-": anonymous


def _table(rows: list[ReportRow], args: argparse.Namespace, since: float | None, until: float | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from edgeswarm.measure.labreport import report_console
    from edgeswarm.protocol.units import format_bytes

    console = report_console()

    def day(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")

    bounds = ([f"from {day(since)}"] if since is not None else []) + ([f"before {day(until)}"] if until is not None else [])
    when = "periods " + " ".join(bounds) if bounds else "all periods"
    title = escape(f"usage by {args.by}, {when}: {redact(args.ledger)}")
    if not rows:
        console.print(f"{title}\nno usage recorded")
        return
    t = Table(title=title, title_justify="left")
    t.add_column(args.by)
    for name in ("served by edge", "reported from edge", "from peers", "uploaded to peers", "P2P share"):
        t.add_column(name, justify="right")
    t.add_column("flags")
    for r in rows:
        t.add_row(
            Text(r.key or "(none)"),  # text, not markup: a user named "[/]" ended every report with a traceback (a review)
            format_bytes(r.edge_sent),
            format_bytes(r.reported_from_edge),
            format_bytes(r.reported_from_peers),
            format_bytes(r.reported_uploaded),
            _share(r),
            ", ".join(r.flags),
        )
    total = ReportRow("total", **{kind: sum(getattr(r, kind) for r in rows) for kind in USAGE_COUNTERS})
    flagged = sum(1 for r in rows if r.flags)
    t.add_section()
    t.add_row(
        f"total ({len(rows)})",
        format_bytes(total.edge_sent),
        format_bytes(total.reported_from_edge),
        format_bytes(total.reported_from_peers),
        format_bytes(total.reported_uploaded),
        _share(total),
        f"{flagged} flagged" if flagged else "",
        style="bold",
    )
    console.print(t)
    if flagged:
        console.print("flagged rows: the reports disagree beyond the tolerance; bill from 'served by edge' and check before crediting P2P.")


def _share(r: ReportRow) -> str:
    return "-" if r.p2p_share is None else f"{100 * r.p2p_share:.1f} %"
