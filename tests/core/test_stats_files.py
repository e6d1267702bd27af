"""stats_files: a stage's stats in `__stats__/`, and folders written in the layout before it still read (resume)."""

from __future__ import annotations

import json

import pytest

from mithridate.core import stats_files


def test_written_in_the_stats_folder_and_read_back(tmp_path):
    stats_files.write(tmp_path, {"rows": 3}, "00001")
    stats_files.write(tmp_path, {"rows": 5}, "00000")
    stats_files.write(tmp_path, {"rows": 8})
    assert sorted(p.name for p in (tmp_path / "__stats__").iterdir()) == ["00000.json", "00001.json", "run.json"]
    assert not list(tmp_path.glob("*.json"))
    assert stats_files.read(tmp_path) == {"rows": 8} and stats_files.read(tmp_path, "00001") == {"rows": 3}
    assert [p.stem for p in stats_files.shards(tmp_path)] == ["00000", "00001"]
    assert stats_files.done(tmp_path, "00000") and not stats_files.done(tmp_path, "00002")


def test_a_folder_of_the_layout_before_still_reads_and_resumes(tmp_path):
    (tmp_path / "00000_stats.json").write_text(json.dumps({"rows": 2}))
    (tmp_path / "_stats.json").write_text(json.dumps({"rows": 2}))
    stats_files.write(tmp_path, {"rows": 4}, "00001")
    assert stats_files.done(tmp_path, "00000") and stats_files.read(tmp_path) == {"rows": 2}
    assert [p.name for p in stats_files.shards(tmp_path)] == ["00000_stats.json", "00001.json"]


def test_missing_stats_name_the_file_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"__stats__/run\.json: not found"):
        stats_files.read(tmp_path)
    assert stats_files.read_or_empty(tmp_path, "00000") == {}
