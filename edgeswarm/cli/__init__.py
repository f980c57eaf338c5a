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
import difflib
import faulthandler
import importlib
import signal
import sys
from typing import NoReturn

from edgeswarm.store.ledger import LedgerError
from edgeswarm.trust.signing import KeyFileError

COMMANDS = ("origin", "edge", "router", "peer", "get", "publish", "preheat", "demo", "lab", "bench")  # modules here; lab adds chaos
ALONE = frozenset(COMMANDS) - {"lab"}  # one subparser each: the command line names it, the others need not load


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; with ``only`` (one of ALONE), that one alone.

    Importing every subcommand's module costs each process about a tenth of
    a second of CPU (their flag modules, the simulator's, the lab's): 20
    `edgeswarm get`s started together on two cores wait a second for it.
    """
    parser = argparse.ArgumentParser(
        prog="edgeswarm",
        description="Hybrid CDN-P2P content delivery: an origin, edge caches, and peers that share with each other.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        importlib.import_module(f"edgeswarm.cli.{name}").add_parser(sub)
    if only is not None:
        return _whole_flags(parser)

    # options only: numpy and friends load when a simulation runs
    from edgeswarm.measure import doubles, usage
    from edgeswarm.sim import sim
    from edgeswarm.trust import tokens

    for module, name in ((doubles, "double"), (tokens, "token"), (usage, "usage"), (sim, "sim")):
        module.add_parser(sub)
        sub.choices[name].set_defaults(run=module.run)
    return _whole_flags(parser)


def _whole_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` and every subcommand's under it taking flags only as written, never a prefix of one: argparse's
    default took ``edge --origin URL`` for ``--origin-key`` (a file named http:/...) and ``lab --rate 4`` for
    ``--rate-scale``, without a word (an adversarial session)."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _whole_flags(child)
    return parser


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand the command line named, whose flags those are."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if action is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def _unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> NoReturn:
    """Refuse what no flag of ``parser`` takes, in its name and usage, with the flag meant where one is close: argparse
    said "edgeswarm: error:" under the top-level usage, naming neither the subcommand nor its flags (a newcomer's walk)."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hints = []
    for word in extra:
        close = difflib.get_close_matches(word.split("=", 1)[0], flags, 1) if word.startswith("--") else []
        hints += [f"{word}: did you mean {close[0]}?"] if close else []
    parser.error("; ".join([f"unrecognized arguments: {' '.join(extra)}", *hints]))


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a process of its own (not a test's call): SIGUSR1 asks for stacks, never kills; the threads'
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # until a node's loop runs, then its tasks' (daemon.py)
    argv = sys.argv[1:] if argv is None else argv
    try:  # Ctrl-C while the subcommand's modules load or its flags are read: no traceback either
        parser = build_parser(argv[0] if argv and argv[0] in ALONE else None)
        args, extra = parser.parse_known_args(argv)
        if extra:
            _unrecognized(_chosen(parser, args), extra)
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except (KeyFileError, LedgerError, OSError, ValueError) as exc:
        print(f"edgeswarm {argv[0] if argv else ''}: {exc}", file=sys.stderr)
        return 2
