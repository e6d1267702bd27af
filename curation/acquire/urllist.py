"""URL lists in img2dataset's input formats: csv, tsv, jsonl, parquet and txt (one URL per line).

`read_urllist` checks the file and its columns up front (clear errors before any work), then streams rows.
It yields every row, including rows whose URL is empty or not http(s): the caller (`pairs.run`) counts
those as `invalid_url` with their line numbers instead of dropping them silently. csv, tsv, jsonl and txt
files may be gzipped (`.csv.gz` …).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from mithridate.core.schema import normalize_text

log = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
               ".txt": "txt"}
_BATCH_ROWS = 10_000


def detect_format(path: str | Path) -> str:
    """The URL-list format of `path` from its extension (a trailing `.gz` is ignored).

    Raises:
        ValueError: the extension is not one of the known formats.
    """
    name = Path(path).name.lower().removesuffix(".gz")
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path}: cannot tell the URL-list format from the extension; "
                     f"name it one of {', '.join(sorted(_EXTENSIONS))} or pass input_format={'|'.join(FORMATS)}")


def _open_text(path: Path) -> IO[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", newline="")


def _one_line(path: Path, err: BaseException) -> ValueError:
    """A ValueError with a one-line reason for a corrupt file."""
    if isinstance(err, UnicodeDecodeError):
        reason = f"not UTF-8 text (byte {err.start}: {err.reason})"
    else:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return ValueError(f"{path}: corrupt or unreadable file ({reason})")


def _columns(path: Path, fmt: str) -> list[str]:
    """Column names present in the file (for jsonl: the keys of the first object)."""
    try:
        if fmt == "parquet":
            return pq.ParquetFile(path).schema_arrow.names
        with _open_text(path) as f:
            if fmt in ("csv", "tsv"):
                return next(csv.reader(f, delimiter="," if fmt == "csv" else "\t"), [])
            first = next((line for line in f if line.strip()), "{}")
            obj = json.loads(first)
            if not isinstance(obj, dict):
                raise ValueError(f"line 1 is a JSON {type(obj).__name__}, expected an object")
            return list(obj)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, json.JSONDecodeError, ValueError,
            pa.ArrowException) as err:
        raise _one_line(path, err) from err


def _delimited_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
        for rec in reader:
            yield reader.line_num, rec


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {line_no} is a JSON {type(obj).__name__}, expected an object")
            yield line_no, obj


def _txt_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, {"url": line.strip()}


def _parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        for rec in batch.to_pylist():
            row_no += 1
            yield row_no, rec


def _raw_rows(path: Path, fmt: str, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, record) pairs; corrupt content raises a one-line ValueError."""
    try:
        if fmt in ("csv", "tsv"):
            yield from _delimited_rows(path, fmt)
        elif fmt == "jsonl":
            yield from _jsonl_rows(path)
        elif fmt == "txt":
            yield from _txt_rows(path)
        else:
            yield from _parquet_rows(path, columns)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, pa.ArrowException) as err:
        raise _one_line(path, err) from err


def _cell(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _rows(path: Path, fmt: str, url_col: str, caption_col: str | None, page_col: str | None) -> Iterator[dict]:
    wanted = [c for c in (url_col, caption_col, page_col) if c]
    for line, rec in _raw_rows(path, fmt, wanted):
        page = _cell(rec.get(page_col)) if page_col else ""
        yield {"url": _cell(rec.get(url_col)), "caption": normalize_text(rec.get(caption_col) if caption_col else None),
               "page_url": page or None, "source": "urllist", "line": line}


def read_urllist(path: str | Path, url_col: str = "url", caption_col: str | None = "caption",
                 page_col: str | None = None, input_format: str = "auto") -> Iterator[dict]:
    """Rows of a URL list, img2dataset-style.

    Args:
        path: the file (csv, tsv, jsonl, txt, optionally `.gz`; or parquet).
        url_col: column of image URLs (ignored for txt).
        caption_col: column of captions; None or "" for no captions (caption is then "").
        page_col: column of page URLs; None or "" for none.
        input_format: "auto" (from the extension) or one of `FORMATS`.

    Returns:
        An iterator of dicts: url (stripped, "" when missing; not validated), caption (normalised),
        page_url (None when absent), source="urllist", line (1-based line in text files, counting the
        header; 1-based row number in parquet).

    Raises:
        FileNotFoundError: `path` is not a file.
        ValueError: unknown format, a missing column (named, with the columns present), or a corrupt file
            (raised while iterating when the damage is past the header).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"URL list not found: {path}")
    fmt = detect_format(path) if input_format in ("auto", "", None) else input_format
    if fmt not in FORMATS:
        raise ValueError(f"input_format={fmt!r}: allowed values are auto, {', '.join(FORMATS)}")
    caption_col, page_col = caption_col or None, page_col or None
    if fmt == "txt":
        return _rows(path, fmt, "url", None, None)
    present = _columns(path, fmt)
    for role, col in (("url_col", url_col), ("caption_col", caption_col), ("page_col", page_col)):
        if col and col not in present:
            raise ValueError(f"{path}: no column {col!r} ({role}); columns present: {', '.join(present) or 'none'}")
    log.info("reading URL list %s (%s)", path, fmt)
    return _rows(path, fmt, url_col, caption_col, page_col)
