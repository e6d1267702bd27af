"""A stage's statistics and its shard-done markers, in `<folder>/__stats__/`.

`__stats__/<shard>.json` is written last for each shard (the shard is finished when it exists) and
`__stats__/run.json` holds the run's totals. The folder keeps them out of the way of readers that take every file
of a data folder: `*.parquet` globs, duckdb's `read_parquet`, and `datasets.load_dataset("parquet", data_dir=…)`
(which skips folders named `__…`). Folders written before this layout (`<shard>_stats.json`, `_stats.json` beside
the data) are still read, so they resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from mithridate.core import disk

FOLDER = "__stats__"
RUN = "run"


def path(folder: str | Path, shard: str | None = None) -> Path:
    """Where the stats of `shard` (or, with no shard, of the run) of `folder` are written."""
    return Path(folder) / FOLDER / f"{shard if shard is not None else RUN}.json"


def _legacy(folder: str | Path, shard: str | None) -> Path:
    return Path(folder) / (f"{shard}_stats.json" if shard is not None else "_stats.json")


def existing(folder: str | Path, shard: str | None = None) -> Path | None:
    """The stats file of `shard` (or of the run) if one was written, in this layout or the one before; else None."""
    for p in (path(folder, shard), _legacy(folder, shard)):
        if p.is_file():
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
    return json.loads(p.read_text())


def read_or_empty(folder: str | Path, shard: str | None = None) -> dict:
    """`read`, or {} when the stage has not written them."""
    return read(folder, shard) if done(folder, shard) else {}


def write(folder: str | Path, stats: dict, shard: str | None = None, indent: int = 2) -> Path:
    """Write the stats of `shard` (or of the run) atomically and durably (a shard's: its done marker, so last)."""
    p = path(folder, shard)
    p.parent.mkdir(parents=True, exist_ok=True)
    return disk.write_text(p, json.dumps(stats, indent=indent, sort_keys=True) + "\n")


def shards(folder: str | Path) -> list[Path]:
    """The per-shard stats files of `folder` (numbered shards), in shard order, this layout or the one before."""
    folder = Path(folder)
    new = {p.stem: p for p in (folder / FOLDER).glob("[0-9]*.json")}
    old = {p.name[: -len("_stats.json")]: p for p in folder.glob("[0-9]*_stats.json")}
    return [v for _, v in sorted({**old, **new}.items())]
