"""Fuzz of the HTML → image refs parser (`curation.acquire.alttext`): generated pages and mutated real pages.

Properties: no exception for any bytes and Content-Type; every image and link is a well-formed http(s) URL that
parquet can store; the caps hold; and on a generated (unmutated) page, every `<img>` markup of the demo web is
found with its URL, its alt text and its markup kind.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from _fuzz import fuzz, mutated_bytes, mutated_text, utf8_clean
from hypothesis import given, strategies as st

from curation.acquire.alttext import decode_html, http_url, largest_srcset, parse_page
from curation.world import webcontent

ORIGINS = ("http://example.com", "https://[2001:db8::1]:8443", "http://127.0.0.1:8080", "http://xn--bcher-kva.example",
           "https://EXAMPLE.org")
MARKUP_KIND = {"img": "img", "img-abs": "img", "srcset": "srcset", "data-src": "data-src", "picture": "picture"}

# the nastiest pieces of real pages: unclosed and nested tags, garbage srcsets, base tricks, scripts, odd URLs
NASTY = (
    "<img", "<img src=", '<img src="', "<img alt>", "<img src=a.png alt", "</picture>", "<picture><picture><source>",
    "<picture><source srcset=''><source srcset=',,, ,'><img src=x.png></picture>",
    '<img srcset="a.png 2x, b.png ²x, c.png 1e9w, d.png -3w, e.png NaNx, f.png 1.5.5x">',
    '<img srcset=",,,,, , ,">', '<img srcset="data:image/gif;base64,R0lG,AAA 2x, ,x.png 3x">',
    '<img srcset="a.png  640w  2x   ,  b.png">', '<img srcset="' + "x," * 2000 + '">',
    '<base href="javascript:alert(1)">', '<base href="//evil.example/">', '<base href="http://[::1">',
    '<base href="http://h:99999/">', '<base href="https://cdn.example.net/a/b/">', "<base href>",
    '<img src="javascript:alert(1)">', '<img src="data:image/png;base64,AAAA">', '<img src="mailto:a@b">',
    '<img src=" \t\n http://h.example/a.png \n">', '<img src="http://[::1]:8080/x.png">', '<img src="http://[::1/x">',
    '<img src="http://h:0/x.png">', '<img src="http://h:65536/x.png">', '<img src="http://h:-1/x.png">',
    '<img src="http://user:pw@h.example/x.png">', '<img src="//proto-relative.example/x.png">',
    '<img src="http:///x.png">', '<img src="HtTpS://CAPS.example/X.PNG#frag">', '<img src="file:///etc/passwd">',
    '<img src="%zz%00%ff">', '<img src="\x00\x00">', '<img data-src="/lazy.png" data-lazy-src="x" data-original>',
    '<img alt="' + "A" * 70_000 + '" src="big.png">', '<img src="' + "/a" * 30_000 + '">',
    "<meta name=robots content='NOAI, NoImageAI,,, ,'>", '<meta name="tdm-reservation" content="1">',
    '<meta name="MITHRIDATE" content="noindex">', '<meta name=robots>', '<meta charset="undefined">',
    '<meta charset="idna">', '<meta charset="utf-16">', '<meta charset="x-bogus-\x00">', "<script><img src=s.png>",
    "</script>", "<template><img src=t.png></template>", "<svg><image href=s.png /><img src=svg.png></svg>",
    "<table><tr><img src=t.png>", "<!-- <img src=c.png> -->", "<![CDATA[<img src=d.png>]]>", "<noscript>",
    "<textarea><img src=ta.png>", "\x00", "\ufeff", "\r\n", "\r", "&#0;&#xD800;&#x110000;&amp", "<a href=next.html>",
    '<a href="http://[::1]/">', '<a href="#top">', '<a href="?q=1">', "<a href=>", "\ud7ff\ue000\U0010ffff",
)
pieces = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))


def _real_pages() -> list[str]:
    """Pages as the demo web writes them: every markup, every alt kind, a base href, non-UTF-8 charsets."""
    tags = [webcontent.img_tag(m, f"/img/{m}.png", "http://example.com", alt)
            for m in webcontent.MARKUPS for alt in ("a cat", "", None, "x & \"y\" <z>", "Été – 猫")]
    return [
        webcontent.page("gallery", tags + ['<a href="/next">next</a>']),
        webcontent.page("base", [webcontent.img_tag("base-href", "/art/x/cat.png", "", "cat")],
                        head=['<base href="/art/x/">', '<meta name="robots" content="noai">']),
        webcontent.page("latin", ['<img src="k\u00e4se.jpg" alt="K\u00e4se">'], charset="iso-8859-1"),
        "<HTML><BODY><p>text<div><IMG SRC=one.jpg ALT=first><p><img src='two.jpg' alt=\"second\"></span></div>"
        '</td><table><tr><img src=three.jpg alt="x &amp; y"><img src="four.jpg" alt="trunc',
    ]


REAL = _real_pages()
CHARSETS = ("utf-8", "iso-8859-1", "windows-1252", "shift_jis", "utf-16", "utf-16-le", "utf-7", "gb18030", "koi8-r",
            "idna", "undefined", "punycode", "unicode_escape", "rot13", "hex", "bogus", "", "utf-8\x00", "x" * 300)
content_types = st.one_of(st.none(), st.sampled_from(CHARSETS).map(lambda c: f"text/html; charset={c}"),
                          st.sampled_from(("text/html", "text/html; charset=", 'text/html; charset="utf-8"; x=y',
                                           "TEXT/HTML; CHARSET=UTF-8")), st.text(max_size=60))
page_urls = st.one_of(st.sampled_from(ORIGINS).map(lambda o: o + "/gallery/page.html"),
                      st.sampled_from(("http://[::1", "http://h:99999/", "javascript:x", "", "//h/", "http://h/\x00")),
                      st.text(max_size=40))
agents = st.lists(st.sampled_from(("mithridate", "gptbot", "MITHRIDATE", "", "robots")), max_size=3).map(tuple)


def _check_page(page, max_items: int) -> None:
    assert len(page.images) <= max_items and len(page.links) <= max_items
    assert len(set(page.links)) == len(page.links)
    for ref in page.images:
        assert ref.markup in ("img", "srcset", "data-src", "picture")
        assert ref.alt is None or isinstance(ref.alt, str)
        _check_url(ref.url)
        assert utf8_clean(ref.url, ref.alt or "")
    for link in page.links:
        _check_url(link)
    assert all(isinstance(d, str) and d == d.strip() and d for d in page.robots)
    assert isinstance(page.tdm_reservation, bool)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.hostname, url
    parts.port  # noqa: B018 - a stored URL has a valid port
    assert "#" not in url


@fuzz(examples=80, deadline_ms=500)
@given(mutated_bytes([p.encode("utf-8") for p in REAL] + [REAL[2].encode("latin-1", "replace")]), content_types,
       page_urls, agents, st.integers(0, 50))
def test_mutated_pages_parse(body, content_type, page_url, agents, max_items):
    text = decode_html(body, content_type)
    assert isinstance(text, str)
    _check_page(parse_page(text, page_url, agents, max_items), max_items)


@fuzz(examples=80, deadline_ms=500)
@given(mutated_text(REAL, pieces, max_ops=10), page_urls, agents)
def test_nasty_fragments_parse(text, page_url, agents):
    page = parse_page(text, page_url, agents, max_items=10_000)
    _check_page(page, 10_000)
    if http_url(page_url, page_url):
        assert page.base_url == page_url or http_url(page.base_url, page.base_url) == page.base_url


alts = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30))
names = st.text("abcxyz019-_.~%", min_size=1, max_size=12)


@fuzz(examples=80, deadline_ms=500)
@given(st.sampled_from(ORIGINS), st.lists(st.tuples(st.sampled_from(webcontent.MARKUPS), names, alts), max_size=8),
       st.sampled_from(("utf-8", "windows-1252", "utf-16")))
def test_generated_pages_find_every_image(origin, items, charset):
    """Every `<img>` the demo web writes comes back with its URL, alt text and markup kind, in page order."""
    tags = [webcontent.img_tag(m, f"/img/{n}.png", origin, alt) for m, n, alt in items]
    text = webcontent.page("t", tags, charset=charset)
    body = text.encode(charset, errors="replace")
    page = parse_page(decode_html(body, f"text/html; charset={charset}"), origin + "/g/p.html")
    got = [(r.url, r.alt, r.markup) for r in page.images]
    want = []
    for m, n, alt in items:
        if alt is not None:
            alt = alt.encode(charset, errors="replace").decode(charset)
            alt = alt.replace("\r\n", "\n").replace("\r", "\n")  # HTML newline normalisation
        want.append((http_url(f"/img/{n}.png", origin + "/"), alt, MARKUP_KIND[m]))
    assert got == want


@fuzz(examples=120, deadline_ms=500)
@given(st.one_of(st.text(max_size=200), mutated_text(['a.png 1x, b.png 2x', 'x.png 640w, y.png 1280w'],
                                                     st.sampled_from((",", " ", "²", "1e9", "w", "x", "data:,a,b",
                                                                      "\u0661", ".", "-", "NaN")))))
def test_srcset_any_text(srcset):
    best = largest_srcset(srcset)
    assert best is None or (best and best.rstrip(",") in srcset)


hosts = st.sampled_from(("h.example", "[::1]", "[2001:db8::1]", "127.0.0.1", "xn--bcher-kva.example", "[::1", "::1]",
                         "h:99999", "h:-1", "h:0", "h:", "user@h", "", "H.EXAMPLE.", "\u00e9.example"))
schemes = st.sampled_from(("http://", "https://", "//", "ftp://", "javascript:", "data:", " HTTP://", ""))
raw_urls = st.one_of(st.text(max_size=60),
                     st.builds(lambda s, h, p: f"{s}{h}{p}", schemes, hosts, st.text(max_size=20)))


@fuzz(examples=120, deadline_ms=500)
@given(st.one_of(st.none(), raw_urls), raw_urls)
def test_http_url_any_text(raw, base):
    url = http_url(raw, base)
    if url is not None:
        _check_url(url)
