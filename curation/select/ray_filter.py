"""`filter --engine=ray`: the filter stage on a Ray cluster, writing the same files as the local engine.

Phases (each a set of Ray tasks, one per shard, or a Ray Data pipeline; work files in `<out>/_ray/`, removed at the
end). What the driver holds is named: never every row's data, only the small tables listed.

1. pool, a task per shard: the downloaded rows carrying an opt-out (pHash, embedding, domain: the originals whose
   re-uploads `honor` excludes) and, with `clip_top_fraction`, the success rows' CLIP scores (`<id>.scores.parquet`).
   The top-fraction cut is a Ray Data sort + limit + min. Driver: the originals (opted-out rows only).
2. rows, a task per shard: every layer before dedup (`filtering.row_layers` with the pool's originals and cut) →
   `<id>.rows.parquet` (uid, pHash, scores, one column per layer), and the survivors' key table `<id>.keys.parquet`
   (rid = shard << 32 | row, uid, sha256, pHash as uint64, the k-means sample key of (uid, seed), embedding).
3. dedup, Ray Data over the key tables, layers in config order, each over the rows no earlier layer flagged:
   - exact: group-by sha256 → count; the rows of repeated hashes → `dedup.exact_duplicates` on the driver.
   - pHash: each hash split into k + 1 bands (two hashes within k bits agree on one band), group-by (band, value)
     (hashed into `BAND_BUCKETS` group-by keys, each bucket's groups vectorised in one task), Hamming ≤ k inside
     each group → edges; connected components of the edges on the driver, then
     `dedup.phash_duplicates` on whole components (components never interact, so greedy keep-first over them is
     greedy keep-first over all rows).
   - semantic: the k-means sample = the rows with the smallest `dedup.sample_keys` (streamed, at most
     `dedup.DEFAULT_SAMPLE_SIZE` rows on the driver) → `dedup.fit_centroids` on the driver; clusters assigned in
     tasks; group-by cluster → `dedup._cluster_dedup` per cluster, in priority order.
   Driver: the rows of repeated sha256s, the pHash edges and their rows, the sample, and the duplicates found.
4. join, a task per shard: the shard's duplicates joined to its rows → `<id>.decisions.parquet`, its sorted kept
   uids `<id>.keep.npy`, reason counts.
5. driver: the parts streamed into `decisions.parquet` and `subsets/keep.npy`, one shard's part at a time.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.select import dedup, filtering, registry, rules, subsets
from mithridate.core import engine as engines, schema, storage

logger = logging.getLogger(__name__)
WORK = "_ray"
REASONS = {"exact": dedup.DUPLICATE_EXACT, "phash": dedup.DUPLICATE_PHASH, "semantic": dedup.DUPLICATE_SEMANTIC}
BAND_BUCKETS = 32  # the (band, value) groups are hashed into this many group-by keys, each a vectorised task
ROW_GROUP = 1 << 20  # rows per row group of decisions.parquet: pyarrow's default, what `pq.write_table` writes
COMPONENT_BATCH = 2048  # pHash components are deduplicated together up to this many rows (they never interact)


class data_context(contextlib.ContextDecorator):
    """Ray Data settings of the filter's pipelines, restored after: no progress bars (they log every few seconds
    when stderr is not a terminal), no INFO line per dataset executed (the stage logs its own summary), and the
    pull-based sort shuffle (on a small key table it starts in a fraction of the time of the default hash shuffle's
    aggregator actors)."""

    def __enter__(self):
        import ray.data
        from ray.data.context import ShuffleStrategy

        ctx, log = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
        self._saved = (ctx.enable_progress_bars, ctx.shuffle_strategy, log.level)
        ctx.enable_progress_bars, ctx.shuffle_strategy = False, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
        return self

    def __exit__(self, *exc):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars, ctx.shuffle_strategy, level = self._saved
        logging.getLogger("ray.data").setLevel(level)
        return False


# --- per-shard inputs -------------------------------------------------------------------------------------------

def shard_inputs(cfg, path: Path | str, phash_rows=None) -> tuple[dict, np.dtype | None]:
    """One shard's filter columns (`filtering.row_table` + scores) and the dtype its embeddings are stored in."""
    table = schema.read(path, "shard")
    t = filtering.row_table(table, phash_rows(table) if phash_rows else None)
    img = txt = aes = None
    dtype = None
    if cfg.embeddings:
        img, txt, dtype = _shard_embeddings(cfg, storage.stem(path), t["uid"].tolist())
    if cfg.aesthetic:
        aes = _shard_aesthetic(cfg.aesthetic, storage.stem(path), t["uid"].tolist())
    return filtering.add_scores(t, img, txt, aes), dtype


def _shard_embeddings(cfg, stem: str, uids: list[str]):
    """(img, txt) float32 aligned with `uids` (NaN rows without an embedding) and the stored dtype, as
    `filtering.load_embeddings` reads them for the whole folder."""
    from curation.score import embed

    d = None
    img = np.full((len(uids), 0), np.nan, np.float32)
    if stem.isdigit() and storage.isfile(storage.join(cfg.embeddings, f"{int(stem):05d}.npz")):
        d = embed.load_embeddings(cfg.embeddings, stem, cfg.shards)
    if d is None:
        dim = _embedding_dim(cfg.embeddings)
        img = np.full((len(uids), dim), np.nan, np.float32)
        return img, img.copy(), None
    where = dict(zip(d["uid"].tolist(), range(len(d["uid"]))))
    idx = np.array([where.get(u, -1) for u in uids], dtype=np.int64)
    img = np.full((len(uids), d["img_emb"].shape[1]), np.nan, np.float32)
    txt = np.full_like(img, np.nan)
    img[idx >= 0], txt[idx >= 0] = d["img_emb"][idx[idx >= 0]], d["txt_emb"][idx[idx >= 0]]
    return img, txt, d["img_emb"].dtype


def _npz_files(folder: str) -> list[Path | str]:
    files = storage.glob(folder, "[0-9][0-9][0-9][0-9][0-9].npz")
    if not files:
        raise FileNotFoundError(f"no NNNNN.npz embeddings in {folder}")
    return files


def _embedding_dim(folder: str) -> int:
    with storage.load_npz(_npz_files(folder)[0]) as z:
        return int(z["img_emb"].shape[1])


def _shard_aesthetic(folder: str, stem: str, uids: list[str]) -> np.ndarray:
    """Aesthetic scores of one shard aligned with `uids` (NaN where missing)."""
    path = storage.join(folder, f"{stem}.parquet")
    if not storage.isfile(path):
        return np.full(len(uids), np.nan, np.float32)
    table = schema.read(path, "aesthetic")
    got = dict(zip(table["uid"].to_pylist(), table["aesthetic_score"].to_pylist()))
    return np.array([np.nan if got.get(u) is None else got[u] for u in uids], np.float32)


def _encoder(folder: str) -> str:
    info = storage.join(folder, "encoder.json")
    return json.loads(storage.read_text(info)).get("name", "") if storage.isfile(info) else ""


def _write_table(table: pa.Table, path: Path | str) -> None:
    """A work file, written whole (`storage.output`: on object storage one upload)."""
    with storage.output(path) as tmp:
        pq.write_table(table, tmp)


def _read_table(path: Path | str) -> pa.Table:
    with storage.source(path) as src:
        return pq.read_table(src)


def _save_npy(array: np.ndarray, path: Path | str) -> None:
    with storage.output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


# --- phase 1: the pool's originals and CLIP cut ----------------------------------------------------------------

def pool_task(cfg, path: str, work: str) -> dict:
    """One shard's opted-out originals, and its success rows' CLIP scores written for the top-fraction cut."""
    path = storage.location(path)
    honor = cfg.optout == "honor"
    t, _ = shard_inputs(cfg, path, phash_rows=lambda table: registry.optout_mask(table) if honor else np.zeros(
        table.num_rows, dtype=bool))
    originals = filtering.originals_of(t, filtering.originals_mask(t)) if cfg.optout == "honor" else None
    scored = 0
    if cfg.clip_top_fraction is not None and "clip_score" in t:
        s = t["clip_score"][t["status"] == schema.STATUS_SUCCESS].astype(np.float32)
        s = s[~np.isnan(s)]
        _write_table(pa.table({"clip_score": pa.array(s, pa.float32())}),
                     storage.join(work, f"{storage.stem(path)}.scores.parquet"))
        scored = len(s)
    return {"originals": originals, "scored": scored}


def merge_originals(parts: list[dict | None]) -> dict | None:
    """The pool's originals in shard order then row order (the local engine's order: ties go to the first)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    embs = [p["img_emb"] for p in parts if p["img_emb"] is not None]
    return {"phash": [h for p in parts for h in p["phash"]], "domain": [d for p in parts for d in p["domain"]],
            "img_emb": np.concatenate(embs) if embs else None}


@data_context()
def clip_cut(cfg, work: Path | str, scored: int) -> float | None:
    """The ⌈fraction·n⌉-th highest CLIP score of the pool (`rules.clip_score_filter`): a Ray Data sort + limit + min;
    None without a top fraction or without scores."""

    if cfg.clip_top_fraction is None or not scored:
        return None
    n_keep = max(1, int(np.ceil(cfg.clip_top_fraction * scored - 1e-9)))
    files = [str(f) for f in storage.glob(work, "*.scores.parquet")]
    ds = read_parquet(files).sort("clip_score", descending=True).limit(n_keep)
    return float(np.float32(ds.min("clip_score")))


# --- phase 2: per-row layers and the key table --------------------------------------------------------------------

def rows_task(cfg, path: str, index: int, work: str, reg, originals: dict | None, cut: float | None,
              emb_dtype: str | None) -> dict:
    """Every layer before dedup for one shard → `<id>.rows.parquet`; its survivors' keys → `<id>.keys.parquet`."""
    path = storage.location(path)
    stem = storage.stem(path)
    t, _ = shard_inputs(cfg, path)
    n = len(t["uid"])
    layers, _ = filtering.row_layers(cfg, t, reg, originals=originals, pool_cut=cut)
    cols = {"uid": pa.array(t["uid"].tolist(), pa.string()), "phash": pa.array(t["phash"].tolist(), pa.string()),
            "clip_score": pa.array(filtering._floats(t.get("clip_score"), n), pa.float32()),
            "aesthetic_score": pa.array(filtering._floats(t.get("aesthetic_score"), n), pa.float32())}
    cols.update({f"layer_{i:03d}": pa.array(list(a), pa.string()) for i, a in enumerate(layers)})
    _write_table(pa.table(cols), storage.join(work, f"{stem}.rows.parquet"))
    first, _ = rules.combine_reasons(*layers) if n else (np.zeros(0, dtype=object), [])
    survivors = np.flatnonzero(np.array([r is None for r in first], dtype=bool))
    if len(survivors):
        _write_table(key_table(cfg, t, survivors, index, emb_dtype), storage.join(work, f"{stem}.keys.parquet"))
    return {"rows": n, "survivors": len(survivors)}


def key_table(cfg, t: dict, rows: np.ndarray, index: int, emb_dtype: str | None) -> pa.Table:
    """The dedup keys of `rows`: rid, uid, lower-case sha256 (null: none), pHash as uint64 + valid flag, and with
    embeddings the k-means sample key, the raw embedding (fixed-size binary of `emb_dtype`) + valid flag."""
    sha = [None if dedup.is_missing(h) else str(h).lower() for h in t["sha256"][rows]]
    ph, ph_ok = dedup.phash_ints(t["phash"][rows].tolist())
    cols = {"rid": pa.array((np.int64(index) << 32) + rows.astype(np.int64)),
            "uid": pa.array(t["uid"][rows].astype(str).tolist(), pa.string()), "sha256": pa.array(sha, pa.string()),
            "ph": pa.array(ph), "ph_ok": pa.array(ph_ok)}
    if "img_emb" in t:
        raw = t["img_emb"][rows]
        _, ok = dedup.normalize_rows(raw)
        stored = np.where(ok[:, None], raw, 0).astype(emb_dtype or np.float32)
        width = stored.shape[1] * stored.dtype.itemsize
        cols["emb"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(rows),
                                                           [None, pa.py_buffer(stored.tobytes())])
        cols["emb_ok"] = pa.array(ok)
        cols["key"] = pa.array(dedup.sample_keys(t["uid"][rows].tolist(), cfg.seed))
    return pa.table(cols)


def embeddings_of(col, dtype: str) -> np.ndarray:
    """float32 rows of a fixed-size binary embedding column (Array or ChunkedArray) stored as `dtype`."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    width = arr.type.byte_width
    buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * width : (arr.offset + len(arr)) * width]
    return buf.view(np.dtype(dtype)).reshape(len(arr), -1).astype(np.float32)


# --- phase 3: dedup as Ray Data group-bys ----------------------------------------------------------------------

def _read_files(batch: pa.Table) -> pa.Table:
    return pa.concat_tables([_read_table(p) for p in batch["path"].to_pylist()])


def read_parquet(files: list[str]):
    """A Ray dataset of parquet files (on a filesystem every node sees, or object storage), read in tasks, one block
    per file (not `ray.data.read_parquet`, whose path resolution needs an fsspec with `HTTPFileSystem`)."""
    import ray

    paths = ray.data.from_items([{"path": str(f)} for f in files], override_num_blocks=len(files))
    return paths.map_batches(_read_files, batch_size=1, batch_format="pyarrow", **engines.remote_options())


def _partitions() -> int:
    """Shuffle partitions of a group-by: one per cluster CPU (the group-bys here are over a small key table; Ray
    Data's default of 200 costs more than the work on a small cluster)."""
    import ray

    return max(2, int(ray.cluster_resources().get("CPU", 2)))


def _drop_rids(batch: pa.Table, rids: np.ndarray) -> pa.Table:
    return batch.filter(pa.array(~np.isin(batch["rid"].to_numpy(), rids)))


def _where_in(batch: pa.Table, column: str, values: list) -> pa.Table:
    return batch.filter(pc.is_in(batch[column], value_set=pa.array(values, batch.schema.field(column).type)))


@data_context()
def global_dedup(cfg, keys: list[str], emb_dtype: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer → (duplicate rids, uid of the kept row each duplicates), layers in config order, each over the rows
    that no earlier layer flagged."""

    layers = filtering.dedup_layers(cfg, bool(cfg.embeddings))
    out = {layer: (np.zeros(0, np.int64), np.zeros(0, dtype=object)) for layer in layers}
    if not keys:
        return out
    ds = read_parquet(keys)
    flagged = np.zeros(0, np.int64)
    for layer in layers:
        live = ds if not len(flagged) else ds.map_batches(_drop_rids, fn_kwargs={"rids": flagged},
                                                          batch_format="pyarrow", batch_size=None)
        if layer == "exact":
            found = exact_pass(live)
        elif layer == "phash":
            found = phash_pass(live, cfg.dedup_phash_k)
        else:
            found = semantic_pass(live, cfg.semantic_eps, cfg.seed, emb_dtype)
        out[layer] = found
        flagged = np.union1d(flagged, found[0])
        logger.info("filter (ray): %s dedup flagged %d rows", layer, len(found[0]))
    return out


def _collect(ds, columns: list[str]) -> pa.Table:
    """The rows of a (small) dataset on the driver, `columns` only."""
    tables = list(ds.select_columns(columns).iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(tables) if tables else None


@data_context()
def exact_pass(live) -> tuple[np.ndarray, np.ndarray]:
    """Exact duplicates: a group-by sha256 count finds the repeated hashes; their rows go through
    `dedup.exact_duplicates` on the driver."""
    shas = live.select_columns(["sha256"]).map_batches(
        lambda b: b.filter(pc.is_valid(b["sha256"])), batch_format="pyarrow", batch_size=None)
    counts = shas.groupby("sha256", num_partitions=_partitions()).count().map_batches(
        lambda b: b.filter(pc.greater(b["count()"], 1)), batch_format="pyarrow", batch_size=None)
    repeated = _collect(counts, ["sha256"])
    if repeated is None or repeated.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    rows = _collect(live.map_batches(_where_in, fn_kwargs={"column": "sha256", "values": repeated[
        "sha256"].to_pylist()}, batch_format="pyarrow", batch_size=None), ["rid", "uid", "sha256"])
    rows = rows.sort_by("rid")  # row order: the tie-break of equal uids, as in the local engine
    d = dedup.exact_duplicates(rows["sha256"].to_pylist(), rows["uid"].to_pylist())
    return rows["rid"].to_numpy()[d.mask], d.duplicate_of[d.mask]


def band_spans(k: int) -> list[tuple[int, int]]:
    """(shift, width) of the k + 1 bands a 64-bit hash is split into: two hashes within k bits agree on one."""
    n = k + 1
    widths = [64 // n + (1 if b < 64 % n else 0) for b in range(n)]
    return [(sum(widths[:b]), w) for b, w in enumerate(widths)]


def explode_bands(batch: pa.Table, k: int) -> pa.Table:
    """One row per (row, band): rid, the hash, band index, the band's value and the bucket of (band, value)."""
    ok = batch["ph_ok"].to_numpy(zero_copy_only=False)
    rid, ph = batch["rid"].to_numpy()[ok], batch["ph"].to_numpy()[ok].astype(np.uint64)
    parts = []
    for b, (shift, width) in enumerate(band_spans(k)):
        mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(2**64 - 1)
        value = (ph >> np.uint64(shift)) & mask if width else np.zeros_like(ph)
        with np.errstate(over="ignore"):
            mixed = (value + np.uint64(b)) * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of (band, value)
        parts.append(pa.table({"rid": rid, "ph": ph, "band": np.full(len(rid), b, np.int16),
                               "value": value.astype(np.uint64),
                               "bucket": ((mixed >> np.uint64(40)) % np.uint64(BAND_BUCKETS)).astype(np.int32)}))
    return pa.concat_tables(parts)


def bucket_edges(bucket: dict, k: int) -> dict:
    """`band_edges` of every (band, value) group of more than one row in a bucket."""
    order = np.lexsort((bucket["value"], bucket["band"]))
    band, value = bucket["band"][order], bucket["value"][order]
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (value[1:] != value[:-1]), True])
    a, b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi in itertools.pairwise(starts):
        if hi - lo > 1:
            idx = order[lo:hi]
            e = band_edges({"rid": bucket["rid"][idx], "ph": bucket["ph"][idx], "band": band[lo:hi]}, k)
            a.append(e["a"])
            b.append(e["b"])
    return {"a": np.concatenate(a), "b": np.concatenate(b)}


def band_edges(group: dict, k: int) -> dict:
    """Inside one (band, value) group: edges between the first rows (lowest rid) of distinct hashes within k bits,
    and, in band 0 (whose groups hold every row of a hash), from each repeated hash's other rows to its first."""
    rid, ph = group["rid"].astype(np.int64), group["ph"].astype(np.uint64)
    order = np.lexsort((rid, ph))
    rid, ph = rid[order], ph[order]
    uniq, start = np.unique(ph, return_index=True)
    rep = rid[start]
    i, j, _ = dedup.hamming_pairs(uniq, k=k)
    a, b = [rep[i]], [rep[j]]
    if len(group["band"]) and int(group["band"][0]) == 0:
        inv = np.repeat(np.arange(len(uniq)), np.diff(np.r_[start, len(ph)]))
        same = rid != rep[inv]
        a.append(rep[inv][same])
        b.append(rid[same])
    return {"a": np.concatenate(a).astype(np.int64), "b": np.concatenate(b).astype(np.int64)}


@data_context()
def phash_pass(live, k: int) -> tuple[np.ndarray, np.ndarray]:
    """pHash duplicates: band group-bys give the edges (pairs within k bits); their connected components, whole,
    through `dedup.phash_duplicates` on the driver."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    bands = live.map_batches(explode_bands, fn_kwargs={"k": k}, batch_format="pyarrow", batch_size=None)
    grouped = bands.groupby("bucket", num_partitions=_partitions())
    edges = _collect(grouped.map_groups(bucket_edges, fn_kwargs={"k": k}, batch_format="numpy"), ["a", "b"])
    if edges is None or edges.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    m = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (inv[: len(a)], inv[len(a) :])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    rows = _collect(live.map_batches(_where_in, fn_kwargs={"column": "rid", "values": nodes.tolist()},
                                     batch_format="pyarrow", batch_size=None), ["rid", "uid", "ph"]).sort_by("rid")
    if not np.array_equal(rows["rid"].to_numpy(), nodes):
        raise RuntimeError("filter (ray): pHash edge rows went missing from the key table")
    return _components_dedup(rows, comp, k)


def _components_dedup(rows: pa.Table, comp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`dedup.phash_duplicates` over batches of whole components (rows sorted by rid; `comp` per row)."""
    rid, uid = rows["rid"].to_numpy(), np.array(rows["uid"].to_pylist(), dtype=object)
    hexes = np.array([f"{int(v):016x}" for v in rows["ph"].to_numpy()], dtype=object)
    by_comp = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.r_[True, comp[by_comp][1:] != comp[by_comp][:-1], True])
    dup, of = [], []
    lo = 0
    for hi in bounds[1:]:  # close a batch at a component boundary once it is big enough, or at the end
        if hi - lo < COMPONENT_BATCH and hi != len(by_comp):
            continue
        idx = np.sort(by_comp[lo:hi])  # rid order inside the batch
        d = dedup.phash_duplicates(hexes[idx].tolist(), uid[idx].tolist(), k=k)
        dup.append(rid[idx][d.mask])
        of.append(d.duplicate_of[d.mask])
        lo = hi
    return np.concatenate(dup), np.concatenate(of)


def _valid_embeddings(batch: pa.Table) -> pa.Table:
    return batch.filter(batch["emb_ok"])


def _batch_sample(batch: pa.Table, size: int) -> pa.Table:
    """The `size` rows with the smallest (key, uid) of a batch."""
    order = np.lexsort((np.array(batch["uid"].to_pylist(), dtype=str), batch["key"].to_numpy()))[:size]
    return batch.select(["rid", "uid", "key", "emb"]).take(pa.array(order, pa.int64()))


def _batch_keys(batch: pa.Table, size: int) -> pa.Table:
    """The `size` smallest sample keys of a batch."""
    keys = batch["key"].to_numpy()
    return pa.table({"key": np.partition(keys, size - 1)[:size] if len(keys) > size else keys})


def _at_most(batch: pa.Table, key: int) -> pa.Table:
    return batch.select(["rid", "uid", "key", "emb"]).filter(pa.array(batch["key"].to_numpy() <= np.uint64(key)))


def sample(ds, size: int) -> pa.Table:
    """The `size` rows with the smallest (key, uid), in two streamed passes: the `size`-th smallest key (8 bytes a
    row, at most `size` per block, reach the driver), then the rows at or under it, embeddings included (`size` rows,
    more only when keys tie)."""
    best = np.zeros(0, np.uint64)
    for batch in ds.map_batches(_batch_keys, fn_kwargs={"size": size}, batch_format="pyarrow",
                                batch_size=None).iter_batches(batch_format="pyarrow", batch_size=None):
        both = np.concatenate([best, batch["key"].to_numpy()])
        best = np.partition(both, size - 1)[:size] if len(both) > size else both
    rows = _collect(ds.map_batches(_at_most, fn_kwargs={"key": int(best.max())}, batch_format="pyarrow",
                                   batch_size=None), ["rid", "uid", "key", "emb"])
    return _batch_sample(rows, size)


def _assign(batch: pa.Table, centroids: np.ndarray, dtype: str) -> pa.Table:
    x, _ = dedup.normalize_rows(embeddings_of(batch["emb"], dtype))
    labels = dedup.assign_clusters(x, centroids) if len(x) else np.zeros(0, np.int64)
    return batch.select(["rid", "uid", "emb"]).append_column("cluster", pa.array(labels.astype(np.int64)))


def cluster_pass(group: pa.Table, thr: float, dtype: str) -> pa.Table:
    """SemDeDup inside one cluster, rows in priority order (uid, then row order): (rid, duplicate_of)."""
    order = np.lexsort((group["rid"].to_numpy(), np.array(group["uid"].to_pylist(), dtype=str)))
    g = group.take(pa.array(order, pa.int64()))
    x, _ = dedup.normalize_rows(embeddings_of(g["emb"], dtype))
    d, o = dedup._cluster_dedup(x, np.float32(thr), 64 << 20) if len(x) > 1 else ([], [])
    return pa.table({"rid": g["rid"].to_numpy()[np.array(d, dtype=np.int64)],
                     "duplicate_of": pa.array(np.array(g["uid"].to_pylist(), dtype=object)[np.array(o, np.int64)]
                                              .tolist(), pa.string())})


@data_context()
def semantic_pass(live, eps: float, seed: int, dtype: str | None) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup as `dedup.semantic_duplicates` (keep first): k = ⌈√n⌉ clusters fitted on the hashed sample."""
    dtype = str(np.dtype(dtype or np.float32))
    sem = live.map_batches(_valid_embeddings, batch_format="pyarrow", batch_size=None).materialize()
    n = sem.count()
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    k = min(math.ceil(math.sqrt(n)), n)
    fit = sample(sem, n if n <= dedup.DEFAULT_SAMPLE_SIZE else max(dedup.DEFAULT_SAMPLE_SIZE, k))
    order = np.lexsort((fit["rid"].to_numpy(), np.array(fit["uid"].to_pylist(), dtype=str)))  # priority order
    x, _ = dedup.normalize_rows(embeddings_of(fit["emb"], dtype)[order])
    centroids = dedup.fit_centroids(x, k, seed=seed)
    del fit, x
    found = sem.map_batches(_assign, fn_kwargs={"centroids": centroids, "dtype": dtype}, batch_format="pyarrow",
                            batch_size=None).groupby("cluster", num_partitions=_partitions()).map_groups(
        cluster_pass, fn_kwargs={"thr": float(np.float32(1.0 - eps)), "dtype": dtype}, batch_format="pyarrow")
    got = _collect(found, ["rid", "duplicate_of"])
    if got is None or got.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    return got["rid"].to_numpy(), np.array(got["duplicate_of"].to_pylist(), dtype=object)


# --- phase 4: join back per shard --------------------------------------------------------------------------------

def join_task(cfg, stem: str, work: str, dups: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """One shard's decisions: its layers + its duplicates (row → kept uid, per layer) → `<id>.decisions.parquet`
    and `<id>.keep.npy` (sorted kept uids); returns its reason counts."""
    part = _read_table(storage.join(work, f"{stem}.rows.parquet"))
    n = part.num_rows
    layers = [np.array(part[c].to_pylist(), dtype=object) for c in part.column_names if c.startswith("layer_")]
    dup_of = np.full(n, None, dtype=object)
    for layer in filtering.dedup_layers(cfg, bool(cfg.embeddings)):
        reasons = np.full(n, None, dtype=object)
        rows, of = dups.get(layer, (np.zeros(0, np.int64), np.zeros(0, dtype=object)))
        reasons[rows] = REASONS[layer]
        dup_of[rows] = of
        layers.append(reasons)
    first, every = rules.combine_reasons(*layers) if n else (np.zeros(0, dtype=object), [])
    t = {"uid": np.array(part["uid"].to_pylist(), dtype=object), "phash": np.array(part["phash"].to_pylist(),
                                                                                  dtype=object)}
    for c, given in (("clip_score", cfg.embeddings), ("aesthetic_score", cfg.aesthetic)):
        if given:
            t[c] = part[c].to_numpy(zero_copy_only=False).astype(np.float32)
    table = schema.validate(filtering.decisions_table(t, first, every, dup_of), "decisions")
    _write_table(table, storage.join(work, f"{stem}.decisions.parquet"))
    keep = [u for u, k in zip(t["uid"].tolist(), table["keep"].to_pylist()) if k]
    _save_npy(subsets.from_uids(keep), storage.join(work, f"{stem}.keep.npy"))
    return filtering.reason_counts(table)


# --- phase 5: outputs ---------------------------------------------------------------------------------------------

def write_decisions(parts: list[Path | str], path: Path | str, encoder: str) -> None:
    """Stream the per-shard decisions into one file, with the metadata `schema.write` gives it, in row groups of
    `ROW_GROUP` rows: the bytes the local engine's `pq.write_table` writes. Memory: one row group."""
    meta = {"schema_name": "decisions", "schema_version": schema.version("decisions"), "encoder": encoder}
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    target = schema.DECISIONS_SCHEMA.with_metadata(meta)
    tables = (_read_table(p).cast(schema.DECISIONS_SCHEMA).replace_schema_metadata(meta) for p in parts)
    with storage.output(path) as tmp, pq.ParquetWriter(tmp, target) as writer:
        for group in row_groups(tables, ROW_GROUP):
            writer.write_table(group)


def row_groups(tables, size: int):
    """The rows of `tables`, in order, as contiguous tables of `size` rows (the last one shorter; none when there
    are no rows)."""
    buf, n = [], 0
    for t in tables:
        buf.append(t)
        n += t.num_rows
        while n >= size:
            whole = pa.concat_tables(buf).combine_chunks()
            yield whole.slice(0, size)
            buf, n = [whole.slice(size)], n - size
    if n:
        yield pa.concat_tables(buf).combine_chunks()


def write_keep(parts: list[Path | str], path: Path | str, chunk: int = 1 << 16) -> int:
    """Merge the per-shard sorted kept uids into one sorted, unique `keep.npy` (what `np.save` of
    `subsets.from_uids` writes), streaming: memory is a chunk, not the subset (remote parts are read from local
    copies). Returns its length."""
    with contextlib.ExitStack() as stack, storage.output(path) as final:
        local = [stack.enter_context(storage.local_copy(p)) for p in parts]
        return _merge_keep(local, final, chunk)


def _merge_keep(parts: list[Path], path: Path, chunk: int) -> int:
    raw = path.with_name(path.name + ".raw")
    n = 0
    with open(raw, "wb") as fh:
        arrays = [np.load(p, mmap_mode="r") for p in parts]
        merged = heapq.merge(*(map(tuple, a.tolist()) if len(a) < chunk else _iter_rows(a, chunk) for a in arrays))
        buf, last = [], None
        for row in merged:
            if row == last:
                continue
            buf.append(row)
            last = row
            if len(buf) == chunk:
                fh.write(np.array(buf, dtype=subsets.DTYPE).tobytes())
                n, buf = n + len(buf), []
        fh.write(np.array(buf, dtype=subsets.DTYPE).tobytes())
        n += len(buf)
    with open(path, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(subsets.DTYPE),
                                                   "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out)
    raw.unlink()
    return n


def _iter_rows(a: np.ndarray, chunk: int):
    for r0 in range(0, len(a), chunk):
        yield from map(tuple, np.asarray(a[r0 : r0 + chunk]).tolist())


# --- the stage ----------------------------------------------------------------------------------------------------

def run(cfg) -> dict:
    """The filter stage on Ray: writes `decisions.parquet` and `subsets/keep.npy` into `cfg.out` (whose config the
    caller wrote) and returns the stats, as the local engine does."""
    ray = engines.ray_init()
    out = storage.location(cfg.out)
    work = storage.join(out, WORK)
    storage.rmtree(work)
    storage.makedirs(work)
    files = storage.glob(cfg.shards, "*.parquet")
    if not files:
        raise FileNotFoundError(f"no shard parquet files in {cfg.shards}")
    emb_dtype = None
    if cfg.embeddings:
        with storage.load_npz(_npz_files(cfg.embeddings)[0]) as z:
            emb_dtype = str(z["img_emb"].dtype)
    reg = filtering.load_registry(cfg)
    task = ray.remote(**engines.remote_options(num_cpus=1, max_retries=2))
    needs_pool = cfg.optout == "honor" or (cfg.clip_top_fraction is not None and cfg.embeddings)
    pool = ray.get([task(pool_task).remote(cfg, str(f), str(work)) for f in files]) if needs_pool else []
    originals = merge_originals([p["originals"] for p in pool]) if cfg.optout == "honor" else None
    cut = clip_cut(cfg, work, sum(p["scored"] for p in pool))
    refs = (ray.put(reg), ray.put(originals))
    infos = ray.get([task(rows_task).remote(cfg, str(f), i, str(work), refs[0], refs[1], cut, emb_dtype)
                     for i, f in enumerate(files)])
    logger.info("filter (ray): %d rows, %d survive the per-row layers", sum(i["rows"] for i in infos),
                sum(i["survivors"] for i in infos))
    stems = [storage.stem(f) for f in files]
    keys = [str(storage.join(work, f"{s}.keys.parquet")) for s, i in zip(stems, infos) if i["survivors"]]
    dups = split_by_shard(global_dedup(cfg, keys, emb_dtype))
    counts = ray.get([task(join_task).remote(cfg, s, str(work), dups.get(i, {})) for i, s in enumerate(stems)])
    encoder = _encoder(cfg.embeddings) if cfg.embeddings else ""
    write_decisions([storage.join(work, f"{s}.decisions.parquet") for s in stems],
                    storage.join(out, "decisions.parquet"), encoder)
    write_keep([storage.join(work, f"{s}.keep.npy") for s in stems], storage.join(out, "subsets", "keep.npy"))
    total = {"rows": sum(c["rows"] for c in counts), "kept": sum(c["kept"] for c in counts),
             "reasons": sum((Counter(c["reasons"]) for c in counts), Counter()),
             "all_reasons": sum((Counter(c["all_reasons"]) for c in counts), Counter())}
    stats = filtering.stats_of(total, cfg, encoder, _effective_cut(cfg, cut))
    storage.rmtree(work)
    return stats


def _effective_cut(cfg, cut: float | None) -> float | None:
    """The `clip_threshold_effective` the local engine reports: the threshold, the pool's cut, or None."""
    if not cfg.embeddings or (cfg.clip_threshold is None and cfg.clip_top_fraction is None):
        return None
    return float(cfg.clip_threshold) if cfg.clip_threshold is not None else cut


def split_by_shard(dups: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[int, dict]:
    """{shard index: {layer: (row positions, duplicate_of)}} from rids (shard << 32 | row)."""
    out: dict[int, dict] = {}
    for layer, (rids, of) in dups.items():
        rids = np.asarray(rids, dtype=np.int64)
        shard, row = rids >> 32, rids & 0xFFFFFFFF
        for s in np.unique(shard):
            hit = shard == s
            out.setdefault(int(s), {})[layer] = (row[hit], np.asarray(of, dtype=object)[hit])
    return out
