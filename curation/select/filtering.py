"""Filter stage (`mithridate filter`): a keep/exclude decision with reasons for every downloaded row.

Order of the layers (the first reason that applies is the row's `exclusion_reason`; `reasons` has all):
download failure → opt-out signal → do-not-train registry → re-upload of an opted-out work → caption and
image rules → CLIP score → aesthetic score → duplicates (exact, pHash, semantic) among the survivors.

Engines (`engine`, a runtime field: switching resumes the same folder): `local` runs every layer in this process;
`ray` (`curation.select.ray_filter`) runs the per-row layers in one task per shard and the global passes (re-upload
originals, the CLIP top-fraction cut, the three dedup layers) as Ray Data group-bys over a small key table. Both
write the same `decisions.parquet`, `subsets/keep.npy` and stats for the same input and seed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from curation.select import dedup, registry, rules, subsets
from mithridate.core import engine as engines, options, schema, stats_files, storage

logger = logging.getLogger(__name__)
DEDUP_LAYERS = ("exact", "phash", "semantic")


@dataclass(frozen=True)
class FilterConfig:
    shards: str = options.opt("mithridate-out/shards", "downloaded shards (download output)")
    embeddings: str = options.opt("", "embeddings folder (embed output); '' = no CLIP score or semantic dedup")
    aesthetic: str = options.opt("", "aesthetic scores folder (aesthetic score output); '' = none")
    registry: str = options.opt("", "do-not-train registry file (json/csv/tsv: url, domain, sha256, phash, artist)")
    out: str = options.opt("mithridate-out/filter", "output folder: decisions.parquet, subsets/keep.npy, "
                           "__stats__/run.json (every folder: a local path or an fsspec URL, s3://bucket/prefix)")
    optout: Literal["honor", "url_only", "ignore"] = options.opt(
        "honor", "honor = signals + registry + re-uploads of opted-out works; url_only = signals and registry "
        "URLs/domains only (re-uploads slip through); ignore = keep opted-out rows that were downloaded")
    clip_threshold: float | None = options.opt(None, "keep rows with clip_score >= this (not with top fraction)")
    clip_top_fraction: float | None = options.opt(None, "keep the top fraction by clip_score (not with threshold)")
    aesthetic_threshold: float | None = options.opt(None, "keep rows with aesthetic_score >= this")
    min_words: int = options.opt(1, "captions need at least this many words")
    min_chars: int = options.opt(2, "captions need at least this many characters")
    max_chars: int = options.opt(1000, "captions longer than this are excluded")
    min_side: int = options.opt(32, "smallest original image side in pixels")
    max_aspect: float = options.opt(3.0, "largest original aspect ratio")
    dedup: tuple[str, ...] = options.opt(DEDUP_LAYERS, "dedup layers, in order: exact, phash, semantic")
    dedup_phash_k: int = options.opt(4, "pHash Hamming distance up to which two images are duplicates")
    semantic_eps: float = options.opt(0.01, "SemDeDup: drop an image within cosine 1-eps of a kept one")
    reupload_phash_k: int = options.opt(8, "pHash distance for a re-upload of an opted-out work (and registry)")
    reupload_cos_eps: float = options.opt(0.06, "embedding match of a re-upload: cosine >= 1-eps")
    seed: int = options.opt(0, "seed of the k-means in semantic dedup (its sample: a hash of uid and seed)")
    engine: engines.Engine = options.opt(
        "local", "where the work runs: local (this process) or ray (a task per shard, dedup as Ray Data group-bys; "
        "the cluster RAY_ADDRESS names, else a local one); both write the same files")

    def __post_init__(self):
        options.check_choice(self, "optout", options.literal_values(FilterConfig, "optout"))
        options.check_choice(self, "engine", engines.ENGINES)
        if self.clip_threshold is not None and self.clip_top_fraction is not None:
            raise ValueError("FilterConfig: give clip_threshold or clip_top_fraction, not both")
        if self.clip_top_fraction is not None and not 0 < self.clip_top_fraction <= 1:
            raise ValueError(f"FilterConfig.clip_top_fraction={self.clip_top_fraction}: must be within (0, 1]")
        bad = [x for x in self.dedup if x not in DEDUP_LAYERS]
        if bad:
            raise ValueError(f"FilterConfig.dedup: {bad} not in {list(DEDUP_LAYERS)}")
        options.check_positive(self, "max_chars", "max_aspect", "semantic_eps", "reupload_cos_eps")
        storage.check_fields(self, "shards", "embeddings", "aesthetic", "registry", "out")


PRESETS = {"default": FilterConfig(), "tiny": FilterConfig()}
RUNTIME_FIELDS = ("engine",)  # fields that change where the work runs, not what it writes


def load_embeddings(folder: str, shards: str, uids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """Image and text embeddings aligned with `uids` (NaN rows where a row has none) and the encoder name."""
    from curation.score import embed  # torch-free until embeddings are asked for

    got, img, txt = embed.load_all(folder, shards)
    where = dict(zip(got.tolist(), range(len(got))))
    idx = np.array([where.get(u, -1) for u in uids])
    out_i = np.full((len(uids), img.shape[1]), np.nan, np.float32)
    out_t = np.full_like(out_i, np.nan)
    out_i[idx >= 0], out_t[idx >= 0] = img[idx[idx >= 0]], txt[idx[idx >= 0]]
    info = storage.join(folder, "encoder.json")
    return out_i, out_t, json.loads(storage.read_text(info)).get("name", "") if storage.isfile(info) else ""


def load_aesthetic(folder: str, uids: list[str]) -> np.ndarray:
    """Aesthetic scores aligned with `uids` (NaN where missing)."""
    table = schema.read_folder(folder, "aesthetic")
    got = dict(zip(table["uid"].to_pylist(), table["aesthetic_score"].to_pylist()))
    return np.array([np.nan if got.get(u) is None else got[u] for u in uids], np.float32)


def _none(n: int) -> np.ndarray:
    return np.full(n, None, dtype=object)


def originals_mask(t: dict) -> np.ndarray:
    """Downloaded rows that carry an opt-out: the works whose re-uploads elsewhere the `honor` policy excludes."""
    return registry.optout_mask(t) & (t["status"] == schema.STATUS_SUCCESS)


def originals_of(t: dict, mask: np.ndarray) -> dict:
    """The opted-out originals among the rows of `t` (`mask`): pHash, image embedding (None without), domain."""
    emb = t.get("img_emb")
    return {"phash": t["phash"][mask].tolist(), "img_emb": None if emb is None else emb[mask],
            "domain": t["domain"][mask].tolist()}


def optout_reasons(cfg: FilterConfig, t: dict, reg, originals: dict | None = None) -> list[np.ndarray]:
    """Opt-out layers: recorded signals, registry matches, re-uploads of opted-out works on other domains.

    `originals`: the opted-out originals of the whole pool (`originals_of`) when `t` is one shard of it; None: the
    originals among the rows of `t`.
    """
    n = len(t["uid"])
    if cfg.optout == "ignore":
        return [registry.signal_reasons(t, "ignore")]
    out = [registry.signal_reasons(t, "honor")]
    if reg is not None:
        found = registry.match(t, reg, phash_k=cfg.reupload_phash_k)
        if cfg.optout == "url_only":  # only what a URL list can say: pages, images and domains
            found = np.where(np.isin(found, ["registry_url", "registry_domain"]), found, None)
        out.append(found)
    if cfg.optout == "honor":
        own = originals_mask(t)
        orig = originals_of(t, own) if originals is None else originals
        cand = ~own & (t["status"] == schema.STATUS_SUCCESS)
        reasons = _none(n)
        if len(orig["phash"]) and cand.any():
            emb = t.get("img_emb")
            m = registry.reupload_matches(
                t["phash"][cand].tolist(), None if emb is None else emb[cand], orig["phash"], orig["img_emb"],
                cfg.reupload_phash_k, cfg.reupload_cos_eps, t["domain"][cand].tolist(), orig["domain"])
            reasons[np.flatnonzero(cand)] = m.reasons
        out.append(reasons)
    return out


def score_reasons(cfg: FilterConfig, t: dict, pool_cut: float | None = None) -> tuple[list[np.ndarray], float | None]:
    """CLIP-score and aesthetic layers; returns (reasons, the CLIP cut applied or None).

    `pool_cut`: the `clip_top_fraction` cut over the whole pool when `t` is one shard of it (applied as a threshold:
    rows tied with the cut pass, as `rules.clip_score_filter` says); None: the cut over the rows of `t`.
    """
    out, cut = [], None
    ok = t["status"] == schema.STATUS_SUCCESS
    if "clip_score" in t and (cfg.clip_threshold is not None or cfg.clip_top_fraction is not None):
        if cfg.clip_top_fraction is not None and pool_cut is not None:
            f = rules.clip_score_filter(t["clip_score"][ok], threshold=pool_cut)
        else:
            f = rules.clip_score_filter(t["clip_score"][ok], cfg.clip_threshold, cfg.clip_top_fraction)
        reasons = _none(len(ok))
        reasons[ok] = f.reasons
        out.append(reasons)
        cut = None if np.isnan(f.threshold) else float(f.threshold)
    if "aesthetic_score" in t and cfg.aesthetic_threshold is not None:
        a = t["aesthetic_score"]
        out.append(np.where(ok & ~(a >= cfg.aesthetic_threshold), "low_aesthetic", None).astype(object))
    return out, cut


def dedup_reasons(cfg: FilterConfig, t: dict, survivors: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Duplicate layers over the rows no other layer excluded; returns (reasons per layer, duplicate_of)."""
    n = len(t["uid"])
    uids, dup_of, out = t["uid"].tolist(), _none(n), []
    active = survivors.copy()
    for layer in dedup_layers(cfg, "img_emb" in t):
        if layer == "exact":
            d = dedup.exact_duplicates(t["sha256"].tolist(), uids, active=active)
        elif layer == "phash":
            d = dedup.phash_duplicates(t["phash"].tolist(), uids, k=cfg.dedup_phash_k, active=active)
        else:
            d = dedup.semantic_duplicates(t["img_emb"], uids, eps=cfg.semantic_eps, seed=cfg.seed, active=active)
        out.append(d.reasons)
        hit = d.mask
        dup_of[hit] = np.asarray(d.duplicate_of, dtype=object)[hit]
        active &= ~hit
    return out, dup_of


ROW_COLUMNS = ("uid", "url", "page_url", "domain", "caption", "status", "optout", "sha256", "original_width",
               "original_height")


def row_table(table: pa.Table, phash_rows: np.ndarray | None = None) -> dict:
    """A shard table (one shard or all) as the filter's columns: object arrays, `signals`, and `phash` of the success
    rows (only of those in `phash_rows` when given; None elsewhere)."""
    t = {c: np.array(table[c].to_pylist(), dtype=object) for c in ROW_COLUMNS}
    t["signals"] = table["signals"].to_pylist()
    ok = t["status"] == schema.STATUS_SUCCESS
    rows = np.flatnonzero(ok if phash_rows is None else ok & phash_rows)
    t["phash"] = np.full(len(ok), None, dtype=object)
    t["phash"][rows] = dedup.phashes(table["jpg"].take(pa.array(rows, pa.int64())).to_pylist())
    return t


def add_scores(t: dict, img: np.ndarray | None, txt: np.ndarray | None, aesthetic: np.ndarray | None) -> dict:
    """The image embeddings, their CLIP scores (image · text) and the aesthetic scores, when given, into `t`."""
    if img is not None:
        t["img_emb"], t["clip_score"] = img, np.sum(img * txt, axis=1)
    if aesthetic is not None:
        t["aesthetic_score"] = aesthetic
    return t


def _columns(cfg: FilterConfig) -> tuple[dict, str]:
    t = row_table(schema.read_folder(cfg.shards, "shard"))
    img = txt = aesthetic = None
    encoder = ""
    if cfg.embeddings:
        img, txt, encoder = load_embeddings(cfg.embeddings, cfg.shards, t["uid"].tolist())
    if cfg.aesthetic:
        aesthetic = load_aesthetic(cfg.aesthetic, t["uid"].tolist())
    return add_scores(t, img, txt, aesthetic), encoder


def row_layers(cfg: FilterConfig, t: dict, reg, originals: dict | None = None,
               pool_cut: float | None = None) -> tuple[list[np.ndarray], float | None]:
    """Every layer before dedup, in filter order (each row's reasons depend on that row alone, given the pool's
    `originals` and CLIP `pool_cut`: see `optout_reasons`, `score_reasons`); returns (layers, the CLIP cut)."""
    n = len(t["uid"])
    failed = np.where(np.isin(t["status"], [schema.STATUS_FAILED_DOWNLOAD, schema.STATUS_FAILED_RESIZE]),
                      "download_failed", None).astype(object)
    basic_rules = rules.BasicRules(min_words=cfg.min_words, min_chars=cfg.min_chars, max_chars=cfg.max_chars,
                                   min_side=cfg.min_side, max_aspect=cfg.max_aspect)
    frame = pd.DataFrame({k: t[k] for k in ("caption", "original_width", "original_height")})
    basic = list(rules.basic_reasons(frame, basic_rules).values()) if n else []
    scores, cut = score_reasons(cfg, t, pool_cut)
    layers = [failed] + optout_reasons(cfg, t, reg, originals) + [
        np.where(t["status"] == schema.STATUS_SUCCESS, b, None) for b in basic] + scores
    return layers, cut


def dedup_layers(cfg: FilterConfig, has_embeddings: bool) -> list[str]:
    """The dedup layers that run, in order (semantic needs embeddings)."""
    return [x for x in cfg.dedup if x != "semantic" or has_embeddings]


def decisions_table(t: dict, first: np.ndarray, every: list, dup_of: np.ndarray) -> pa.Table:
    """DECISIONS_SCHEMA rows from the columns `t`, the combined reasons and `duplicate_of`."""
    n = len(t["uid"])
    return pa.table({
        "uid": t["uid"].tolist(), "keep": [r is None for r in first], "exclusion_reason": first.tolist(),
        "reasons": every, "clip_score": _floats(t.get("clip_score"), n), "aesthetic_score": _floats(
            t.get("aesthetic_score"), n), "phash": t["phash"].tolist(), "duplicate_of": dup_of.tolist()},
        schema=schema.DECISIONS_SCHEMA)


def decide(cfg: FilterConfig) -> tuple[pa.Table, dict]:
    """The decisions table (DECISIONS_SCHEMA, one row per shard row) and its stats."""
    t, encoder = _columns(cfg)
    n = len(t["uid"])
    reg = load_registry(cfg)
    layers, cut = row_layers(cfg, t, reg)
    first, _ = rules.combine_reasons(*layers) if n else (_none(0), [])
    dups, dup_of = dedup_reasons(cfg, t, np.array([r is None for r in first], dtype=bool))
    first, every = rules.combine_reasons(*(layers + dups)) if n else (_none(0), [])
    table = decisions_table(t, first, every, dup_of)
    return table, _stats(table, cfg, encoder, cut)


def load_registry(cfg: FilterConfig) -> registry.Registry | None:
    """The do-not-train registry (None without one); a remote file is read from a local copy."""
    if not cfg.registry:
        return None
    with storage.local_copy(cfg.registry) as path:
        return registry.load_registry(path)


def _floats(values, n: int) -> list:
    if values is None:
        return [None] * n
    return [None if not np.isfinite(v) else float(v) for v in values]


def reason_counts(table: pa.Table) -> dict:
    """Rows, kept rows, and counts of each first reason and of every reason, of a decisions table."""
    first = Counter(r for r in table["exclusion_reason"].to_pylist() if r is not None)
    every = Counter(r for rs in table["reasons"].to_pylist() for r in rs)
    return {"rows": table.num_rows, "kept": table.num_rows - sum(first.values()), "reasons": first,
            "all_reasons": every}


def stats_of(counts: dict, cfg: FilterConfig, encoder: str, cut: float | None) -> dict:
    """The stage's stats (`__stats__/run.json`) from `reason_counts` (summed over shards by the Ray engine)."""
    return {"rows": counts["rows"], "kept": counts["kept"],
            "reasons": {r: counts["reasons"][r] for r in sorted(counts["reasons"])},
            "all_reasons": {r: counts["all_reasons"][r] for r in sorted(counts["all_reasons"])},
            "clip_threshold_effective": cut, "encoder": encoder, "optout": cfg.optout}


def _stats(table: pa.Table, cfg: FilterConfig, encoder: str, cut: float | None) -> dict:
    return stats_of(reason_counts(table), cfg, encoder, cut)


def run(cfg: FilterConfig) -> Path | str:
    """Write `<out>/decisions.parquet`, `<out>/subsets/keep.npy` and `<out>/__stats__/run.json`."""
    out = storage.location(cfg.out)
    engines.check(cfg.engine)
    options.check_resumable(cfg, out, runtime_fields=RUNTIME_FIELDS)
    options.write_config(cfg, out)
    if cfg.engine == "ray":
        from curation.select import ray_filter  # Ray imported only when asked for

        stats = ray_filter.run(cfg)
    else:
        table, stats = decide(cfg)
        schema.write(table, storage.join(out, "decisions.parquet"), "decisions", {"encoder": stats["encoder"]})
        keep = [u for u, k in zip(table["uid"].to_pylist(), table["keep"].to_pylist()) if k]
        with storage.output(storage.join(out, "subsets", "keep.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, subsets.from_uids(keep))
    stats_files.write(out, stats)
    logger.info("filter: kept %d of %d rows; excluded by %s", stats["kept"], stats["rows"], stats["reasons"])
    return out
