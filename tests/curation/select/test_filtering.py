import json

import numpy as np
import pytest

from curation.select import dedup, export, filtering as selection
from mithridate.core import schema, stats_files
from reports import dataset


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


@pytest.fixture(scope="module")
def registry_file(tiny_web, tmp_path_factory):
    """The opted-out artists' registry, as the demo writes it."""
    from reports.demo import _optout_registry

    return _optout_registry(tiny_web, tmp_path_factory.mktemp("reg") / "registry.json")


def _decide(shards, tmp_path, **kw):
    out = selection.run(selection.FilterConfig(shards=str(shards), out=str(tmp_path / "filter"), **kw))
    return schema.read(out / "decisions.parquet", "decisions").to_pandas(), stats_files.read(out)


def test_every_row_gets_a_decision_and_every_exclusion_a_reason(shards, tmp_path):
    d, stats = _decide(shards, tmp_path)
    rows = schema.read_folder(shards, "shard").to_pandas()
    assert list(d["uid"]) == list(rows["uid"])
    assert d.loc[~d["keep"], "exclusion_reason"].notna().all() and d.loc[d["keep"], "exclusion_reason"].isna().all()
    assert not d.loc[d["keep"], "uid"].isin(rows.loc[rows["status"] != "success", "uid"]).any()
    assert stats["kept"] == int(d["keep"].sum()) and sum(stats["reasons"].values()) == len(d) - stats["kept"]
    assert {"download_failed", "optout_signal", "caption_spam"} <= set(stats["reasons"])
    keep = np.load(tmp_path / "filter" / "subsets" / "keep.npy")
    assert keep.dtype == np.dtype("u8,u8") and len(keep) == stats["kept"]


def test_registry_catches_reuploads_that_url_only_misses(tiny_web, shards, registry_file, tmp_path):
    honor, _ = _decide(shards, tmp_path / "h", registry=str(registry_file))
    url_only, _ = _decide(shards, tmp_path / "u", registry=str(registry_file), optout="url_only")
    m = tiny_web.manifest.to_pandas().drop_duplicates("url").set_index("url")
    rows = schema.read_folder(shards, "shard").to_pandas().merge(honor, on="uid")
    own = m["site"].str.startswith("artist-")
    opted = set(m.loc[own & (m["signals"].apply(len) > 0), "item_id"])
    reup = rows[(rows["status"] == "success") & rows["url"].map(m["item_id"]).isin(opted) & ~rows["url"].map(own)]
    assert len(reup) >= 5
    caught = reup["exclusion_reason"].str.startswith(("registry_", "optout_"), na=False)
    assert caught.mean() >= 0.8, reup[["url", "exclusion_reason"]]
    leaked_url_only = url_only.set_index("uid").loc[reup["uid"], "keep"]
    assert leaked_url_only.sum() > caught.sum() * 0.5  # URL-based opt-out alone lets most re-uploads through


def test_duplicates_point_at_a_kept_row(shards, tmp_path):
    d, _ = _decide(shards, tmp_path)
    dups = d[d["exclusion_reason"].isin([dedup.DUPLICATE_EXACT, dedup.DUPLICATE_PHASH])]
    assert len(dups) > 0
    kept = set(d.loc[d["keep"], "uid"])
    assert dups["duplicate_of"].isin(kept).all()


def test_export_and_report(tiny_web, shards, registry_file, tmp_path):
    _decide(shards, tmp_path, registry=str(registry_file))
    train = export.run(export.ExportConfig(shards=str(shards), filter=str(tmp_path / "filter"),
                                           provenance=str(tiny_web.manifest_path), out=str(tmp_path / "train")))
    t = schema.read_folder(train, "train").to_pandas()
    assert len(t) > 0 and t["jpg"].notna().all() and t["licence"].notna().all()
    html = dataset.build(dataset.DatasetReportConfig(crawl="", shards=str(shards), filter=str(tmp_path / "filter"),
                                                     export=str(train), manifest=str(tiny_web.manifest_path),
                                                     out=str(tmp_path / "report")))
    text = html.read_text()
    assert "Opt-out compliance" in text and "data:image/png;base64," in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["funnel/exported"] == len(t)
    assert metrics["optout/leaked_from_artist_sites"] == 0
    assert 0 < metrics["ground_truth/bad_alt_precision"] <= 1


@pytest.mark.parametrize("kw,field", [({"clip_threshold": 0.2, "clip_top_fraction": 0.5}, "not both"),
                                      ({"clip_top_fraction": 1.5}, "clip_top_fraction"),
                                      ({"dedup": ("exact", "fuzzy")}, "dedup"), ({"optout": "maybe"}, "optout")])
def test_bad_filter_config_is_a_clear_error(kw, field):
    with pytest.raises(ValueError, match=field):
        selection.FilterConfig(**kw)
