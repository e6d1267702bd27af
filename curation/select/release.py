"""Split-view poisoning (Carlini et al. 2023, arXiv 2302.10149): publish a dataset with content hashes, rebuild it.

A URL list is a promise about content it does not hold: whoever buys an expired domain after publication decides
what its URLs serve to everyone who downloads the list later. `release` publishes URLs with the sha256 of the
original bytes (the download shards' `sha256`, joined to the export rows by uid) and a pHash of the stored image.
`rebuild` downloads a release again with the download stage (img2dataset behind netguard), once per mode:

- `sha256`: img2dataset's `verify_hash_type`; a changed image is a failed row, "hash mismatch";
- `none`: no verification — what most users of a URL list do;
- `phash`: no byte check; a success row stays only when its pHash is within `phash_k` bits of the released one.

`integrity.json` counts per mode what changed (the bytes served hash otherwise than the release), how much of it
was caught (dropped) or admitted (kept), per domain too, and lists the admitted uids.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from curation.acquire import downloader, funnel, netguard
from curation.acquire.pairs import domain_of
from curation.select import dedup
from mithridate.core import engine, options, schema, storage

logger = logging.getLogger(__name__)

MODES = ("sha256", "none", "phash")
HASH_MISMATCH = "hash mismatch"  # img2dataset's error message
PHASH_MISMATCH = "phash mismatch"
RELEASE_FILE, INTEGRITY_FILE = "release.parquet", "integrity.json"


@dataclass(frozen=True)
class ReleaseConfig:
    export: str = options.opt("mithridate-out/train", "train-ready shards to publish (export output)")
    shards: str = options.opt("mithridate-out/shards", "download shards the export came from (original sha256)")
    out: str = options.opt("mithridate-out/release", "output folder: release.parquet and config.json")

    def __post_init__(self):
        storage.check_fields(self, "export", "shards", "out")


@dataclass(frozen=True)
class RebuildConfig:
    release: str = options.opt("mithridate-out/release/release.parquet", "release file to download again")
    out: str = options.opt("mithridate-out/rebuild", "output folder: pairs/, one download folder per mode, "
                           "integrity.json")
    modes: tuple[Literal["sha256", "none", "phash"], ...] = options.opt(
        MODES, "verification modes, one download each: sha256 = img2dataset's hash check of the original bytes, "
        "none = no check, phash = keep an image within phash_k bits of the released pHash")
    phash_k: int = options.opt(8, "phash mode: largest Hamming distance (bits of 64) to the released pHash kept")
    policy: Literal["honor", "record", "ignore"] = options.opt("honor", "opt-out policy of the download (X-Robots-Tag)")
    image_size: int = options.opt(64, "side of the stored images in pixels (as the release's, for pHash)")
    resize_mode: Literal["border", "center_crop", "keep_ratio", "keep_ratio_largest", "no"] = options.opt(
        "border", "img2dataset resize mode (as the release's, for pHash)")
    processes: int = options.opt(1, "worker processes (each downloads one shard at a time)")
    threads: int = options.opt(64, "download threads per process")
    timeout_s: float = options.opt(10.0, "socket timeout of one read of an image request")
    deadline_s: float = options.opt(30.0, "total time of one image request: connect, headers and body")
    retries: int = options.opt(0, "retries of a failed image request")
    shard_size: int = options.opt(10000, "rows per output shard")
    allow_networks: tuple[str, ...] = options.opt((), "private/loopback networks that may be contacted (CIDR)")
    engine: engine.Engine = options.opt("local", "where each mode's shards are downloaded: local (processes) or ray "
                                        "(one Ray task per shard on the cluster RAY_ADDRESS names, else a local one)")
    shard_retries: int = options.opt(2, "engine ray: more tries of a shard that fails before the run fails naming it")

    def __post_init__(self):
        if not self.modes or len(set(self.modes)) != len(self.modes) or set(self.modes) - set(MODES):
            raise ValueError(f"RebuildConfig.modes={self.modes!r}: allowed values are distinct ones of "
                             f"{', '.join(MODES)}")
        if not 0 <= self.phash_k <= 64:
            raise ValueError(f"RebuildConfig.phash_k={self.phash_k!r}: must be within [0, 64]")
        options.check_positive(self, "image_size", "processes", "threads", "timeout_s", "deadline_s", "shard_size")
        for name in ("policy", "resize_mode"):
            options.check_choice(self, name, options.literal_values(RebuildConfig, name))
        if self.retries < 0 or self.shard_retries < 0:
            raise ValueError(f"RebuildConfig.retries={self.retries!r}, shard_retries={self.shard_retries!r}: must be "
                             ">= 0")
        engine.check(self.engine)
        storage.check_fields(self, "release", "out")
        netguard.parse_networks(self.allow_networks)


RELEASE_PRESETS = {"default": ReleaseConfig(), "tiny": ReleaseConfig()}
REBUILD_PRESETS = {"default": RebuildConfig(), "tiny": RebuildConfig(threads=16, timeout_s=1.0, shard_size=200)}


# --- release ------------------------------------------------------------------------------------------------

def _original_hashes(shards: str) -> pa.Table:
    """uid, sha256 of every successful download in a download folder."""
    t = schema.read_folder(shards, "shard", columns=["uid", "status", "sha256"])
    return t.filter(pc.equal(t["status"], schema.STATUS_SUCCESS)).select(["uid", "sha256"])


def _published(path: Path | str, hashes: pa.Table, cfg: ReleaseConfig) -> pa.Table:
    """The release rows of one export shard: its rows with their original sha256 and a pHash of the stored image."""
    t = schema.read(path, "train", columns=["uid", "url", "caption", "domain", "artist", "licence", "jpg"])
    keys = pa.table({"uid": t["uid"], "_i": pa.array(range(t.num_rows), pa.int64())})
    sha = keys.join(hashes, "uid", join_type="left outer").sort_by("_i")["sha256"]
    if sha.null_count:
        raise ValueError(f"ReleaseConfig.shards={cfg.shards!r}: {sha.null_count} rows of {path} have no successful "
                         "download there (no original sha256); give the download folder the export came from")
    cols = {n: t[n] for n in ("uid", "url", "caption", "domain", "artist", "licence")}
    return pa.table({**cols, "sha256": sha, "phash": pa.array(dedup.phashes(t["jpg"].to_pylist()), pa.string())},
                    schema=schema.RELEASE_SCHEMA)


def release(cfg: ReleaseConfig) -> Path | str:
    """Write `<out>/release.parquet` (schema release: uid, url, caption, sha256, phash, artist, licence …)."""
    out = storage.location(cfg.out)
    options.write_config(cfg, out)
    files = storage.glob(cfg.export, "[0-9]*.parquet")
    if not files:
        raise FileNotFoundError(f"ReleaseConfig.export={cfg.export!r}: no train shards; run `export` first")
    hashes = _original_hashes(cfg.shards)
    table = pa.concat_tables([_published(f, hashes, cfg) for f in files])
    path = schema.write(table, storage.join(out, RELEASE_FILE), "release", {"export": cfg.export, "shards": cfg.shards})
    logger.info("release: %d URLs with sha256 + pHash (%d domains) → %s", table.num_rows,
                pc.count_distinct(table["domain"]).as_py(), path)
    return out


# --- rebuild ------------------------------------------------------------------------------------------------

def phash_distance(a: str | None, b: str | None) -> int | None:
    """Hamming distance of two 16-hex-char pHashes; None when either is missing."""
    return None if a is None or b is None else (int(a, 16) ^ int(b, 16)).bit_count()


def phash_gate(released: dict[str, str | None], k: int, table: pa.Table) -> pa.Table:
    """Mode phash: a success row whose stored image is more than `k` bits from its released pHash (or has no pHash)
    becomes a failed row, "phash mismatch: …", without its image; its sha256 (of the bytes served) stays."""
    status, message, jpg = (table[c].to_pylist() for c in ("status", "error_message", "jpg"))
    for i, uid in enumerate(table["uid"].to_pylist()):
        if status[i] != schema.STATUS_SUCCESS:
            continue
        d = phash_distance(dedup.phash(jpg[i]), released.get(uid))
        if d is None or d > k:
            status[i], jpg[i] = schema.STATUS_FAILED_DOWNLOAD, None
            message[i] = f"{PHASH_MISMATCH}: " + (f"distance {d} > phash_k={k}" if d is not None else "no pHash")
    for name, values in (("status", status), ("error_message", message), ("jpg", jpg)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    return table


def _write_pairs(rel: pa.Table, folder: Path | str) -> None:
    """The release as one pairs shard (uids kept), the download stage's input."""
    n, urls = rel.num_rows, rel["url"].to_pylist()
    domains = [d or domain_of(u) for d, u in zip(rel["domain"].to_pylist(), urls)]
    pairs = pa.table({"uid": rel["uid"], "url": rel["url"], "caption": rel["caption"],
                      "page_url": pa.nulls(n, pa.string()), "domain": pa.array(domains, pa.string()),
                      "source": pa.array(["urllist"] * n, pa.string()),
                      "signals": pa.array([[]] * n, pa.list_(pa.string()))})
    schema.write(pairs, storage.join(folder, "00000.parquet"), "pairs")


def _download_config(cfg: RebuildConfig, mode: str) -> downloader.DownloadConfig:
    out = storage.location(cfg.out)
    return downloader.DownloadConfig(
        pairs=str(storage.join(out, "pairs")), out=str(storage.join(out, mode)), policy=cfg.policy,
        image_size=cfg.image_size, resize_mode=cfg.resize_mode, processes=cfg.processes, threads=cfg.threads, timeout_s=cfg.timeout_s,
        deadline_s=cfg.deadline_s, retries=cfg.retries, shard_size=cfg.shard_size, allow_networks=cfg.allow_networks,
        engine=cfg.engine, shard_retries=cfg.shard_retries)


def _rebuild_mode(cfg: RebuildConfig, rel: pa.Table, mode: str) -> Path | str:
    """Download the release into `<out>/<mode>/` (shard schema), verified as `mode` says."""
    dl, uids = _download_config(cfg, mode), rel["uid"].to_pylist()
    if mode == "sha256":
        return downloader.run(dl, expected_sha256=dict(zip(uids, rel["sha256"].to_pylist())))
    if mode == "phash":
        return downloader.run(dl, gate=functools.partial(phash_gate, dict(zip(uids, rel["phash"].to_pylist())),
                                                         cfg.phash_k))
    return downloader.run(dl)


def integrity(rel: pa.Table, rebuilt: pa.Table) -> dict:
    """Counts of one mode. changed: the server sent bytes whose sha256 differs from the release (the fetched sha256,
    or img2dataset's "hash mismatch"); caught = changed and dropped; admitted = changed and kept; failed = nothing
    was fetched (404, timeout, …)."""
    expected = dict(zip(rel["uid"].to_pylist(), rel["sha256"].to_pylist()))
    counts, reasons = collections.Counter(), collections.Counter()
    domains: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    admitted = []
    cols = ("uid", "domain", "status", "error_message", "sha256")
    for uid, domain, status, msg, sha in zip(*(rebuilt[c].to_pylist() for c in cols)):
        kept, msg = status == schema.STATUS_SUCCESS, msg or ""
        if not (kept or msg.startswith((HASH_MISMATCH, PHASH_MISMATCH))):
            counts["failed"] += 1
            reasons[schema.STATUS_OPTED_OUT if status == schema.STATUS_OPTED_OUT else funnel.failure_reason(msg)] += 1
            continue
        counts["fetched"] += 1
        if not (msg.startswith(HASH_MISMATCH) or (sha is not None and sha != expected.get(uid))):
            counts["unchanged_kept" if kept else "unchanged_dropped"] += 1
            continue
        counts["changed"] += 1
        counts["admitted" if kept else "caught"] += 1
        domains[domain]["changed"] += 1
        if kept:
            domains[domain]["admitted"] += 1
            admitted.append(uid)
    keys = ("fetched", "changed", "caught", "admitted", "unchanged_kept", "unchanged_dropped", "failed")
    return {"urls": rebuilt.num_rows, **{k: counts[k] for k in keys}, "failure_reasons": dict(reasons),
            "by_domain": {d: {"changed": c["changed"], "admitted": c["admitted"]} for d, c in sorted(domains.items())},
            "admitted_uids": sorted(admitted)}


def rebuild(cfg: RebuildConfig) -> Path | str:
    """Download a release once per mode into `<out>/<mode>/` and write `<out>/integrity.json`; returns `<out>`."""
    if not storage.isfile(cfg.release):
        raise FileNotFoundError(f"RebuildConfig.release={cfg.release!r}: file not found; write one with `release`")
    out = storage.location(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=("processes", "threads", "modes", "engine", "shard_retries"))
    options.write_config(cfg, out)
    rel = schema.read(cfg.release, "release")
    _write_pairs(rel, storage.join(out, "pairs"))
    report = {"release": cfg.release, "urls": rel.num_rows, "phash_k": cfg.phash_k, "modes": {}}
    for mode in cfg.modes:
        rebuilt = schema.read_folder(_rebuild_mode(cfg, rel, mode), "shard", ["uid", "domain", "status",
                                                                               "error_message", "sha256"])
        report["modes"][mode] = r = integrity(rel, rebuilt)
        logger.info("rebuild %s: %d/%d fetched, %d changed: %d caught, %d admitted; %d unchanged kept, %d failed",
                    mode, r["fetched"], r["urls"], r["changed"], r["caught"], r["admitted"], r["unchanged_kept"],
                    r["failed"])
    storage.write_text(storage.join(out, INTEGRITY_FILE), json.dumps(report, indent=2) + "\n")
    return out
