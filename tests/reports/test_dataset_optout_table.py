"""The dataset report's opt-out table: signals parsed (new `@host` and old forms), then counted per kind and
deciding host on a hand-built shard + decisions + ground-truth manifest with known numbers."""

import json

import pytest

from mithridate.core import schema
from reports import dataset

A, B, C, D = "127.0.0.11:40123", "127.0.0.12:40200", "127.0.0.13:40300", "127.0.0.14:40400"


@pytest.mark.parametrize("signal,expected", [
    (f"robots:GPTBot@{A}", ("robots", "GPTBot", A)),
    (f"robots:ClaudeBot@{A}", ("robots", "ClaudeBot", A)),
    (f"robots:Google-Extended@{A}", ("robots", "Google-Extended", A)),
    (f"robots:mithridate@{A}", ("robots", "mithridate", A)),
    (f"robots:unreachable@{B}", ("robots", "unreachable", B)),
    (f"ai.txt@{C}", ("ai.txt", "", C)),
    (f"ai.txt:unreachable@{C}", ("ai.txt", "unreachable", C)),
    (f"tdmrep:well-known@{D}", ("tdmrep", "well-known", D)),
    ("robots:GPTBot@Example.ORG", ("robots", "GPTBot", "example.org")),  # hosts compare lower-cased
    ("robots:CCBot@[::1]:8080", ("robots", "CCBot", "[::1]:8080")),
    ("meta:noai", ("meta", "noai", None)),
    ("meta:noimageai", ("meta", "noimageai", None)),
    ("x-robots-tag:noai", ("x-robots-tag", "noai", None)),
    ("x-robots-tag", ("x-robots-tag", "", None)),  # the downloader's bare signal (honor policy)
    ("tdmrep:meta", ("tdmrep", "meta", None)),
    ("tdmrep:header", ("tdmrep", "header", None)),
    ("robots:GPTBot", ("robots", "GPTBot", None)),  # old forms, before signals named their host
    ("robots:anthropic-ai", ("robots", "anthropic-ai", None)),
    ("ai.txt", ("ai.txt", "", None)),
    ("tdmrep:well-known", ("tdmrep", "well-known", None)),
])
def test_parse_signal_every_form(signal, expected):
    assert dataset.parse_signal(signal) == expected


@pytest.mark.parametrize("bad", ["", "   ", None, ":noai", "robots:GPTBot@", "@host"])
def test_parse_signal_rejects_empty_parts(bad):
    with pytest.raises(ValueError, match="opt-out signal"):
        dataset.parse_signal(bad)


def test_deciding_host_of_old_forms():
    img, page = f"http://{D}/img/10.png", f"http://{C}/gallery/1.html"
    assert dataset.deciding_signal("robots:GPTBot", img, page) == ("robots", "GPTBot", D)  # the image's robots.txt
    assert dataset.deciding_signal("ai.txt", img, page) == ("ai.txt", "", D)
    assert dataset.deciding_signal("meta:noai", img, page) == ("meta", "noai", C)  # the page's markup
    assert dataset.deciding_signal("tdmrep:header", img, page) == ("tdmrep", "header", C)
    assert dataset.deciding_signal(f"robots:GPTBot@{A}", img, page) == ("robots", "GPTBot", A)  # named: as named
    assert dataset.deciding_signal("meta:noai", img, None) == ("meta", "noai", D)  # no page (URL list)
    # X-Robots-Tag in the optout column but not in signals: seen on the image's response at download
    assert dataset.row_signals(["meta:noai"], "meta:noai;x-robots-tag", img, page) == [
        ("meta", "noai", C), ("x-robots-tag", "", D)]
    # the page's and the image's X-Robots-Tag agree: one each (the optout column holds both)
    assert dataset.row_signals(["x-robots-tag:noai"], "x-robots-tag:noai;x-robots-tag:noai", img, page) == [
        ("x-robots-tag", "noai", C), ("x-robots-tag", "noai", D)]


def _url(host, path):
    return f"http://{host}{path}"


# uid, image host, image path, page host, signals, status, optout, keep, reasons
ROWS = [
    ("r1", A, "/img/1.png", A, [f"robots:GPTBot@{A}", f"robots:CCBot@{A}", "meta:noai"], "opted_out", True, False,
     ["optout_signal"]),
    ("r2", A, "/img/2.png", A, [f"robots:GPTBot@{A}", f"robots:CCBot@{A}", "meta:noai"], "opted_out", True, False,
     ["optout_signal"]),
    ("r3", B, "/img/3.png", B, [f"robots:unreachable@{B}"], "opted_out", True, False, ["optout_signal"]),  # 503
    ("r4", B, "/img/4.png", B, [f"robots:unreachable@{B}"], "failed_to_download", None, False, ["download_failed"]),
    ("r5", C, "/img/5.png", C, ["meta:noai"], "opted_out", True, False, ["optout_signal"]),
    ("r6", C, "/img/6.png", C, [], "opted_out", "x-robots-tag", False, ["optout_signal"]),  # seen at download
    ("r7", D, "/img/7.png", D, ["ai.txt"], "success", None, True, []),  # old form, kept anyway
    ("r8", C, "/img/9.png", C, [], "success", None, True, []),  # missed: the ground truth says x-robots-tag
    ("r9", D, "/img/10.png", C, ["meta:noai", "robots:GPTBot"], "opted_out", True, False, ["optout_signal"]),
    ("r10", D, "/img/11.png", D, [], "success", None, True, []),
]
# image host, path, page host, true signals
MANIFEST = [
    (A, "/img/1.png", A, ["robots:GPTBot", "robots:CCBot", "meta:noai"]),  # old form, as the demo web plants them
    (A, "/img/2.png", A, ["robots:GPTBot", "robots:CCBot", "meta:noai"]),
    (A, "/img/12.png", A, ["robots:GPTBot", "robots:CCBot", "meta:noai"]),  # never found by the crawl
    (B, "/img/3.png", B, [f"robots:unreachable@{B}"]),
    (B, "/img/4.png", B, [f"robots:unreachable@{B}"]),
    (C, "/img/5.png", C, ["meta:noai"]),
    (C, "/img/6.png", C, ["x-robots-tag:noai"]),
    (C, "/img/9.png", C, ["x-robots-tag:noai"]),  # leaked
    (D, "/img/7.png", D, [f"ai.txt@{D}"]),  # leaked
    (D, "/img/10.png", C, ["meta:noai", "robots:GPTBot"]),
    (D, "/img/11.png", D, []),
]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Shards, filter and manifest folders written with the real schemas; the report config reading them."""
    root = tmp_path_factory.mktemp("optout_table")
    shard, decisions = [], []
    for uid, host, path, page_host, sig, status, optout, keep, reasons in ROWS:
        shard.append({"uid": uid, "url": _url(host, path), "caption": f"alt {uid}", "page_url": _url(page_host, "/g.html"),
                      "domain": host, "source": "crawl", "signals": sig, "status": status,
                      "optout": ";".join(sig) if optout is True else optout,
                      "width": 64 if status == "success" else None})
        decisions.append({"uid": uid, "keep": keep, "exclusion_reason": reasons[0] if reasons else None,
                          "reasons": reasons})
    schema.write(schema.to_table(shard, "shard"), root / "shards" / "00000.parquet", "shard", {"policy": "honor"})
    (root / "shards" / "config.json").write_text(json.dumps({"policy": "honor"}))
    schema.write(schema.to_table(decisions, "decisions"), root / "filter" / "decisions.parquet", "decisions")
    (root / "filter" / "config.json").write_text(json.dumps({"optout": "honor"}))
    manifest = [{"url": _url(h, p), "page_url": _url(ph, "/g.html"), "site": f"artist-{h[-5:]}",
                 "item_id": f"artist/{p}", "alt_kind": "good", "alt_correct": True, "markup": "img", "signals": sig}
                for h, p, ph, sig in MANIFEST]
    schema.write(schema.to_table(manifest, "web_manifest"), root / "web_manifest.parquet", "web_manifest")
    return dataset.DatasetReportConfig(crawl="", shards=str(root / "shards"), filter=str(root / "filter"), export="",
                                       manifest=str(root / "web_manifest.parquet"), out=str(root / "report"))


COLS = ("rows", "excluded_optout", "excluded_other", "kept")
TRUTH = ("truth_images", "truth_found", "truth_excluded", "truth_downloaded", "truth_leaked", "truth_compliance")
EXPECTED = {  # (kind, host): (details, rows, excluded by opt-out, excluded otherwise, kept, truth …)
    ("ai.txt", D): ("", 1, 0, 0, 1, 1, 1, 0, 1, 1, 0.0),
    ("ai.txt", "all hosts"): ("", 1, 0, 0, 1, 1, 1, 0, 1, 1, 0.0),
    ("meta", A): ("noai", 2, 2, 0, 0, 3, 2, 2, 0, 0, 1.0),
    ("meta", C): ("noai", 2, 2, 0, 0, 2, 2, 2, 0, 0, 1.0),  # r9: its image on D, the page on C decides
    ("meta", "all hosts"): ("noai", 4, 4, 0, 0, 5, 4, 4, 0, 0, 1.0),
    ("robots", A): ("CCBot, GPTBot", 2, 2, 0, 0, 3, 2, 2, 0, 0, 1.0),  # two agents, each row counted once
    ("robots", B): ("unreachable", 2, 1, 1, 0, 2, 2, 2, 0, 0, 1.0),  # the 503 host
    ("robots", D): ("GPTBot", 1, 1, 0, 0, 1, 1, 1, 0, 0, 1.0),
    ("robots", "all hosts"): ("CCBot, GPTBot, unreachable", 5, 4, 1, 0, 6, 5, 5, 0, 0, 1.0),
    ("x-robots-tag", C): ("noai", 1, 1, 0, 0, 2, 2, 1, 1, 1, 0.5),  # r8 leaked: no signal seen, kept
    ("x-robots-tag", "all hosts"): ("noai", 1, 1, 0, 0, 2, 2, 1, 1, 1, 0.5),
    ("all kinds", "all hosts"): ("CCBot, GPTBot, noai, unreachable", 8, 6, 1, 1, 10, 9, 7, 2, 2, 0.7778),
}


def test_table_counts_per_kind_and_deciding_host(outputs):
    d = dataset.load(outputs)
    table = dataset.optout_signal_table(d["rows"], d["manifest"])
    assert [(r["kind"], r["host"]) for r in table] == list(EXPECTED)  # sorted by kind then host, totals last
    for r in table:
        got = (r["details"],) + tuple(r[c] for c in COLS + TRUTH)
        assert got == EXPECTED[r["kind"], r["host"]], (r["kind"], r["host"])


def test_table_without_ground_truth_has_no_truth_columns(outputs):
    d = dataset.load(outputs)
    table = dataset.optout_signal_table(d["rows"])
    assert not any(k.startswith("truth_") for r in table for k in r)
    total = table[-1]
    assert (total["kind"], total["rows"], total["excluded_optout"], total["excluded_other"], total["kept"]) == (
        "all kinds", 8, 6, 1, 1)
    assert ("x-robots-tag", C) in {(r["kind"], r["host"]) for r in table}  # from the optout column alone


def test_report_shows_the_table_and_writes_it_to_metrics(outputs):
    page = dataset.build(outputs)
    html = page.read_text(encoding="utf-8")
    section = html[html.index("Opt-out compliance</h2>"):html.index("Duplicates per layer</h2>")]
    assert "leaked_reuploads" in section  # the summary rows stay
    for text in ("by signal kind and deciding host", "deciding host", "compliance", "leaked (kept)", B,
                 "unreachable", "download policy: honor", "filter opt-out policy: honor"):
        assert text in section, text
    metrics = json.loads((page.parent / "metrics.json").read_text())
    by_signal = {(r["kind"], r["host"]): r for r in metrics["optout/by_signal"]}
    assert set(by_signal) == set(EXPECTED)
    assert by_signal["robots", B]["excluded_optout"] == 1 and by_signal["robots", B]["truth_excluded"] == 2
    assert by_signal["x-robots-tag", C]["truth_leaked"] == 1
    assert by_signal["all kinds", "all hosts"]["truth_compliance"] == 0.7778
