"""Export stage: the rows a filter kept → train-ready shards (image, caption, uid, artist, licence, scores)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.select import subsets
from mithridate.core import options, schema, stats_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    shards: str = options.opt("mithridate-out/shards", "downloaded shards (download output)")
    filter: str = options.opt("mithridate-out/filter", "filter output folder (decisions.parquet)")
    provenance: str = options.opt("", "optional parquet with url, artist, licence (e.g. the demo web manifest)")
    subset: str = options.opt("", "export this uid subset (.npy, e.g. from `subset`) instead of the filter's keep set")
    out: str = options.opt("mithridate-out/train", "output folder of training shards")
    shard_size: int = options.opt(5000, "rows per training shard")

    def __post_init__(self):
        options.check_positive(self, "shard_size")


PRESETS = {"default": ExportConfig(), "tiny": ExportConfig(shard_size=100)}


def _provenance(path: str) -> dict[str, tuple[str | None, str | None]]:
    if not path:
        return {}
    if not Path(path).is_file():
        raise FileNotFoundError(f"ExportConfig.provenance: file not found: {path}")
    table = pq.read_table(path)
    missing = {"url", "artist", "licence"} - set(table.column_names)
    if missing:
        raise ValueError(f"ExportConfig.provenance {path}: missing columns {sorted(missing)}")
    return {u: (a, lic) for u, a, lic in zip(*(table[c].to_pylist() for c in ("url", "artist", "licence")))}


def _kept(shard: pa.Table, decisions: pa.Table, prov: dict) -> pa.Table:
    kept = decisions.filter(decisions["keep"])
    keys = pa.table({"uid": shard["uid"], "_i": pa.array(range(shard.num_rows), pa.int64())})
    joined = keys.join(kept.select(["uid", "clip_score", "aesthetic_score"]), "uid", join_type="inner").sort_by("_i")
    rows = shard.take(joined["_i"])
    if pc.any(pc.not_equal(rows["status"], schema.STATUS_SUCCESS)).as_py():
        raise ValueError("decisions keep a row whose download did not succeed; rerun `filter` on these shards")
    urls = rows["url"].to_pylist()
    return pa.table({
        **{c: rows[c] for c in ("uid", "jpg", "caption", "url", "domain")},
        "artist": [prov.get(u, (None, None))[0] for u in urls], "licence": [prov.get(u, (None, None))[1] for u in urls],
        "clip_score": joined["clip_score"], "aesthetic_score": joined["aesthetic_score"],
    }, schema=schema.TRAIN_SCHEMA)


def run(cfg: ExportConfig) -> Path:
    """Write `<out>/NNNNN.parquet` (TRAIN_SCHEMA) and `<out>/__stats__/run.json`; returns the output folder."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    decisions = schema.read(Path(cfg.filter) / "decisions.parquet", "decisions")
    if cfg.subset:  # keep exactly the subset's uids (they must be downloaded rows)
        wanted = pa.array(subsets.to_uids(subsets.load(cfg.subset)), pa.string())
        decisions = decisions.set_column(decisions.schema.get_field_index("keep"), "keep",
                                         pc.is_in(decisions["uid"], value_set=wanted))
    prov = _provenance(cfg.provenance)
    parts = [_kept(schema.read(f, "shard"), decisions, prov) for f in sorted(Path(cfg.shards).glob("[0-9]*.parquet"))]
    table = pa.concat_tables(parts) if parts else schema.TRAIN_SCHEMA.empty_table()
    n_keep = pc.sum(decisions["keep"]).as_py() or 0
    if table.num_rows != n_keep:
        raise ValueError(f"{cfg.filter}: {n_keep} kept uids but {table.num_rows} found in {cfg.shards}")
    for old in out.glob("[0-9]*.parquet"):
        old.unlink()
    for k in range(0, max(table.num_rows, 1), cfg.shard_size):
        schema.write(table.slice(k, cfg.shard_size), out / f"{k // cfg.shard_size:05d}.parquet", "train")
    licences = pc.value_counts(pc.fill_null(table["licence"], "unknown")).to_pylist()
    stats = {"rows": table.num_rows, "licences": {d["values"]: d["counts"] for d in licences}}
    stats_files.write(out, stats)  # last: done
    logger.info("export: %d training rows → %s", table.num_rows, out)
    return out
