"""WARC and WAT files: record what the crawler fetched, and read image–alt-text pairs back out of them.

- `WarcSink` writes gzipped WARC `response` records (thread-safe; the crawler shares one sink).
- `read_warc` parses the HTML of every 2xx HTML response (charset via `decode_html`, images via `parse_page`).
- `read_wat` walks the JSON of Common Crawl WAT metadata records
  (`Envelope → Payload-Metadata → HTTP-Response-Metadata → HTML-Metadata → Links`, entries `IMG@/src`).
- `write_wat` turns pages into WAT-shaped metadata records, so WARC → WAT → pairs can be round-tripped.

Both readers attach the page's opt-out signals to each pair: `meta:<directive>` (robots meta), `tdmrep:meta`,
`tdmrep:header` and `x-robots-tag:<directive>`. A malformed record is skipped with a warning and counted in
`stats["skipped_records"]`; a reader never raises on bad content (a missing file still raises).
"""

from __future__ import annotations

import http
import io
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.acquire.alttext import decode_html, http_url, parse_page
from curation.acquire.netguard import USER_AGENT_TOKEN
from curation.acquire.pairs import domain_of
from curation.acquire.signals import page_signals
from mithridate.core.schema import normalize_text

log = logging.getLogger(__name__)

# headers that describe the wire encoding of a body we store decoded: kept under a prefix, not as-is
_WIRE_HEADERS = ("content-encoding", "transfer-encoding", "content-length")
_ORIG_PREFIX = "X-Archive-Orig-"

Headers = Iterable[tuple[str, str]] | dict[str, Any]


class WarcSink:
    """A gzipped WARC file of `response` records; `write_response` may be called from many threads.

    Bodies are stored decoded, so `Content-Encoding`, `Transfer-Encoding` and `Content-Length` are
    renamed `X-Archive-Orig-…` and a `Content-Length` matching the stored body is written instead.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._writer = WARCWriter(self._file, gzip=True)
        self._lock = threading.Lock()
        self.records = 0

    def write_response(self, url: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Append one HTTP response.

        Args:
            url: the fetched URL (WARC-Target-URI).
            status: HTTP status code.
            headers: response headers as (name, value) pairs, repeated names allowed.
            body: the decoded response body.
        """
        http_headers = StatusAndHeaders(f"{status} {_reason(status)}", _archived_headers(headers, len(body)),
                                        protocol="HTTP/1.1")
        record = self._writer.create_warc_record(url, "response", payload=io.BytesIO(body), length=len(body),
                                                 http_headers=http_headers)
        with self._lock:
            if self._file.closed:
                raise ValueError(f"WarcSink {self.path} is closed")
            self._writer.write_record(record)
            self.records += 1

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> WarcSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _archived_headers(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    out = [(_ORIG_PREFIX + k if k.lower() in _WIRE_HEADERS else k, v) for k, v in headers]
    return out + [("Content-Length", str(length))]


def _pair(url: str, alt: Any, page_url: str, source: str, signals: list[str]) -> dict:
    row = {"url": url, "caption": normalize_text(alt), "page_url": page_url, "domain": domain_of(url),
           "source": source, "signals": list(signals)}
    for text in (url, row["caption"], page_url):  # a lone surrogate (WAT JSON "\ud800") cannot be stored in parquet:
        (text or "").encode("utf-8")  # UnicodeEncodeError here makes the caller skip and count the record
    return row


def _skip(stats: dict, path: Path, where: str, err: BaseException) -> None:
    stats["skipped_records"] = stats.get("skipped_records", 0) + 1
    log.warning("%s: skipping malformed record %s: %s: %s", path, where, type(err).__name__, err)


def _iter_records(path: str | Path, stats: dict) -> Iterator[Any]:
    """warcio records of a WARC/WAT file (gzipped or not); a broken container stops the file, counted once."""
    path = Path(path)
    with open(path, "rb") as f:
        it = iter(ArchiveIterator(f))
        while True:
            try:
                record = next(it)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - truncated gzip, bad WARC header: never crash
                _skip(stats, path, "(rest of file unreadable)", err)
                return
            yield record


def _target_uri(record: Any) -> str:
    uri = (record.rec_headers.get_header("WARC-Target-URI") or "").strip().strip("<>")
    if not uri:
        raise ValueError("record has no WARC-Target-URI")
    return uri


def _warc_record_pairs(record: Any, ua_token: str, stats: dict) -> list[dict]:
    headers = record.http_headers
    status = headers.get_statuscode() or ""
    if not (len(status) == 3 and status.isdigit()):
        raise ValueError(f"bad HTTP status line {headers.statusline!r}")
    ctype = headers.get_header("Content-Type") or ""
    if not status.startswith("2") or "html" not in ctype.lower():
        return []
    page_url = _target_uri(record)
    html = decode_html(record.content_stream().read(), ctype)
    page = parse_page(html, page_url, agents=(ua_token.lower(),))
    signals = page_signals(page.robots, page.tdm_reservation, headers.headers, ua_token)
    stats["pages"] = stats.get("pages", 0) + 1
    return [_pair(ref.url, ref.alt, page_url, "warc", signals) for ref in page.images]


def read_warc(path: str | Path, stats: dict | None = None, ua_token: str = USER_AGENT_TOKEN) -> Iterator[dict]:
    """Pairs from the HTML responses of a WARC file.

    Args:
        path: a `.warc` or `.warc.gz` file.
        stats: optional dict updated in place with `skipped_records` (malformed records) and `pages`.
        ua_token: our user-agent token, for agent-scoped robots meta and X-Robots-Tag.

    Yields:
        Pair dicts (url, caption, page_url, domain, source="warc", signals) in record order; only
        2xx responses whose Content-Type mentions html are parsed.
    """
    stats = stats if stats is not None else {}
    stats.setdefault("skipped_records", 0)
    for record in _iter_records(path, stats):
        if record.rec_type != "response" or record.http_headers is None:
            continue
        try:
            rows = _warc_record_pairs(record, ua_token, stats)
        except Exception as err:  # noqa: BLE001 - one bad record must not stop the file
            _skip(stats, Path(path), record.rec_headers.get_header("WARC-Record-ID") or "?", err)
            continue
        yield from rows


def _obj(d: Any, *keys: str) -> dict:
    """`d[k1][k2]…` when every level is a JSON object, else {} (WAT records omit levels freely)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def _header_list(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs from a dict (values may be lists for repeated headers) or a list of pairs."""
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    out = []
    for k, v in items:
        out.extend((str(k), str(x)) for x in (v if isinstance(v, list) else [v]))
    return out


def _meta_directives(metas: Any, agents: tuple[str, ...]) -> tuple[set[str], bool]:
    robots, tdm = set(), False
    for meta in metas if isinstance(metas, list) else []:
        if not isinstance(meta, dict):
            continue
        name = str(meta.get("name") or "").strip().lower()
        content = str(meta.get("content") or "").strip().lower()
        if name == "robots" or name in agents:
            robots.update(d.strip() for d in content.split(",") if d.strip())
        elif name == "tdm-reservation":
            tdm = content == "1"
    return robots, tdm


def _wat_record_pairs(data: Any, ua_token: str, stats: dict) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("Envelope"), dict):
        raise ValueError("JSON payload has no Envelope object")
    warc_meta = _obj(data, "Envelope", "WARC-Header-Metadata")
    http_meta = _obj(data, "Envelope", "Payload-Metadata", "HTTP-Response-Metadata")
    html_meta = _obj(http_meta, "HTML-Metadata")
    status = str(_obj(http_meta, "Response-Message").get("Status", "200"))
    if warc_meta.get("WARC-Type", "response") != "response" or not html_meta or not status.startswith("2"):
        return []
    page_url = str(warc_meta.get("WARC-Target-URI") or "").strip()
    if not page_url:
        raise ValueError("Envelope has no WARC-Target-URI")
    head = _obj(html_meta, "Head")
    base_href = head.get("Base")
    base = (http_url(base_href, page_url) if isinstance(base_href, str) else None) or page_url
    robots, tdm = _meta_directives(head.get("Metas"), (ua_token.lower(),))
    signals = page_signals(robots, tdm, _header_list(http_meta.get("Headers")), ua_token)
    stats["pages"] = stats.get("pages", 0) + 1
    rows = []
    for link in html_meta.get("Links") or []:
        if isinstance(link, dict) and link.get("path") == "IMG@/src" and isinstance(link.get("url"), str):
            url = http_url(link["url"], base)
            if url:
                rows.append(_pair(url, link.get("alt"), page_url, "wat", signals))
    return rows


def read_wat(path: str | Path, stats: dict | None = None, ua_token: str = USER_AGENT_TOKEN) -> Iterator[dict]:
    """Pairs from the `IMG@/src` links of a WAT file (Common Crawl's JSON metadata records).

    Relative URLs are resolved against `HTML-Metadata.Head.Base` (itself resolved against the page) or
    the page's `WARC-Target-URI`. Signals come from `Head.Metas` and `HTTP-Response-Metadata.Headers`.

    Args:
        path: a `.wat` or `.warc.wat.gz` file.
        stats: optional dict updated in place with `skipped_records` (bad JSON, no Envelope) and `pages`.
        ua_token: our user-agent token, for agent-scoped robots meta and X-Robots-Tag.

    Yields:
        Pair dicts (url, caption, page_url, domain, source="wat", signals).
    """
    stats = stats if stats is not None else {}
    stats.setdefault("skipped_records", 0)
    for record in _iter_records(path, stats):
        if record.rec_type != "metadata":
            continue
        try:
            rows = _wat_record_pairs(json.loads(record.content_stream().read()), ua_token, stats)
        except Exception as err:  # noqa: BLE001 - one bad record must not stop the file
            _skip(stats, Path(path), record.rec_headers.get_header("WARC-Record-ID") or "?", err)
            continue
        yield from rows


def _html_metadata(html: str) -> dict:
    """WAT `HTML-Metadata` of a page: Head (Title, Base, Metas) and Links (IMG@/src, A@/href) as written."""
    tree = LexborHTMLParser(html)
    head: dict[str, Any] = {"Metas": [dict(m.attributes) for m in tree.css("meta")]}
    title = tree.css_first("title")
    if title is not None:
        head["Title"] = title.text()
    base = tree.css_first("base[href]")
    if base is not None:
        head["Base"] = base.attributes.get("href")
    links = []
    for node in tree.css("img[src], a[href]"):
        attrs = node.attributes
        if node.tag == "img":
            link = {"path": "IMG@/src", "url": attrs.get("src") or ""}
            link.update({"alt": attrs["alt"] or ""} if "alt" in attrs else {})
        else:
            link = {"path": "A@/href", "url": attrs.get("href") or "", "text": node.text(strip=True)}
        links.append(link)
    return {"Head": head, "Links": links}


def wat_envelope(page_url: str, html: str, headers: Headers = (), filename: str = "") -> dict:
    """The WAT JSON of one 200 HTML response (the subset of Common Crawl's fields that readers use).

    Like Common Crawl's WATs, image links are the raw `src` attributes: images given only by
    `srcset`, `data-src` or `<picture>` are not listed (a WARC read sees them, a WAT read does not).
    """
    grouped: dict[str, list[str]] = {}
    for k, v in _header_list(headers):
        grouped.setdefault(k, []).append(v)
    header_dict = {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}  # repeated names → list
    http_meta = {"Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                 "Headers": header_dict, "HTML-Metadata": _html_metadata(html)}
    return {
        "Container": {"Filename": filename, "Compressed": filename.endswith(".gz")},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url},
            "Payload-Metadata": {"Actual-Content-Type": "application/http; msgtype=response",
                                 "HTTP-Response-Metadata": http_meta},
        },
    }


def write_wat(path: str | Path, pages: Iterable[tuple[str, str, Headers]]) -> Path:
    """Write a WAT file: a warcinfo record, then one `metadata` record (application/json) per page.

    Args:
        path: output file; gzipped per record when it ends with `.gz`.
        pages: (page_url, decoded html, response headers) triples; headers as pairs or a dict.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=path.name.endswith(".gz"))
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "mithridate write_wat"}))
        for page_url, html, headers in pages:
            payload = json.dumps(wat_envelope(page_url, html, headers, path.name)).encode("utf-8")
            record = writer.create_warc_record(page_url, "metadata", payload=io.BytesIO(payload),
                                               length=len(payload), warc_content_type="application/json")
            writer.write_record(record)
    return path
