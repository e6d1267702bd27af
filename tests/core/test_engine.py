"""core/engine: the engine choice, the error naming failed shards, and the engine as a runtime field."""

from __future__ import annotations

import pytest

from curation.acquire import downloader
from curation.score import aesthetic, embed
from curation.select import export, release
from mithridate.core import engine, options


def test_an_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="engine='spark': allowed values are local, ray"):
        engine.check("spark")


def test_shards_failed_names_every_shard_and_its_error():
    err = engine.ShardsFailed("download", {"00003": "OSError: disk", "00001": "ValueError: bad"}, 3)
    assert list(err.failed) == ["00001", "00003"]
    assert str(err).startswith("download: 2 shard(s) failed on each of 3 tries: 00001, 00003 (00001: ValueError: bad")


@pytest.mark.parametrize("cls,runtime,other", [
    (downloader.DownloadConfig, downloader.RUNTIME_FIELDS, {"pairs": "elsewhere"}),
    (embed.EmbedConfig, embed.RUNTIME_FIELDS, {"model": "ViT-B-32"}),
    (aesthetic.AestheticScoreConfig, aesthetic.SCORE_RUNTIME_FIELDS, {"head_path": "other.pt"})])
def test_switching_engine_resumes_the_same_folder(cls, runtime, other, tmp_path):
    pytest.importorskip("ray")
    options.write_config(cls(out=str(tmp_path)), tmp_path)
    options.check_resumable(cls(out=str(tmp_path), engine="ray", shard_retries=5), tmp_path, runtime)
    with pytest.raises(ValueError, match="another config"):  # a field that changes results is still refused
        options.check_resumable(cls(out=str(tmp_path), engine="ray", **other), tmp_path, runtime)


@pytest.mark.parametrize("cls,field", [(downloader.DownloadConfig, "shard_retries"), (embed.EmbedConfig, "actors"),
                                       (embed.EmbedConfig, "num_gpus"), (aesthetic.AestheticScoreConfig, "num_gpus"),
                                       (export.ExportConfig, "shard_retries"),
                                       (release.RebuildConfig, "shard_retries")])
def test_negative_ray_fields_are_clear_errors(cls, field):
    with pytest.raises(ValueError, match=f"{field}=-1"):
        cls(**{field: -1})
