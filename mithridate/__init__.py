"""mithridate: build, audit and poison text-to-image training data — the Python API.

Every command of the `mithridate` console script is a function here, named by its words joined with '_':

    import mithridate as mt
    shards = mt.download(pairs="runs/crawl/pairs", out="runs/shards", policy="record")
    mt.filter(shards=shards, embeddings="runs/embeddings", out="runs/filter")
    mt.poison_sweep(preset="tiny", data="runs/pair/train", checkpoint="runs/pair/clean", out="runs/sweep")

Each takes `preset` (a named set of defaults) and the command's fields as keywords, and returns what the stage
returns (its output folder). `help(mt.download)` lists the fields. A stage's module (and torch) is imported when
its function is first used.
"""

from __future__ import annotations

_by_name: dict | None = None  # API name → (command words, Command); read on first use (no import cycle with the core)
_loaded: dict = {}


def _commands() -> dict:
    global _by_name
    if _by_name is None:
        from mithridate.cli import COMMANDS
        from mithridate.core.commands import api_name

        _by_name = {api_name(words): (words, command) for words, command in COMMANDS.items()}
    return _by_name


def __getattr__(name: str):
    if name == "main":
        from mithridate.cli import main

        return main
    if name == "__all__":
        return ["main", *sorted(_commands())]
    if name.startswith("__") or name not in _commands():
        names = ", ".join(sorted(_commands()))
        raise AttributeError(f"module 'mithridate' has no attribute {name!r}; commands: {names}")
    if name not in _loaded:
        from mithridate.core.commands import api_function

        _loaded[name] = api_function(*_commands()[name])
    return _loaded[name]


def __dir__() -> list[str]:
    return sorted([*globals(), "main", *_commands()])
