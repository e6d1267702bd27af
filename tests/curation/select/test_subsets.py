import numpy as np
import pytest

from curation.select import export, filtering as selection, subsets
from mithridate.core import schema
from mithridate.core.schema import make_uid


def _write(path, uids):
    np.save(path, subsets.from_uids(uids))
    return str(path)


def test_round_trip_and_set_operations(tmp_path):
    u = [make_uid(f"http://x/{i}.png", "t") for i in range(6)]
    assert subsets.to_uids(subsets.from_uids(u)) == sorted(u)
    a, b = _write(tmp_path / "a.npy", u[:4]), _write(tmp_path / "b.npy", u[2:])
    for op, want in [("intersect", u[2:4]), ("union", u), ("minus", u[:2])]:
        out = subsets.run(subsets.SubsetConfig(inputs=(a, b), op=op, out=str(tmp_path / f"{op}.npy")))
        assert subsets.to_uids(subsets.load(out)) == sorted(want)


@pytest.mark.parametrize("bad", [np.arange(3), np.zeros(2, dtype="u4,u4")])
def test_wrong_files_are_clear_errors(tmp_path, bad):
    np.save(tmp_path / "x.npy", bad)
    with pytest.raises(ValueError, match="dtype"):
        subsets.load(tmp_path / "x.npy")
    with pytest.raises(FileNotFoundError):
        subsets.load(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="at least two"):
        subsets.SubsetConfig(inputs=("a.npy",))


def test_export_of_a_combined_subset(tiny_web, tiny_shards, tmp_path):
    filt = selection.run(selection.FilterConfig(shards=str(tiny_shards), out=str(tmp_path / "f")))
    d = schema.read(filt / "decisions.parquet", "decisions").to_pandas()
    kept = d.loc[d["keep"], "uid"].tolist()
    assert len(kept) >= 2
    half = _write(tmp_path / "half.npy", kept[: len(kept) // 2])
    both = subsets.run(subsets.SubsetConfig(inputs=(str(filt / "subsets" / "keep.npy"), half), op="intersect",
                                            out=str(tmp_path / "both.npy")))
    train = export.run(export.ExportConfig(shards=str(tiny_shards), filter=str(filt), subset=str(both),
                                           out=str(tmp_path / "train")))
    assert sorted(schema.read_folder(train, "train")["uid"].to_pylist()) == sorted(kept[: len(kept) // 2])
