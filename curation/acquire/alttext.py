"""HTML page → image references (url, alt text, markup kind), links and page-level meta signals.

Pure functions over bytes or text; they resolve the quirks of real pages: `<base href>`, relative and
absolute URLs, `srcset` (largest candidate), lazy `data-src`, `<picture><source>`, non-UTF-8 charsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", re.I)
_LAZY_ATTRS = ("data-src", "data-lazy-src", "data-original")


@dataclass(frozen=True)
class ImageRef:
    """One image found on a page."""

    url: str  # absolute http(s) URL
    alt: str | None  # alt attribute as written (None when the attribute is absent)
    markup: str  # img, srcset, data-src or picture


@dataclass
class Page:
    """What a page says: its images, its links and its page-level meta directives."""

    images: list[ImageRef] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    robots: set[str] = field(default_factory=set)  # lower-cased directives of <meta name=robots|<agent>>
    tdm_reservation: bool = False  # <meta name="tdm-reservation" content="1">
    base_url: str = ""


def decode_html(body: bytes, content_type: str | None = None) -> str:
    """Decode a page body: charset from the Content-Type header, else from a <meta charset>, else UTF-8.

    Undecodable bytes are replaced, never raised: a non-UTF-8 page is still parsed.
    """
    charset = None
    if content_type and "charset=" in content_type.lower():
        charset = content_type.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'")
    if charset is None:
        m = _CHARSET_RE.search(body[:4096])
        charset = m.group(1).decode("ascii", "replace") if m else "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except (LookupError, ValueError):  # unknown charset name, or a codec that is no charset (idna, undefined, NUL)
        return body.decode("utf-8", errors="replace")


def http_url(raw: str | None, base: str) -> str | None:
    """Resolve `raw` against `base`; None unless the result is a well-formed http(s) URL."""
    if not raw:
        return None
    raw = raw.strip()
    if not raw or raw.startswith(("data:", "javascript:", "mailto:", "#")):
        return None
    try:
        url = urldefrag(urljoin(base, raw))[0]
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


_SRCSET_URL_RE = re.compile(r"[\s,]*(\S*)")
_SRCSET_DESCRIPTORS_RE = re.compile(r"([^,]*),?")


def _srcset_candidates(srcset: str):
    """Split a srcset as browsers do: a URL may contain commas (`data:image/gif;base64,R0lG…` placeholders)."""
    pos = 0
    while True:
        m = _SRCSET_URL_RE.match(srcset, pos)
        url, pos = m.group(1), m.end()
        if not url:
            return
        if url.endswith(","):  # `a.png,b.png 2x`-style: trailing commas end a candidate without descriptors
            yield [url.rstrip(",")]
            continue
        m = _SRCSET_DESCRIPTORS_RE.match(srcset, pos)
        pos = m.end()
        yield [url, *m.group(1).split()]


def largest_srcset(srcset: str) -> str | None:
    """The candidate with the largest width (`640w`) or density (`2x`) descriptor; the last one on ties."""
    best, best_size = None, -1.0
    for parts in _srcset_candidates(srcset):
        size = 1.0
        number = parts[1][:-1].replace(".", "", 1) if len(parts) > 1 else ""
        if number.isascii() and number.isdigit() and parts[1][-1] in "wx":  # ASCII only: "²".isdigit(), float fails
            size = float(parts[1][:-1])
        if size >= best_size:
            best, best_size = parts[0], size
    return best


def _image_of(node, base: str) -> ImageRef | None:
    """Resolve one <img> node to an ImageRef, choosing among src, srcset, lazy attributes and <picture>."""
    attrs = node.attributes
    alt = attrs.get("alt")
    if alt is None and "alt" in attrs:  # a bare `<img alt>` is an empty alt, not a missing one
        alt = ""
    parent = node.parent
    if parent is not None and parent.tag == "picture":
        for source in parent.css("source"):
            url = http_url(largest_srcset(source.attributes.get("srcset") or ""), base)
            if url:
                return ImageRef(url, alt, "picture")
    if attrs.get("srcset"):
        url = http_url(largest_srcset(attrs["srcset"]), base)
        if url:
            return ImageRef(url, alt, "srcset")
    for name in _LAZY_ATTRS:
        url = http_url(attrs.get(name), base)
        if url:
            return ImageRef(url, alt, "data-src")
    url = http_url(attrs.get("src"), base)
    return ImageRef(url, alt, "img") if url else None


def _meta_directives(tree, agents: tuple[str, ...]) -> tuple[set[str], bool]:
    robots, tdm = set(), False
    for meta in tree.css("meta[name]"):
        name = (meta.attributes.get("name") or "").strip().lower()
        content = (meta.attributes.get("content") or "").strip().lower()
        if name == "robots" or name in agents:
            robots.update(d.strip() for d in content.split(",") if d.strip())
        elif name == "tdm-reservation":
            tdm = content == "1"
    return robots, tdm


def parse_page(html: str, page_url: str, agents: tuple[str, ...] = (), max_items: int = 10_000) -> Page:
    """Parse one HTML page.

    Args:
        html: decoded page text (see `decode_html`); malformed HTML is parsed leniently.
        page_url: the URL the page was fetched from (after redirects).
        agents: lower-cased user-agent tokens whose `<meta name=…>` directives count as robots directives.
        max_items: cap on images and on links kept per page.

    Returns:
        A `Page` with images in document order (duplicates kept: the same image may appear twice).
    """
    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = http_url(base_node.attributes.get("href"), page_url) or page_url
    page = Page(base_url=base)
    page.robots, page.tdm_reservation = _meta_directives(tree, agents)
    for node in tree.css("img"):
        ref = _image_of(node, base)
        if ref is not None and len(page.images) < max_items:
            page.images.append(ref)
    seen = set()
    for node in tree.css("a[href]"):
        url = http_url(node.attributes.get("href"), base)
        if url and url not in seen and len(page.links) < max_items:
            seen.add(url)
            page.links.append(url)
    return page
