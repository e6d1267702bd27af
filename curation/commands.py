"""Generate an argparse CLI from a command table {name words: (Config class, PRESETS, run, help)}.

Each package's `cli.py` holds such a table; the `mithridate` console script merges the tables.
"""

from __future__ import annotations

import argparse
import logging
import sys

from curation import options

logger = logging.getLogger(__name__)


def build_parser(commands: dict, prog: str, description: str = "") -> argparse.ArgumentParser:
    """One sub-command per table entry; two-word names (`art build`) become nested sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, (cls, presets, run, help_text) in commands.items():
        target = subs
        if len(words) == 2:
            if words[0] not in groups:
                group = subs.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            target = groups[words[0]]
        sub = target.add_parser(words[-1], help=help_text, description=help_text)
        options.add_arguments(sub, cls, presets)
        sub.set_defaults(_entry=(cls, presets, run))
    return parser


def main(commands: dict, prog: str, argv: list[str] | None = None, description: str = "") -> int:
    """Parse `argv`, resolve the config, call the stage's `run(cfg)`; returns an exit status.

    Bad input (ValueError, FileNotFoundError) ends with a one-line `error: …` and status 2.
    """
    args = build_parser(commands, prog, description).parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s")
    cls, presets, run = args._entry
    try:
        cfg = options.from_args(cls, presets, args)
        out = run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    logger.info("done: %s", out)
    return 0
