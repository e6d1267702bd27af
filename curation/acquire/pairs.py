"""Stage "pairs": turn a WARC, a WAT or a URL list into sharded parquet files of image–text pairs.

`run(cfg)` writes `<out>/config.json`, then `<out>/pairs/00000.parquet`, `00001.parquet` … (schema "pairs")
and `<out>/pairs/__stats__/run.json`. Nothing is dropped silently: rows with a non-http(s) URL are counted as
`invalid_url` (with their line numbers), repeated (url, caption) pairs as `duplicates`, and malformed WARC/WAT
records as `skipped_records`. `write_pairs` is the shared shard writer (the crawler uses it too).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from mithridate.core import schema, stats_files
from mithridate.core.options import check_choice, check_positive, literal_values, opt, write_config

log = logging.getLogger(__name__)

MAX_INVALID_LINES = 1000  # line numbers of invalid URLs kept in the stats (the count is always exact)
_SHARD_RE = re.compile(r"^\d{5,}\.parquet$")


@dataclass(frozen=True)
class PairsConfig:
    """Options of the pairs stage."""

    input: str = opt("", "input file: WARC, WAT or URL list (csv, tsv, jsonl, parquet, txt); required")
    input_format: Literal["auto", "warc", "wat", "csv", "tsv", "jsonl", "parquet", "txt"] = opt(
        "auto", "input format; auto = from the file extension (.warc.gz, .wat.gz, .csv …)")
    url_col: str = opt("url", "URL-list column holding image URLs")
    caption_col: str = opt("caption", "URL-list column holding captions (empty: no captions)")
    page_col: str = opt("", "URL-list column holding page URLs (empty: none)")
    out: str = opt("mithridate-out/pairs", "output folder (config.json, pairs/*.parquet, pairs/__stats__/run.json)")
    shard_size: int = opt(10000, "pairs per parquet shard")


PRESETS = {"default": PairsConfig(), "tiny": PairsConfig(shard_size=100)}


def domain_of(url: str) -> str | None:
    """host[:port] of a URL, lower-cased, without user info; None when there is no host."""
    netloc = urlsplit(url).netloc.rpartition("@")[2].lower()
    return netloc or None


def is_http_url(url: str) -> bool:
    """Whether `url` is an absolute http(s) URL with a host (and a valid port, if any)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def input_kind(cfg: PairsConfig) -> str:
    """The concrete format of `cfg.input`: warc, wat, or a URL-list format."""
    if cfg.input_format != "auto":
        return cfg.input_format
    name = Path(cfg.input).name.lower().removesuffix(".gz")
    if name.endswith(".wat") or ".wat." in name:
        return "wat"
    if name.endswith((".warc", ".arc")):
        return "warc"
    from curation.acquire.urllist import detect_format

    return detect_format(cfg.input)


def check(cfg: PairsConfig) -> None:
    """Raise a ValueError (or FileNotFoundError) for a config that cannot run, before anything is written."""
    if not cfg.input:
        raise ValueError("PairsConfig.input is empty: give the WARC, WAT or URL-list file to read")
    check_choice(cfg, "input_format", literal_values(PairsConfig, "input_format"))
    check_positive(cfg, "shard_size")
    if not cfg.out:
        raise ValueError("PairsConfig.out is empty: give an output folder")
    if not Path(cfg.input).is_file():
        raise FileNotFoundError(f"PairsConfig.input not found: {cfg.input}")


def read_rows(cfg: PairsConfig, stats: dict) -> Iterator[dict]:
    """Candidate rows of the input, before URL checks and dedup; readers update `stats` (skipped_records)."""
    from curation.acquire.urllist import read_urllist
    from curation.acquire.warc import read_warc, read_wat

    kind = input_kind(cfg)
    if kind == "warc":
        return read_warc(cfg.input, stats)
    if kind == "wat":
        return read_wat(cfg.input, stats)
    return read_urllist(cfg.input, cfg.url_col, cfg.caption_col or None, cfg.page_col or None, kind)


def _valid_rows(rows: Iterable[dict], stats: dict) -> Iterator[dict]:
    """Count rows; pass on those with an http(s) URL; record the others (count + first line numbers)."""
    for row in rows:
        stats["rows_read"] += 1
        if is_http_url(row.get("url") or ""):
            yield row
            continue
        stats["invalid_url"] += 1
        if len(stats["invalid_url_lines"]) < MAX_INVALID_LINES:
            stats["invalid_url_lines"].append(row.get("line"))


def _as_pair(row: dict) -> dict:
    url, caption = row["url"], schema.normalize_text(row.get("caption"))
    return {"uid": schema.make_uid(url, caption), "url": url, "caption": caption, "page_url": row.get("page_url"),
            "domain": row.get("domain") or domain_of(url), "source": row.get("source"),
            "signals": sorted(set(row.get("signals") or ()))}


def _flush(rows: list[dict], out: Path, index: int) -> str:
    name = f"{index:05d}.parquet"
    schema.write(schema.to_table(rows, "pairs"), out / name, "pairs")
    return name


def write_pairs(rows: Iterable[dict], out: Path, shard_size: int) -> dict:
    """Write pair rows as parquet shards `out/00000.parquet`, `00001.parquet` … of `shard_size` pairs.

    The uid is recomputed as `make_uid(url, caption)` (caption normalised); `domain` is filled from the URL
    when missing. Repeated uids are dropped and counted. With no rows, one empty shard is written so the
    next stage sees the schema. Older shards in `out` beyond those written are removed.

    Args:
        rows: dicts with url, caption, source and optionally page_url, domain, signals.
        out: the shard folder.
        shard_size: pairs per shard (> 0).

    Returns:
        {"pairs": int, "duplicates": int, "shards": [file names in `out`]}.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size={shard_size!r}: must be > 0")
    out = Path(out)
    seen: set[bytes] = set()
    stats: dict = {"pairs": 0, "duplicates": 0, "shards": []}
    buf: list[dict] = []
    for row in rows:
        pair = _as_pair(row)
        key = bytes.fromhex(pair["uid"])
        if key in seen:
            stats["duplicates"] += 1
            continue
        seen.add(key)
        buf.append(pair)
        if len(buf) >= shard_size:
            stats["shards"].append(_flush(buf, out, len(stats["shards"])))
            stats["pairs"], buf = stats["pairs"] + len(buf), []
    if buf or not stats["shards"]:
        stats["shards"].append(_flush(buf, out, len(stats["shards"])))
        stats["pairs"] += len(buf)
    _remove_stale(out, stats["shards"])
    return stats


def _remove_stale(out: Path, keep: list[str]) -> None:
    for path in out.glob("*.parquet"):
        if _SHARD_RE.match(path.name) and path.name not in keep:
            log.warning("removing stale shard %s from an earlier run", path)
            path.unlink()


def run(cfg: PairsConfig) -> Path:
    """Run the pairs stage.

    Args:
        cfg: the resolved config.

    Returns:
        The shard folder `<cfg.out>/pairs` (read it with `schema.read_folder(folder, "pairs")`).
    """
    check(cfg)
    kind = input_kind(cfg)
    write_config(cfg, cfg.out)
    folder = Path(cfg.out) / "pairs"
    source = kind if kind in ("warc", "wat") else "urllist"
    stats = {"source": source, "input": cfg.input, "input_format": kind, "rows_read": 0, "invalid_url": 0,
             "invalid_url_lines": [], "skipped_records": 0}
    written = write_pairs(_valid_rows(read_rows(cfg, stats), stats), folder, cfg.shard_size)
    stats.update(written)
    stats_files.write(folder, stats)
    log.info("pairs: %d from %d rows of %s (%d invalid URLs, %d duplicates, %d skipped records) → %s",
             stats["pairs"], stats["rows_read"], cfg.input, stats["invalid_url"], stats["duplicates"],
             stats["skipped_records"], folder)
    return folder
