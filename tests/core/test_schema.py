"""mithridate.core.schema: uids, validation, and parquet files tagged with their schema name and version."""

import hashlib
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mithridate.core import schema


def pair(i=0, **kw):
    url = f"http://site.test/img/{i}.png"
    row = {"uid": schema.make_uid(url, f"cat {i}"), "url": url, "caption": f"cat {i}", "page_url": "http://site.test/",
           "domain": "site.test", "source": "crawl", "signals": ["meta:noai"] if i % 2 else []}
    row.update(kw)
    return row


def shard_row(i=0, **kw):
    row = {**pair(i), "status": "success", "error_message": None, "optout": None, "sha256": "ab" * 32,
           "width": 64, "height": 64, "original_width": 128, "original_height": 96, "jpg": b"\xff\xd8jpeg"}
    row.update(kw)
    return row


# --- uids and text ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "text"),
    [("http://site.test/a.png", "a cat"), ("http://site.test/a.png", ""), ("https://x.test/é.png", "café ☕"),
     ("http://site.test/a.png", "lone surrogate \ud800")],
)
def test_make_uid(url, text):
    uid = schema.make_uid(url, text)
    assert re.fullmatch(r"[0-9a-f]{32}", uid)
    assert uid == schema.make_uid(url, text)
    assert uid == hashlib.sha256(f"{url}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def test_make_uid_known_value_and_separation():
    assert schema.make_uid("http://site.test/a.png", "a cat") == hashlib.sha256(
        b"http://site.test/a.png\na cat").hexdigest()[:32]
    assert schema.make_uid("http://site.test/a.png", "a cat") != schema.make_uid("http://site.test/a.png", "a dog")
    assert schema.make_uid("ab", "c") != schema.make_uid("a", "bc")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, ""), ("", ""), ("  a \n\t cat  ", "a cat"), ("a\u00a0cat", "a cat"), (42, "42")],
)
def test_normalize_text(text, expected):
    assert schema.normalize_text(text) == expected


# --- validate -----------------------------------------------------------------------------------------------------------


def test_validate_accepts_and_orders_columns():
    table = schema.to_table([pair(0), pair(1)], "pairs")
    shuffled = table.select(list(reversed(table.column_names)))
    got = schema.validate(shuffled, "pairs")
    assert got.column_names == schema.PAIRS_SCHEMA.names
    assert got.equals(table)
    inferred = pa.Table.from_pylist([pair(0), pair(1)])  # nullable, inferred types: cast to the schema
    assert schema.validate(inferred, "pairs").schema == schema.PAIRS_SCHEMA


def test_validate_missing_and_extra_columns():
    table = schema.to_table([pair()], "pairs")
    with pytest.raises(ValueError) as err:
        schema.validate(table.drop_columns(["signals", "domain"]), "pairs")
    assert str(err.value) == "pairs table: missing columns ['domain', 'signals'], unexpected columns []"
    with pytest.raises(ValueError) as err:
        schema.validate(table.append_column("width", pa.array([3])), "pairs")
    assert str(err.value) == "pairs table: missing columns [], unexpected columns ['width']"


@pytest.mark.parametrize("column", ["uid", "url", "caption", "source", "signals"])
def test_validate_nulls_in_non_nullable_columns(column):
    rows = [pair(0), pair(1, **{column: None})]
    with pytest.raises(ValueError) as err:
        schema.validate(schema.to_table(rows, "pairs"), "pairs")
    assert str(err.value) == f"pairs table: column {column!r} has 1 nulls"
    with pytest.raises(ValueError) as err:  # an inferred (nullable) table fails the same way
        schema.validate(pa.Table.from_pylist(rows), "pairs")
    assert str(err.value) == f"pairs table: column {column!r} has 1 nulls"


@pytest.mark.parametrize("column", ["page_url", "domain"])
def test_validate_nulls_in_nullable_columns_are_fine(column):
    assert schema.validate(schema.to_table([pair(0, **{column: None})], "pairs"), "pairs")[column].null_count == 1


def test_validate_bad_status_and_source():
    with pytest.raises(ValueError) as err:
        schema.validate(schema.to_table([shard_row(0), shard_row(1, status="done"), shard_row(2, status="ok")],
                                        "shard"), "shard")
    assert str(err.value) == ("shard table: status values ['done', 'ok'] not in "
                              "['success', 'opted_out', 'failed_to_download', 'failed_to_resize']")
    with pytest.raises(ValueError) as err:
        schema.validate(schema.to_table([pair(0, source="ftp")], "pairs"), "pairs")
    assert str(err.value) == "pairs table: source values ['ftp'] not in ['crawl', 'wat', 'warc', 'urllist']"
    for status in schema.STATUSES:
        schema.validate(schema.to_table([shard_row(0, status=status)], "shard"), "shard")


def test_to_table_rejects_rows_of_the_wrong_type():
    with pytest.raises(ValueError, match="rows do not fit the shard schema"):
        schema.to_table([shard_row(0, width="wide")], "shard")


# --- write / read -------------------------------------------------------------------------------------------------------


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    table = schema.to_table([shard_row(i) for i in range(5)], "shard")
    path = schema.write(table, tmp_path / "sub" / "00000.parquet", "shard",
                        {"stage": "download", "count": 5, "opts": {"a": [1, 2]}})
    assert path == tmp_path / "sub" / "00000.parquet"
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.parquet"]  # no tmp file left
    got = schema.read(path, "shard")
    assert got.to_pylist() == table.to_pylist()
    assert got.schema.remove_metadata() == schema.SHARD_SCHEMA
    assert got.schema.metadata == {b"schema_name": b"shard", b"schema_version": b"2", b"stage": b"download",
                                   b"count": b"5", b"opts": b'{"a": [1, 2]}'}
    assert schema.read(path, "shard", columns=["uid", "status"]).column_names == ["uid", "status"]


def test_write_validates(tmp_path):
    with pytest.raises(ValueError, match="source values"):
        schema.write(schema.to_table([pair(source="bogus")], "pairs"), tmp_path / "x.parquet", "pairs")
    assert not list(tmp_path.iterdir())


def test_read_other_schema_name(tmp_path):
    path = schema.write(schema.to_table([pair()], "pairs"), tmp_path / "p.parquet", "pairs")
    with pytest.raises(ValueError) as err:
        schema.read(path, "shard")
    assert str(err.value) == f"{path}: schema 'pairs' v2, expected 'shard' v2"


@pytest.mark.parametrize(
    ("meta", "described"),
    [({"schema_name": "pairs", "schema_version": "0"}, "'pairs' v0"),
     ({"schema_name": "pairs", "schema_version": "3"}, "'pairs' v3"),
     ({"schema_name": "art", "schema_version": "7"}, "'art' v7"),
     (None, "'?' v?")],
)
def test_read_other_schema_version(tmp_path, meta, described):
    table = schema.to_table([pair()], "pairs")
    path = tmp_path / "p.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(ValueError) as err:
        schema.read(path, "pairs")
    assert str(err.value) == f"{path}: schema {described}, expected 'pairs' v2"


@pytest.mark.parametrize("name", ["pairs", "shard"])
def test_a_v1_file_with_a_text_column_reads_as_caption(tmp_path, name):
    """v1 pairs and shards called the caption `text`; they still read, under today's name."""
    rows = [pair(0), pair(1)]
    if name == "shard":
        rows = [dict(r, status="success", jpg=b"x") for r in rows]
    table = schema.to_table(rows, name)
    old = table.rename_columns(["text" if c == "caption" else c for c in table.column_names])
    path = tmp_path / "00000.parquet"
    pq.write_table(old.replace_schema_metadata({"schema_name": name, "schema_version": "1"}), path)
    got = schema.read(path, name)
    assert got.column_names == table.column_names and got["caption"].to_pylist() == ["cat 0", "cat 1"]
    assert schema.read(path, name, ["uid", "caption"]).column_names == ["uid", "caption"]
    assert schema.read_folder(tmp_path, name, ["caption"])["caption"].to_pylist() == ["cat 0", "cat 1"]
    new = tmp_path / "new.parquet"
    schema.write(table, new, name)
    assert pq.read_schema(new).metadata[b"schema_version"] == b"2" and "caption" in pq.read_schema(new).names


def _corrupt(tmp_path, kind):
    path = tmp_path / "bad.parquet"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("uid,url\n1,http://x\n")
    else:
        good = schema.write(schema.to_table([pair(i) for i in range(300)], "pairs"), tmp_path / "good.parquet",
                            "pairs")
        data = bytearray(good.read_bytes())
        if kind == "truncated":
            data = data[: len(data) // 2]
        else:  # "pages": garbage data pages under an intact footer
            data[4:400] = bytes((i * 37 + 11) % 256 for i in range(396))
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated", "pages"])
def test_read_corrupt_file_is_a_value_error(tmp_path, kind):
    path = _corrupt(tmp_path, kind)
    with pytest.raises(ValueError) as err:
        schema.read(path, "pairs")
    assert type(err.value) is ValueError  # not a pyarrow exception
    assert str(err.value).startswith(f"{path}: not a readable parquet file (")


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        schema.read(tmp_path / "nope.parquet", "pairs")
    assert str(err.value) == f"pairs file not found: {tmp_path / 'nope.parquet'}"
    with pytest.raises(FileNotFoundError):
        schema.read(tmp_path, "pairs")  # a folder is not a file


def test_read_folder(tmp_path):
    schema.write(schema.to_table([pair(2), pair(3)], "pairs"), tmp_path / "00001.parquet", "pairs")
    schema.write(schema.to_table([pair(0), pair(1)], "pairs"), tmp_path / "00000.parquet", "pairs")
    (tmp_path / "_stats.json").write_text("{}")
    got = schema.read_folder(tmp_path, "pairs")
    assert got.column("url").to_pylist() == [f"http://site.test/img/{i}.png" for i in range(4)]
    assert schema.read_folder(tmp_path, "pairs", columns=["uid"]).column_names == ["uid"]
    with pytest.raises(ValueError, match="expected 'shard' v2"):
        schema.read_folder(tmp_path, "shard")


@pytest.mark.parametrize("make", [True, False])
def test_read_folder_without_files(tmp_path, make):
    folder = tmp_path / "pairs"
    if make:
        folder.mkdir()
        (folder / "_stats.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as err:
        schema.read_folder(folder, "pairs")
    assert str(err.value) == f"no pairs parquet files in {folder}"
