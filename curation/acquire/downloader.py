"""Download stage: pairs → parquet shards of images, with img2dataset doing the fetching and resizing.

img2dataset's `Downloader` runs per shard, behind a guarded urllib opener (address policy, body cap,
image content types, a total deadline per request) and a pixel cap. Each image host's robots.txt, ai.txt and
tdmrep.json add their signals to its rows (`curation.acquire.robots`). Rows the opt-out policy excludes are not
fetched. Every input row comes out with a status, in input order; a shard whose `__stats__/<id>.json` exists is
finished and skipped.
The pairs are cut into shards of `shard_size` rows from the files' footers (`shard_plan`); with `engine=ray` each
shard is one Ray task that reads only its own rows, tried `shard_retries` more times when it fails; both engines
write the same shards.
Given expected hashes, img2dataset verifies the original bytes (`verify_hash_type`): a changed image fails
with "hash mismatch"; a `gate` may turn more success rows into failures before a shard is written.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from curation.acquire import funnel, netguard, robots
from curation.acquire.signals import AI_DIRECTIVES, directive_signals, x_robots_directives
from mithridate.core import engine, options, progress, schema, shard_plan, stats_files, storage, workers

logger = logging.getLogger(__name__)
XRT_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"


@dataclass(frozen=True)
class DownloadConfig:
    pairs: str = options.opt("mithridate-out/crawl/pairs", "folder of pairs parquet shards (crawl or pairs output); "
                             "a local path or an fsspec URL (s3://bucket/prefix)")
    out: str = options.opt("mithridate-out/shards", "output folder of image shards and stats; a local path or an "
                           "fsspec URL (s3://bucket/prefix: every node writes its shards there)")
    policy: Literal["honor", "record", "ignore"] = options.opt(
        "honor", "opt-out policy: honor = do not fetch opted-out rows (and honour X-Robots-Tag), record = fetch "
        "but flag them, ignore = behave like a scraper that ignores opt-outs")
    image_size: int = options.opt(64, "side of the stored images in pixels")
    resize_mode: Literal["border", "center_crop", "keep_ratio", "keep_ratio_largest", "no"] = options.opt(
        "border", "img2dataset resize mode (border pads to a square on white)")
    encode_quality: int = options.opt(95, "JPEG quality of the stored images")
    processes: int = options.opt(1, "worker processes (each downloads one shard at a time)")
    threads: int = options.opt(64, "download threads per process")
    timeout_s: float = options.opt(10.0, "socket timeout of one read of an image request")
    deadline_s: float = options.opt(30.0, "total time of one image request: connect, headers and body (a server "
                                    "that drips bytes fails the row with 'timeout')")
    robots: bool = options.opt(True, "read robots.txt, ai.txt and tdmrep.json of each image's host (RFC 9309) and "
                               "add their disallows to the row's signals (policy ignore reads none)")
    robots_deadline_s: float = options.opt(10.0, "total time of fetching one robots.txt, ai.txt or tdmrep.json")
    retries: int = options.opt(0, "retries of a failed image request")
    max_bytes: int = options.opt(10_000_000, "cap on an image body")
    max_pixels: int = options.opt(50_000_000, "cap on decoded pixels (decompression bombs)")
    min_image_size: int = options.opt(16, "smallest accepted original side in pixels")
    shard_size: int = options.opt(10000, "rows per output shard")
    allow_networks: tuple[str, ...] = options.opt((), "private/loopback networks that may be contacted (CIDR)")
    contact_url: str = options.opt("https://github.com/mithridate/mithridate", "contact URL in the user agent")
    engine: engine.Engine = options.opt("local", "where shards are downloaded: local (this machine: processes) or "
                                        "ray (one Ray task per shard on the cluster RAY_ADDRESS names, else a local "
                                        "one); switching resumes the same folder")
    shard_retries: int = options.opt(2, "engine ray: more tries of a shard that fails (an error, a dead worker) "
                                     "before the run fails naming it")

    def __post_init__(self):
        options.check_positive(self, "image_size", "processes", "threads", "timeout_s", "deadline_s",
                               "robots_deadline_s", "max_bytes", "max_pixels", "shard_size")
        for name in ("policy", "resize_mode"):
            options.check_choice(self, name, options.literal_values(DownloadConfig, name))
        if not 0 <= self.encode_quality <= 100:
            raise ValueError(f"DownloadConfig.encode_quality={self.encode_quality}: must be within [0, 100]")
        if self.retries < 0 or self.min_image_size < 0:
            raise ValueError("DownloadConfig: retries and min_image_size must be >= 0")
        if self.shard_retries < 0:
            raise ValueError(f"DownloadConfig.shard_retries={self.shard_retries!r}: must be >= 0")
        engine.check(self.engine)
        storage.check_fields(self, "pairs", "out")
        netguard.parse_networks(self.allow_networks)


PRESETS = {"default": DownloadConfig(), "tiny": DownloadConfig(threads=16, timeout_s=1.0, shard_size=200)}


class _PixelCap:
    """Wraps img2dataset's resizer: reject images whose header announces more than `max_pixels`, and PNGs with a
    chunk longer than the file (OpenCV allocates what a chunk announces: 45 bytes → 4 GB and seconds)."""

    def __init__(self, resizer, max_pixels: int):
        self.resizer, self.max_pixels = resizer, max_pixels

    def __call__(self, img_stream, bbox=None):
        w, h = _header_size(img_stream)
        img_stream.seek(0)
        if w * h > self.max_pixels:
            return None, None, None, None, None, f"image of {w}x{h} pixels exceeds max_pixels={self.max_pixels}"
        overrun = _png_chunk_overrun(img_stream.read())
        img_stream.seek(0)
        if overrun:
            return None, None, None, None, None, overrun
        return self.resizer(img_stream, bbox)


def _png_chunk_overrun(data: bytes) -> str | None:
    """Why a PNG is truncated (a chunk announces more bytes than follow it), or None (not a PNG, or whole)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if pos + 12 + length > len(data):
            return f"truncated PNG: chunk {kind!r} announces {length} bytes, {len(data) - pos - 12} follow"
        if kind == b"IEND":  # what follows IEND is not read
            return None
        pos += 12 + length
    return None


def _header_size(stream) -> tuple[int, int]:
    """Width and height announced by an image header, without decoding; (0, 0) when unknown; (pixels, 1) for a
    decompression bomb that PIL refuses to open (PIL then gives only its pixel count)."""
    head = stream.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":  # fast path: PNG's fixed header
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    stream.seek(0)
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(stream).size  # reads the header only
    except Image.DecompressionBombError as err:  # over 2 × PIL's MAX_IMAGE_PIXELS: a bomb, not an unknown size
        m = re.search(r"\((\d+) pixels\)", str(err))
        return (int(m.group(1)) if m else 2**63), 1  # its pixel count, as (pixels, 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return 0, 0  # let the real decoder report the error


IMG2DATASET_TESTED = "1.47.0"  # the img2dataset whose Downloader/Resizer keywords these are


@functools.cache
def _parameters(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters)


def _check_signature(cls, needed: Mapping) -> None:
    """Raise a clear error, naming the installed img2dataset version, when its `cls` lacks a keyword we pass."""
    missing = sorted(set(needed) - _parameters(cls))
    if missing:
        try:
            ver = metadata.version("img2dataset")
        except metadata.PackageNotFoundError:
            ver = "unknown"
        raise RuntimeError(f"img2dataset {ver}: {cls.__name__} has no parameter(s) {', '.join(missing)}; this "
                           f"code passes them by keyword as in img2dataset {IMG2DATASET_TESTED} (install that)")


def _img2dataset_downloader(cfg: DownloadConfig, folder: Path, verify_sha256: bool = False):
    """img2dataset's Downloader; with `verify_sha256` the input's `sha256` column is the expected hash."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import ParquetSampleWriter

    resize = dict(image_size=cfg.image_size, resize_mode=cfg.resize_mode, resize_only_if_bigger=False,
                  encode_quality=cfg.encode_quality, min_image_size=cfg.min_image_size,
                  max_image_area=cfg.max_pixels)
    honor = cfg.policy == "honor"
    download = dict(
        sample_writer_class=ParquetSampleWriter, thread_count=cfg.threads, save_caption=False,
        extract_exif=False, output_folder=str(folder), column_list=["uid", "url"] + ["sha256"] * verify_sha256,
        timeout=cfg.timeout_s, number_sample_per_shard=cfg.shard_size, oom_shard_count=5, compute_hash="sha256",
        verify_hash_type="sha256" if verify_sha256 else None, encode_format="jpg", retries=cfg.retries,
        user_agent_token=netguard.USER_AGENT_TOKEN,
        disallowed_header_directives=list(AI_DIRECTIVES) if honor else None,
    )
    _check_signature(Resizer, resize)
    _check_signature(Downloader, {"resizer": None, **download})
    return Downloader(resizer=_PixelCap(Resizer(**resize), cfg.max_pixels), **download)


def _opener(cfg: DownloadConfig, seen_xrt: dict | None = None, files: bool = False):
    """The guarded opener of image requests, or with `files` of robots.txt/ai.txt/tdmrep.json requests."""
    policy = netguard.AddressPolicy(netguard.parse_networks(cfg.allow_networks))
    return netguard.build_opener(policy, netguard.user_agent(cfg.contact_url), cfg.max_bytes, require_image=not files,
                                 on_response=None if seen_xrt is None else seen_xrt.__setitem__,
                                 deadline_s=cfg.robots_deadline_s if files else cfg.deadline_s)


def host_signals(cfg: DownloadConfig, rows: pa.Table) -> pa.Table:
    """`rows` with the signals of each image host's robots.txt, ai.txt and tdmrep.json added to `signals`.

    Each host's files are fetched once (hosts in parallel, `cfg.threads` at a time); URLs that are not http(s)
    are left to the download, which fails them."""
    if not cfg.robots or cfg.policy == "ignore" or rows.num_rows == 0:
        return rows
    cache = robots.HostCache(robots.fetcher(_opener(cfg, files=True), cfg.timeout_s))
    urls = rows["url"].to_pylist()
    web = [u if (p := urlsplit(u)).scheme in ("http", "https") and p.netloc else None for u in urls]
    first = {robots.origin(u): u for u in reversed(web) if u}
    with ThreadPoolExecutor(max(1, min(cfg.threads, len(first)))) as pool:
        list(pool.map(cache.get, first.values()))
    merged = [sorted(set(old) | set(cache.get(u).signals(u) if u else ())) for u, old in
              zip(web, rows["signals"].to_pylist())]
    i = rows.schema.get_field_index("signals")
    return rows.set_column(i, rows.schema.field(i), pa.array(merged, rows.schema.field(i).type))


_RESULT = pa.schema([f for f in schema.SHARD_SCHEMA if f.name in (
    "status", "error_message", "sha256", "width", "height", "original_width", "original_height", "jpg")])


def _fetch(cfg: DownloadConfig, shard_id: int, rows: pa.Table, tmp: Path) -> tuple[pa.Table, dict]:
    """Download `rows` with img2dataset; returns (uid + result columns, url → X-Robots-Tag values seen).

    A `sha256` column in `rows` holds expected hashes: img2dataset verifies the original bytes against it."""
    empty = pa.schema([pa.field("uid", pa.string())] + list(_RESULT)).empty_table()
    if rows.num_rows == 0:
        return empty, {}
    tmp.mkdir(parents=True, exist_ok=True)
    verify = "sha256" in rows.column_names
    feather.write_feather(rows.select(["uid", "url"] + ["sha256"] * verify), tmp / f"{shard_id:05d}.feather",
                          compression="uncompressed")
    seen_xrt: dict[str, list[str]] = {}
    with netguard.installed(_opener(cfg, seen_xrt if cfg.policy == "record" else None)):
        ok, _ = _img2dataset_downloader(cfg, tmp, verify)((shard_id, str(tmp / f"{shard_id:05d}.feather")))
    if not ok:
        raise RuntimeError(f"img2dataset failed on shard {shard_id}")
    got = pq.read_table(tmp / f"{shard_id:05d}.parquet", columns=empty.schema.names)
    return got.cast(empty.schema), seen_xrt


def _recorded_optouts(table: dict, seen_xrt: dict) -> pa.Array:
    """Policy `record`: every signal that would have excluded a row, X-Robots-Tag on the image included."""
    out = []
    for url, signals in zip(table["url"].to_pylist(), table["signals"].to_pylist()):
        xrt = directive_signals(x_robots_directives(seen_xrt.get(url, []), netguard.USER_AGENT_TOKEN), "x-robots-tag")
        out.append(";".join(list(signals) + xrt) or None)
    return pa.array(out, pa.string())


def _merge(rows: pa.Table, got: pa.Table, seen_xrt: dict, cfg: DownloadConfig) -> pa.Table:
    """The output shard: every input row in input order, with its status and, on success, its image."""
    null = pa.scalar(None, pa.string())
    keys = pa.table({"uid": rows["uid"], "_i": pa.array(range(rows.num_rows), pa.int64())})
    res = keys.join(got, "uid", join_type="left outer").sort_by("_i")  # aligned with rows (uids are unique)
    t = {**{n: rows[n] for n in rows.column_names}, **{n: res[n] for n in got.column_names if n != "uid"}}
    excluded = pc.is_null(t["status"])  # not fetched: the policy excluded it
    signals = pc.binary_join(t["signals"], ";")
    xrt = pc.fill_null(pc.equal(t["error_message"], XRT_MESSAGE), False)
    status = pc.if_else(pc.or_(excluded, xrt), schema.STATUS_OPTED_OUT, t["status"])
    message = pc.binary_join_element_wise("opt-out signal: ", pc.binary_join(t["signals"], ", "), "")
    optout = pc.if_else(excluded, signals, pc.if_else(xrt, "x-robots-tag", null))
    if cfg.policy == "record":
        optout = _recorded_optouts(t, seen_xrt)
    success = pc.equal(status, schema.STATUS_SUCCESS)
    cols = {"status": status, "error_message": pc.if_else(excluded, message, t["error_message"]), "optout": optout,
            "sha256": pc.if_else(success, t["sha256"], null),
            "jpg": pc.if_else(success, t["jpg"], pa.scalar(None, pa.binary()))}
    return pa.table({f.name: cols.get(f.name, t.get(f.name)) for f in schema.SHARD_SCHEMA}, schema=schema.SHARD_SCHEMA)


Gate = Callable[[pa.Table], pa.Table]  # a finished shard table → the same rows, some success rows turned failures


def _scratch(out: Path | str, shard_id: int) -> Path:
    """img2dataset's working folder of a shard: `<out>/_tmp/<id>` for a local output; for object storage a folder
    of this node's temporary directory (named after the output, emptied first: a killed try's leftovers go)."""
    if not storage.is_remote(out):
        return out / "_tmp" / f"{shard_id:05d}"
    tag = hashlib.sha256(str(out).encode()).hexdigest()[:12]
    tmp = Path(tempfile.gettempdir()) / "mithridate-download" / tag / f"{shard_id:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def download_shard(cfg: DownloadConfig, shard_id: int, rows: pa.Table, gate: Gate | None = None) -> dict:
    """Download one shard and write `<out>/<id>.parquet` then `<out>/__stats__/<id>.json`; returns the stats. On
    object storage each is one upload of the finished file, the shard before its marker.

    `rows` may carry an expected `sha256` column (see `_fetch`); `gate` is applied before the shard is written."""
    out, t0 = storage.location(cfg.out), time.time()
    rows = host_signals(cfg, rows)
    has_signal = pc.greater(pc.list_value_length(rows["signals"]), 0)
    fetch = rows.filter(pc.invert(has_signal)) if cfg.policy == "honor" else rows
    tmp = _scratch(out, shard_id)
    got, seen_xrt = _fetch(cfg, shard_id, fetch, tmp)
    table = _merge(rows, got, seen_xrt, cfg)
    table = gate(table) if gate is not None else table
    schema.write(table, storage.join(out, f"{shard_id:05d}.parquet"), "shard", {"policy": cfg.policy})
    stats = funnel.shard_stats(table, time.time() - t0)
    stats_files.write(out, stats, f"{shard_id:05d}")
    shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _plan(cfg: DownloadConfig) -> list[tuple[int, shard_plan.Shard]]:
    """The input shards: (id, segments of the pairs files), checked for repeated uids (only uids are read)."""
    dup = shard_plan.count_duplicates(cfg.pairs, "pairs")
    if dup:
        raise ValueError(f"pairs {cfg.pairs}: {dup} duplicate uids; write pairs with `mithridate pairs`/`crawl`")
    return list(enumerate(shard_plan.plan(cfg.pairs, "pairs", cfg.shard_size)))


def _rows(shard: shard_plan.Shard, expected_sha256: Mapping[str, str] | None) -> pa.Table:
    """The pairs of one shard; with `expected_sha256`, a `sha256` column of expected hashes (a uid without one fails
    verification)."""
    table = shard_plan.read(shard, "pairs")
    if expected_sha256 is None:
        return table
    return table.append_column("sha256", pa.array([expected_sha256.get(u) for u in table["uid"].to_pylist()],
                                                   pa.string()))


def download_planned(cfg: DownloadConfig, shard_id: int, shard: shard_plan.Shard,
                     expected_sha256: Mapping[str, str] | None = None, gate: Gate | None = None) -> dict:
    """`download_shard` of a planned shard, reading only its rows (the unit of work of `engine=ray`)."""
    return download_shard(cfg, shard_id, _rows(shard, expected_sha256), gate)


def _worker_init() -> None:
    """Import img2dataset (≈2 s: torch, albumentations) before any shard is timed; a worker dies with its parent."""
    workers.die_with_parent()  # a kill -9 of the run must not leave workers writing shards beside its rerun
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import img2dataset.downloader  # noqa: F401


RUNTIME_FIELDS = ("processes", "threads", "engine", "shard_retries")  # speed, not results: a rerun may change them


def _run_local(cfg: DownloadConfig, todo: list, expected_sha256: Mapping[str, str] | None, gate: Gate | None) -> None:
    """The shards in this process, or in `cfg.processes` worker processes."""
    if cfg.processes == 1 or len(todo) <= 1:
        for k, shard in progress.bar(todo, "download", "shard"):
            download_shard(cfg, k, _rows(shard, expected_sha256), gate)
        return
    ctx = get_context("spawn")
    with ProcessPoolExecutor(cfg.processes, mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(download_shard, cfg, k, _rows(shard, expected_sha256), gate) for k, shard in todo]
        for f in progress.bar(futures, "download", "shard"):
            f.result()


def _run_ray(cfg: DownloadConfig, todo: list, expected_sha256: Mapping[str, str] | None, gate: Gate | None) -> None:
    """One Ray task per shard, reading its own rows; the expected hashes and the gate go to the cluster once."""
    if not todo:
        return
    ray = engine.ray_init()
    env = {"env_vars": {"OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_pixels), "NO_ALBUMENTATIONS_UPDATE": "1"}}
    shared = (ray.put(dict(expected_sha256)) if expected_sha256 is not None else None, ray.put(gate))
    calls = {f"{k:05d}": (cfg, k, shard, *shared) for k, shard in todo}
    engine.run_tasks(download_planned, calls, cfg.shard_retries, "download", runtime_env=env)


def run(cfg: DownloadConfig, expected_sha256: Mapping[str, str] | None = None,
        gate: Gate | None = None) -> Path | str:
    """Download every pair under the opt-out policy; writes shards, per-shard stats and the run's (`<out>/__stats__/`).

    `expected_sha256` (uid → hex digest): img2dataset's `verify_hash_type` checks each image's original bytes
    and fails a changed one with "hash mismatch". `gate` (picklable with processes > 1 or engine ray) post-checks
    each shard. With engine ray, a shard failing on every try raises `engine.ShardsFailed` naming it."""
    out = storage.location(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=RUNTIME_FIELDS)
    options.write_config(cfg, out)
    shards = _plan(cfg)
    todo = [(k, t) for k, t in shards if not stats_files.done(out, f"{k:05d}")]
    logger.info("download: %d shards, %d already finished, policy=%s", len(shards), len(shards) - len(todo),
                cfg.policy)
    # OpenCV reads its decoder's pixel cap once, when it is first imported: set it before that (workers inherit it)
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_pixels)
    if cfg.engine == "local":
        _worker_init()
    t0 = time.time()
    (_run_ray if cfg.engine == "ray" else _run_local)(cfg, todo, expected_sha256, gate)
    stats = funnel.folder_stats(out, time.time() - t0)
    stats_files.write(out, stats)
    logger.info("download: %d rows, %d success (%.1f img/s) → %s", stats["rows"], stats["status"].get("success", 0),
                stats["images_per_s"], out)
    return out
