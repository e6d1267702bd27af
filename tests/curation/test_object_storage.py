"""Stage folders on object storage: an S3-compatible HTTP server (moto's standalone server on loopback) read and
written through s3fs, under both engines (the session's 2-CPU Ray cluster). The tiny pipeline gives the same bytes
as with local folders: download shards and markers, embeddings, `decisions.parquet`, `subsets/keep.npy`, training
shards; a download worker killed mid-shard is redone alone on the rerun."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from curation.acquire import downloader
from curation.score import aesthetic, embed
from curation.select import export, filtering, release
from mithridate.core import engine, schema, stats_files, storage

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.usefixtures("ray_cluster")
TIMINGS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def bucket(s3_bucket):
    """`s3://<bucket>` on the moto server (`s3_bucket` in conftest)."""
    return s3_bucket


def _untimed(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in TIMINGS}


def _files(folder, pattern: str) -> dict[str, bytes]:
    return {storage.name(p): storage.read_bytes(p) for p in storage.glob(folder, pattern)}


def _markers(folder) -> dict:
    return {k: _untimed(v) for k, v in stats_files.read_shards(folder).items()}


class KillOnce:
    """A download gate that kills its worker process (SIGKILL) in the shard whose first uid is `uid`, the first time
    (a flag file remembers), after its images are fetched and before the shard is written: a worker dying
    mid-shard."""

    def __init__(self, uid: str, flag: str):
        self.uid, self.flag = uid, flag

    def __call__(self, table):
        if table["uid"][0].as_py() == self.uid and not os.path.exists(self.flag):
            Path(self.flag).write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return table


class Record:
    """A download gate that records the first uid of every shard it sees (one file per shard) in a local folder."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, table):
        Path(self.folder, table["uid"][0].as_py()).touch()
        return table


@pytest.fixture(scope="module")
def by_value():
    """Ray pickles this module's gates by value (its workers cannot import the test module)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _first_uids(folder) -> dict[str, str]:
    return {storage.stem(p): schema.read(p, "shard", ["uid"])["uid"][0].as_py()
            for p in storage.glob(folder, "[0-9]*.parquet")}


def test_download_to_s3_is_the_local_download_and_a_killed_worker_is_redone_alone(
        tiny_web, tiny_crawl, tiny_shards, bucket, by_value, tmp_path):
    """tiny_shards: the same download into a local folder (engine local, shards of 30 rows)."""
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), timeout_s=1.0, threads=16,
                                    allow_networks=tiny_web.networks, shard_size=30)
    local = _files(tiny_shards, "*.parquet")
    uids = _first_uids(tiny_shards)
    # engine ray into s3://: shard 00001's worker is killed mid-shard; no retries, so the run names it
    out = f"{bucket}/shards-ray"
    ray_cfg = dataclasses.replace(cfg, out=out, engine="ray", shard_retries=0)
    with pytest.raises(engine.ShardsFailed) as err:
        downloader.run(ray_cfg, gate=KillOnce(uids["00001"], str(tmp_path / "killed")))
    assert list(err.value.failed) == ["00001"] and (tmp_path / "killed").exists()
    assert not stats_files.done(out, "00001") and not storage.exists(f"{out}/00001.parquet")
    assert sorted(stats_files.read_shards(out)) == sorted(set(uids) - {"00001"})
    # the rerun (same engine) downloads shard 00001 only; the folder is then the local download, byte for byte
    seen = tmp_path / "seen"
    seen.mkdir()
    downloader.run(ray_cfg, gate=Record(str(seen)))
    assert sorted(p.name for p in seen.iterdir()) == [uids["00001"]]
    assert _files(out, "*.parquet") == local
    assert _markers(out) == _markers(tiny_shards)
    assert _untimed(stats_files.read(out)) == _untimed(stats_files.read(tiny_shards))
    assert not storage.exists(f"{out}/_tmp")


@pytest.fixture(scope="module")
def pipelines(tiny_web, tiny_shards, tiny_clip_checkpoint, bucket, tmp_path_factory):
    """embed → filter (CLIP top fraction, exact dedup: the Ray engine's sort and group-by read work files from S3)
    → export of the tiny shards: with local folders and the
    local engine; and from shards on S3 to outputs on S3, with each engine."""
    root = tmp_path_factory.mktemp("pipelines")
    fs, _ = storage.fs_path(bucket)
    fs.put(f"{tiny_shards}/", f"{bucket.removeprefix('s3://')}/shards/", recursive=True)  # the download, uploaded
    runs = {"local": (str(tiny_shards), str(root), "local")}
    runs.update({f"s3-{e}": (f"{bucket}/shards", f"{bucket}/{e}", e) for e in engine.ENGINES})
    out = {}
    for name, (shards, base, eng) in runs.items():
        emb = embed.run(embed.EmbedConfig(shards=shards, pretrained=str(tiny_clip_checkpoint), batch_size=16,
                                          device="cpu", actors=1, engine=eng, out=f"{base}/embeddings"))
        filt = filtering.run(filtering.FilterConfig(shards=shards, embeddings=str(emb), clip_top_fraction=0.8,
                                                    dedup=("exact",), out=f"{base}/filter", engine=eng))
        train = export.run(export.ExportConfig(shards=shards, filter=str(filt), shard_size=7, engine=eng,
                                               provenance=str(tiny_web.manifest_path), out=f"{base}/train"))
        out[name] = {"embeddings": emb, "filter": filt, "train": train}
    return out


def test_embed_filter_export_on_s3_write_the_local_bytes_under_both_engines(pipelines):
    local = pipelines["local"]
    npz = _files(local["embeddings"], "*.npz")
    assert len(npz) >= 3
    decisions = schema.read(local["filter"] / "decisions.parquet", "decisions")
    assert 0 < sum(decisions["keep"].to_pylist()) < decisions.num_rows
    for name in ("s3-local", "s3-ray"):
        got = pipelines[name]
        assert storage.is_remote(got["embeddings"]) and str(got["filter"]).startswith("s3://")
        assert _files(got["embeddings"], "*.npz") == npz, name
        assert _markers(got["embeddings"]) == _markers(local["embeddings"])
        for f in ("decisions.parquet", "subsets/keep.npy"):
            assert storage.read_bytes(f"{got['filter']}/{f}") == (local["filter"] / f).read_bytes(), (name, f)
        assert _untimed(stats_files.read(got["filter"])) == _untimed(stats_files.read(local["filter"]))
        assert _files(got["train"], "*.parquet") == _files(local["train"], "*.parquet"), name
        assert stats_files.read(got["train"]) == stats_files.read(local["train"])
        assert not storage.exists(f"{got['filter']}/_ray") and not storage.exists(f"{got['train']}/_parts")
    success = schema.read_folder(f"{pipelines['s3-ray']['train']}", "train")
    assert success.num_rows == sum(decisions["keep"].to_pylist())


def test_download_on_s3_with_the_local_engine_redoes_only_a_shard_without_marker(
        tiny_web, tiny_crawl, tiny_shards, bucket, tmp_path):
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), timeout_s=1.0, threads=16,
                                    allow_networks=tiny_web.networks, shard_size=30, out=f"{bucket}/shards-local")
    assert downloader.run(cfg) == cfg.out
    assert _files(cfg.out, "*.parquet") == _files(tiny_shards, "*.parquet")
    assert _markers(cfg.out) == _markers(tiny_shards)
    storage.remove(stats_files.path(cfg.out, "00002"))  # as if the run died after writing shard 2, before its marker
    seen = tmp_path / "seen"
    seen.mkdir()
    downloader.run(cfg, gate=Record(str(seen)))
    assert sorted(p.name for p in seen.iterdir()) == [_first_uids(tiny_shards)["00002"]]
    assert _files(cfg.out, "*.parquet") == _files(tiny_shards, "*.parquet")


def test_aesthetic_scores_from_and_to_s3_under_both_engines(pipelines, bucket, tmp_path):
    import torch

    head = tmp_path / "head.pth"  # LAION's linear V1 format, 32-d
    torch.save({"weight": torch.randn(1, 32, generator=torch.Generator().manual_seed(0)), "bias": torch.ones(1)}, head)
    cfg = aesthetic.AestheticScoreConfig(embeddings=str(pipelines["local"]["embeddings"]), head_path=str(head),
                                         device="cpu", actors=1, out=str(tmp_path / "local"))
    local = aesthetic.score(cfg)
    for eng in engine.ENGINES:
        out = aesthetic.score(dataclasses.replace(cfg, embeddings=str(pipelines["s3-local"]["embeddings"]),
                                                  out=f"{bucket}/aesthetic-{eng}", engine=eng))
        assert _files(out, "*.parquet") == _files(local, "*.parquet") and len(_files(local, "*.parquet")) >= 3
        assert stats_files.read(out) == stats_files.read(local)


def test_rebuild_into_s3_on_ray_is_the_local_rebuild(tiny_web, tiny_shards, pipelines, bucket, tmp_path):
    rel = release.release(release.ReleaseConfig(export=str(pipelines["local"]["train"]), shards=str(tiny_shards),
                                                out=f"{bucket}/release"))
    cfg = release.RebuildConfig(release=f"{rel}/{release.RELEASE_FILE}", modes=("sha256",), threads=16,
                                timeout_s=1.0, shard_size=10, allow_networks=tiny_web.networks)
    local = release.rebuild(dataclasses.replace(cfg, out=str(tmp_path / "rebuild")))
    remote = release.rebuild(dataclasses.replace(cfg, out=f"{bucket}/rebuild", engine="ray"))
    report = json.loads(storage.read_text(f"{remote}/{release.INTEGRITY_FILE}"))
    assert report == json.loads((local / release.INTEGRITY_FILE).read_text())
    assert report["modes"]["sha256"]["unchanged_kept"] == report["urls"] > 10
    assert _files(f"{remote}/sha256", "*.parquet") == _files(local / "sha256", "*.parquet")
