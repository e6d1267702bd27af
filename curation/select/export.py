"""Export stage: the rows a filter kept → train-ready shards (image, caption, uid, artist, licence, scores).

With `engine=ray` the work is two rounds of Ray tasks: one per download shard writes its kept rows to
`<out>/_parts/`, then one per training shard cuts them (`shard_plan`: file, offset, count); the driver holds neither
the images nor the rows. Both engines write the same shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.select import subsets
from mithridate.core import engine, options, schema, shard_plan, stats_files, storage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    shards: str = options.opt("mithridate-out/shards", "downloaded shards (download output)")
    filter: str = options.opt("mithridate-out/filter", "filter output folder (decisions.parquet)")
    provenance: str = options.opt("", "optional parquet with url, artist, licence (e.g. the demo web manifest)")
    subset: str = options.opt("", "export this uid subset (.npy, e.g. from `subset`) instead of the filter's keep set")
    out: str = options.opt("mithridate-out/train", "output folder of training shards (every folder and file: a local "
                           "path or an fsspec URL, s3://bucket/prefix)")
    shard_size: int = options.opt(5000, "rows per training shard")
    engine: engine.Engine = options.opt("local", "where shards are cut: local (this process) or ray (Ray tasks on the "
                                        "cluster RAY_ADDRESS names, else a local one)")
    shard_retries: int = options.opt(2, "engine ray: more tries of a shard that fails before the run fails naming it")

    def __post_init__(self):
        options.check_positive(self, "shard_size")
        if self.shard_retries < 0:
            raise ValueError(f"ExportConfig.shard_retries={self.shard_retries!r}: must be >= 0")
        engine.check(self.engine)
        storage.check_fields(self, "shards", "filter", "provenance", "subset", "out")


PRESETS = {"default": ExportConfig(), "tiny": ExportConfig(shard_size=100)}


def _provenance(path: str) -> dict[str, tuple[str | None, str | None]]:
    if not path:
        return {}
    if not storage.isfile(path):
        raise FileNotFoundError(f"ExportConfig.provenance: file not found: {path}")
    with storage.source(path) as src:
        table = pq.read_table(src)
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


def _licences(table: pa.Table) -> dict[str, int]:
    """Rows per licence ('unknown' when none), in order of first appearance."""
    return {d["values"]: d["counts"] for d in pc.value_counts(pc.fill_null(table["licence"], "unknown")).to_pylist()}


def _shard_name(k: int) -> str:
    return f"{k:05d}.parquet"


def _replace_old(cfg: ExportConfig, decisions: pa.Table, rows: int, out: Path | str) -> None:
    """Check that every kept uid was found, then remove the shards of an earlier export (kept on an error)."""
    n_keep = pc.sum(decisions["keep"]).as_py() or 0
    if rows != n_keep:
        raise ValueError(f"{cfg.filter}: {n_keep} kept uids but {rows} found in {cfg.shards}")
    for old in storage.glob(out, "[0-9]*.parquet"):
        storage.remove(old)


def _export_local(cfg: ExportConfig, files: list, decisions: pa.Table, prov: dict, out: Path | str) -> tuple:
    """Every kept row in memory, cut into shards; returns (rows, licences)."""
    parts = [_kept(schema.read(f, "shard"), decisions, prov) for f in files]
    table = pa.concat_tables(parts) if parts else schema.TRAIN_SCHEMA.empty_table()
    _replace_old(cfg, decisions, table.num_rows, out)
    for k in range(0, max(table.num_rows, 1), cfg.shard_size):
        schema.write(table.slice(k, cfg.shard_size), storage.join(out, _shard_name(k // cfg.shard_size)), "train")
    return table.num_rows, _licences(table)


def kept_part(shard: str, decisions: pa.Table, prov: dict, part: str) -> tuple[int, dict[str, int]]:
    """The kept rows of one download shard → `part` (train schema); returns (rows, licences): round one on Ray."""
    table = _kept(schema.read(shard, "shard"), decisions, prov)
    schema.write(table, part, "train")
    return table.num_rows, _licences(table)


def cut_shard(shard: shard_plan.Shard, path: str) -> int:
    """One training shard from the segments of the parts that hold its rows: round two on Ray."""
    table = shard_plan.read(shard, "train")
    schema.write(table, path, "train")
    return table.num_rows


def _export_ray(cfg: ExportConfig, files: list, decisions: pa.Table, prov: dict, out: Path | str) -> tuple:
    """Kept rows per download shard to `<out>/_parts/`, then training shards cut from them; returns (rows,
    licences)."""
    ray, parts = engine.ray_init(), storage.resolve(storage.join(out, "_parts"))
    storage.rmtree(parts)
    shared = ray.put(decisions), ray.put(prov)
    calls = {storage.stem(f): (storage.resolve(f), *shared, str(storage.join(parts, storage.name(f)))) for f in files}
    counts = engine.run_tasks(kept_part, calls, cfg.shard_retries, "export kept rows")
    licences: dict[str, int] = {}
    for f in files:  # in shard order: the same first-appearance order as one table's
        for name, n in counts[storage.stem(f)][1].items():
            licences[name] = licences.get(name, 0) + n
    rows = sum(n for n, _ in counts.values())
    _replace_old(cfg, decisions, rows, out)
    plan = shard_plan.plan(parts, "train", cfg.shard_size) if rows else []
    if plan:
        calls = {f"{k:05d}": (shard, str(storage.join(storage.resolve(out), _shard_name(k))))
                 for k, shard in enumerate(plan)}
        engine.run_tasks(cut_shard, calls, cfg.shard_retries, "export")
    else:
        schema.write(schema.TRAIN_SCHEMA.empty_table(), storage.join(out, _shard_name(0)), "train")
    storage.rmtree(parts)
    return rows, licences


def run(cfg: ExportConfig) -> Path | str:
    """Write `<out>/NNNNN.parquet` (TRAIN_SCHEMA) and `<out>/__stats__/run.json`; returns the output folder."""
    out = storage.location(cfg.out)
    options.write_config(cfg, out)
    decisions = schema.read(storage.join(cfg.filter, "decisions.parquet"), "decisions")
    if cfg.subset:  # keep exactly the subset's uids (they must be downloaded rows)
        wanted = pa.array(subsets.to_uids(subsets.load(cfg.subset)), pa.string())
        decisions = decisions.set_column(decisions.schema.get_field_index("keep"), "keep",
                                         pc.is_in(decisions["uid"], value_set=wanted))
    prov = _provenance(cfg.provenance)
    files = storage.glob(cfg.shards, "[0-9]*.parquet")
    rows, licences = (_export_ray if cfg.engine == "ray" else _export_local)(cfg, files, decisions, prov, out)
    stats = {"rows": rows, "licences": licences}
    stats_files.write(out, stats)  # last: done
    logger.info("export: %d training rows → %s", rows, out)
    return out
