"""Outputs other tools open as they are: the pairs, shard and export folders with `datasets.load_dataset("parquet",
data_dir=…)` and duckdb's `read_parquet('…/*.parquet')` (stats and markers sit in `__stats__/`, out of their way)."""

from __future__ import annotations

import datasets
import duckdb
import pytest

from curation.select import export, filtering
from mithridate.core import schema, stats_files


@pytest.fixture(scope="module")
def folders(tiny_crawl, tiny_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    filt = filtering.run(filtering.FilterConfig(shards=str(tiny_shards), out=str(tmp / "filter")))
    train = export.run(export.ExportConfig(shards=str(tiny_shards), filter=str(filt), out=str(tmp / "train")))
    return {"pairs": (tiny_crawl / "pairs", "pairs"), "shards": (tiny_shards, "shard"), "train": (train, "train")}


@pytest.mark.parametrize("kind", ["pairs", "shards", "train"])
def test_datasets_loads_the_folder_as_it_is(folders, kind, tmp_path):
    folder, name = folders[kind]
    assert stats_files.done(folder) or kind == "pairs"  # a finished stage, its stats beside the data
    assert not list(folder.glob("*_stats.json")), "stats files must not sit beside the parquet files"
    want = schema.read_folder(folder, name)
    got = datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(tmp_path / "hf"))["train"]
    assert got.num_rows == want.num_rows > 0
    assert set(got.column_names) == set(want.column_names)
    assert sorted(got["uid"]) == sorted(want["uid"].to_pylist())


@pytest.mark.parametrize("kind", ["pairs", "shards", "train"])
def test_duckdb_reads_the_folder_as_it_is(folders, kind):
    folder, name = folders[kind]
    want = schema.read_folder(folder, name)
    con = duckdb.connect()
    n, uids = con.execute(f"select count(*), count(distinct uid) from read_parquet('{folder}/*.parquet')").fetchone()
    assert n == uids == want.num_rows
    caption = "caption" if "caption" in want.column_names else "text"
    first = con.execute(f"select {caption} from read_parquet('{folder}/*.parquet') where uid = ?",
                        [want["uid"][0].as_py()]).fetchone()[0]
    assert first == want[caption][0].as_py()
