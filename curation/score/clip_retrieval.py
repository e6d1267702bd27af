"""Embeddings in clip-retrieval's layout, the input of its index step (`clip-retrieval index`, autofaiss).

    <out>/img_emb/img_emb_<k>.npy          float16 (N, D), L2-normalised
    <out>/text_emb/text_emb_<k>.npy        float16 (N, D), aligned with img_emb
    <out>/metadata/metadata_<k>.parquet    uid, url, caption: one row per embedding, in the same order

`k` counts the embedded shards in order. Written from an `embed` output folder, whose npz files stay what the
other stages read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.score import embed
from mithridate.core import disk, schema

logger = logging.getLogger(__name__)
FOLDERS = ("img_emb", "text_emb", "metadata")


def _metadata(shard: Path, uids: list[str]) -> pa.Table:
    """uid, url, caption of `uids` (a shard's success rows), in that order."""
    table = schema.read(shard, "shard", ["uid", "url", "caption"])
    row = {u: i for i, u in enumerate(table["uid"].to_pylist())}
    return table.take(pa.array([row[u] for u in uids], pa.int64()))


def write(folder: str | Path, out: str | Path, shards: str | Path | None = None) -> Path:
    """Write the embeddings of `embed` folder `folder` in clip-retrieval's layout under `out`; returns `out`."""
    folder, out = Path(folder), Path(out)
    for name in FOLDERS:
        (out / name).mkdir(parents=True, exist_ok=True)
    npzs = sorted(folder.glob("[0-9][0-9][0-9][0-9][0-9].npz"))
    if not npzs:
        raise FileNotFoundError(f"no NNNNN.npz embeddings in {folder} (run `mithridate embed`)")
    shard_folder = embed._shards_folder(folder, shards)  # noqa: SLF001 - the same lookup as load_embeddings
    for k, npz in enumerate(npzs):
        data = embed.load_embeddings(folder, npz.stem, shards)
        for name, key in (("img_emb", "img_emb"), ("text_emb", "txt_emb")):
            with disk.atomic(out / name / f"{name}_{k}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, data[key].astype(np.float16))
        meta = _metadata(shard_folder / f"{npz.stem}.parquet", data["uid"].tolist())
        with disk.atomic(out / "metadata" / f"metadata_{k}.parquet") as tmp:
            pq.write_table(meta, tmp)
    logger.info("clip-retrieval layout: %d parts → %s", len(npzs), out)
    return out
