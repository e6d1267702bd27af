import hashlib
import io
import os

import pytest
from PIL import Image

from curation.acquire import downloader, funnel
from mithridate.core import schema, stats_files

EXPECTED_REASON = {"404": "http_404", "truncated": "decode_error", "wrong-content-type": "wrong_content_type",
                   "slow": "timeout", "redirect-loop": "redirect_loop", "oversized": "too_large",
                   "bomb": "too_many_pixels", "tiny": "too_small"}


def _download(tiny_web, tiny_crawl, out, **kw):
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), out=str(out), timeout_s=1.0, threads=16,
                                    allow_networks=tiny_web.networks, **kw)
    downloader.run(cfg)
    return schema.read_folder(out, "shard").to_pandas(), stats_files.read(out)


@pytest.fixture(scope="module")
def honored(tiny_web, tiny_crawl, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return _download(tiny_web, tiny_crawl, out, shard_size=30) + (out,)


def test_every_pair_comes_out_once_with_a_status(tiny_crawl, honored):
    shards, stats, _ = honored
    pairs = schema.read_folder(tiny_crawl / "pairs", "pairs").to_pandas()
    assert list(shards["uid"]) == list(pairs["uid"])
    assert stats["rows"] == len(pairs) and sum(stats["status"].values()) == len(pairs)
    assert shards["status"].isin(schema.STATUSES).all()
    assert shards.loc[shards["status"] != "success", "error_message"].notna().all()


def test_honor_skips_signalled_rows_and_honours_x_robots_tag(tiny_web, honored):
    shards, stats, _ = honored
    signalled = shards["signals"].apply(len) > 0
    assert (shards.loc[signalled, "status"] == "opted_out").all()
    xrt = shards[shards["optout"] == "x-robots-tag"]
    m = tiny_web.manifest.to_pandas().set_index("url")
    assert len(xrt) > 0 and all("x-robots-tag:noai" in m.loc[u, "signals"] for u in xrt["url"])
    scoped_elsewhere = m[(m["site"].str.startswith("artist-")) & (m["signals"].apply(len) == 0)]
    ok = shards[shards["url"].isin(scoped_elsewhere.index) & shards["url"].isin(m[m["failure"].isna()].index)]
    assert (ok["status"] == "success").all()


def test_planted_failures_get_their_reason(tiny_web, honored):
    shards, _, _ = honored
    m = tiny_web.manifest.to_pandas().drop_duplicates("url").set_index("url")
    seen = set()
    for row in shards.itertuples():
        failure = m.loc[row.url, "failure"]
        if failure is None or row.status == "opted_out":
            continue
        assert funnel.failure_reason(row.error_message) == EXPECTED_REASON[failure], (failure, row.error_message)
        seen.add(failure)
    assert seen == set(EXPECTED_REASON)


def test_successes_are_decodable_64px_with_the_original_sha256(tiny_web, honored):
    shards, _, _ = honored
    ok = shards[shards["status"] == "success"]
    assert len(ok) > 20
    by_origin = {s.origin: s for s in tiny_web.servers.values()}
    for row in ok.itertuples():
        im = Image.open(io.BytesIO(row.jpg))
        assert im.size == (64, 64) and (row.width, row.height) == (64, 64)
        origin = row.url.split("/", 3)[:3]
        server = by_origin["/".join(origin)]
        path = "/" + row.url.split("/", 3)[3]
        route = server.routes[path.split("?")[0]]
        while route.status in (301, 302):  # a redirect chain: the hash is of the final image
            route = server.routes[dict(route.headers)["Location"].split(server.origin, 1)[1]]
        body = route.body
        assert row.sha256 == hashlib.sha256(body).hexdigest()
    assert shards.loc[shards["status"] != "success", "jpg"].isna().all()


def test_record_fetches_but_flags_and_ignore_does_not_flag(tiny_web, tiny_crawl, tmp_path):
    rec, _ = _download(tiny_web, tiny_crawl, tmp_path / "rec", policy="record")
    ign, _ = _download(tiny_web, tiny_crawl, tmp_path / "ign", policy="ignore")
    for shards in (rec, ign):
        assert not (shards["status"] == "opted_out").any()
    signalled = rec["signals"].apply(len) > 0
    assert rec.loc[signalled, "optout"].notna().all()
    assert rec["optout"].fillna("").str.contains("x-robots-tag:noai").any()
    assert ign["optout"].isna().all()
    assert (rec["status"] == "success").sum() == (ign["status"] == "success").sum()


def test_rerun_resumes_from_finished_shards(tiny_web, tiny_crawl, honored):
    shards, _, out = honored
    files = sorted(out.glob("[0-9]*.parquet"))
    assert len(files) >= 3
    before = {f.name: os.stat(f).st_mtime_ns for f in files}
    stats_files.path(out, "00001").unlink()  # as if the run died while writing shard 1
    (out / "00001.parquet").unlink()
    again, _ = _download(tiny_web, tiny_crawl, out, shard_size=30)
    after = {f.name: os.stat(f).st_mtime_ns for f in sorted(out.glob("[0-9]*.parquet"))}
    assert {k for k in after if after[k] != before.get(k)} == {"00001.parquet"}
    cols = ["uid", "status", "sha256"]
    assert again[cols].equals(shards[cols])


def test_two_processes_give_the_same_rows(tiny_web, tiny_crawl, honored, tmp_path):
    shards, _, _ = honored
    par, _ = _download(tiny_web, tiny_crawl, tmp_path, shard_size=30, processes=2)
    assert list(par["uid"]) == list(shards["uid"])
    assert (par["status"] == "success").sum() == (shards["status"] == "success").sum()


def test_refuses_loopback_without_an_allow_list(tiny_crawl, tmp_path):
    cfg = downloader.DownloadConfig(pairs=str(tiny_crawl / "pairs"), out=str(tmp_path), timeout_s=1.0,
                                    policy="ignore")
    downloader.run(cfg)
    stats = stats_files.read(tmp_path)
    assert stats["status"].get("success", 0) == 0
    assert stats["failure_reasons"] == {"refused_address": stats["rows"]}


@pytest.mark.parametrize("field,value", [("policy", "maybe"), ("threads", 0), ("encode_quality", 101),
                                         ("allow_networks", ("300.1.1.1/8",))])
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        downloader.DownloadConfig(**{field: value})


def test_missing_pairs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs"):
        downloader.run(downloader.DownloadConfig(pairs=str(tmp_path / "nope"), out=str(tmp_path / "out")))


def test_resuming_with_another_policy_is_refused(tiny_web, tiny_crawl, honored):
    _, _, out = honored
    with pytest.raises(ValueError, match="policy"):
        _download(tiny_web, tiny_crawl, out, shard_size=30, policy="ignore")


def test_img2dataset_gets_each_setting_by_keyword(tmp_path):
    cfg = downloader.DownloadConfig(pairs="p", out=str(tmp_path), timeout_s=3.5, threads=7, shard_size=123,
                                    retries=2, policy="honor")
    d = downloader._img2dataset_downloader(cfg, tmp_path, verify_sha256=True)
    assert (d.thread_count, d.timeout, d.number_sample_per_shard, d.retries) == (7, 3.5, 123, 2)
    assert (d.save_caption, d.extract_exif, d.output_folder, d.oom_shard_count) == (False, False, str(tmp_path), 5)
    assert d.column_list == ["uid", "url", "sha256"] and (d.compute_hash, d.verify_hash_type) == ("sha256",) * 2
    assert d.encode_format == "jpg" and d.disallowed_header_directives
    assert isinstance(d.resizer, downloader._PixelCap) and d.resizer.max_pixels == cfg.max_pixels


def test_a_changed_img2dataset_signature_is_a_clear_error():
    class Downloader:
        def __init__(self, thread_count, timeout):
            pass

    with pytest.raises(RuntimeError, match=r"img2dataset \S+: Downloader has no parameter\(s\) retries"):
        downloader._check_signature(Downloader, {"thread_count": 1, "timeout": 1, "retries": 0})
    downloader._check_signature(Downloader, {"thread_count": 1})
