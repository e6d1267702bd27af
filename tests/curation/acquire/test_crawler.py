
import pytest

from curation.acquire import crawler
from curation.acquire.warc import read_warc
from mithridate.core import schema, stats_files

DOWNLOAD_ONLY = {"x-robots-tag:noai", "x-robots-tag:noimageai"}  # image headers: seen only when fetching images


def _pairs(out):
    return schema.read_folder(out / "pairs", "pairs").to_pandas()


def test_crawl_finds_every_reachable_image_with_its_alt_and_signals(tiny_web, tiny_crawl):
    pairs = _pairs(tiny_crawl)
    m = tiny_web.manifest.to_pandas()
    reachable = m[~m["signals"].apply(lambda s: any(x.startswith("robots:mithridate@") for x in s))]
    expected = {(r.url, schema.normalize_text(r.alt), r.page_url) for r in reachable.itertuples()}
    got = {(r.url, r.caption, r.page_url) for r in pairs.itertuples()}
    assert got == expected
    by_url = {(r.url, r.page_url): sorted(set(r.signals)) for r in pairs.itertuples()}
    for r in reachable.itertuples():
        assert by_url[(r.url, r.page_url)] == sorted(set(r.signals) - DOWNLOAD_ONLY), r.url


def test_crawl_obeys_robots_for_its_own_agent(tiny_web, tiny_crawl):
    stats = stats_files.read(tiny_crawl)
    assert stats["pages_disallowed_by_robots"] >= 1
    assert not _pairs(tiny_crawl)["page_url"].str.contains("/private/").any()
    assert stats["pages_fetched"] > 10 and stats["pairs"] == len(_pairs(tiny_crawl))


def test_crawl_writes_a_warc_that_reads_back_to_the_same_pairs(tiny_crawl):
    from_warc = {(p["url"], p["caption"]) for p in read_warc(tiny_crawl / "crawl.warc.gz")}
    assert from_warc == {(r.url, r.caption) for r in _pairs(tiny_crawl).itertuples()}


def test_crawl_refuses_loopback_unless_allowed(tiny_web, tmp_path):
    cfg = crawler.CrawlConfig(seeds=tuple(tiny_web.seeds), out=str(tmp_path), timeout_s=1.0)
    crawler.run(cfg)
    stats = stats_files.read(tmp_path)
    assert stats.get("pages_fetched", 0) == 0
    assert stats["pages_failed:refused_address"] == len(tiny_web.seeds)


def test_max_pages_is_respected(tiny_web, tmp_path):
    cfg = crawler.CrawlConfig(seeds=tuple(tiny_web.seeds[:1]), out=str(tmp_path), max_pages=3,
                              allow_networks=tiny_web.networks)
    crawler.run(cfg)
    stats = stats_files.read(tmp_path)
    assert stats["pages_fetched"] + stats.get("pages_disallowed_by_robots", 0) <= 3


@pytest.mark.parametrize("field,value", [("seeds", ("not a url",)), ("per_host", 0), ("allow_networks", ("x",)),
                                         ("retries", -1)])
def test_bad_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field if field != "retries" else "retries"):
        crawler.CrawlConfig(**{field: value})


def test_interrupted_crawl_resumes_to_the_same_pairs(tiny_web, tiny_crawl, tmp_path, monkeypatch):
    cfg = crawler.CrawlConfig(seeds=tuple(tiny_web.seeds), out=str(tmp_path), allow_networks=tiny_web.networks,
                              timeout_s=2.0, retries=0, checkpoint_pages=3)
    calls = {"n": 0}
    real = crawler.Crawler.crawl_page

    def dies_after_eight_pages(self, url):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real(self, url)

    monkeypatch.setattr(crawler.Crawler, "crawl_page", dies_after_eight_pages)
    with pytest.raises(KeyboardInterrupt):
        crawler.run(cfg)
    assert (tmp_path / "_state.json").exists() and not stats_files.done(tmp_path)
    monkeypatch.setattr(crawler.Crawler, "crawl_page", real)
    crawler.run(cfg)
    resumed = {(r.url, r.caption, r.page_url) for r in _pairs(tmp_path).itertuples()}
    assert resumed == {(r.url, r.caption, r.page_url) for r in _pairs(tiny_crawl).itertuples()}
    assert not (tmp_path / "_state.json").exists() and not (tmp_path / "_partial").exists()


def test_rerun_of_a_finished_crawl_does_nothing_and_another_config_is_refused(tiny_web, tiny_crawl):
    cfg = crawler.CrawlConfig(seeds=tuple(tiny_web.seeds), out=str(tiny_crawl), allow_networks=tiny_web.networks,
                              timeout_s=2.0, retries=0, warc=True)
    before = stats_files.path(tiny_crawl).read_text()
    crawler.run(cfg)
    assert stats_files.path(tiny_crawl).read_text() == before
    with pytest.raises(ValueError, match="max_pages"):
        crawler.run(crawler.CrawlConfig(**{**cfg.__dict__, "max_pages": 7}))
