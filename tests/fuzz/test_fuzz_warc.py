"""Fuzz of the WARC and WAT readers (`curation.acquire.warc`): valid small files built with warcio, then mutated.

Mutations: truncation, flipped and inserted bytes, corrupt gzip members, duplicated ranges, wrong Content-Length,
non-JSON or oddly shaped WAT metadata. Contract (the module docstring): a reader never raises on bad content, a
malformed record is skipped and counted in `stats["skipped_records"]`, and every pair it yields can be stored
(http(s) URL, UTF-8 text: a lone surrogate from a WAT's `"\\ud800"` escape would fail the parquet writer later).
"""

from __future__ import annotations

import gzip
import io
import json
import re
from urllib.parse import urlsplit

import pytest
from _fuzz import fuzz, mutated_bytes, utf8_clean
from hypothesis import given, strategies as st
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.acquire.warc import read_warc, read_wat, wat_envelope, write_wat

HTML = "text/html; charset=utf-8"
PAGES = [
    ("http://example.com/gallery/", 200, [("Content-Type", HTML), ("X-Robots-Tag", "noai")],
     b'<head><meta name="robots" content="noimageai"></head><img src="cat.jpg" alt="a cat">'
     b'<img srcset="a.png 1x, b.png 2x" alt="b"><picture><source srcset="/p.webp"><img src="f.png"></picture>'),
    ("http://example.com/fr/", 200, [("Content-Type", "text/html; charset=windows-1252")],
     '<img src="caf\u00e9.jpg" alt="Caf\u00e9 cr\u00e8me">'.encode("cp1252")),
    ("http://[::1]:8080/x", 200, [("Content-Type", "text/html"), ("TDM-Reservation", "1")],
     b'<base href="http://static.example.com/a/"><img src="t.jpg" alt="tee"><img src="http://h:99999/x.png">'),
    ("http://example.com/404", 404, [("Content-Type", HTML)], b'<img src="404.jpg">'),
    ("http://example.com/logo.png", 200, [("Content-Type", "image/png")], b"\x89PNG\r\n\x1a\n"),
]


def _warc_bytes(pages, gz: bool) -> bytes:
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    for url, status, headers, body in pages:
        hdrs = StatusAndHeaders(f"{status} X", headers + [("Content-Length", str(len(body)))], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), length=len(body),
                                            http_headers=hdrs))
    return buf.getvalue()


def _wat_bytes(payloads: list[bytes], gz: bool) -> bytes:
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gz)
    w.write_record(w.create_warcinfo_record("x.wat", {"software": "fuzz"}))
    for p in payloads:
        w.write_record(w.create_warc_record("http://example.com/", "metadata", payload=io.BytesIO(p), length=len(p),
                                            warc_content_type="application/json"))
    return buf.getvalue()


def _envelope(url, html, headers) -> bytes:
    return json.dumps(wat_envelope(url, html, headers)).encode()


ENVELOPES = [_envelope(u, b.decode("utf-8", "replace"), h) for u, s, h, b in PAGES if s == 200 and "html" in h[0][1]]
WARC_SEEDS = [_warc_bytes(PAGES, gz) for gz in (False, True)]
WAT_SEEDS = [_wat_bytes(ENVELOPES, gz) for gz in (False, True)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("warc-fuzz")


def _read(reader, path, data: bytes) -> tuple[list[dict], dict]:
    path.write_bytes(data)
    stats: dict = {}
    rows = list(reader(path, stats))
    assert isinstance(stats["skipped_records"], int) and stats["skipped_records"] >= 0
    for r in rows:
        assert set(r) == {"url", "caption", "page_url", "domain", "source", "signals"}
        parts = urlsplit(r["url"])
        assert parts.scheme in ("http", "https") and parts.hostname
        assert isinstance(r["caption"], str) and isinstance(r["signals"], list)
        assert utf8_clean(r["url"], r["caption"], r["page_url"], r["domain"], *r["signals"]), r
    return rows, stats


def _wrong_lengths(data: bytes, draw) -> bytes:
    """Every Content-Length of an uncompressed WARC replaced by a drawn number (short, long, huge, negative)."""
    def repl(m):
        return b"Content-Length: " + str(draw(st.sampled_from((0, 1, -5, 10**12, 17, 999)))).encode()
    return re.sub(rb"Content-Length: \d+", repl, data)


@st.composite
def warc_files(draw, seeds: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(("mutate", "mutate", "lengths", "gzip-members")))
    if kind == "lengths":
        return _wrong_lengths(seeds[0], draw)
    if kind == "gzip-members":  # records as separate gzip members, one of them corrupted or cut
        records = [r for r in re.split(rb"(?=WARC/1\.[01]\r\n)", seeds[0]) if r]
        members = [gzip.compress(r) for r in records]
        i = draw(st.integers(0, len(members) - 1))
        members[i] = draw(mutated_bytes([members[i]], max_ops=3))
        return b"".join(members)
    return draw(mutated_bytes(seeds, max_ops=4))


@fuzz(examples=50, deadline_ms=2000)
@given(warc_files(WARC_SEEDS))
def test_read_warc_mutated(workdir, data):
    _read(read_warc, workdir / "x.warc.gz", data)


def test_read_warc_seed_is_read(workdir):
    rows, stats = _read(read_warc, workdir / "seed.warc", WARC_SEEDS[0])
    assert stats == {"skipped_records": 0, "pages": 3}
    assert [r["url"] for r in rows][:3] == ["http://example.com/gallery/cat.jpg", "http://example.com/gallery/b.png",
                                           "http://example.com/p.webp"]


# --- WAT ------------------------------------------------------------------------------------------------------------

json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=15)
# pieces spliced into an envelope's JSON text: lone-surrogate escapes, deep nesting, wrong types
JSON_PIECES = (b"\\ud800", b"\\udfff", b'"\\ud83d"', b"[" * 5000, b"null", b"1e999", b"{}", b"[]", b'"', b",", b"\x00",
               b"\xff", b"NaN", b"-0", b'"IMG@/src"', b'"Links": 7', b'{"path": "IMG@/src", "url": 5}')


@st.composite
def wat_payloads(draw) -> bytes:
    kind = draw(st.sampled_from(("splice", "json", "envelope", "bytes")))
    if kind == "json":  # any JSON value, or an envelope whose levels hold any JSON value
        return json.dumps(draw(json_values)).encode()
    if kind == "envelope":
        env = json.loads(draw(st.sampled_from(ENVELOPES)))
        meta = env["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]
        target = draw(st.sampled_from((meta, meta["HTML-Metadata"], meta["HTML-Metadata"]["Head"], env["Envelope"])))
        target[draw(st.sampled_from(list(target) + ["Links", "Metas", "Base", "Headers"]))] = draw(json_values)
        return json.dumps(env).encode()
    if kind == "splice":
        data = draw(st.sampled_from(ENVELOPES))
        pos = draw(st.integers(0, len(data)))
        return data[:pos] + draw(st.sampled_from(JSON_PIECES)) + data[pos:]
    return draw(mutated_bytes(ENVELOPES, max_ops=4))


@fuzz(examples=50, deadline_ms=2000)
@given(st.lists(wat_payloads(), min_size=1, max_size=4), st.booleans())
def test_read_wat_bad_metadata(workdir, payloads, gz):
    """Valid containers holding bad JSON: each bad record is skipped and counted, the others still read."""
    rows, stats = _read(read_wat, workdir / "x.wat", _wat_bytes(payloads, gz))
    assert stats["skipped_records"] <= len(payloads)


@fuzz(examples=50, deadline_ms=2000)
@given(warc_files(WAT_SEEDS))
def test_read_wat_mutated(workdir, data):
    _read(read_wat, workdir / "x.wat.gz", data)


def test_write_wat_round_trip_seed(workdir):
    path = write_wat(workdir / "rt.wat.gz", [(u, b.decode("utf-8", "replace"), h) for u, s, h, b in PAGES[:1]])
    rows, stats = _read(read_wat, path, path.read_bytes())
    assert stats == {"skipped_records": 0, "pages": 1}
    assert [r["url"] for r in rows] == ["http://example.com/gallery/cat.jpg", "http://example.com/gallery/f.png"]
