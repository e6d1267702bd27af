"""`mithridate embed`: downloaded shards → L2-normalised CLIP image and text embeddings, one `.npz` per shard.

    <out>/NNNNN.npz         uid (str, N), img_emb and txt_emb (float16, N × D, L2-normalised), encoder (0-d str);
                            rows are the shard's success rows in shard order, minus those listed as failed
    <out>/__stats__/NNNNN.json  rows, success, embedded, failed [{uid, error}], seconds — written last (shard done)
    <out>/encoder.json      name, model, pretrained, dim
    <out>/__stats__/run.json    totals and images/s of the run

The default `out` is `<shards>/../embeddings/<encoder name>`. A shard whose stats file exists and whose npz
holds exactly its success uids is skipped, so a rerun resumes. Images are decoded and preprocessed in a
background thread while the previous batch is encoded. With `engine=ray` a pool of Ray actors (GPU actors when the
cluster has GPUs: `num_gpus` each) loads the encoder once each and is fed shards; each actor skips finished ones.
Both engines write the same files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image
from tqdm import tqdm

from curation.score import encoders
from mithridate.core import compute, engine, options, schema, stats_files, storage

logger = logging.getLogger(__name__)

SHARD_GLOB = "[0-9][0-9][0-9][0-9][0-9].parquet"


@dataclass(frozen=True)
class EmbedConfig:
    shards: str = options.opt("mithridate-out/shards", "folder of downloaded shards (NNNNN.parquet); a local path or "
                              "an fsspec URL (s3://bucket/prefix)")
    out: str = options.opt("", "output folder ('' = <shards>/../embeddings/<encoder name>); a local path or an "
                           "fsspec URL")
    model: str = options.opt("compact", "'compact' (our checkpoint, named by pretrained) or an open_clip model name")
    pretrained: str = options.opt("mithridate-out/clip", "compact: clip.pt or the `clip train` folder; open_clip: a "
                                  "pretrained tag already in the local cache, or a weights file")
    batch_size: int = options.opt(256, "images (and texts) per forward pass")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    cache_dir: str = options.opt("", "open_clip / Hugging Face weights cache ('' = their defaults)")
    layout: Literal["npz", "clip-retrieval"] = options.opt(
        "npz", "npz: one NNNNN.npz per shard (what filter and aesthetic read); clip-retrieval: also <out>/"
        "clip-retrieval/{img_emb,text_emb,metadata}/ (the input of clip-retrieval's index step)")
    engine: engine.Engine = options.opt("local", "where shards are embedded: local (this process) or ray (a pool of "
                                        "actors on the cluster RAY_ADDRESS names, else a local one, each loading the "
                                        "encoder once); switching resumes the same folder")
    num_gpus: float = options.opt(1.0, "engine ray: GPUs per actor when the cluster has GPUs (0.5: two actors share "
                                  "one); a cluster without GPUs runs CPU actors")
    actors: int = options.opt(0, "engine ray: actors in the pool (0: as many as the GPUs hold, else one per 2 CPUs)")
    shard_retries: int = options.opt(2, "engine ray: more tries of a shard that fails (an error, a dead actor) "
                                     "before the run fails naming it")

    def __post_init__(self):
        options.check_positive(self, "batch_size")
        for name in ("num_gpus", "actors", "shard_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"EmbedConfig.{name}={getattr(self, name)!r}: must be >= 0")
        engine.check(self.engine)
        storage.check_fields(self, "shards", "out")
        options.check_choice(self, "layout", options.literal_values(EmbedConfig, "layout"))
        if self.layout == "clip-retrieval" and (storage.is_remote(self.shards) or storage.is_remote(self.out)):
            raise ValueError(f"EmbedConfig.layout='clip-retrieval' with shards={self.shards!r}, out={self.out!r}: "
                             "the clip-retrieval layout is written to local folders only; allowed: layout='npz' "
                             "with an fsspec URL")
        compute.resolve_device(self.device)


PRESETS = {"default": EmbedConfig(), "tiny": EmbedConfig(batch_size=32)}


def shard_files(folder: str | Path) -> list[Path | str]:
    """The `NNNNN.parquet` shards of a download folder, in order.

    Raises:
        FileNotFoundError: the folder holds none.
    """
    files = storage.glob(folder, SHARD_GLOB)
    if not files:
        raise FileNotFoundError(f"no NNNNN.parquet shards in {folder} (run `mithridate download` first)")
    return files


def success_uids(shard: Path | str) -> list[str]:
    """uids of a shard's success rows, in shard order."""
    t = schema.read(shard, "shard", ["uid", "status"])
    return t.filter(pc.equal(t["status"], schema.STATUS_SUCCESS))["uid"].to_pylist()


# --- one shard ------------------------------------------------------------------------------------------------------


def _prepare(encoder: encoders.Encoder, rows: list[dict]) -> tuple[torch.Tensor, list[int], list]:
    """Decode and preprocess a batch of rows: (pixels `(n, 3, S, S)`, positions in `rows` decoded, failures)."""
    images, ok, failed = [], [], []
    for i, r in enumerate(rows):
        try:
            if r["jpg"] is None:
                raise ValueError("success row without image bytes")
            im = Image.open(io.BytesIO(r["jpg"]))
            im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            failed.append({"uid": r["uid"], "error": f"{type(err).__name__}: {err}"[:200]})
            continue
        images.append(im)
        ok.append(i)
    return encoder.preprocess_images(images), ok, failed


def embed_rows(encoder: encoders.Encoder, rows: list[dict], batch_size: int, bar=None) -> dict:
    """Embed rows (`uid`, `text`, `jpg`): images in batches, decoding batch k+1 in a thread while batch k is
    encoded; then the texts of the decoded rows, all at once (distinct texts once, batched by length).

    Returns:
        `{"uid": list, "img_emb": (N, D) float32, "txt_emb": (N, D) float32, "failed": [{uid, error}]}`; rows
        whose image does not decode are left out and listed in `failed`.
    """
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    ok, img, failed = [], [], []
    with ThreadPoolExecutor(1, thread_name_prefix="embed-decode") as pool:
        nxt = pool.submit(_prepare, encoder, batches[0]) if batches else None
        for k in range(len(batches)):
            pixels, good, bad = nxt.result()
            if k + 1 < len(batches):
                nxt = pool.submit(_prepare, encoder, batches[k + 1])
            if good:
                img.append(encoder.encode_pixels(pixels, batch_size))
            ok += [k * batch_size + i for i in good]
            failed += bad
            if bar is not None:
                bar.update(len(batches[k]))
    empty = np.zeros((0, encoder.dim), np.float32)
    txt = encoder.encode_texts([rows[i]["caption"] for i in ok], batch_size) if ok else empty
    return {"uid": [rows[i]["uid"] for i in ok], "img_emb": np.concatenate(img) if img else empty, "txt_emb": txt,
            "failed": failed}


def _write_npz(path: Path | str, uid: list[str], img: np.ndarray, txt: np.ndarray, encoder_name: str) -> None:
    with storage.output(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
        np.savez(fh, uid=np.array(uid, dtype=str).reshape(-1), img_emb=img.astype(np.float16),
                 txt_emb=txt.astype(np.float16), encoder=np.array(encoder_name))


def embed_shard(encoder: encoders.Encoder, shard: Path | str, out: Path | str, batch_size: int, bar=None) -> dict:
    """Embed one shard's success rows into `<out>/<id>.npz`, then write `<out>/__stats__/<id>.json` (done marker)."""
    t0 = time.perf_counter()
    shard_name, shard_stem = storage.name(shard), storage.stem(shard)
    table = schema.read(shard, "shard", ["uid", "status", "caption", "jpg"])
    rows = table.filter(pc.equal(table["status"], schema.STATUS_SUCCESS)).select(["uid", "caption", "jpg"]).to_pylist()
    res = embed_rows(encoder, rows, batch_size, bar)
    _write_npz(storage.join(out, f"{shard_stem}.npz"), res["uid"], res["img_emb"], res["txt_emb"], encoder.name)
    if res["failed"]:
        logger.warning("embed: shard %s: %d success rows have undecodable images; left out of the npz and listed "
                       "in %s (first: %s)", shard_name, len(res["failed"]), stats_files.path(out, shard_stem),
                       res["failed"][0])
    stats = {"shard": shard_name, "rows": table.num_rows, "success": len(rows), "embedded": len(res["uid"]),
             "failed": res["failed"], "encoder": encoder.name, "seconds": round(time.perf_counter() - t0, 3)}
    stats_files.write(out, stats, shard_stem, indent=1)
    return stats


# --- folders ----------------------------------------------------------------------------------------------------------


def _failed_uids(out: Path | str, shard_stem: str) -> set[str]:
    return {f["uid"] for f in stats_files.read_or_empty(out, shard_stem).get("failed", [])}


def _is_done(out: Path | str, shard: Path | str, encoder_name: str) -> bool:
    stem = storage.stem(shard)
    npz = storage.join(out, f"{stem}.npz")
    if not (stats_files.done(out, stem) and storage.isfile(npz)):
        return False
    failed = _failed_uids(out, stem)
    with storage.load_npz(npz) as z:
        same = str(z["encoder"]) == encoder_name and z["uid"].tolist() == [
            u for u in success_uids(shard) if u not in failed]
    if not same:
        logger.info("embed: %s is stale (shard or encoder changed); embedding it again", storage.name(npz))
    return same


def _check_encoder(out: Path | str, name: str) -> None:
    path = storage.join(out, "encoder.json")
    old = json.loads(storage.read_text(path)).get("name") if storage.isfile(path) else name
    if old != name:
        raise ValueError(f"{out} holds embeddings of encoder {old!r}, not {name!r}; choose another output "
                         "folder (the default `out` is named after the encoder) or delete it")


RUNTIME_FIELDS = ("batch_size", "device", "layout", "engine", "num_gpus", "actors", "shard_retries")


class Embedder:
    """The unit of work of `engine=ray`: a Ray actor holding the encoder, loaded once, fed shards."""

    def __init__(self, cfg: EmbedConfig, cwd: str):
        engine.enter(cwd)
        self.cfg = cfg
        self.encoder = encoders.load_encoder(cfg.model, cfg.pretrained, cfg.device, cfg.cache_dir or None)

    def info(self) -> tuple[dict, str]:
        """(the encoder's `info()`, its device)."""
        return self.encoder.info(), self.encoder.device

    def embed(self, shard: str, out: str) -> dict | None:
        """`embed_shard`, unless the shard is finished (then None)."""
        if _is_done(storage.location(out), storage.location(shard), self.encoder.name):
            return None
        return embed_shard(self.encoder, storage.location(shard), storage.location(out), self.cfg.batch_size)


def _start(cfg: EmbedConfig) -> tuple[dict, str, object]:
    """(encoder info, device, what embeds the shards: the encoder here, or the Ray actors)."""
    if cfg.engine == "local":
        encoder = encoders.load_encoder(cfg.model, cfg.pretrained, cfg.device, cfg.cache_dir or None)
        return encoder.info(), encoder.device, encoder
    n, gpus, cpus = engine.pool_size(cfg.actors, cfg.num_gpus)
    actors = engine.start_actors(Embedder, (cfg, os.getcwd()), n, cfg.shard_retries, num_cpus=cpus, num_gpus=gpus)
    info, device = engine.ray_init().get(actors[0].info.remote())
    logger.info("embed: %d Ray actors (%s CPUs, %s GPUs each) on %s", n, cpus, gpus, device)
    return info, device, actors


def _embed_local(encoder: encoders.Encoder, files: list, out: Path | str, cfg: EmbedConfig) -> list[dict]:
    todo = [f for f in files if not _is_done(out, f, encoder.name)]
    logger.info("embed: %d shards (%d already done) with %s on %s → %s", len(files), len(files) - len(todo),
                encoder.name, encoder.device, out)
    total = sum(len(success_uids(f)) for f in todo)
    with tqdm(total=total, desc="embed", unit="img", leave=False, disable=None) as bar:
        return [embed_shard(encoder, f, out, cfg.batch_size, bar) for f in todo]


def _embed_ray(actors: list, files: list, out: Path | str, cfg: EmbedConfig) -> list[dict]:
    calls = {storage.stem(f): (storage.resolve(f), storage.resolve(out)) for f in files}
    done = engine.run_on_actors(actors, "embed", calls, cfg.shard_retries, "embed")
    return [done[storage.stem(f)] for f in files if done[storage.stem(f)] is not None]


def _default_out(shards: str, name: str) -> Path | str:
    """`<shards>/../embeddings/<encoder name>`."""
    if storage.is_remote(shards):
        return storage.join(storage.parent(shards), "embeddings", name)
    return Path(shards).resolve().parent / "embeddings" / name


def run(cfg: EmbedConfig) -> Path | str:
    """Embed every shard of `cfg.shards` (skipping finished ones); returns the output folder."""
    files = shard_files(cfg.shards)
    info, device, worker = _start(cfg)
    out = storage.location(cfg.out) if cfg.out else _default_out(cfg.shards, info["name"])
    options.check_resumable(cfg, out, runtime_fields=RUNTIME_FIELDS)
    _check_encoder(out, info["name"])
    options.write_config(cfg, out)
    storage.write_text(storage.join(out, "encoder.json"), json.dumps(info, indent=2) + "\n")
    if cfg.engine == "ray":  # the actors skip finished shards themselves
        logger.info("embed: %d shards with %s on %d Ray actors → %s", len(files), info["name"], len(worker), out)
    t0 = time.perf_counter()
    stats = (_embed_ray if cfg.engine == "ray" else _embed_local)(worker, files, out, cfg)
    seconds = time.perf_counter() - t0
    embedded = sum(s["embedded"] for s in stats)
    summary = {"shards": len(files), "shards_embedded": len(stats), "embedded": embedded,
               "failed": sum(len(s["failed"]) for s in stats), "encoder": info["name"], "device": device,
               "seconds": round(seconds, 3), "images_per_s": round(embedded / max(seconds, 1e-9), 1)}
    stats_files.write(out, summary)
    logger.info("embed: %d images in %.1f s (%.0f img/s), %d undecodable → %s", embedded, seconds,
                summary["images_per_s"], summary["failed"], out)
    if cfg.layout == "clip-retrieval":
        from curation.score import clip_retrieval

        clip_retrieval.write(out, out / "clip-retrieval", cfg.shards)
    return out


def _shards_folder(folder: Path | str, shards: str | Path | None) -> Path | str:
    if shards is not None:
        return storage.location(shards)
    cfg = storage.join(folder, "config.json")
    if not storage.isfile(cfg):
        raise ValueError(f"{folder}: no config.json naming the shards folder; pass shards=<download folder>")
    return storage.location(json.loads(storage.read_text(cfg))["shards"])


def load_embeddings(folder: str | Path, shard_id: int | str, shards: str | Path | None = None) -> dict:
    """Read one shard's embeddings and check they line up with the shard's success rows.

    Args:
        folder: an `embed` output folder.
        shard_id: 3 or "00003".
        shards: the download folder ('None': the one named in `<folder>/config.json`).

    Returns:
        `{"uid": (N,) str, "img_emb": (N, D) float16, "txt_emb": (N, D) float16, "encoder": str}`.

    Raises:
        FileNotFoundError: no npz for this shard.
        ValueError: the npz rows are not the shard's success rows (minus recorded failures), in order.
    """
    folder = storage.location(folder)
    stem = f"{int(shard_id):05d}"
    npz = storage.join(folder, f"{stem}.npz")
    if not storage.isfile(npz):
        raise FileNotFoundError(f"no embeddings for shard {stem} in {folder} (run `mithridate embed`)")
    with storage.load_npz(npz) as z:
        data = {"uid": z["uid"], "img_emb": z["img_emb"], "txt_emb": z["txt_emb"], "encoder": str(z["encoder"])}
    shard = storage.join(_shards_folder(folder, shards), f"{stem}.parquet")
    failed = _failed_uids(folder, stem)
    expected = [u for u in success_uids(shard) if u not in failed]
    got = data["uid"].tolist()
    if got != expected:
        pairs = enumerate(zip(got, expected, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
        raise ValueError(f"embeddings {npz} do not line up with shard {shard}: {len(got)} rows vs {len(expected)} "
                         f"success rows, first difference at row {first}; rerun `mithridate embed`")
    return data


def load_all(folder: str | Path, shards: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every shard's embeddings, checked and concatenated: (uid `(N,)`, img_emb `(N, D)`, txt_emb `(N, D)`)."""
    folder = storage.location(folder)
    parts = [load_embeddings(folder, storage.stem(f), shards)
             for f in storage.glob(folder, "[0-9][0-9][0-9][0-9][0-9].npz")]
    if not parts:
        raise FileNotFoundError(f"no NNNNN.npz embeddings in {folder}")
    return tuple(np.concatenate([p[k] for p in parts]) for k in ("uid", "img_emb", "txt_emb"))
