"""curation.acquire.alttext: image references, links and meta directives out of real-world HTML quirks."""

import pytest

from curation.acquire.alttext import ImageRef, decode_html, http_url, largest_srcset, parse_page

PAGE = "http://site.test/gallery/page.html"


def images(html, url=PAGE, **kw):
    return parse_page(html, url, **kw).images


# --- URLs and <base href> -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("cat.png", "http://site.test/gallery/cat.png"),
        ("/img/cat.png", "http://site.test/img/cat.png"),
        ("../cat.png", "http://site.test/cat.png"),
        ("//cdn.test/cat.png", "http://cdn.test/cat.png"),
        ("https://other.test/a/cat.png", "https://other.test/a/cat.png"),
        ("  cat.png  ", "http://site.test/gallery/cat.png"),
        ("cat.png#frag", "http://site.test/gallery/cat.png"),
        ("cat.png?size=2", "http://site.test/gallery/cat.png?size=2"),
    ],
)
def test_img_src_is_resolved_against_the_page(src, expected):
    assert images(f'<img src="{src}" alt="a cat">') == [ImageRef(expected, "a cat", "img")]


@pytest.mark.parametrize(
    ("base", "expected_base"),
    [
        ("https://cdn.test/static/", "https://cdn.test/static/"),
        ("/assets/v2/", "http://site.test/assets/v2/"),
        ("../other/", "http://site.test/other/"),
        ("javascript:void(0)", PAGE),  # unusable base: the page URL
        ("http://site.test:99999/", PAGE),
    ],
)
def test_base_href_changes_where_relative_urls_point(base, expected_base):
    page = parse_page(f'<html><head><base href="{base}"></head><body><img src="cat.png" alt="x">'
                      f'<a href="next.html">n</a></body></html>', PAGE)
    folder = expected_base.rsplit("/", 1)[0]
    assert page.base_url == expected_base
    assert page.images == [ImageRef(f"{folder}/cat.png", "x", "img")]
    assert page.links == [f"{folder}/next.html"]


def test_base_href_does_not_change_absolute_urls():
    page = parse_page('<base href="https://cdn.test/x/"><img src="http://abs.test/a.png" alt="">', PAGE)
    assert page.images == [ImageRef("http://abs.test/a.png", "", "img")]


# --- srcset, lazy loading, <picture> --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("srcset", "expected"),
    [
        ("small.jpg 320w, large.jpg 1024w, mid.jpg 640w", "large.jpg"),
        ("a.png 1x, b.png 2x", "b.png"),
        ("a.png 2x, b.png 1.5x", "a.png"),
        ("a.png, b.png 3x", "b.png"),  # no descriptor means 1x
        ("only.png", "only.png"),
        ("first.png 2x, second.png 2x", "second.png"),  # ties: the last one
        ("a.png 100w,b.png 200w", "b.png"),
        ("a.png,, b.png 2x", "b.png"),
        ("data:image/gif;base64,R0lGODlh", "data:image/gif;base64,R0lGODlh"),  # commas inside a URL
        ("data:image/gif;base64,R0lG 1x, real.png 2x", "real.png"),
        ("   ,  ,", None),
        ("", None),
    ],
)
def test_largest_srcset(srcset, expected):
    assert largest_srcset(srcset) == expected


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ('srcset="s.png 320w, /big/l.png 1600w, m.png 800w"', ImageRef("http://site.test/big/l.png", "a", "srcset")),
        ('srcset="s.png 1x, s2.png 2x"', ImageRef("http://site.test/gallery/s2.png", "a", "srcset")),
    ],
)
def test_img_srcset_picks_the_largest_candidate(attrs, expected):
    assert images(f'<img src="fallback.png" {attrs} alt="a">') == [expected]


@pytest.mark.parametrize("lazy_attr", ["data-src", "data-lazy-src", "data-original"])
def test_lazy_image_with_data_uri_placeholder(lazy_attr):
    html = f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" {lazy_attr}="/real/cat.jpg" alt="cat">'
    assert images(html) == [ImageRef("http://site.test/real/cat.jpg", "cat", "data-src")]


def test_lazy_image_with_data_uri_placeholder_srcset():
    html = '<img srcset="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/real/cat.jpg" alt="cat">'
    assert images(html) == [ImageRef("http://site.test/real/cat.jpg", "cat", "data-src")]


def test_placeholder_only_image_is_skipped():
    assert images('<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="x">') == []


def test_picture_source_srcset_wins_over_img_src():
    html = ('<picture><source media="(min-width: 800px)" srcset="wide-1x.webp 1x, wide-2x.webp 2x">'
            '<source srcset="narrow.webp"><img src="fallback.jpg" alt="a dog"></picture>')
    assert images(html) == [ImageRef("http://site.test/gallery/wide-2x.webp", "a dog", "picture")]


def test_picture_with_unusable_sources_falls_back_to_img():
    html = '<picture><source srcset="data:image/webp;base64,AAAA"><img src="fallback.jpg" alt="d"></picture>'
    assert images(html) == [ImageRef("http://site.test/gallery/fallback.jpg", "d", "img")]


# --- alt text -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "alt"),
    [
        ('<img src="a.png">', None),  # missing
        ('<img src="a.png" alt="">', ""),  # empty (decorative)
        ('<img src="a.png" alt>', ""),  # bare attribute = empty, not missing
        ('<img src="a.png" ALT="Upper">', "Upper"),
        ('<img src="a.png" alt="  spaced  out ">', "  spaced  out "),  # as written (normalised later)
        ('<img src="a.png" alt="caf&eacute; &amp; cr&egrave;me">', "café & crème"),
    ],
)
def test_alt_missing_vs_empty_vs_text(tag, alt):
    [ref] = images(tag)
    assert ref.alt == alt


def test_duplicates_are_kept_in_document_order():
    got = images('<img src="/a.png" alt="1"><img src="/b.png" alt="2"><img src="/a.png" alt="3">')
    assert [(r.url, r.alt) for r in got] == [("http://site.test/a.png", "1"), ("http://site.test/b.png", "2"),
                                             ("http://site.test/a.png", "3")]


# --- URLs that must be skipped ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "mailto:artist@site.test",
        "#top",
        "",
        "   ",
        None,
        "ftp://site.test/a.png",
        "file:///etc/passwd",
        "http://site.test:99999/a.png",  # port out of range
        "http://site.test:abc/a.png",  # port not a number
        "http://[::1/a.png",  # unclosed IPv6 bracket
        "http://[not-an-ip]/a.png",
    ],
)
def test_http_url_rejects_non_http_and_malformed(raw):
    assert http_url(raw, PAGE) is None


def test_page_with_bad_urls_keeps_only_the_good_ones():
    html = ('<img src="http://site.test:99999/a.png" alt="bad port"><img src="http://[::1/b.png" alt="v6">'
            '<img src="javascript:x()" alt="js"><img src="mailto:a@b" alt="m"><img src="ok.png" alt="ok">'
            '<a href="http://x.test:0x50/">p</a><a href="mailto:a@b">m</a><a href="javascript:x()">j</a>'
            '<a href="#frag">f</a><a href="/next">next</a><a href="/next#other">again</a>')
    page = parse_page(html, PAGE)
    assert page.images == [ImageRef("http://site.test/gallery/ok.png", "ok", "img")]
    assert page.links == ["http://site.test/next"]  # fragments dropped, duplicates removed


# --- malformed pages and decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        '<html><body><div><p><img src="/a.png" alt="unclosed"><table><tr><td>',
        '<img src="/a.png" alt="unclosed"<a href="/x">x</div></span></html></html>',
        "\x00\x01garbage\ufffd<<<>>><img src='/a.png' alt='unclosed'>&#xZZZ;&bogus;",
        '<!-- never closed comment <img src="/b.png" alt="hidden">',
        "",
        "just text, no tags at all",
    ],
)
def test_malformed_html_parses_without_raising(html):
    page = parse_page(html, PAGE)
    assert isinstance(page.images, list) and isinstance(page.links, list)


def test_malformed_html_still_yields_the_image():
    page = parse_page("<html><body><div><p><img src='/a.png' alt='ok'><table><tr><td><b><i>", PAGE)
    assert page.images == [ImageRef("http://site.test/a.png", "ok", "img")]
    assert parse_page("\x00\x01garbage<<<>>><img src='/a.png' alt='ok'>", PAGE).images == page.images


def test_garbage_bytes_decode_and_parse():
    body = bytes(range(256)) * 8 + b'<img src="/z.png" alt="z">'
    text = decode_html(body)
    assert "\ufffd" in text
    assert parse_page(text, PAGE).images == [ImageRef("http://site.test/z.png", "z", "img")]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("<p>café</p>".encode("latin-1"), "text/html; charset=ISO-8859-1", "<p>café</p>"),
        ("<p>café</p>".encode("latin-1"), 'text/html; charset="latin-1"; foo=bar', "<p>café</p>"),
        ("<p>€</p>".encode("cp1252"), "text/html;charset=windows-1252", "<p>€</p>"),
        ("<p>日本</p>".encode("shift_jis"), "text/html; charset=Shift_JIS", "<p>日本</p>"),
        # header wins over the <meta>
        ('<meta charset="utf-8"><p>café</p>'.encode("latin-1"), "text/html; charset=latin-1",
         '<meta charset="utf-8"><p>café</p>'),
        # <meta charset> when the header has none
        ('<meta charset="windows-1252"><p>café €</p>'.encode("cp1252"), "text/html",
         '<meta charset="windows-1252"><p>café €</p>'),
        ('<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"><p>é</p>'.encode("latin-1"),
         None, '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"><p>é</p>'),
        # neither: UTF-8
        ("<p>café</p>".encode("utf-8"), None, "<p>café</p>"),
        # unknown charset names fall back to UTF-8
        ("<p>café</p>".encode("utf-8"), "text/html; charset=klingon-9", "<p>café</p>"),
        ('<meta charset="no-such-charset"><p>café</p>'.encode("utf-8"), None,
         '<meta charset="no-such-charset"><p>café</p>'),
        ("<p>café</p>".encode("utf-8"), "text/html; charset=", "<p>café</p>"),
        # invalid bytes are replaced
        (b"<p>caf\xe9 \xff\xfe</p>", None, "<p>caf\ufffd \ufffd\ufffd</p>"),
        (b"<p>\x81</p>", "text/html; charset=utf-8", "<p>\ufffd</p>"),
    ],
)
def test_decode_html(body, content_type, expected):
    assert decode_html(body, content_type) == expected


# --- meta directives ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "agents", "robots", "tdm"),
    [
        ('<meta name="robots" content="noai, noimageai">', (), {"noai", "noimageai"}, False),
        ('<meta name="ROBOTS" content=" NoIndex , NOFOLLOW ">', (), {"noindex", "nofollow"}, False),
        ('<meta name="mithridate" content="noai">', ("mithridate",), {"noai"}, False),
        ('<meta name="Mithridate" content="noimageai">', ("mithridate",), {"noimageai"}, False),
        ('<meta name="otherbot" content="noai">', ("mithridate",), set(), False),
        ('<meta name="mithridate" content="noai">', (), set(), False),  # no agents given: only robots counts
        ('<meta name="robots" content="noindex"><meta name="otherbot" content="noai">'
         '<meta name="mithridate" content="noimageindex">', ("mithridate",), {"noindex", "noimageindex"}, False),
        ('<meta name="tdm-reservation" content="1">', (), set(), True),
        ('<meta name="tdm-reservation" content="0">', (), set(), False),
        ('<meta name="description" content="noai">', (), set(), False),
        ('<meta content="noai">', (), set(), False),
        ('<meta name="robots" content="">', (), set(), False),
        ("", (), set(), False),
    ],
)
def test_meta_directives(head, agents, robots, tdm):
    page = parse_page(f"<html><head>{head}</head><body><img src=a.png></body></html>", PAGE, agents=agents)
    assert page.robots == robots
    assert page.tdm_reservation is tdm


# --- caps ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "cap", "kept"), [(10, 3, 3), (3, 3, 3), (2, 5, 2), (5, 0, 0)])
def test_max_items_caps_images_and_links(n, cap, kept):
    html = "".join(f'<img src="/i{i}.png" alt="{i}"><a href="/p{i}.html">{i}</a>' for i in range(n))
    page = parse_page(html, PAGE, max_items=cap)
    assert [r.url for r in page.images] == [f"http://site.test/i{i}.png" for i in range(kept)]
    assert page.links == [f"http://site.test/p{i}.html" for i in range(kept)]
