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

from curation.commands import api_function, api_name
from mithridate.cli import COMMANDS, main

_BY_NAME = {api_name(words): (words, command) for words, command in COMMANDS.items()}
_loaded: dict = {}


def __getattr__(name: str):
    if name not in _BY_NAME:
        raise AttributeError(f"module 'mithridate' has no attribute {name!r}; commands: {', '.join(sorted(_BY_NAME))}")
    if name not in _loaded:
        _loaded[name] = api_function(*_BY_NAME[name])
    return _loaded[name]


def __dir__() -> list[str]:
    return sorted([*globals(), *_BY_NAME])


__all__ = ["main", *sorted(_BY_NAME)]
