"""The fuzz corpus: the nastiest inputs the fuzzers met (each of the `# was:` ones crashed, hung or leaked before
its fix), as plain regular tests with an assertion about the result."""

from __future__ import annotations

import io
import time

import pytest
from _fuzz import utf8_clean
from test_fuzz_images import SEEDS, cap, gif_with_size, jpeg_with_size, png_header
from test_fuzz_warc import ENVELOPES, WARC_SEEDS, _read, _wat_bytes

from curation.acquire import funnel
from curation.acquire.alttext import decode_html, http_url, largest_srcset, parse_page
from curation.acquire.downloader import _header_size
from curation.acquire.pairs import write_pairs
from curation.acquire.robots import Fetched, HostFile, parse
from curation.acquire.signals import parse_tdmrep, tdmrep_reserved
from curation.acquire.warc import read_warc, read_wat
from curation.select.dedup import phash
from curation.world import webcontent
from mithridate.core import schema

PAGE = "http://example.com/gallery/page.html"

# --- HTML and alt text ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, content_type", [
    (b'<meta charset="undefined"><img src=a.png>', None),  # was: UnicodeError (the "undefined" codec always raises)
    (b"<img src=a.png>", "text/html; charset=idna"),  # was: UnicodeError (idna refuses errors="replace")
    (b"<img src=a.png>\xff", "text/html; charset=punycode"),  # was: UnicodeDecodeError
    (b"<img src=a.png>", "text/html; charset=utf-8\x00"),  # was: ValueError (embedded null character)
    (b"<img src=a.png>", "text/html; charset=rot13"),  # not a text encoding: LookupError, always handled
    (b"<img src=a.png>", "text/html; charset=" + "x" * 300),
])
def test_decode_html_odd_charsets_fall_back_to_utf8(body, content_type):
    text = decode_html(body, content_type)
    assert "<img src=a.png>" in text
    assert [r.url for r in parse_page(text, PAGE).images] == ["http://example.com/gallery/a.png"]


@pytest.mark.parametrize("srcset, best", [
    ("a.png 2x, b.png \u00b2x", "a.png"),  # was: ValueError (float("²"): "²".isdigit() is True)
    ("a.png 2x, b.png \u0661\u0662x", "a.png"),  # Arabic-Indic digits are no descriptor either
    ("a.png 640w, b.png 1e9w, c.png -3w, d.png NaNx", "a.png"),
    ("data:image/gif;base64,R0lG,AAA 2x, x.png 3x", "x.png"),
    (",,,,, , ,", None),
    ("x," * 2000, ",".join(["x"] * 2000)),  # a URL may hold commas: one candidate, trailing commas cut
])
def test_srcset_garbage(srcset, best):
    assert largest_srcset(srcset) == best


@pytest.mark.parametrize("html, urls", [
    ('<img srcset="a.png 2x, b.png \u00b2x">', ["http://example.com/gallery/a.png"]),  # was: ValueError
    ('<base href="javascript:alert(1)"><img src=a.png>', ["http://example.com/gallery/a.png"]),
    ('<base href="http://[::1"><img src=a.png>', ["http://example.com/gallery/a.png"]),
    ('<base href="//cdn.example.net/x/"><img src=a.png>', ["http://cdn.example.net/x/a.png"]),
    ('<img src="http://h:99999/x.png"><img src="http://h:-1/x.png"><img src="http://[::1/x.png">', []),
    ('<img src="http://[::1]:8080/x.png"><img src="HtTpS://CAPS.example/X.PNG#frag">',
     ["http://[::1]:8080/x.png", "https://CAPS.example/X.PNG"]),
    ('<img src="javascript:alert(1)"><img src="data:image/png;base64,AAAA"><img src="file:///etc/passwd">', []),
    ("<picture><picture><source srcset=''><source srcset='/b.png 2x'><img src=a.png></picture>",
     ["http://example.com/b.png"]),
    ("<script><img src=s.png></script><!-- <img src=c.png> --><template><img src=t.png></template>", []),
])
def test_parse_page_nasty_markup(html, urls):
    assert [r.url for r in parse_page(html, PAGE).images] == urls


def test_parse_page_nul_and_huge_attributes():
    page = parse_page('<img src="a\x00b.png" alt="\x00x"><img alt="' + "A" * 70_000 + '" src="big.png">', PAGE)
    assert [r.alt for r in page.images] == ["\ufffdx", "A" * 70_000]
    assert all(utf8_clean(r.url, r.alt) for r in page.images)


def test_parse_page_lone_surrogates_from_unicode_escape_charset():
    """`charset=unicode_escape` turns `\\ud800` in a page into a lone surrogate; lexbor replaces it."""
    page = parse_page(decode_html(b'<img src="\\ud800a.png" alt="\\udfff">', "text/html; charset=unicode_escape"),
                      PAGE)
    assert len(page.images) == 1 and utf8_clean(page.images[0].url, page.images[0].alt)


def test_http_url_whitespace_host_is_kept_as_written():
    """A host of spaces is not refused here (the download stage fails it as a per-row error)."""
    assert http_url("\x1b", "HTTP:// ") == "http:// "


# --- robots.txt, ai.txt, TDMRep -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, expected", [(0, False), (500, False), (503, False), (599, False),
                                              (400, True), (404, True), (429, True), (200, False)])
def test_robots_status_decides_before_text(status, expected):
    f = HostFile.from_fetched("h.example", "robots", Fetched(status, "User-agent: *\nDisallow: /\n"))
    assert f.allows("http://h.example/a.png", "mithridate") is expected
    assert f.allows("http://h.example/a.png", "GPTBot") is expected


@pytest.mark.parametrize("text", [
    "\ufeffUser-agent: *\r\nDisallow: /private\r\n",  # was: the BOM hid the group, so everything was allowed
    "\ufeff\ufeffUser-agent: *\nDisallow: /private\n",
    "User-agent: *\rDisallow: /private\r",
    "User-agent: *\nDisallow: /private\nDisallow: /" + "a*" * 5000 + "\n",
])
def test_robots_odd_files_still_disallow(text):
    rules = parse(text)
    assert not rules.can_fetch("http://h.example/private/x.png", "mithridate")
    assert rules.can_fetch("http://h.example/public/x.png", "mithridate")


@pytest.mark.parametrize("text", ["[" * 100_000, '[{"location": ' + "[" * 100_000 + "]" * 100_000 + "}]"])
def test_tdmrep_deep_nesting_gives_no_rules(text):
    assert parse_tdmrep(text) == []  # was: RecursionError


def test_tdmrep_bracket_location_is_literal_and_fast():
    t0 = time.perf_counter()
    assert tdmrep_reserved([{"location": "[" * 20_000, "tdm-reservation": 1}], "http://h/x") is False
    assert time.perf_counter() - t0 < 5  # was: fnmatch.translate, quadratic in "[": ~8 s for 20,000
    rules = [{"location": "/gallery[1]/*", "tdm-reservation": 1}]
    assert tdmrep_reserved(rules, "http://h/gallery[1]/a.png") is True
    assert tdmrep_reserved(rules, "http://h/gallery1/a.png") is False


# --- WARC and WAT ---------------------------------------------------------------------------------------------------


def test_wat_lone_surrogate_skips_its_record(tmp_path):
    """A WAT's JSON `"\\ud800"` escape gives a lone surrogate: its record is skipped and counted, the rest stored."""
    bad = ENVELOPES[0].replace(b"cat.jpg", b"\\ud800cat.jpg")  # was: the rows failed the parquet writer later
    rows, stats = _read(read_wat, tmp_path / "s.wat", _wat_bytes([bad, ENVELOPES[1]], False))
    assert stats["skipped_records"] == 1 and [r["url"] for r in rows] == ["http://example.com/fr/caf\ufffd.jpg"]
    write_pairs(rows, tmp_path / "pairs", 100)
    assert schema.read_folder(tmp_path / "pairs", "pairs").num_rows == 1


def test_wat_bad_payloads_are_counted(tmp_path):
    rows, stats = _read(read_wat, tmp_path / "b.wat", _wat_bytes([b"[" * 5000, b"not json", b"{}", b"\xff\xfe",
                                                                   ENVELOPES[1]], True))
    assert stats == {"skipped_records": 4, "pages": 1} and len(rows) == 1


@pytest.mark.parametrize("length, rows, skipped", [(0, 0, 1), (-5, 0, 1), (5, 0, 2), (10**12, None, 0)])
def test_warc_wrong_content_length(tmp_path, length, rows, skipped):
    import re

    data = re.sub(rb"Content-Length: \d+", b"Content-Length: " + str(length).encode(), WARC_SEEDS[0], count=1)
    got, stats = _read(read_warc, tmp_path / "l.warc", data)
    assert stats["skipped_records"] == skipped and (rows is None or len(got) == rows)


def test_warc_gzip_cut_in_a_member_keeps_earlier_records(tmp_path):
    data = WARC_SEEDS[1]
    rows, stats = _read(read_warc, tmp_path / "c.warc.gz", data[: len(data) // 2])
    assert stats["skipped_records"] == 1 and rows and rows[0]["url"] == "http://example.com/gallery/cat.jpg"


# --- images ---------------------------------------------------------------------------------------------------------


def _png_chunk_lie(length: int) -> bytes:
    """45 bytes: a valid 32×32 IHDR, then an IDAT announcing `length` bytes."""
    return png_header(32, 32)[:33] + length.to_bytes(4, "big") + b"IDATx\x9cc<!'\xc7"


@pytest.mark.parametrize("data, reason", [
    (_png_chunk_lie(0xFFFFFFFF), "decode_error"),  # was: OpenCV allocated and filled 4 GB (7 s) for 45 bytes
    (_png_chunk_lie(0xE1000040), "decode_error"),
    (webcontent.truncated(SEEDS[0]), "decode_error"),
    (jpeg_with_size(SEEDS[5], 20_000, 20_000), "too_many_pixels"),  # was: PIL refused to size it, cv2 decoded
    (gif_with_size(SEEDS[8], 65_535, 65_535), "too_many_pixels"),
    (png_header(2**31 - 1, 2**31 - 1), "too_many_pixels"),
    (webcontent.bomb_png(3000), "too_many_pixels"),
    (b"", "decode_error"), (b"\x89PNG\r\n\x1a\n", "decode_error"), (b"GIF89a", "decode_error"),
    (png_header(32, 32), "decode_error"),  # IHDR, IEND and no pixel data
])
def test_pixel_cap_nasty_images(data, reason):
    t0 = time.perf_counter()
    img, *_, err = cap(io.BytesIO(data))
    assert img is None and funnel.failure_reason(err) == reason, err
    assert time.perf_counter() - t0 < 1.5


def test_pixel_cap_keeps_a_png_with_trailing_bytes():
    img, width, height, *_, err = cap(io.BytesIO(SEEDS[0] + b"\x00\x00\xff\xffjunk after IEND"))
    assert err is None and (width, height) == (32, 32)


def test_header_size_of_a_bomb_is_its_pixel_count():
    assert _header_size(io.BytesIO(jpeg_with_size(SEEDS[5], 20_000, 20_000))) == (400_000_000, 1)
    assert _header_size(io.BytesIO(SEEDS[5])) == (32, 32)


@pytest.mark.parametrize("data, decodes", [(SEEDS[0], True), (SEEDS[5], True), (webcontent.truncated(SEEDS[5]), False),
                                           (_png_chunk_lie(0xFFFFFFFF), False), (b"", False),
                                           (jpeg_with_size(SEEDS[5], 20_000, 20_000), False)])
def test_phash_nasty_images(data, decodes):
    h = phash(data)
    assert (h is not None) is decodes and (h is None or len(h) == 16)

