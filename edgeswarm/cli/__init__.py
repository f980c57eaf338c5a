"""The ``edgeswarm`` command: one program, a subcommand per role or tool.

Each subcommand's module declares its flags (``add_parser``) and runs them
(``run``, set as the parser's default): the roles' and the measurements' in
this package, next to the flag groups they share (``options``); ``token``,
``usage``, ``sim`` and ``double`` in the modules that own them.  This module
only assembles them.  Parsing imports no role, measurement or simulation:
those load when their subcommand runs, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys

from edgeswarm.cli import bench, demo, edge, get, lab, origin, peer, preheat, publish, router
from edgeswarm.store.ledger import LedgerError
from edgeswarm.trust.signing import KeyFileError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeswarm",
        description="Hybrid CDN-P2P content delivery: an origin, edge caches, and peers that share with each other.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (origin, edge, router, peer, get, publish, preheat, demo, lab, bench):  # lab adds chaos
        command.add_parser(sub)

    # options only: numpy and friends load when a simulation runs
    from edgeswarm.measure import doubles, usage
    from edgeswarm.sim import sim
    from edgeswarm.trust import tokens

    for module, name in ((doubles, "double"), (tokens, "token"), (usage, "usage"), (sim, "sim")):
        module.add_parser(sub)
        sub.choices[name].set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (KeyFileError, LedgerError, OSError, ValueError) as exc:
        print(f"edgeswarm {args.command}: {exc}", file=sys.stderr)
        return 2
