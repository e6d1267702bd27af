"""A stage's statistics and its shard-done markers, in `<folder>/__stats__/`.

`__stats__/<shard>.json` is written last for each shard (the shard is finished when it exists) and
`__stats__/run.json` holds the run's totals. The folder keeps them out of the way of readers that take every file
of a data folder: `*.parquet` globs, duckdb's `read_parquet`, and `datasets.load_dataset("parquet", data_dir=…)`
(which skips folders named `__…`). Folders written before this layout (`<shard>_stats.json`, `_stats.json` beside
the data) are still read, so they resume. `folder` may be an object-storage URL (`storage`): the marker is then an
object written in one PUT after the shard's data.
"""

from __future__ import annotations

import json
from pathlib import Path

from mithridate.core import storage

FOLDER = "__stats__"
RUN = "run"


def path(folder: str | Path, shard: str | None = None) -> Path | str:
    """Where the stats of `shard` (or, with no shard, of the run) of `folder` are written (a URL when remote)."""
    return storage.join(folder, FOLDER, f"{shard if shard is not None else RUN}.json")


def _legacy(folder: str | Path, shard: str | None) -> Path | str:
    return storage.join(folder, f"{shard}_stats.json" if shard is not None else "_stats.json")


def existing(folder: str | Path, shard: str | None = None) -> Path | str | None:
    """The stats file of `shard` (or of the run) if one was written, in this layout or the one before; else None."""
    for p in (path(folder, shard), _legacy(folder, shard)):
        if storage.isfile(p):
            return p
    return None


def done(folder: str | Path, shard: str | None = None) -> bool:
    """Is `shard` (or, with no shard, the whole run) of `folder` finished?"""
    return existing(folder, shard) is not None


def read(folder: str | Path, shard: str | None = None) -> dict:
    """The stats of `shard` (or of the run); FileNotFoundError naming the expected file when there are none."""
    p = existing(folder, shard)
    if p is None:
        raise FileNotFoundError(f"{path(folder, shard)}: not found (the stage has not finished in {folder})")
    return json.loads(storage.read_text(p))


def read_or_empty(folder: str | Path, shard: str | None = None) -> dict:
    """`read`, or {} when the stage has not written them."""
    return read(folder, shard) if done(folder, shard) else {}


def write(folder: str | Path, stats: dict, shard: str | None = None, indent: int = 2) -> Path | str:
    """Write the stats of `shard` (or of the run) atomically and durably (a shard's: its done marker, so last)."""
    p = path(folder, shard)
    storage.makedirs(storage.parent(p))
    return storage.write_text(p, json.dumps(stats, indent=indent, sort_keys=True) + "\n")


def shards(folder: str | Path) -> list[Path | str]:
    """The per-shard stats files of `folder` (numbered shards), in shard order, this layout or the one before."""
    new = {storage.stem(p): p for p in storage.glob(storage.join(folder, FOLDER), "[0-9]*.json")}
    old = {storage.name(p)[: -len("_stats.json")]: p for p in storage.glob(folder, "[0-9]*_stats.json")}
    return [v for _, v in sorted({**old, **new}.items())]


def read_shards(folder: str | Path) -> dict[str, dict]:
    """Every shard's stats of `folder`: shard id → stats, in shard order."""
    return {storage.stem(p).removesuffix("_stats"): json.loads(storage.read_text(p)) for p in shards(folder)}
