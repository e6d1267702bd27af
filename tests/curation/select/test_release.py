"""release / rebuild on a real loopback web: a site expires, another re-encodes, one URL is swapped, one goes away."""

import dataclasses
import hashlib
import io
import json
import os
import urllib.request

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from curation import cli
from curation.acquire import downloader, pairs
from curation.select import dedup, export, release
from curation.world import web
from mithridate.core import schema, stats_files

K = 8


def _release_pairs(w: web.DemoWeb) -> list[dict]:
    """Image URLs of the open artist, the aggregator and the link farm that download fine and carry no opt-out."""
    sites = {f"artist-{w.artists[0]}", "aggregator", "linkfarm"}  # artist 0 has the "open" profile
    m = w.manifest.to_pandas().drop_duplicates("url")
    m = m[m["site"].isin(sites) & m["failure"].isna() & (m["signals"].apply(len) == 0)]
    return [{"url": r.url, "caption": r.alt or "", "page_url": r.page_url, "source": "crawl", "signals": []}
            for r in m.itertuples()]


def _export(shards, tmp, manifest):
    t = schema.read_folder(shards, "shard", ["uid", "status"])
    n = t.num_rows
    decisions = pa.table({"uid": t["uid"], "keep": pc.equal(t["status"], "success"),
                          "exclusion_reason": pa.nulls(n, pa.string()),
                          "reasons": pa.array([[]] * n, pa.list_(pa.string())),
                          "clip_score": pa.nulls(n, pa.float32()), "aesthetic_score": pa.nulls(n, pa.float32()),
                          "phash": pa.nulls(n, pa.string()), "duplicate_of": pa.nulls(n, pa.string())})
    schema.write(decisions, tmp / "filter" / "decisions.parquet", "decisions")
    return export.run(export.ExportConfig(shards=str(shards), filter=str(tmp / "filter"), provenance=str(manifest),
                                          out=str(tmp / "train"), shard_size=25))


def _rebuild_cfg(w, rel, out, **kw):
    return release.RebuildConfig(release=str(rel / "release.parquet"), out=str(out), phash_k=K, threads=8,
                                 timeout_s=1.0, shard_size=20, allow_networks=w.networks, **kw)


@pytest.fixture(scope="module")
def split_view(tiny_corpus, tmp_path_factory):
    """A web downloaded, exported and released; then changed; then rebuilt in every mode."""
    tmp = tmp_path_factory.mktemp("release")
    cfg = dataclasses.replace(web.PRESETS["tiny"], art_dir=str(tiny_corpus), out=str(tmp / "web"), oversized_px=64,
                              bomb_px=64)
    with web.DemoWeb(cfg) as w:
        pairs.write_pairs(_release_pairs(w), tmp / "pairs", 1000)
        shards = downloader.run(downloader.DownloadConfig(pairs=str(tmp / "pairs"), out=str(tmp / "shards"),
                                                          timeout_s=1.0, threads=8, allow_networks=w.networks,
                                                          shard_size=20))
        train = _export(shards, tmp, w.manifest_path)
        rel = release.release(release.ReleaseConfig(export=str(train), shards=str(shards), out=str(tmp / "rel")))
        published = schema.read(rel / "release.parquet", "release").to_pandas()
        media = w.servers["linkfarm"].origin + "/media/"
        farm = [u for u in published["url"] if u.startswith(media) and "hop" not in u]
        swap_url, gone_url = farm[0], farm[1]
        other = (tiny_corpus / w.items[-1]["path64"]).read_bytes()
        changes = {"expired": w.expire([f"artist-{w.artists[0]}"]),
                   "reencoded": w.expire(["aggregator"], "reencoded"),
                   "swapped": w.expire(["linkfarm"], content={swap_url: other})}
        del w.servers["linkfarm"].routes[gone_url.split(w.servers["linkfarm"].origin, 1)[1]]
        out = release.rebuild(_rebuild_cfg(w, rel, tmp / "rebuild"))
        yield {"web": w, "tmp": tmp, "shards": shards, "train": train, "rel": rel, "published": published,
               "changes": changes, "gone": gone_url, "out": out, "cfg": _rebuild_cfg(w, rel, tmp / "rebuild"),
               "integrity": json.loads((out / "integrity.json").read_text())}


def _truth(sv):
    """(replaced URLs, re-encoded URLs, URLs unchanged and still served) among the released ones."""
    urls = set(sv["published"]["url"])
    replaced = (set(sv["changes"]["expired"]["url"].to_pylist()) | set(sv["changes"]["swapped"]["url"].to_pylist()))
    reencoded = set(sv["changes"]["reencoded"]["url"].to_pylist())
    return replaced & urls, reencoded & urls, urls - replaced - reencoded - {sv["gone"]}


def _rebuilt(sv, mode):
    return schema.read_folder(sv["out"] / mode, "shard").to_pandas().set_index("url")


def test_release_has_the_original_hashes_and_phashes(split_view):
    pub, sv = split_view["published"], split_view
    train = schema.read_folder(sv["train"], "train").to_pandas().set_index("uid")
    shards = schema.read_folder(sv["shards"], "shard").to_pandas().set_index("uid")
    assert len(pub) == len(train) > 25 and pub["uid"].is_unique
    assert (pub["sha256"] == shards.loc[pub["uid"], "sha256"].to_numpy()).all()
    assert list(pub["phash"]) == [dedup.phash(train.loc[u, "jpg"]) for u in pub["uid"]]
    assert pub["artist"].notna().all() and pub["licence"].notna().all()
    before = {r["url"]: r["sha256_before"] for t in sv["changes"].values() for r in t.to_pylist()}
    assert all(pub.set_index("url").loc[u, "sha256"] == h for u, h in before.items() if u in set(pub["url"]))
    assert json.loads((sv["rel"] / "config.json").read_text())["_config"] == "ReleaseConfig"


def test_expire_switches_live_and_records_ground_truth(split_view):
    w, changes = split_view["web"], split_view["changes"]
    replaced, reencoded, _ = _truth(split_view)
    assert len(replaced) >= 5 and len(reencoded) >= 5
    recorded = schema.read(w.expiry_path, "web_expiry").to_pandas()
    assert len(recorded) == sum(t.num_rows for t in changes.values())
    assert set(recorded["kind"]) == {"expired", "reencoded"}
    concept = {i["item_id"]: i["concept"] for i in w.items}
    for row in changes["expired"].to_pylist():
        assert concept[row["replacement"]] != concept[row["item_id"]]
    for row in recorded.itertuples():
        with urllib.request.urlopen(row.url, timeout=5) as r:
            assert hashlib.sha256(r.read()).hexdigest() == row.sha256_after != row.sha256_before
    for row in changes["reencoded"].to_pylist()[:3]:  # the same picture, re-encoded smaller as JPEG
        with urllib.request.urlopen(row["url"], timeout=5) as r:
            assert Image.open(io.BytesIO(r.read())).format == "JPEG"


def test_sha256_mode_catches_every_change_through_img2dataset(split_view):
    replaced, reencoded, unchanged = _truth(split_view)
    got, r = _rebuilt(split_view, "sha256"), split_view["integrity"]["modes"]["sha256"]
    changed = got.loc[sorted(replaced | reencoded)]
    assert (changed["status"] == "failed_to_download").all() and (changed["error_message"] == "hash mismatch").all()
    assert changed["jpg"].isna().all()
    assert (got.loc[sorted(unchanged), "status"] == "success").all()
    assert r["changed"] == r["caught"] == len(replaced | reencoded) and r["admitted"] == 0 and r["admitted_uids"] == []
    assert r["unchanged_kept"] == len(unchanged) and r["failed"] == 1 and r["failure_reasons"] == {"http_404": 1}
    assert r["fetched"] == r["urls"] - 1 == len(split_view["published"]) - 1


def test_none_mode_admits_every_change(split_view):
    replaced, reencoded, unchanged = _truth(split_view)
    got, r = _rebuilt(split_view, "none"), split_view["integrity"]["modes"]["none"]
    assert (got.loc[sorted(replaced | reencoded | unchanged), "status"] == "success").all()
    assert r["changed"] == r["admitted"] == len(replaced | reencoded) and r["caught"] == 0
    assert r["admitted_uids"] == sorted(got.loc[sorted(replaced | reencoded), "uid"])
    assert r["unchanged_kept"] == len(unchanged) and r["failed"] == 1
    agg = split_view["web"].servers["aggregator"].origin.split("//")[1]
    assert r["by_domain"][agg] == {"changed": len(reencoded), "admitted": len(reencoded)}


def test_phash_mode_catches_replacements_and_admits_close_reencodes(split_view):
    replaced, reencoded, unchanged = _truth(split_view)
    got, r = _rebuilt(split_view, "phash"), split_view["integrity"]["modes"]["phash"]
    pub = split_view["published"].set_index("url")
    none = _rebuilt(split_view, "none")  # what was served, independently of the phash gate
    dist = {u: release.phash_distance(dedup.phash(none.loc[u, "jpg"]), pub.loc[u, "phash"]) for u in reencoded}
    close = {u for u, d in dist.items() if d <= K}
    assert len(close) >= len(reencoded) / 2  # pHash tolerates most benign re-encodes
    assert all(release.phash_distance(dedup.phash(none.loc[u, "jpg"]), pub.loc[u, "phash"]) > K for u in replaced)
    assert got.loc[sorted(replaced), "error_message"].str.startswith("phash mismatch: distance").all()
    assert (got.loc[sorted(replaced | (reencoded - close)), "status"] == "failed_to_download").all()
    assert (got.loc[sorted(close | unchanged), "status"] == "success").all()
    assert r["admitted"] == len(close) and r["caught"] == len(replaced | reencoded) - len(close)
    assert r["admitted_uids"] == sorted(got.loc[sorted(close), "uid"])
    assert r["unchanged_kept"] == len(unchanged) and r["unchanged_dropped"] == 0 and r["failed"] == 1
    farm = split_view["web"].servers["linkfarm"].origin.split("//")[1]
    assert r["by_domain"][farm] == {"changed": 1, "admitted": 0}


def test_rebuilt_shards_feed_the_pipeline(split_view):
    for mode in release.MODES:
        got = schema.read_folder(split_view["out"] / mode, "shard")
        assert sorted(got["uid"].to_pylist()) == sorted(split_view["published"]["uid"])
        stats = stats_files.read(split_view["out"] / mode)
        assert stats["rows"] == got.num_rows
        assert stats["status"]["success"] == split_view["integrity"]["modes"][mode]["unchanged_kept"] + \
            split_view["integrity"]["modes"][mode]["admitted"]


def test_rerun_resumes_and_refuses_another_config(split_view):
    out = split_view["out"]
    shards = sorted(f for mode in release.MODES for f in (out / mode).glob("[0-9]*.parquet"))
    before = [os.stat(f).st_mtime_ns for f in shards]
    assert len(shards) >= 2 * len(release.MODES)  # several shards per mode
    release.rebuild(dataclasses.replace(split_view["cfg"], modes=("phash",)))
    assert [os.stat(f).st_mtime_ns for f in shards] == before
    again = json.loads((out / "integrity.json").read_text())
    assert again["modes"]["phash"] == split_view["integrity"]["modes"]["phash"]
    with pytest.raises(ValueError, match="phash_k"):
        release.rebuild(dataclasses.replace(split_view["cfg"], phash_k=K + 4))


def test_release_needs_the_shards_the_export_came_from(split_view):
    sv = split_view
    with pytest.raises(ValueError, match="ReleaseConfig.shards=.* no successful download"):
        release.release(release.ReleaseConfig(export=str(sv["train"]), shards=str(sv["out"] / "sha256"),
                                              out=str(sv["tmp"] / "bad")))
    assert cli.main(["release", f"--export={sv['train']}", f"--shards={sv['shards']}",
                     f"--out={sv['tmp'] / 'cli'}"]) == 0
    assert schema.read(sv["tmp"] / "cli" / "release.parquet", "release").num_rows == len(sv["published"])


def test_missing_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="RebuildConfig.release"):
        release.rebuild(release.RebuildConfig(release=str(tmp_path / "nope.parquet"), out=str(tmp_path / "out")))
    with pytest.raises(FileNotFoundError, match="ReleaseConfig.export"):
        release.release(release.ReleaseConfig(export=str(tmp_path), shards=str(tmp_path), out=str(tmp_path / "o")))
    assert cli.main(["rebuild", f"--release={tmp_path / 'nope.parquet'}", f"--out={tmp_path / 'x'}"]) == 2


@pytest.mark.parametrize("field,value", [("modes", ("md5",)), ("modes", ()), ("modes", ("none", "none")),
                                         ("phash_k", -1), ("phash_k", 65), ("threads", 0), ("policy", "maybe"),
                                         ("allow_networks", ("300.1.1.1/8",))])
def test_bad_rebuild_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        release.RebuildConfig(**{field: value})


def test_bad_expiry_is_a_clear_error(split_view):
    w = split_view["web"]
    with pytest.raises(ValueError, match="kind='gone'"):
        w.expire(["aggregator"], "gone")
    with pytest.raises(ValueError, match="nowhere"):
        w.expire(["nowhere"])
