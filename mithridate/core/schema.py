"""Fixed schemas of the files passed between curation stages, and the helpers that read and check them.

Every parquet file the toolkit writes carries `schema_version` and `schema_name` in its key-value metadata;
readers check both and fail with a clear message when a file is from another stage or another version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mithridate.core import stats_files, storage

SCHEMA_VERSION = "1"
# pairs and shards v2 call the caption column `caption` (img2dataset's name); v1 files, whose column is `text`,
# still read (as `caption`)
VERSIONS = {"pairs": "2", "shard": "2"}
RENAMED = {"pairs": {"1": {"text": "caption"}}, "shard": {"1": {"text": "caption"}}}

# status values of a downloaded row (img2dataset's three plus opted_out)
STATUS_SUCCESS = "success"
STATUS_OPTED_OUT = "opted_out"
STATUS_FAILED_DOWNLOAD = "failed_to_download"
STATUS_FAILED_RESIZE = "failed_to_resize"
STATUSES = (STATUS_SUCCESS, STATUS_OPTED_OUT, STATUS_FAILED_DOWNLOAD, STATUS_FAILED_RESIZE)

# where a pair came from
SOURCES = ("crawl", "wat", "warc", "urllist")

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),  # 32 hex chars: sha256(url + "\n" + caption)[:32]
        pa.field("url", pa.string(), nullable=False),  # absolute image URL
        pa.field("caption", pa.string(), nullable=False),  # alt text, whitespace-normalised ("" when empty)
        pa.field("page_url", pa.string()),  # page the pair was found on (null for URL lists)
        pa.field("domain", pa.string()),  # host[:port] of the image URL
        pa.field("source", pa.string(), nullable=False),  # one of SOURCES
        pa.field("signals", pa.list_(pa.string()), nullable=False),  # opt-out signals seen, e.g. "meta:noai"
    ]
)

SHARD_SCHEMA = pa.schema(
    list(PAIRS_SCHEMA)
    + [
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("error_message", pa.string()),  # why the row is not a success
        pa.field("optout", pa.string()),  # the signal that excluded the row, e.g. "x-robots-tag:noai"
        pa.field("sha256", pa.string()),  # of the original image bytes
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("jpg", pa.binary()),  # re-encoded image, null unless status == success
    ]
)

ART_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),  # "<artist>/<concept_key>"
        pa.field("concept_key", pa.string(), nullable=False),  # code points, FE0F dropped, e.g. "1F404"
        pa.field("concept", pa.string(), nullable=False),  # CLDR name, e.g. "cow"
        pa.field("artist", pa.string(), nullable=False),  # style name, e.g. "twemoji"
        pa.field("licence", pa.string(), nullable=False),  # SPDX id, e.g. "CC-BY-4.0"
        pa.field("attribution", pa.string(), nullable=False),
        pa.field("aliases", pa.list_(pa.string()), nullable=False),
        pa.field("keywords", pa.list_(pa.string()), nullable=False),
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("path64", pa.string(), nullable=False),  # PNG path relative to the corpus folder
        pa.field("path32", pa.string(), nullable=False),
    ]
)

WEB_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),  # image URL as served
        pa.field("page_url", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),  # site name, e.g. "artist-twemoji", "aggregator"
        pa.field("item_id", pa.string()),  # art item shown (null for broken images)
        pa.field("concept", pa.string()),
        pa.field("artist", pa.string()),
        pa.field("licence", pa.string()),
        pa.field("alt", pa.string()),  # the alt text written in the page (null: no alt attribute)
        pa.field("alt_kind", pa.string(), nullable=False),  # good, empty, filename, spam, mismatched, long, missing
        pa.field("alt_correct", pa.bool_(), nullable=False),  # does the alt text describe the image?
        pa.field("markup", pa.string(), nullable=False),  # img, srcset, data-src, picture, base-href
        pa.field("failure", pa.string()),  # planted failure mode, e.g. "404", "truncated" (null: none)
        pa.field("rehost_of", pa.string()),  # original image URL when this is a re-upload
        pa.field("signals", pa.list_(pa.string()), nullable=False),  # opt-out signals that apply to it
        pa.field("degradation", pa.string()),  # degraded re-upload: blur, jpeg, noise, lowres, watermark (null: clean)
        pa.field("severity", pa.float32()),  # of the degradation, in [0, 1] (null: clean)
    ]
)

# Embeddings are not parquet: `<embed out>/<shard id>.npz` with keys `uid` (str, N), `img_emb` and `txt_emb`
# (float16, N × D, L2-normalised), `encoder` (0-d str); rows are the shard's success rows in shard order, minus
# those listed as undecodable in `<embed out>/__stats__/<shard id>.json`.
# `<embed out>/encoder.json` names the encoder (name, model, pretrained, dim).

AESTHETIC_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("aesthetic_score", pa.float32()),  # higher is better; null when the image has no embedding
    ]
)

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("exclusion_reason", pa.string()),  # first reason in filter order; null when kept
        pa.field("reasons", pa.list_(pa.string()), nullable=False),  # every reason that applies
        pa.field("clip_score", pa.float32()),
        pa.field("aesthetic_score", pa.float32()),
        pa.field("phash", pa.string()),  # 64-bit perceptual hash, 16 hex chars
        pa.field("duplicate_of", pa.string()),  # uid of the kept row this one duplicates
    ]
)

TRAIN_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("jpg", pa.binary(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("domain", pa.string()),
        pa.field("artist", pa.string()),  # from a provenance table when known (e.g. the demo web's manifest)
        pa.field("licence", pa.string()),
        pa.field("clip_score", pa.float32()),
        pa.field("aesthetic_score", pa.float32()),
    ]
)

RELEASE_SCHEMA = pa.schema(  # a published URL list with content hashes (`release`)
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("domain", pa.string()),
        pa.field("sha256", pa.string(), nullable=False),  # of the original image bytes, as downloaded
        pa.field("phash", pa.string()),  # 64-bit pHash of the stored image, 16 hex chars (null: did not decode)
        pa.field("artist", pa.string()),
        pa.field("licence", pa.string()),
    ]
)

WEB_EXPIRY_SCHEMA = pa.schema(  # image URLs of the demo web whose bytes changed after it was built (`DemoWeb.expire`)
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("site", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # expired (other content) or reencoded (same picture)
        pa.field("item_id", pa.string()),  # art item the URL showed before (null: none)
        pa.field("replacement", pa.string()),  # art item it shows now, when taken from the corpus
        pa.field("sha256_before", pa.string(), nullable=False),
        pa.field("sha256_after", pa.string(), nullable=False),
    ]
)

SCHEMAS = {
    "pairs": PAIRS_SCHEMA,
    "shard": SHARD_SCHEMA,
    "art": ART_SCHEMA,
    "web_manifest": WEB_MANIFEST_SCHEMA,
    "aesthetic": AESTHETIC_SCHEMA,
    "decisions": DECISIONS_SCHEMA,
    "train": TRAIN_SCHEMA,
    "release": RELEASE_SCHEMA,
    "web_expiry": WEB_EXPIRY_SCHEMA,
}


def make_uid(url: str, text: str) -> str:
    """The join key of a pair: first 128 bits of sha256(url + "\\n" + text), as 32 lowercase hex chars."""
    return hashlib.sha256(f"{url}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def normalize_text(text: str | None) -> str:
    """Collapse whitespace in an alt text; None becomes the empty string."""
    return " ".join(str(text).split()) if text is not None else ""


def to_table(rows: list[dict], name: str) -> pa.Table:
    """Build a table of schema `name` from row dicts; missing nullable fields become null."""
    schema = SCHEMAS[name]
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    try:
        return pa.table(cols, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"rows do not fit the {name} schema: {err}") from err


def validate(table: pa.Table, name: str) -> pa.Table:
    """Check that `table` has exactly the columns and types of schema `name`; returns it cast to the schema."""
    schema = SCHEMAS[name]
    missing = [f.name for f in schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise ValueError(f"{name} table: missing columns {missing}, unexpected columns {extra}")
    for field in schema:  # before the cast, which would fail on these nulls with a less clear message
        if not field.nullable and table[field.name].null_count:
            raise ValueError(f"{name} table: column {field.name!r} has {table[field.name].null_count} nulls")
    table = table.select(schema.names).cast(schema)
    if name == "shard":
        bad = set(table["status"].to_pylist()) - set(STATUSES)
        if bad:
            raise ValueError(f"shard table: status values {sorted(bad)} not in {list(STATUSES)}")
    if name == "pairs":
        bad = set(table["source"].to_pylist()) - set(SOURCES)
        if bad:
            raise ValueError(f"pairs table: source values {sorted(bad)} not in {list(SOURCES)}")
    return table


def write(table: pa.Table, path: str | Path, name: str, extra_meta: dict | None = None) -> Path | str:
    """Validate and write a table atomically and durably (tmp file, fsync, rename: `disk.atomic`; on object storage
    one upload of the finished file: `storage.output`), tagging it with its schema name and version."""
    path = storage.location(path)
    table = validate(table, name)
    meta = {"schema_name": name, "schema_version": version(name), **(extra_meta or {})}
    table = table.replace_schema_metadata({k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()})
    with storage.output(path) as tmp:  # durable before it is visible; a full disk: a one-line DiskFull, no partial
        pq.write_table(table, tmp)
    return path


# the stage that writes each schema: what to rerun when a file is corrupt
WRITTEN_BY = {"pairs": "`crawl` or `pairs`", "shard": "`download`", "art": "`art build --force=true`",
              "web_manifest": "`web serve`", "aesthetic": "`aesthetic score`", "decisions": "`filter`",
              "train": "`export`"}


def _unreadable(path: Path | str, name: str, err: Exception) -> ValueError:
    """The one-line error of a truncated or garbage parquet file: which file, and how to get it back."""
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:200]
    if name == "shard":
        folder, stem = storage.parent(path), storage.stem(path)
        marker = stats_files.existing(folder, stem) or stats_files.path(folder, stem)
        todo = f"delete it and {marker}, then rerun `download` to fetch it again"
    else:
        todo = f"delete it, then rerun {WRITTEN_BY.get(name, 'the stage that wrote it')} to write it again"
    return ValueError(f"{path}: not a readable parquet file ({detail}); it is truncated or corrupt: {todo}")


def version(name: str) -> str:
    """The version of schema `name` that `write` writes."""
    return VERSIONS.get(name, SCHEMA_VERSION)


def read(path: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a file written by `write`, checking its schema name and version (an older version whose columns were
    only renamed reads under today's names)."""
    path = storage.location(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"{name} file not found: {path}")
    with storage.source(path) as src:
        return _read(src, path, name, columns)


def _read(source, path: Path | str, name: str, columns: list[str] | None) -> pa.Table:
    """`read` of a local path or an open file object (`path`: its name in errors)."""
    try:
        meta = pq.read_schema(source).metadata or {}
    except (pa.ArrowException, OSError) as err:
        raise _unreadable(path, name, err) from None
    got_name = meta.get(b"schema_name", b"").decode()
    got_version = meta.get(b"schema_version", b"").decode()
    renamed = RENAMED.get(name, {}).get(got_version) if got_name == name else None
    if got_name != name or (got_version != version(name) and renamed is None):
        raise ValueError(
            f"{path}: schema {got_name or '?'!r} v{got_version or '?'}, expected {name!r} v{version(name)}"
        )
    back = {new: old for old, new in (renamed or {}).items()}
    try:
        table = pq.read_table(source, columns=[back.get(c, c) for c in columns] if columns is not None else None)
    except (pa.ArrowException, OSError) as err:  # a readable footer over corrupt data pages
        raise _unreadable(path, name, err) from None
    return table.rename_columns([renamed.get(c, c) for c in table.column_names]) if renamed else table


def read_folder(folder: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read and concatenate every `*.parquet` shard of schema `name` in `folder`, in file-name order."""
    files = storage.glob(folder, "*.parquet")
    if not files:
        raise FileNotFoundError(f"no {name} parquet files in {folder}")
    return pa.concat_tables([read(f, name, columns) for f in files])
