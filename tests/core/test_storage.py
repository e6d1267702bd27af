"""`storage`: stage folders as local paths or fsspec URLs, on an S3-compatible server (moto's standalone server on
loopback, reached with s3fs): whole-object writes, markers, the lock object, and clear errors for URLs whose
filesystem package is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pyarrow as pa
import pytest

from curation.acquire import downloader
from curation.select import export
from mithridate.core import disk, options, schema, stats_files, storage

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def bucket(s3_bucket):
    """`s3://<bucket>` on the moto server (`s3_bucket` in conftest)."""
    return s3_bucket


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_url_whose_filesystem_package_is_missing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"DownloadConfig\.out='gs://b/shards': protocol 'gs' needs a package that "
                                         r"is not installed \(pip install gcsfs\); allowed: a local path"):
        downloader.DownloadConfig(out="gs://b/shards")
    with pytest.raises(ValueError, match=r"ExportConfig\.filter='nosuch://x/f': unknown protocol 'nosuch'"):
        export.ExportConfig(filter="nosuch://x/f")


def test_file_urls_are_local_paths(tmp_path):
    cfg = downloader.DownloadConfig(out=f"file://{tmp_path}/shards", pairs="file:///data/pairs")
    assert (cfg.out, cfg.pairs) == (f"{tmp_path}/shards", "/data/pairs")
    assert not storage.is_remote(cfg.out) and storage.is_remote("s3://b/x") and not storage.is_remote("a/b")
    assert storage.join(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    assert storage.join("s3://b/x/", "a", "b.json") == "s3://b/x/a/b.json"
    assert (storage.parent("s3://b/x/y.parquet"), storage.stem("s3://b/x/00001.parquet")) == ("s3://b/x", "00001")


def test_shards_and_markers_on_s3(bucket):
    folder = f"{bucket}/shards"
    table = pa.table({"uid": ["a" * 32], "aesthetic_score": pa.array([0.5], pa.float32())})
    assert schema.write(table, f"{folder}/00000.parquet", "aesthetic") == f"{folder}/00000.parquet"
    assert not stats_files.done(folder, "00000")
    stats_files.write(folder, {"rows": 1}, "00000")
    stats_files.write(folder, {"rows": 1})
    assert stats_files.done(folder, "00000") and stats_files.read(folder) == {"rows": 1}
    assert storage.glob(folder, "*.parquet") == [f"{folder}/00000.parquet"]
    assert stats_files.read_shards(folder) == {"00000": {"rows": 1}}
    assert schema.read_folder(folder, "aesthetic").equals(table.cast(schema.AESTHETIC_SCHEMA))
    with pytest.raises(ValueError, match="schema 'aesthetic' v1, expected 'decisions'"):
        schema.read(f"{folder}/00000.parquet", "decisions")


def test_a_failed_write_leaves_no_object(bucket):
    path = f"{bucket}/half/00000.parquet"
    with pytest.raises(RuntimeError, match="killed"), storage.output(path) as tmp:
        tmp.write_bytes(b"PAR1 half a file")
        raise RuntimeError("killed while writing")
    assert not storage.exists(path) and storage.glob(f"{bucket}/half", "*") == []


def test_the_lock_object_refuses_a_live_run_and_takes_over_a_dead_one(bucket, tmp_path):
    cfg = downloader.DownloadConfig(out=f"{bucket}/locked")
    lock = f"{cfg.out}/{disk.LOCK_FILE}"
    storage.write_text(lock, json.dumps({"host": "node-7", "pid": 12}))  # another node's run
    with pytest.raises(disk.FolderInUse, match=rf"in use by another mithridate run \(host node-7, pid 12\).*delete "
                                               rf"{lock}"):
        options.write_config(cfg, cfg.out)
    assert not storage.exists(f"{cfg.out}/config.json")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = gone.pid
    storage.write_text(lock, json.dumps({"host": socket.gethostname(), "pid": dead}))  # a killed run of this host
    options.write_config(cfg, cfg.out)
    assert json.loads(storage.read_text(lock)) == {"host": socket.gethostname(), "pid": os.getpid()}
    options.write_config(cfg, cfg.out)  # the same process again (a rerun, the demo's stages)
    storage.release(cfg.out)
    assert not storage.exists(lock)
