"""Readers of the pairs stage: WARC (WarcSink round trip), WAT (write_wat round trip), URL lists, and pairs.run."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.acquire.pairs import PRESETS, PairsConfig, domain_of, run, write_pairs
from curation.acquire.urllist import read_urllist
from curation.acquire.warc import WarcSink, read_warc, read_wat, write_wat
from mithridate.core import schema, stats_files

HTML = "text/html; charset=utf-8"

# (page_url, status, headers, body) as the crawler would hand them to WarcSink
PAGES = [
    ("http://example.com/gallery/", 200, [("Content-Type", HTML), ("Content-Encoding", "gzip")],
     b'<html><head><title>G</title></head><body><img src="cat.jpg" alt="  A   cat\n sleeping ">'
     b'<img src="/img/dog.png" alt=""><img src="https://CDN.example.org:8443/x/bird.webp">'
     b'<img src="data:image/png;base64,AAAA" alt="inline"><a href="/next">next</a></body></html>'),
    ("http://example.com/fr/", 200, [("Content-Type", "text/html; charset=windows-1252")],
     '<p>Été</p><img src="caf\u00e9.jpg" alt="Caf\u00e9 cr\u00e8me \u2013 \u00e9t\u00e9">'.encode("cp1252")),
    ("http://example.com/de/", 200, [("Content-Type", "text/html")],
     '<head><meta charset="iso-8859-1"></head><img src="k.jpg" alt="K\u00e4se">'.encode("latin-1")),
    ("http://example.com/noai", 200,
     [("Content-Type", HTML), ("X-Robots-Tag", "otherbot: noindex"), ("X-Robots-Tag", "noimageai")],
     b'<head><meta name="robots" content="noai, nofollow"></head><img src="/p/1.jpg" alt="one">'),
    ("http://example.com/tdm", 200, [("Content-Type", HTML), ("TDM-Reservation", "1")],
     b'<head><base href="http://static.example.com/assets/"><meta name="tdm-reservation" content="1"></head>'
     b'<img src="t.jpg" alt="tee">'),
    ("http://example.com/broken", 200, [("Content-Type", HTML)],
     b"<HTML><BODY><p>text<div><IMG SRC=one.jpg ALT=first><p><img src='two.jpg' alt=\"second\"></span></div>"
     b'</td><table><tr><img src=three.jpg alt="x &amp; y"><img src="four.jpg" alt="trunc'),
    ("http://example.com/missing", 404, [("Content-Type", HTML)], b'<img src="404.jpg" alt="not found">'),
    ("http://example.com/logo.png", 200, [("Content-Type", "image/png")], b"\x89PNG\r\n\x1a\n"),
]

SIG_NOAI = ["meta:noai", "x-robots-tag:noimageai"]
SIG_TDM = ["tdmrep:header", "tdmrep:meta"]
EXPECTED = [  # (page_url, url, text, signals) in record order
    ("http://example.com/gallery/", "http://example.com/gallery/cat.jpg", "A cat sleeping", []),
    ("http://example.com/gallery/", "http://example.com/img/dog.png", "", []),
    ("http://example.com/gallery/", "https://CDN.example.org:8443/x/bird.webp", "", []),
    ("http://example.com/fr/", "http://example.com/fr/caf\u00e9.jpg", "Caf\u00e9 cr\u00e8me \u2013 \u00e9t\u00e9", []),
    ("http://example.com/de/", "http://example.com/de/k.jpg", "K\u00e4se", []),
    ("http://example.com/noai", "http://example.com/p/1.jpg", "one", SIG_NOAI),
    ("http://example.com/tdm", "http://static.example.com/assets/t.jpg", "tee", SIG_TDM),
    ("http://example.com/broken", "http://example.com/one.jpg", "first", []),
    ("http://example.com/broken", "http://example.com/two.jpg", "second", []),
    ("http://example.com/broken", "http://example.com/three.jpg", "x & y", []),
]


def _key(row: dict) -> tuple:
    return row["page_url"], row["url"], row["caption"], row["signals"]


def _write_warc(path, pages=PAGES):
    with WarcSink(path) as sink:
        for url, status, headers, body in pages:
            sink.write_response(url, status, headers, body)
    return path


def _html_pages():
    """The 2xx HTML pages of PAGES, decoded, as write_wat takes them."""
    from curation.acquire.alttext import decode_html

    return [(u, decode_html(b, dict(h)["Content-Type"]), h) for u, s, h, b in PAGES
            if s == 200 and "html" in dict(h)["Content-Type"]]


@pytest.fixture
def warc_path(tmp_path):
    return _write_warc(tmp_path / "crawl.warc.gz")


# --- WARC ---------------------------------------------------------------------------------------------------


def test_read_warc_pairs_and_signals(warc_path):
    stats = {}
    rows = list(read_warc(warc_path, stats))
    assert [_key(r) for r in rows] == [(p, u, t, s) for p, u, t, s in EXPECTED]
    assert stats == {"skipped_records": 0, "pages": 6}
    assert {r["source"] for r in rows} == {"warc"}
    assert rows[2]["domain"] == "cdn.example.org:8443"


def test_warc_sink_renames_wire_headers_and_is_gzipped(warc_path):
    from warcio.archiveiterator import ArchiveIterator

    assert warc_path.read_bytes()[:2] == b"\x1f\x8b"
    with open(warc_path, "rb") as f:
        rec = next(iter(ArchiveIterator(f)))
        assert rec.http_headers.get_header("Content-Encoding") is None
        assert rec.http_headers.get_header("X-Archive-Orig-Content-Encoding") == "gzip"
        assert rec.http_headers.get_statuscode() == "200"
        assert rec.content_stream().read() == PAGES[0][3]


def test_warc_sink_thread_safe(tmp_path):
    path = tmp_path / "threads.warc.gz"
    sink = WarcSink(path)

    def worker(t):
        for i in range(25):
            sink.write_response(f"http://h{t}.test/{i}", 200, [("Content-Type", HTML)],
                                f'<img src="{i}.jpg" alt="t{t} i{i}">'.encode())

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        sink.write_response("http://x.test/", 200, [], b"")
    rows = list(read_warc(path))
    assert len(rows) == 200 and len({r["caption"] for r in rows}) == 200


def test_read_warc_skips_malformed_record_and_continues(tmp_path):
    path = tmp_path / "bad.warc"
    body = b'<img src="b.jpg" alt="ok">'
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=False)
        for uri, statusline in (("http://ex.test/bad", "bogus"), ("http://ex.test/ok", "200 OK")):
            hdrs = StatusAndHeaders(statusline, [("Content-Type", "text/html")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(uri, "response", payload=io.BytesIO(body), length=len(body),
                                                http_headers=hdrs))
    stats = {}
    rows = list(read_warc(path, stats))
    assert [r["url"] for r in rows] == ["http://ex.test/b.jpg"]
    assert stats["skipped_records"] == 1


def test_read_warc_truncated_file_keeps_earlier_records(tmp_path, warc_path, caplog):
    data = warc_path.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) - 40])
    stats = {}
    rows = list(read_warc(cut, stats))
    assert [_key(r) for r in rows] == [(p, u, t, s) for p, u, t, s in EXPECTED]  # the cut record is the PNG
    assert stats["skipped_records"] == 1
    assert "skipping malformed record" in caplog.text


def test_read_warc_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.warc"):
        list(read_warc(tmp_path / "nope.warc"))


# --- WAT ----------------------------------------------------------------------------------------------------


def test_wat_round_trip_matches_warc(tmp_path, warc_path):
    wat = write_wat(tmp_path / "crawl.warc.wat.gz", _html_pages())
    stats = {}
    wat_rows = list(read_wat(wat, stats))
    assert [_key(r) for r in wat_rows] == [_key(r) for r in read_warc(warc_path)]
    assert {r["source"] for r in wat_rows} == {"wat"}
    assert stats == {"skipped_records": 0, "pages": 6}


def test_wat_records_are_wat_shaped(tmp_path):
    from warcio.archiveiterator import ArchiveIterator

    wat = write_wat(tmp_path / "x.wat", [("http://e.test/a/", '<base href="/b/"><img src="i.png" alt="I">',
                                          {"X-Robots-Tag": ["noai", "noindex"]})])
    with open(wat, "rb") as f:
        recs = [(r.rec_type, r.rec_headers.get_header("Content-Type"), r.content_stream().read())
                for r in ArchiveIterator(f)]
    assert [r[0] for r in recs] == ["warcinfo", "metadata"]
    assert recs[1][1] == "application/json"
    env = json.loads(recs[1][2])["Envelope"]
    assert env["WARC-Header-Metadata"]["WARC-Target-URI"] == "http://e.test/a/"
    meta = env["Payload-Metadata"]["HTTP-Response-Metadata"]
    assert meta["HTML-Metadata"]["Links"] == [{"path": "IMG@/src", "url": "i.png", "alt": "I"}]
    assert meta["HTML-Metadata"]["Head"]["Base"] == "/b/"
    assert meta["Headers"] == {"X-Robots-Tag": ["noai", "noindex"]}
    (row,) = read_wat(wat)
    assert row["url"] == "http://e.test/b/i.png"
    assert row["signals"] == ["x-robots-tag:noai", "x-robots-tag:noindex"]


def _metadata_record(writer, payload: bytes):
    return writer.create_warc_record("http://p.test/", "metadata", payload=io.BytesIO(payload),
                                     length=len(payload), warc_content_type="application/json")


def test_read_wat_skips_bad_json_and_guards_levels(tmp_path):
    good = {"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": "http://p.test/x/"},
                         "Payload-Metadata": {"HTTP-Response-Metadata": {
                             "Headers": {"tdm-reservation": "1"},
                             "HTML-Metadata": {"Head": {"Metas": [{"name": "mithridate", "content": "noimageai"}]},
                                               "Links": [{"path": "IMG@/src", "url": "../y.gif", "alt": " Y "},
                                                         {"path": "A@/href", "url": "/a"},
                                                         {"path": "IMG@/src", "url": "javascript:void(0)"},
                                                         {"path": "IMG@/src", "url": 3}]}}}}}
    request = {"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "request", "WARC-Target-URI": "http://p.test/"}}}
    no_html = {"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": "http://p.test/"},
                            "Payload-Metadata": {"HTTP-Response-Metadata": {"Headers": {}}}}}
    path = tmp_path / "mixed.wat.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for payload in (b'{"Envelope": {', json.dumps(request).encode(), b"[1, 2]", json.dumps(no_html).encode(),
                        json.dumps(good).encode()):
            w.write_record(_metadata_record(w, payload))
    stats = {}
    rows = list(read_wat(path, stats))
    assert [_key(r) for r in rows] == [("http://p.test/x/", "http://p.test/y.gif", "Y",
                                        ["meta:noimageai", "tdmrep:header"])]
    assert stats["skipped_records"] == 2  # bad JSON, and a JSON list instead of an object


# --- URL lists ----------------------------------------------------------------------------------------------


def _csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_urllist_csv(tmp_path):
    path = _csv(tmp_path / "l.csv", ["url", "caption", "extra"],
                [["http://a.test/1.jpg", "  one,  with comma ", "x"], ["", "no url", ""],
                 ["ftp://a.test/2", "ftp", ""]])
    rows = list(read_urllist(path))
    assert [(r["url"], r["caption"], r["line"]) for r in rows] == [
        ("http://a.test/1.jpg", "one, with comma", 2), ("", "no url", 3), ("ftp://a.test/2", "ftp", 4)]
    assert rows[0]["page_url"] is None and rows[0]["source"] == "urllist"


def test_urllist_tsv_custom_columns(tmp_path):
    path = _csv(tmp_path / "l.tsv", ["URL", "TEXT", "PAGE"],
                [["https://b.test/x.png", "ex", "https://b.test/"], ["https://b.test/y.png", "", ""]], "\t")
    rows = list(read_urllist(path, url_col="URL", caption_col="TEXT", page_col="PAGE"))
    assert [(r["url"], r["caption"], r["page_url"]) for r in rows] == [
        ("https://b.test/x.png", "ex", "https://b.test/"), ("https://b.test/y.png", "", None)]


def test_urllist_jsonl_gz_and_explicit_format(tmp_path):
    lines = [json.dumps({"url": "http://c.test/1", "caption": "c1"}), "", json.dumps({"url": "http://c.test/2"})]
    gz = tmp_path / "l.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    assert [(r["url"], r["caption"], r["line"]) for r in read_urllist(gz)] == [
        ("http://c.test/1", "c1", 1), ("http://c.test/2", "", 3)]
    odd = tmp_path / "list.dat"
    odd.write_text("\n".join(lines) + "\n")
    assert len(list(read_urllist(odd, input_format="jsonl"))) == 2


def test_urllist_parquet_custom_columns(tmp_path):
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"image_url": ["http://d.test/1.jpg", None], "alt": ["  d  one", None],
                             "other": [1, 2]}), path)
    rows = list(read_urllist(path, url_col="image_url", caption_col="alt"))
    assert [(r["url"], r["caption"], r["line"]) for r in rows] == [("http://d.test/1.jpg", "d one", 1), ("", "", 2)]


def test_urllist_txt(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("http://e.test/1.jpg\n\n  http://e.test/2.jpg  \n")
    assert [(r["url"], r["caption"], r["line"]) for r in read_urllist(path)] == [
        ("http://e.test/1.jpg", "", 1), ("http://e.test/2.jpg", "", 3)]


def test_urllist_errors(tmp_path):
    path = _csv(tmp_path / "l.csv", ["link", "caption"], [["http://a.test/", "a"]])
    with pytest.raises(ValueError, match=r"no column 'url' \(url_col\); columns present: link, caption"):
        read_urllist(path)
    with pytest.raises(ValueError, match="'title'"):
        read_urllist(path, url_col="link", caption_col="title")
    assert len(list(read_urllist(path, url_col="link", caption_col=""))) == 1
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_urllist(tmp_path / "missing.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValueError, match="bad.parquet: corrupt") as err:
        read_urllist(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="cannot tell the URL-list format"):
        read_urllist(_csv(tmp_path / "l.xyz", ["url"], []))
    jl = tmp_path / "l.jsonl"
    jl.write_text('{"url": "http://a.test/"}\n{"url": \n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        list(read_urllist(jl, caption_col=None))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("url,caption\nhttp://a.test/,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        list(read_urllist(latin))


# --- pairs stage --------------------------------------------------------------------------------------------


def test_pairs_run_urllist_shards_stats(tmp_path):
    rows = [[f"http://f.test/{i}.jpg", f"img {i}"] for i in range(230)]
    rows += [["http://f.test/0.jpg", "img  0"], ["not a url", "x"], ["", "y"], ["http://:80/", "z"]]
    src = _csv(tmp_path / "in.csv", ["url", "caption"], rows)
    from dataclasses import replace

    cfg = replace(PRESETS["tiny"], input=str(src), out=str(tmp_path / "out"))
    folder = run(cfg)
    assert folder == tmp_path / "out" / "pairs"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["shard_size"] == 100
    assert [p.name for p in sorted(folder.glob("*.parquet"))] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    sizes = [schema.read(p, "pairs").num_rows for p in sorted(folder.glob("*.parquet"))]
    assert sizes == [100, 100, 30]
    stats = stats_files.read(folder)
    assert {k: stats[k] for k in ("source", "rows_read", "pairs", "invalid_url", "skipped_records", "duplicates")} \
        == {"source": "urllist", "rows_read": 234, "pairs": 230, "invalid_url": 3, "skipped_records": 0,
            "duplicates": 1}
    assert stats["invalid_url_lines"] == [233, 234, 235]
    table = schema.read_folder(folder, "pairs").to_pylist()
    assert table[0]["uid"] == schema.make_uid("http://f.test/0.jpg", "img 0")
    assert table[0]["domain"] == "f.test" and table[0]["page_url"] is None and table[0]["signals"] == []


@pytest.mark.parametrize("fmt", ["warc", "wat"])
def test_pairs_run_warc_and_wat(tmp_path, warc_path, fmt):
    src = warc_path if fmt == "warc" else write_wat(tmp_path / "c.warc.wat.gz", _html_pages())
    folder = run(PairsConfig(input=str(src), out=str(tmp_path / fmt)))
    table = schema.read_folder(folder, "pairs").to_pylist()
    assert [(r["page_url"], r["url"], r["caption"], r["signals"]) for r in table] == [
        (p, u, t, s) for p, u, t, s in EXPECTED]
    assert {r["source"] for r in table} == {fmt}
    stats = stats_files.read(folder)
    assert stats["source"] == fmt and stats["pairs"] == len(EXPECTED) and stats["pages"] == 6


def test_pairs_config_errors(tmp_path):
    with pytest.raises(ValueError, match="input is empty"):
        run(PairsConfig(out=str(tmp_path / "o")))
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        run(PairsConfig(input=str(tmp_path / "nothing.csv"), out=str(tmp_path / "o")))
    src = _csv(tmp_path / "in.csv", ["url", "caption"], [])
    with pytest.raises(ValueError, match="shard_size"):
        run(PairsConfig(input=str(src), out=str(tmp_path / "o"), shard_size=0))
    assert not (tmp_path / "o").exists()  # nothing written before the config is checked


def test_write_pairs_empty_dedup_and_stale_shards(tmp_path):
    out = tmp_path / "shards"
    rows = [{"url": f"http://g.test/{i}", "caption": "t", "source": "crawl", "signals": ["b", "a", "a"]} for i in range(5)]
    assert write_pairs(rows + rows[:2], out, 2) == {"pairs": 5, "duplicates": 2,
                                                    "shards": ["00000.parquet", "00001.parquet", "00002.parquet"]}
    assert schema.read(out / "00000.parquet", "pairs").to_pylist()[0]["signals"] == ["a", "b"]
    assert write_pairs([], out, 2) == {"pairs": 0, "duplicates": 0, "shards": ["00000.parquet"]}
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet"]
    assert schema.read(out / "00000.parquet", "pairs").num_rows == 0
    with pytest.raises(ValueError, match="shard_size"):
        write_pairs(rows, out, 0)


def test_domain_of():
    assert domain_of("https://User:pw@IMG.Example.com:8080/a.jpg") == "img.example.com:8080"
    assert domain_of("http://[::1]:9/x") == "[::1]:9"
    assert domain_of("/relative") is None
