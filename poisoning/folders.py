"""Victims' training folders: the clean shards plus the first N poisons, or every row purified.

Each folder is complete once its last file is written (`90000.parquet`, or `_done` for a purified copy), so an
interrupted sweep rebuilds only unfinished folders.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from diffusion import data
from mithridate.core import disk, schema
from poisoning import defences, inject


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def with_poisons(clean: str | Path, poisons: Path, n: int, out: Path) -> Path:
    """A training folder: the clean shards + the first `n` rows of `poisons`' poison shard."""
    if (out / inject.POISON_SHARD).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in data.shard_files(clean):
        shutil.copyfile(f, out / f.name)
    table = schema.read(poisons / inject.POISON_SHARD, "train").slice(0, n)
    schema.write(table, out / (inject.POISON_SHARD + ".tmp"), "train")
    (out / (inject.POISON_SHARD + ".tmp")).replace(out / inject.POISON_SHARD)
    return out


def purified(folder: Path, method: str, image_size: int, out: Path, seed: int) -> Path:
    """Every row of a training folder purified (decoded at `image_size`, purified, stored as PNG)."""
    done = out / "_done"
    if done.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in data.shard_files(folder):
        t = schema.read(f, "train")
        rows = t.to_pylist()
        for r in rows:
            arr = data.decode(r["jpg"], image_size)
            if arr is not None:
                r["jpg"] = _png(defences.purify(arr[None], method, seed)[0])
        schema.write(pa.Table.from_pylist(rows, schema=t.schema), out / f.name, "train")
    disk.write_text(done, method + "\n")  # after every shard (each written durably by schema.write)
    return out
