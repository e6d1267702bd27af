"""`--engine=ray` on a local 2-CPU Ray cluster (the session's `ray_cluster`): the same files as `--engine=local`,
resume from shard markers (switching engine resumes the same folder), and a shard failing on every try named."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch

from curation.acquire import downloader
from curation.score import aesthetic, embed
from curation.select import export, filtering, release
from mithridate.core import engine, schema, stats_files

pytestmark = pytest.mark.usefixtures("ray_cluster")
TIMINGS = ("seconds", "images_per_s")


def _untimed(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in TIMINGS}


def _marker_stats(folder) -> dict:
    return {p.stem: _untimed(json.loads(p.read_text())) for p in stats_files.shards(folder)}


def _mtimes(folder, pattern: str) -> dict:
    return {f.name: os.stat(f).st_mtime_ns for f in sorted(folder.glob(pattern))}


@pytest.fixture(scope="module")
def downloads(tiny_web, tiny_crawl, tmp_path_factory):
    """The tiny crawl downloaded by each engine (shards of 30 rows)."""
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), timeout_s=1.0, threads=16,
                                    allow_networks=tiny_web.networks, shard_size=30)
    out = {}
    for name in engine.ENGINES:
        out[name] = tmp_path_factory.mktemp(f"dl-{name}") / "shards"
        downloader.run(dataclasses.replace(cfg, out=str(out[name]), engine=name))
    return cfg, out


def test_download_engines_write_the_same_shards_and_stats(downloads):
    _, out = downloads
    local, ray = (schema.read_folder(out[e], "shard") for e in ("local", "ray"))
    assert local.num_rows > 60 and sorted(p.name for p in out["ray"].glob("*.parquet")) == sorted(
        p.name for p in out["local"].glob("*.parquet"))
    assert ray.equals(local)
    assert _marker_stats(out["ray"]) == _marker_stats(out["local"])
    assert _untimed(stats_files.read(out["ray"])) == _untimed(stats_files.read(out["local"]))


def test_switching_engine_resumes_and_a_deleted_marker_reruns_only_its_shard(downloads):
    cfg, out = downloads
    folder = out["local"]
    before, table = _mtimes(folder, "[0-9]*.parquet"), schema.read_folder(folder, "shard")
    stats_files.path(folder, "00001").unlink()  # as if a worker died while writing shard 1
    downloader.run(dataclasses.replace(cfg, out=str(folder), engine="ray"))
    after = _mtimes(folder, "[0-9]*.parquet")
    assert {k for k in after if after[k] != before[k]} == {"00001.parquet"}
    assert schema.read_folder(folder, "shard").equals(table)


def test_a_download_shard_failing_on_every_try_is_named(downloads, tmp_path):
    cfg, out = downloads
    fetched = [k for k, s in _marker_stats(out["local"]).items() if s["status"].get("success")]
    bad, folder = fetched[-1], tmp_path / "shards"
    (folder / "_tmp").mkdir(parents=True)
    (folder / "_tmp" / bad).write_text("a file where the shard's temporary folder goes")  # fails on every try
    with pytest.raises(engine.ShardsFailed, match=rf"1 shard\(s\) failed on each of 2 tries: {bad} \({bad}: "
                                                  r"FileExistsError") as err:
        downloader.run(dataclasses.replace(cfg, out=str(folder), engine="ray", shard_retries=1))
    assert list(err.value.failed) == [bad]
    others = sorted(set(_marker_stats(out["local"])) - {bad})
    assert [k for k in others if stats_files.done(folder, k)] == others and not stats_files.done(folder, bad)


def test_a_worker_killed_mid_shard_is_retried_and_the_output_is_the_same(downloads, tmp_path):
    class DieOnce:  # defined here, so that Ray pickles it by value (workers cannot import test modules)
        """A download gate that kills its worker process (SIGKILL, mid-shard: fetched, not yet written) the first
        time it sees the rows of `uid`'s shard, leaving a flag file so that the retry lives."""

        def __init__(self, uid: str, flag: str):
            self.uid, self.flag = uid, flag

        def __call__(self, table):
            if self.uid in table["uid"].to_pylist() and not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return table

    cfg, out = downloads
    victim = schema.read(sorted(out["local"].glob("*.parquet"))[1], "shard")["uid"][0].as_py()
    folder, flag = tmp_path / "shards", tmp_path / "killed"
    downloader.run(dataclasses.replace(cfg, out=str(folder), engine="ray", shard_retries=1),
                   gate=DieOnce(victim, str(flag)))
    assert flag.is_file()  # the worker did die once …
    assert schema.read_folder(folder, "shard").equals(schema.read_folder(out["local"], "shard"))  # … and nothing shows
    assert _marker_stats(folder) == _marker_stats(out["local"])


@pytest.fixture(scope="module")
def embeddings(tiny_shards, tiny_clip_checkpoint, tmp_path_factory):
    """The tiny shards embedded by each engine (ray: a pool of two CPU actors)."""
    cfg = embed.EmbedConfig(shards=str(tiny_shards), pretrained=str(tiny_clip_checkpoint), batch_size=8,
                            device="cpu", actors=1)
    root = tmp_path_factory.mktemp("embed")
    return cfg, {e: embed.run(dataclasses.replace(cfg, out=str(root / e), engine=e)) for e in engine.ENGINES}


def _npz(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_embed_engines_write_the_same_embeddings(embeddings):
    _, out = embeddings
    names = sorted(p.name for p in out["local"].glob("*.npz"))
    assert len(names) >= 3 and sorted(p.name for p in out["ray"].glob("*.npz")) == names
    for name in names:
        a, b = _npz(out["local"] / name), _npz(out["ray"] / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (out["ray"] / "encoder.json").read_text() == (out["local"] / "encoder.json").read_text()
    assert _marker_stats(out["ray"]) == _marker_stats(out["local"])
    assert _untimed(stats_files.read(out["ray"])) == _untimed(stats_files.read(out["local"]))


def test_embed_a_deleted_marker_reruns_only_its_shard_on_the_actors(embeddings):
    cfg, out = embeddings
    folder = out["local"]  # written by engine local: switching engine resumes it
    before = _mtimes(folder, "*.npz")
    stats_files.path(folder, "00001").unlink()
    embed.run(dataclasses.replace(cfg, out=str(folder), engine="ray"))
    after = _mtimes(folder, "*.npz")
    assert {k for k in after if after[k] != before[k]} == {"00001.npz"}
    assert stats_files.read(folder)["shards_embedded"] == 1


@pytest.fixture(scope="module")
def scores(embeddings, tmp_path_factory):
    """The local embeddings scored by each engine with a linear head (LAION's V1 format, 32-d)."""
    _, emb = embeddings
    root = tmp_path_factory.mktemp("aesthetic")
    torch.save({"weight": torch.randn(1, 32, generator=torch.Generator().manual_seed(0)), "bias": torch.ones(1)},
               root / "head.pth")
    cfg = aesthetic.AestheticScoreConfig(embeddings=str(emb["local"]), head_path=str(root / "head.pth"),
                                         device="cpu", actors=1)
    return cfg, {e: aesthetic.score(dataclasses.replace(cfg, out=str(root / e), engine=e)) for e in engine.ENGINES}


def test_aesthetic_engines_write_the_same_scores_and_resume(scores):
    cfg, out = scores
    names = sorted(p.name for p in out["local"].glob("*.parquet"))
    assert len(names) >= 3 and sorted(p.name for p in out["ray"].glob("*.parquet")) == names
    for name in names:
        assert schema.read(out["ray"] / name, "aesthetic").equals(schema.read(out["local"] / name, "aesthetic"))
    assert stats_files.read(out["ray"]) == stats_files.read(out["local"])
    before = _mtimes(out["local"], "*.parquet")
    stats_files.path(out["local"], "00002").unlink()
    aesthetic.score(dataclasses.replace(cfg, out=str(out["local"]), engine="ray"))
    after = _mtimes(out["local"], "*.parquet")
    assert {k for k in after if after[k] != before[k]} == {"00002.parquet"}


def test_a_file_failing_on_every_try_on_the_actors_is_named(scores, tmp_path):
    cfg, _ = scores
    (tmp_path / "00001.parquet").mkdir()  # a folder where file 1's scores go: writing them fails on every try
    with pytest.raises(engine.ShardsFailed, match=r"aesthetic score: 1 shard\(s\) failed on each of 2 tries: 00001 "):
        aesthetic.score(dataclasses.replace(cfg, out=str(tmp_path), engine="ray", shard_retries=1))
    assert stats_files.done(tmp_path, "00000") and not stats_files.done(tmp_path, "00001")


@pytest.fixture(scope="module")
def exported(tiny_web, tiny_shards, tmp_path_factory):
    """The tiny shards filtered, then exported by each engine in training shards of 7 rows (cut across download
    shards)."""
    root = tmp_path_factory.mktemp("export")
    filt = filtering.run(filtering.FilterConfig(shards=str(tiny_shards), out=str(root / "filter")))
    cfg = export.ExportConfig(shards=str(tiny_shards), filter=str(filt), provenance=str(tiny_web.manifest_path),
                              shard_size=7)
    return {e: export.run(dataclasses.replace(cfg, out=str(root / e), engine=e)) for e in engine.ENGINES}


def test_export_engines_write_the_same_training_shards(exported):
    out = exported
    names = sorted(p.name for p in out["local"].glob("*.parquet"))
    assert len(names) >= 3 and sorted(p.name for p in out["ray"].glob("*.parquet")) == names
    for name in names:
        assert schema.read(out["ray"] / name, "train").equals(schema.read(out["local"] / name, "train"))
    assert stats_files.read(out["ray"]) == stats_files.read(out["local"])
    assert not (out["ray"] / "_parts").exists()


def test_rebuild_engines_verify_and_write_the_same(tiny_web, tiny_shards, exported, tmp_path):
    rel = release.release(release.ReleaseConfig(export=str(exported["local"]), shards=str(tiny_shards),
                                                out=str(tmp_path / "release")))
    cfg = release.RebuildConfig(release=str(rel / release.RELEASE_FILE), modes=("sha256",), threads=16,
                                timeout_s=1.0, shard_size=10, allow_networks=tiny_web.networks)
    out = {e: release.rebuild(dataclasses.replace(cfg, out=str(tmp_path / e), engine=e)) for e in engine.ENGINES}
    report = {e: json.loads((out[e] / release.INTEGRITY_FILE).read_text()) for e in engine.ENGINES}
    assert report["ray"]["modes"] == report["local"]["modes"]
    assert report["local"]["modes"]["sha256"]["unchanged_kept"] == report["local"]["urls"] > 10  # nothing expired
    for mode in cfg.modes:
        assert schema.read_folder(out["ray"] / mode, "shard").equals(schema.read_folder(out["local"] / mode, "shard"))
