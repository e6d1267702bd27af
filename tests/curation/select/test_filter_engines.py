"""`filter --engine=ray` writes what `--engine=local` writes (decisions, keep.npy, stats), on a local Ray cluster;
and each Ray Data dedup pass finds what the local layer finds."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from curation.select import dedup, filtering, ray_filter
from mithridate.core import schema, stats_files


@pytest.fixture(scope="module")
def registry_file(tiny_web, tmp_path_factory):
    from reports.demo import _optout_registry

    return _optout_registry(tiny_web, tmp_path_factory.mktemp("reg") / "registry.json")


@pytest.fixture(scope="module")
def fake_scores(tiny_shards, tmp_path_factory):
    """Embeddings (float16, unit, 16-D) and aesthetic scores for the tiny shards' success rows, one file per shard:
    near-copies planted across shards so the semantic layer has work, one shard left without embeddings."""
    rng = np.random.default_rng(0)
    emb, aes = tmp_path_factory.mktemp("emb"), tmp_path_factory.mktemp("aes")
    files = sorted(tiny_shards.glob("*.parquet"))
    base = rng.standard_normal((4, 16)).astype(np.float32)
    for n, f in enumerate(files):
        t = schema.read(f, "shard")
        uids = [u for u, s in zip(t["uid"].to_pylist(), t["status"].to_pylist()) if s == schema.STATUS_SUCCESS]
        img = rng.standard_normal((len(uids), 16)).astype(np.float32)
        img[::2] = base[rng.integers(0, len(base), len(img[::2]))] + 0.01 * rng.standard_normal((len(img[::2]), 16))
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt = img + 0.5 * rng.standard_normal(img.shape).astype(np.float32)
        if n != 1:  # shard 1: no embeddings (NaN rows, as the local engine reads them)
            np.savez(emb / f"{f.stem}.npz", uid=np.array(uids), img_emb=img.astype(np.float16),
                     txt_emb=txt.astype(np.float16), encoder=np.array("fake"))
        scores = rng.random(len(uids)).astype(np.float32)
        schema.write(pa.table({"uid": uids, "aesthetic_score": scores}, schema=schema.AESTHETIC_SCHEMA),
                     aes / f"{f.stem}.parquet", "aesthetic")
    (emb / "encoder.json").write_text('{"name": "fake"}')
    return emb, aes


def _outputs(out):
    table = schema.read(out / "decisions.parquet", "decisions")
    return table, (out / "subsets" / "keep.npy").read_bytes(), stats_files.read(out)


@pytest.mark.parametrize("kw", [
    {"clip_top_fraction": 0.8, "aesthetic_threshold": 0.1},
    {"optout": "url_only", "clip_threshold": 0.3, "dedup": ("phash", "semantic", "exact"), "dedup_phash_k": 10,
     "semantic_eps": 0.05, "seed": 3},
], ids=["honor-top-fraction", "url_only-threshold"])
def test_both_engines_write_the_same_files_and_switching_engine_resumes(ray_cluster, tiny_shards, registry_file,
                                                                        fake_scores, tmp_path, kw):
    emb, aes = fake_scores
    cfg = filtering.FilterConfig(shards=str(tiny_shards), embeddings=str(emb), aesthetic=str(aes),
                                 registry=str(registry_file), out=str(tmp_path / "f"), **kw)
    local = _outputs(filtering.run(cfg))
    ray = _outputs(filtering.run(dataclasses.replace(cfg, engine="ray")))  # same folder: engine is a runtime field
    assert ray[0].equals(local[0]) and ray[0].schema.metadata == local[0].schema.metadata
    assert ray[1] == local[1]
    assert ray[2] == local[2]
    reasons = set(local[2]["all_reasons"])
    assert {dedup.DUPLICATE_PHASH, dedup.DUPLICATE_SEMANTIC} <= reasons, reasons  # the global passes had work
    assert not (tmp_path / "f" / ray_filter.WORK).exists()
    with pytest.raises(ValueError, match="seed"):
        filtering.run(dataclasses.replace(cfg, engine="ray", seed=cfg.seed + 1))


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="engine='spark'.*local, ray"):
        filtering.FilterConfig(engine="spark")


def _keys(ray, uids, sha=None, phash=None, emb=None, seed=0):
    """A key table (two shards) as the Ray engine builds it, as a Ray dataset of several blocks."""
    n = len(uids)
    t = {"uid": np.array(uids, dtype=object), "sha256": np.array(sha if sha is not None else [None] * n, dtype=object),
         "phash": np.array(phash if phash is not None else [None] * n, dtype=object)}
    if emb is not None:
        t["img_emb"] = emb
    cfg = filtering.FilterConfig(seed=seed)
    half = n // 2
    parts = [ray_filter.key_table(cfg, {c: v[:half] for c, v in t.items()}, np.arange(half), 0, "float32"),
             ray_filter.key_table(cfg, {c: v[half:] for c, v in t.items()}, np.arange(n - half), 1, "float32")]
    table = pa.concat_tables(parts)
    with ray_filter.data_context():  # a dataset keeps the Ray Data settings of its creation
        ds = ray.data.from_arrow([table.slice(i, 97) for i in range(0, n, 97)])
    return ds, table["rid"].to_numpy()


def _as_rows(found, rids, n):
    """(reasons mask, duplicate_of) per row from a pass's (rids, duplicate_of)."""
    pos = {r: i for i, r in enumerate(rids.tolist())}
    of = np.full(n, None, dtype=object)
    for r, o in zip(found[0].tolist(), found[1].tolist()):
        of[pos[r]] = o
    return of


def test_band_group_by_finds_what_phash_dedup_finds(ray_cluster):
    rng = np.random.default_rng(1)
    n, k = 1500, 6
    vals = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    vals[:40] = 0  # many rows of one hash
    copy = rng.integers(40, n, size=300)
    flips = np.bitwise_or.reduce(np.uint64(1) << rng.integers(0, 64, size=(300, 3)).astype(np.uint64), axis=1)
    vals[rng.integers(40, n, size=300)] = vals[copy] ^ flips  # chains and clusters of near copies
    hexes = [f"{int(v):016x}" for v in vals]
    hexes[5] = None
    uids = [f"{int(x):032x}" for x in rng.permutation(n)]
    ds, rids = _keys(ray_cluster, uids, phash=hexes)
    want = dedup.phash_duplicates(hexes, uids, k=k)
    got = _as_rows(ray_filter.phash_pass(ds, k), rids, n)
    assert want.count > 200
    assert got.tolist() == want.duplicate_of.tolist()


def test_exact_and_semantic_passes_match_the_local_layers(ray_cluster, monkeypatch):
    rng = np.random.default_rng(2)
    n = 1200
    uids = [f"{int(x):032x}" for x in rng.permutation(n)]
    sha = [f"{int(v):064x}" for v in rng.integers(0, 300, size=n)]
    sha[7] = None
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    emb[n // 2 :] = emb[: n - n // 2] + 0.02 * rng.standard_normal((n - n // 2, 8)).astype(np.float32)
    emb[3] = np.nan
    ds, rids = _keys(ray_cluster, uids, sha=sha, emb=emb, seed=5)
    exact = dedup.exact_duplicates(sha, uids)
    assert _as_rows(ray_filter.exact_pass(ds), rids, n).tolist() == exact.duplicate_of.tolist()
    monkeypatch.setattr(dedup, "DEFAULT_SAMPLE_SIZE", 200)  # the hashed sample, not every row
    semantic = dedup.semantic_duplicates(emb, uids, eps=0.01, seed=5, sample_size=200)
    got = _as_rows(ray_filter.semantic_pass(ds, 0.01, 5, "float32"), rids, n)
    assert semantic.count > 100
    assert got.tolist() == semantic.duplicate_of.tolist()
