"""`mithridate poison inject`: N poisons of one attack mixed into a copy of the clean training shards.

The output folder holds the clean shards (copied unchanged), one poison shard `90000.parquet` in the same TRAIN
schema (so `mithridate train --data=<out>` reads it like any export), `poisons.parquet` (one row per poison:
attack, source and target concept, the pool row it came from, and its image quality), `poisons.png`
(originals above poisons) and `manifest.json`.

Source and target images come from the attacker's pool (`poisoning.pool`: the clean shards by default, or an
art corpus). Candidates are ranked as Nightshade's released code does (`poisoning.candidates`), with CLIP scores
computed by the clean model's compact CLIP. The anchor (one target image reused for every poison) is a pool
image of A or a generation of the clean model for A. Crafting against another autoencoder than the victim's
(`vae`) is a *transfer* run, recorded as `setting` in the manifest and in every poison row.

Attacks:
- "dirty_label": images of the target concept A paired with captions of the source concept C (no pixel change).
- "nightshade": images of C, perturbed so that the model's autoencoder encodes them like an image of A
  (`poisoning.nightshade.craft`), with their own captions. Poisons are stored losslessly as PNG at the model's
  resolution: a JPEG re-encoding would already be a purification defence.
- "benign": the same N candidate images of C, unperturbed — not an attack but its control: it separates the
  effect of the perturbation from that of adding N more (possibly differently drawn) images of C.
- "anchor": the positive control — every poison is the anchor image itself (what a Nightshade poison would be if
  it closed the whole latent gap), with the candidates' captions. If this does not move P(A), the measurement
  cannot see a clean-label attack at all.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from diffusion import data, grid, pipeline, vae_train as vae
from diffusion.text import TextEncoder
from mithridate.core import checkpoints, disk, options, schema
from poisoning import (
    candidates,
    defences,
    denoising,
    nightshade as ns,
    perceptual,
    pool as attack_pool,
    quality,
    victim,
)
from poisoning.attacks import ATTACKS, TRAINING_SIGNAL, Attack
from poisoning.budget import BUDGETS, Budget

logger = logging.getLogger(__name__)

POISON_SHARD = "90000.parquet"
RETRAIN_DIR = "retrain"  # the retraining trick's poisoned data and model, inside the output folder
ANCHORS = ("data", "generated", "nearest")


@dataclass(frozen=True)
class InjectConfig:
    data: str = options.opt("mithridate-out/train", "clean training shards (export output)")
    checkpoint: str = options.opt("mithridate-out/diffusion", "the clean model: its VAE is attacked, its text "
                                  "encoder ranks candidates, its concepts are the known names")
    out: str = options.opt("mithridate-out/poisoned", "output: clean shards + 90000.parquet, poisons.parquet")
    source: str = options.opt("automobile", "source concept C whose prompt the attack hijacks")
    target: str = options.opt("elephant", "target concept A that prompts for C should produce")
    pool: str = options.opt("", "attacker's images: training shards or an art corpus folder ('' = data)")
    n: int = options.opt(8, "number of poisons")
    attack: Attack = options.opt(
        "nightshade", "attack (benign: the candidates unperturbed, the control of nightshade; anchor: the anchor "
        "image itself as every poison, the positive control; gradient_matching: the denoising-loss gradient of the "
        "poisons aligned with the anchor's; latent_target: latents the clean model denoises as the target)")
    budget: Literal["linf", "ssim", "lpips"] = options.opt(
        "linf", "perturbation budget: L∞ (Nightshade's released code), an SSIM floor (stands in for LPIPS), or the "
        "Nightshade paper's LPIPS (needs lpips_backbone)")
    eps: float = options.opt(0.04, "L∞ budget in [0, 1] pixel units (linf budget)")
    ssim_floor: float = options.opt(0.9, "minimum SSIM of a poison to its original (ssim budget)")
    lpips_limit: float = options.opt(0.07, "maximum LPIPS of a poison to its original (lpips budget)")
    lpips_backbone: str = options.opt("", "lpips budget: a torchvision AlexNet state dict (.pth) for LPIPS' trunk")
    steps: int = options.opt(500, "nightshade: optimisation steps")
    anchor: Literal["data", "generated", "nearest"] = options.opt(
        "data", "anchor: a pool image of the target, the clean model's generation for the target prompt, or per "
        "source image the pool image of the target nearest to it in latent space")
    vae: str = options.opt("", "craft against this autoencoder (`vae train` folder) instead of the checkpoint's: "
                           "a transfer attack")
    craft_checkpoint: str = options.opt("", "gradient_matching, latent_target: craft on this diffusion checkpoint "
                                        "instead of `checkpoint` (e.g. another seed's clean model): a transfer attack")
    min_clip_score: float = options.opt(0.0, "candidates: minimum image–caption CLIP score")
    restarts: int = options.opt(1, "gradient_matching, latent_target: PGD restarts (the best is kept)")
    draws: int = options.opt(4, "gradient_matching, latent_target: (timestep, noise) draws per poison")
    timesteps: denoising.Timesteps = options.opt(
        "uniform", "gradient_matching, latent_target: where the draws' timesteps lie (all, first or second half)")
    params: denoising.Params = options.opt(
        "cross_attention", "gradient_matching: the UNet parameters whose gradient is matched")
    resample: bool = options.opt(False, "gradient_matching: new (timestep, noise) draws at every step instead of "
                                 "fixed ones (the expectation over draws the victim's training takes)")
    retrain_steps: int = options.opt(
        0, "gradient_matching, latent_target: the retraining trick (Witches' Brew) — continue the crafting model on "
        "the clean rows + the first poisons for this many steps, then craft again on it; 0 = none")
    seed: int = options.opt(0, "seed of candidate ties, image choice and the attack")

    def __post_init__(self):
        options.check_positive(self, "n", "steps", "restarts", "draws")
        if self.retrain_steps < 0 or (self.retrain_steps and self.attack not in TRAINING_SIGNAL):
            raise ValueError(f"InjectConfig.retrain_steps={self.retrain_steps!r}: must be >= 0, and > 0 only for "
                             f"{', '.join(TRAINING_SIGNAL)}")
        options.check_choice(self, "attack", ATTACKS)
        options.check_choice(self, "anchor", ANCHORS)
        options.check_choice(self, "budget", BUDGETS)
        if not 0 < self.eps <= 1:
            raise ValueError(f"InjectConfig.eps={self.eps!r}: must be within (0, 1] ([0, 1] pixel units)")
        if not 0 < self.ssim_floor < 1:
            raise ValueError(f"InjectConfig.ssim_floor={self.ssim_floor!r}: must be within (0, 1)")
        if not 0 < self.lpips_limit < 1:
            raise ValueError(f"InjectConfig.lpips_limit={self.lpips_limit!r}: must be within (0, 1)")
        if self.budget == "lpips" and not self.lpips_backbone:
            raise ValueError("InjectConfig.lpips_backbone='': budget=lpips needs AlexNet weights (a torchvision "
                             "state dict .pth); without them use budget=ssim")
        if self.restarts > 1 and self.budget != "linf":
            raise ValueError(f"InjectConfig.restarts={self.restarts}: restarts are L∞ PGD's; budget={self.budget} "
                             "runs once (restarts=1)")
        if self.resample and self.attack != "gradient_matching":
            raise ValueError(f"InjectConfig.resample=True: only attack=gradient_matching resamples its draws, not "
                             f"attack={self.attack}")
        if self.craft_checkpoint and self.attack not in TRAINING_SIGNAL:
            raise ValueError(f"InjectConfig.craft_checkpoint={self.craft_checkpoint!r}: only "
                             f"{', '.join(TRAINING_SIGNAL)} craft on a diffusion checkpoint (nightshade: vae=)")
        if self.attack in TRAINING_SIGNAL and self.vae:
            raise ValueError(f"InjectConfig.vae={self.vae!r}: attack={self.attack} is crafted on the clean model "
                             "itself (its autoencoder and UNet); a transfer run trains other victims instead")
        if self.source == self.target:
            raise ValueError(f"InjectConfig.target={self.target!r}: must differ from source")


PRESETS = {"default": InjectConfig(), "tiny": InjectConfig(n=2, steps=20)}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _rows(pool: data.ImageSet, idx: np.ndarray, pixels: np.ndarray, captions: list[str], cfg: InjectConfig) -> list:
    return [{"uid": f"poison-{cfg.attack}-{k:05d}-{pool.uids[i]}"[:64], "jpg": _png(pixels[k]),
             "caption": captions[k], "url": f"poison://{cfg.attack}/{k}", "domain": "poison",
             "artist": pool.artists[i] or None, "licence": None, "clip_score": None, "aesthetic_score": None}
            for k, i in enumerate(idx)]


def write_folder(out: Path, pool: data.ImageSet, origin: np.ndarray, pixels: np.ndarray, captions: list[str],
                 cfg: InjectConfig) -> list[dict]:
    """The poisoned training folder: the clean shards copied and the poisons' shard; returns the poison rows."""
    out.mkdir(parents=True, exist_ok=True)
    for f in data.shard_files(cfg.data):
        shutil.copyfile(f, out / f.name)
    rows = _rows(pool, origin, pixels, captions, cfg)
    schema.write(pa.Table.from_pylist(rows, schema=schema.TRAIN_SCHEMA), out / POISON_SHARD, "train")
    return rows


def dirty_label(pool: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, seed: int) -> tuple:
    """Target-concept images (cycled in a seeded order) paired with the source candidates' captions."""
    order = np.random.default_rng(seed).permutation(target_idx)
    chosen = np.resize(order, len(source_idx))
    return chosen, data.to_uint8(pool.images[chosen]), [pool.captions[i] for i in source_idx]


def choose_anchor(pool: data.ImageSet, target_idx: np.ndarray, cfg: InjectConfig) -> torch.Tensor:
    """One image of the target concept `(3, S, S)` in [−1, 1]: a seeded pool choice or the clean model's sample."""
    if cfg.anchor == "generated":
        pipe = pipeline.Pipeline.load(cfg.checkpoint, "cpu")
        return data.from_uint8(pipe.generate([cfg.target], "ddim", 50, 3.0, seed=cfg.seed))[0]
    return pool.images[int(np.random.default_rng(cfg.seed).choice(target_idx))]


def nearest_anchors(pool: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, ae) -> torch.Tensor:
    """Per source image, the pool image of the target nearest to it in the autoencoder's latent space `(N, 3, S, S)`."""
    with torch.no_grad():
        z_src = ae.encode_latents(pool.images[source_idx]).flatten(1)
        z_tgt = ae.encode_latents(pool.images[target_idx]).flatten(1)
    return pool.images[target_idx[torch.cdist(z_src, z_tgt).argmin(dim=1).numpy()]]


def crafting_model(cfg: InjectConfig, ckpt: dict) -> tuple:
    """(the diffusion checkpoint the training-signal attacks craft on, "white_box" | "transfer"): the victim's clean
    model, or `cfg.craft_checkpoint` when its UNet differs."""
    if not cfg.craft_checkpoint:
        return cfg.checkpoint, "white_box"
    other = pipeline.read_checkpoint(cfg.craft_checkpoint)
    same = checkpoints.digest(other["unet_state"]) == checkpoints.digest(ckpt["unet_state"])
    if not same:
        logger.warning("craft_checkpoint=%s differs from the victim's clean model: this is a TRANSFER attack "
                       "(recorded as setting=transfer)", cfg.craft_checkpoint)
    return cfg.craft_checkpoint, "white_box" if same else "transfer"


def training_signal(pool: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, cfg: InjectConfig,
                    checkpoint: str, out: Path) -> tuple:
    """Gradient-matching or latent-target poisons of the source candidates, crafted on the clean model `checkpoint`
    (and, with `retrain_steps`, crafted again on that model continued on the clean rows + the first poisons)."""
    captions = [pool.captions[i] for i in source_idx]
    stats, poisons = _craft_signal(pool, source_idx, target_idx, cfg, checkpoint)
    if cfg.retrain_steps:
        work = out / RETRAIN_DIR
        write_folder(work / "data", pool, source_idx, data.to_uint8(poisons), captions, cfg)
        retrained = victim.train(checkpoint, work / "data", work / "model",
                                 victim.VictimTraining(steps=cfg.retrain_steps), cfg.seed)
        first = stats
        stats, poisons = _craft_signal(pool, source_idx, target_idx, cfg, str(retrained))
        for s, f in zip(stats, first):
            s.update({"retrain_steps": cfg.retrain_steps, **{f"first_{k}": v for k, v in f.items() if k != "budget"}})
    return source_idx, data.to_uint8(poisons), captions, stats


def _craft_signal(pool: data.ImageSet, source_idx: np.ndarray, target_idx: np.ndarray, cfg: InjectConfig,
                  checkpoint: str) -> tuple[list[dict], torch.Tensor]:
    from poisoning import gradient_matching, latent_target

    model = denoising.CleanModel(pipeline.Pipeline.load(checkpoint, "cpu"), cfg.params)
    images, captions = pool.images[source_idx], [pool.captions[i] for i in source_idx]
    lpips_fn = perceptual.load(cfg.lpips_backbone) if cfg.budget == "lpips" else None
    limits = Budget(cfg.budget, cfg.eps, cfg.ssim_floor, cfg.lpips_limit, lpips_fn)
    common = {"budget": limits, "steps": cfg.steps, "restarts": cfg.restarts, "draws": cfg.draws,
              "timesteps": cfg.timesteps, "seed": cfg.seed}
    if cfg.attack == "latent_target":
        result = latent_target.craft(model, images, cfg.target, **common)
    else:
        anchor = (nearest_anchors(pool, source_idx, target_idx, model.vae) if cfg.anchor == "nearest"
                  else choose_anchor(pool, target_idx, cfg))
        result = gradient_matching.craft(model, images, captions, anchor, resample=cfg.resample, **common)
    return result.stats, result.poisons


def attack_encoder(cfg: InjectConfig, ckpt: dict) -> tuple:
    """(autoencoder to craft against, "white_box" | "transfer"): the checkpoint's, or `cfg.vae` when it differs."""
    victim = pipeline.build_vae(ckpt["vae"])
    if not cfg.vae:
        return victim, "white_box"
    ae = vae.load_vae(cfg.vae)
    same = checkpoints.digest(ae.state_dict()) == checkpoints.digest(victim.state_dict())
    if not same:
        logger.warning("vae=%s differs from the victim's autoencoder: this is a TRANSFER attack (recorded as "
                       "setting=transfer)", cfg.vae)
    return ae, "white_box" if same else "transfer"


def nightshade(pool: data.ImageSet, source_idx: np.ndarray, anchor: torch.Tensor, ae, cfg: InjectConfig) -> tuple:
    """Source candidates perturbed toward the anchor in the autoencoder's latent space."""
    lpips_fn = perceptual.load(cfg.lpips_backbone) if cfg.budget == "lpips" else None
    result = ns.craft(ae.encode_latents, pool.images[source_idx], anchor, budget=cfg.budget, eps=cfg.eps,
                      steps=cfg.steps, ssim_floor=cfg.ssim_floor, seed=cfg.seed, progress=True, lpips_fn=lpips_fn,
                      lpips_limit=cfg.lpips_limit)
    return source_idx, data.to_uint8(result.poisons), [pool.captions[i] for i in source_idx], result.stats


@torch.no_grad()
def victim_gap(stats: list[dict], victim_ae, originals: torch.Tensor, pixels: np.ndarray, anchor: torch.Tensor) -> None:
    """Transfer runs: add each poison's gap closed under the victim's own encoder (`gap_closed_victim`)."""
    f = victim_ae.encode_latents
    gap = quality.gap_closed(f(originals), f(data.from_uint8(pixels)), f(anchor[None]))
    for s, g in zip(stats, gap.tolist()):
        s["gap_closed_victim"] = g


def select_sources(cfg: InjectConfig, pool: data.ImageSet, text: TextEncoder,
                   known: list[str]) -> candidates.Candidates:
    """The N source-concept candidates of the pool (`poisoning.candidates.select`)."""
    names = candidates.naming(pool.captions, cfg.source, known)
    scores = np.full(len(pool), np.nan)
    if names.any():
        chosen = pool.subset(np.flatnonzero(names))
        scores[names] = defences.clip_scores(text.encoder, data.to_uint8(chosen.images), chosen.captions)
    cap = text.encode(pool.captions).pooled.numpy()
    prompt = text.encode([candidates.PROMPT.format(cfg.source)]).pooled.numpy()[0]
    return candidates.select(pool.captions, scores, cap, prompt, cfg.source, cfg.n, min_clip_score=cfg.min_clip_score,
                             seed=cfg.seed, concepts=known)


def _grid(pool: data.ImageSet, origin: np.ndarray, pixels: np.ndarray, path: Path, cfg: InjectConfig) -> None:
    k = min(len(origin), 8)
    originals = data.to_uint8(pool.images[origin[:k]])
    grid.save_grid(np.concatenate([originals, pixels[:k]]), path, nrow=k, scale=3,
                   row_labels=["original", cfg.attack.replace("_", "-")])


def run(cfg: InjectConfig) -> Path:
    """Write the poisoned training folder; returns it."""
    out = Path(cfg.out)
    options.check_resumable(cfg, out)
    options.write_config(cfg, out)
    ckpt = pipeline.read_checkpoint(cfg.checkpoint)
    known = list(ckpt.get("concepts") or [])
    for field in ("source", "target"):
        if known:
            candidates.check_concept(getattr(cfg, field), known, field)
    size = int(ckpt["image_size"])
    clean = data.load_images(cfg.data, size)
    pool = attack_pool.load(cfg.pool, size) if cfg.pool else clean
    text = TextEncoder(ckpt["text"]["path"])
    chosen = select_sources(cfg, pool, text, known)
    src = chosen.index
    tgt = np.flatnonzero(candidates.naming(pool.captions, cfg.target, known))
    generated = cfg.attack in ("nightshade", "anchor", "gradient_matching") and cfg.anchor == "generated"
    if len(tgt) == 0 and cfg.attack not in ("benign", "latent_target") and not generated:
        raise ValueError(f"target={cfg.target!r}: no pool image names it (pool={cfg.pool or cfg.data!r})")
    stats, setting, t0 = [{} for _ in src], "white_box", time.perf_counter()
    if cfg.attack == "dirty_label":
        origin, pixels, captions = dirty_label(pool, src, tgt, cfg.seed)
    elif cfg.attack == "benign":
        origin, pixels, captions = src, data.to_uint8(pool.images[src]), [pool.captions[i] for i in src]
    elif cfg.attack == "anchor":
        origin, captions = src, [pool.captions[i] for i in src]
        if cfg.anchor == "nearest":
            pixels = data.to_uint8(nearest_anchors(pool, src, tgt, pipeline.build_vae(ckpt["vae"])))
        else:
            pixels = np.repeat(data.to_uint8(choose_anchor(pool, tgt, cfg)[None]), len(src), axis=0)
    elif cfg.attack in TRAINING_SIGNAL:
        crafted_on, setting = crafting_model(cfg, ckpt)
        origin, pixels, captions, stats = training_signal(pool, src, tgt, cfg, crafted_on, out)
    else:
        ae, setting = attack_encoder(cfg, ckpt)
        anchor = nearest_anchors(pool, src, tgt, ae) if cfg.anchor == "nearest" else choose_anchor(pool, tgt, cfg)
        origin, pixels, captions, stats = nightshade(pool, src, anchor, ae, cfg)
        if setting == "transfer":
            victim_gap(stats, pipeline.build_vae(ckpt["vae"]), pool.images[src], pixels, anchor)
    craft_s = time.perf_counter() - t0  # choosing the anchor(s) and crafting, per poison below
    rows = write_folder(out, pool, origin, pixels, captions, cfg)
    meta = [{"uid": r["uid"], "attack": cfg.attack, "setting": setting, "source_concept": cfg.source,
             "target_concept": cfg.target, "original_uid": pool.uids[i], "caption": r["caption"],
             "candidate_clip_score": float(chosen.clip_score[k]), **s}
            for k, (r, i, s) in enumerate(zip(rows, origin, stats))]
    with disk.atomic(out / "poisons.parquet") as tmp:
        pd.DataFrame(meta).to_parquet(tmp, index=False)
    _grid(pool, origin, pixels, out / "poisons.png", cfg)
    clean_c = int(candidates.naming(clean.captions, cfg.source, known).sum())
    manifest = {**dataclasses.asdict(cfg), "setting": setting, "poisons": len(rows), "clean_source_samples": clean_c,
                "craft_seconds_per_poison": round(craft_s / max(len(rows), 1), 4),
                "pool_candidates": chosen.available, "pool_target_images": int(len(tgt)), "clean_rows": len(clean)}
    disk.write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    logger.info("%d %s poisons (%s → %s, %s; %d clean samples of %s) → %s", len(rows), cfg.attack, cfg.source,
                cfg.target, setting, clean_c, cfg.source, out)
    return out
