"""A folder of parquet files cut into shards of `size` rows without reading them: each shard is a list of
(file, offset, count) segments, from the files' footers. A unit of work (a process, a Ray task) reads only its
shard's rows (`read`), so the driver never holds the whole input. The folder may be an object-storage URL
(`storage`): a segment then names its file's URL, and a worker reads only that file's footer and row groups.

The rows are those of `schema.read_folder` (files in name order), sliced every `size` rows: shard k is rows
[k·size, (k+1)·size) of the concatenation, whichever files they lie in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mithridate.core import schema, storage


@dataclass(frozen=True)
class Segment:
    """`count` rows of parquet file `file` from row `offset`."""

    file: str
    offset: int
    count: int


Shard = tuple[Segment, ...]


def files(folder: str | Path, name: str) -> list[Path | str]:
    """The `*.parquet` files of schema `name` in `folder`, in name order (schema name and version checked, no column
    read).

    Raises:
        FileNotFoundError: the folder holds none.
    """
    found = storage.glob(folder, "*.parquet")
    if not found:
        raise FileNotFoundError(f"no {name} parquet files in {folder}")
    for f in found:
        schema.read(f, name, columns=[])  # a clear error for another schema, version or a corrupt footer
    return found


def plan(folder: str | Path, name: str, size: int) -> list[Shard]:
    """The shards of `size` rows of every `name` file in `folder` (see the module docstring)."""
    if size <= 0:
        raise ValueError(f"shard size={size!r}: must be > 0")
    shards, current, room = [], [], size
    for f in files(folder, name):
        rows, offset = _num_rows(f), 0
        while offset < rows:
            take = min(room, rows - offset)
            current.append(Segment(storage.resolve(f), offset, take))
            offset, room = offset + take, room - take
            if room == 0:
                shards.append(tuple(current))
                current, room = [], size
    if current:
        shards.append(tuple(current))
    return shards


def _num_rows(path: Path | str) -> int:
    """Rows of a parquet file, from its footer."""
    with storage.source(path) as src:
        return pq.ParquetFile(src).metadata.num_rows


def _renamed(pf: pq.ParquetFile, name: str) -> dict[str, str]:
    """Old → today's column names of a file written by an older schema version (`schema.RENAMED`)."""
    meta = pf.schema_arrow.metadata or {}
    return schema.RENAMED.get(name, {}).get(meta.get(b"schema_version", b"").decode()) or {}


def read_segment(seg: Segment, name: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one segment (only the row groups that hold them are read), under today's column names."""
    schema.read(seg.file, name, columns=[])  # schema name and version, as `schema.read` checks them
    with storage.source(seg.file) as src:
        return _read_groups(pq.ParquetFile(src), seg, name, columns)


def _read_groups(pf: pq.ParquetFile, seg: Segment, name: str, columns: list[str] | None) -> pa.Table:
    renamed = _renamed(pf, name)
    back = {new: old for old, new in renamed.items()}
    groups, start, first = [], 0, None
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if start < seg.offset + seg.count and start + n > seg.offset:
            groups.append(i)
            first = start if first is None else first
        start += n
    cols = [back.get(c, c) for c in columns] if columns is not None else None
    if not groups:
        empty = pf.schema_arrow.empty_table()
        table = empty.select(cols) if cols is not None else empty
    else:
        table = pf.read_row_groups(groups, columns=cols)
    table = table.slice(seg.offset - (first or 0), seg.count)
    return table.rename_columns([renamed.get(c, c) for c in table.column_names]) if renamed else table


def read(shard: Shard, name: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one shard, in order."""
    parts = [read_segment(s, name, columns) for s in shard]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def count_duplicates(folder: str | Path, name: str, column: str = "uid") -> int:
    """How many rows of the folder repeat a value of `column` (only that column is read)."""
    values = pa.chunked_array([schema.read(f, name, [column])[column] for f in files(folder, name)])
    return len(values) - pc.count_distinct(values).as_py()
