"""`mithridate poison inject`: N poisons of one attack mixed into a copy of the clean training shards.

The output folder holds the clean shards (copied unchanged), one poison shard `90000.parquet` in the same TRAIN
schema (so `mithridate train --data=<out>` reads it like any export), `poisons.parquet` (one row per poison:
attack, source and target concept, the clean row it came from, and its image quality) and `manifest.json`.

Attacks:
- "dirty_label": images of the target concept A paired with captions of the source concept C (no pixel change).
- "nightshade": images of C, perturbed so that the model's autoencoder encodes them like an image of A
  (`poisoning.nightshade.craft`), with their own captions. Poisons are stored losslessly as PNG at the model's
  resolution: a JPEG re-encoding would already be a purification defence.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from curation import options, schema
from diffusion import data, pipeline
from diffusion.text import TextEncoder
from poisoning import candidates

logger = logging.getLogger(__name__)

POISON_SHARD = "90000.parquet"
ATTACKS = ("dirty_label", "nightshade")


@dataclass(frozen=True)
class InjectConfig:
    data: str = options.opt("mithridate-out/train", "clean training shards (export output)")
    checkpoint: str = options.opt("mithridate-out/diffusion", "the clean model: its VAE is attacked, its text "
                                  "encoder ranks candidates, its concepts are the known names")
    out: str = options.opt("mithridate-out/poisoned", "output: clean shards + 90000.parquet, poisons.parquet")
    source: str = options.opt("automobile", "source concept C whose prompt the attack hijacks")
    target: str = options.opt("elephant", "target concept A that prompts for C should produce")
    n: int = options.opt(8, "number of poisons")
    attack: Literal["dirty_label", "nightshade"] = options.opt("nightshade", "attack")
    eps: float = options.opt(0.04, "nightshade: L∞ budget in [0, 1] pixel units")
    steps: int = options.opt(500, "nightshade: optimisation steps")
    min_clip_score: float = options.opt(0.0, "candidates: minimum image–caption CLIP score")
    seed: int = options.opt(0, "seed of candidate ties, image choice and the attack")

    def __post_init__(self):
        options.check_positive(self, "n", "steps")
        options.check_choice(self, "attack", ATTACKS)
        if not 0 < self.eps <= 1:
            raise ValueError(f"InjectConfig.eps={self.eps!r}: must be within (0, 1]")
        if self.source == self.target:
            raise ValueError(f"InjectConfig.target={self.target!r}: must differ from source")


PRESETS = {"default": InjectConfig(), "tiny": InjectConfig(n=2, steps=20)}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _rows(images: data.ImageSet, idx: np.ndarray, pixels: np.ndarray, captions: list[str], cfg: InjectConfig) -> list:
    return [{"uid": f"poison-{cfg.attack}-{k:05d}-{images.uids[i]}"[:64], "jpg": _png(pixels[k]),
             "caption": captions[k], "url": f"poison://{cfg.attack}/{k}", "domain": "poison",
             "artist": images.artists[i] or None, "licence": None, "clip_score": None, "aesthetic_score": None}
            for k, i in enumerate(idx)]


def dirty_label(images: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, seed: int) -> tuple:
    """Target-concept images (cycled in a seeded order) paired with the source candidates' captions."""
    order = np.random.default_rng(seed).permutation(target_idx)
    chosen = np.resize(order, len(source_idx))
    return chosen, data.to_uint8(images.images[chosen]), [images.captions[i] for i in source_idx]


def nightshade(images: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, ae, cfg: InjectConfig) -> tuple:
    """Source candidates perturbed toward one target image (the anchor) in the autoencoder's latent space."""
    from poisoning import nightshade as ns

    anchor = images.images[int(np.random.default_rng(cfg.seed).choice(target_idx))]
    result = ns.craft(ae.encode_latents, images.images[source_idx], anchor, eps=cfg.eps, steps=cfg.steps,
                      seed=cfg.seed, progress=True)
    return source_idx, data.to_uint8(result.poisons), [images.captions[i] for i in source_idx], result.stats


def clip_scores(folder: str, uids: list[str]) -> np.ndarray:
    """The export's `clip_score` of each uid (NaN where the export has none)."""
    by_uid = {}
    for f in data.shard_files(folder):
        t = schema.read(f, "train", columns=["uid", "clip_score"]).to_pydict()
        by_uid.update(zip(t["uid"], t["clip_score"]))
    return np.array([np.nan if by_uid.get(u) is None else by_uid[u] for u in uids], dtype=float)


def run(cfg: InjectConfig) -> Path:
    """Write the poisoned training folder; returns it."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    ckpt = pipeline.read_checkpoint(cfg.checkpoint)
    known = list(ckpt.get("concepts") or [])
    for field in ("source", "target"):
        if known:
            candidates.check_concept(getattr(cfg, field), known, field)
    images = data.load_images(cfg.data, int(ckpt["image_size"]))
    text = TextEncoder(ckpt["text"]["path"])
    cap = text.encode(images.captions).pooled.numpy()
    prompt = text.encode([candidates.PROMPT.format(cfg.source)]).pooled.numpy()[0]
    src = candidates.select(images.captions, clip_scores(cfg.data, images.uids), cap, prompt, cfg.source, cfg.n,
                            min_clip_score=cfg.min_clip_score, seed=cfg.seed).index
    tgt = np.flatnonzero(data.match_concepts(images.captions, [cfg.target]) == 0)
    if len(tgt) == 0:
        raise ValueError(f"target={cfg.target!r}: no clean training sample names it (an anchor image is needed)")
    stats = [{} for _ in src]
    if cfg.attack == "dirty_label":
        origin, pixels, captions = dirty_label(images, src, tgt, cfg.seed)
    else:
        origin, pixels, captions, stats = nightshade(images, src, tgt, pipeline.build_vae(ckpt["vae"]), cfg)
    for f in data.shard_files(cfg.data):
        shutil.copyfile(f, out / f.name)
    rows = _rows(images, origin, pixels, captions, cfg)
    schema.write(pa.Table.from_pylist(rows, schema=schema.TRAIN_SCHEMA), out / POISON_SHARD, "train")
    meta = [{"uid": r["uid"], "attack": cfg.attack, "source_concept": cfg.source, "target_concept": cfg.target,
             "original_uid": images.uids[i], "caption": r["caption"], **s} for r, i, s in zip(rows, origin, stats)]
    pd.DataFrame(meta).to_parquet(out / "poisons.parquet", index=False)
    clean_c = int((data.match_concepts(images.captions, [cfg.source]) == 0).sum())
    manifest = {**dataclasses.asdict(cfg), "poisons": len(rows), "clean_source_samples": clean_c,
                "clean_target_samples": int(len(tgt)), "clean_rows": len(images)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("%d %s poisons (%s → %s; %d clean samples of %s) → %s", len(rows), cfg.attack, cfg.source,
                cfg.target, clean_c, cfg.source, out)
    return out
