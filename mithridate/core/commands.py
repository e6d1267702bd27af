"""Generate an argparse CLI and a Python API from a command table {name words: Command}.

Each package's `cli.py` holds such a table; `merge` joins them (a name defined twice is an error). A `Command`
names where its config class, presets and run function live: the module is imported only when that command
runs or shows its `--help`, so `mithridate --help` imports neither torch nor any stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import logging
import sys
from pathlib import Path

from mithridate.core import options

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Command:
    """One command: `module`'s `config` class, `presets` dict and `run(cfg)` function, its help and examples."""

    module: str
    config: str
    help: str
    examples: tuple[str, ...] = ()
    run: str = "run"
    presets: str = "PRESETS"

    def load(self) -> tuple[type, dict, object]:
        """(config class, presets, run function), importing the module now."""
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.presets), getattr(mod, self.run)


def merge(*tables: tuple[str, dict]) -> dict:
    """One table from (owner, table) pairs; a command name in two tables is a ValueError naming both owners."""
    merged, owner = {}, {}
    for name, table in tables:
        for words, command in table.items():
            if words in merged:
                raise ValueError(f"command {' '.join(words)!r} is defined by both {owner[words]} and {name}")
            merged[words], owner[words] = command, name
    return merged


def api_name(words: tuple[str, ...]) -> str:
    """The Python name of a command: its words joined by '_' (`poison sweep` → `poison_sweep`)."""
    return "_".join(words)


def api_function(words: tuple[str, ...], command: Command):
    """A Python function running `command`: `f(preset="default", **fields)` → what the stage returns (its output
    folder). Field values are Python values (a str is parsed as on the command line); unknown fields are errors."""
    cls, presets, run = command.load()
    defaults = presets["default"]

    def call(preset: str = "default", **fields):
        return run(options.build(cls, presets, preset, fields))

    params = [inspect.Parameter("preset", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="default")]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, f.name),
                                 annotation=options.field_type(cls, f.name)) for f in dataclasses.fields(cls)]
    call.__signature__ = inspect.Signature(params)
    call.__name__ = call.__qualname__ = api_name(words)
    call.__module__ = "mithridate"
    fields = "\n".join(f"    {f.name}: {f.metadata.get('help', '')} (default: {getattr(defaults, f.name)!r})"
                       for f in dataclasses.fields(cls))
    call.__doc__ = (f"{command.help}.\n\nThe Python form of `mithridate {' '.join(words)}`; returns the output.\n\n"
                    f"Args:\n    preset: one of {', '.join(sorted(presets))}; the fields below override it.\n"
                    f"{fields}\n")
    return call


def _chosen(commands: dict, argv: list[str]) -> tuple[str, ...] | None:
    """The command named by the first one or two positional words of `argv`, if any."""
    words = [a for a in argv if not a.startswith("-")][:2]
    for n in (2, 1):
        if tuple(words[:n]) in commands and len(words) >= n:
            return tuple(words[:n])
    return None


def _epilog(command: Command) -> str | None:
    if not command.examples:
        return None
    return "examples:\n" + "\n".join(f"  {e}" for e in command.examples)


def build_parser(commands: dict, prog: str, description: str = "",
                 argv: list[str] | None = None) -> argparse.ArgumentParser:
    """One sub-command per table entry; two-word names (`art build`) become nested sub-commands.

    Only the command that `argv` names gets its options (its module is imported); the others show their help
    line. With `argv=None` every command gets its options (everything is imported)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    chosen = None if argv is None else _chosen(commands, argv)
    for words, command in commands.items():
        target = subs
        if len(words) == 2:
            if words[0] not in groups:
                group = subs.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            target = groups[words[0]]
        sub = target.add_parser(words[-1], help=command.help, description=command.help, epilog=_epilog(command),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        if argv is None or words == chosen:
            cls, presets, run = command.load()
            options.add_arguments(sub, cls, presets)
            sub.add_argument("--config", metavar="CONFIG_JSON", help="rerun from a config.json an earlier run wrote: "
                             "its values replace the preset's; options given beside it override them")
            sub.set_defaults(_entry=(cls, presets, run))
    return parser


def _config(cls: type, presets: dict, args: argparse.Namespace):
    """The config of a parsed command line: preset (or --config file) + options."""
    if not getattr(args, "config", None):
        return options.from_args(cls, presets, args)
    if args.preset != "default":
        raise ValueError(f"--config={args.config} and --preset={args.preset}: give one of them")
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config={args.config}: no such file (a config.json written by a run)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--config={args.config}: not JSON ({err})") from None
    if not isinstance(saved, dict) or saved.get("_config", cls.__name__) != cls.__name__:
        kind = saved.get("_config") if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"--config={args.config}: holds a {kind} config; this command takes {cls.__name__}")
    return options.from_args(cls, {"default": options.from_dict(cls, saved)}, args)


def main(commands: dict, prog: str, argv: list[str] | None = None, description: str = "") -> int:
    """Parse `argv`, resolve the config, call the stage's `run(cfg)`; returns an exit status.

    Bad input (ValueError, FileNotFoundError) ends with a one-line `error: …` and status 2.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(commands, prog, description, argv).parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s")
    cls, presets, run = args._entry
    try:
        cfg = _config(cls, presets, args)
        out = run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    logger.info("done: %s", out)
    return 0
