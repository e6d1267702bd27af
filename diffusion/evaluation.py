"""`mithridate evaluate`: how good and how on-prompt a checkpoint's generations are, per sampler and step count.

No hub downloads: every metric lives in a named local feature space, the image tower of a compact CLIP (the
"judge"). KID and FID are therefore *not* Inception numbers and every output says so; the real-vs-real floor
(two halves of the real images) is reported beside them. Prompt adherence is the CLIP score (100·cos, clipped
at 0) and the judge's zero-shot concept accuracy among the evaluated concepts, against chance 1/K; the judge's
accuracy on the real images of the same concepts shows how far it can be trusted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curation.score import clip_train, encoders
from diffusion import data, grid, metrics, samplers
from diffusion.pipeline import Pipeline
from mithridate.core import disk, options

logger = logging.getLogger(__name__)

RUNS = ("ddim:50", "euler:20", "dpmpp_2m:20", "ddpm:100", "ddim:50:1")


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = options.opt("mithridate-out/diffusion", "diffusion checkpoint (`train` folder or model.pt)")
    concepts: tuple[str, ...] = options.opt((), "concepts to prompt ('' = those the model was trained on)")
    prompt_template: str = options.opt("{}", "prompt of a concept; {} is its name")
    judge: str = options.opt("", "compact CLIP whose image features and zero-shot head judge ('' = the text encoder's)")
    data: str = options.opt("", "real reference images: training shards ('' = the model's training data)")
    runs: tuple[str, ...] = options.opt(RUNS, "sampler:steps[:guidance] settings to compare")
    guidance: float = options.opt(3.0, "guidance scale of runs that do not give one")
    n_per_concept: int = options.opt(8, "generated images per concept and run")
    seed: int = options.opt(0, "seed of the generations (the same initial noise in every run)")
    clip: str = options.opt("", "where the text encoder is, if not where the checkpoint says")
    out: str = options.opt("mithridate-out/evaluate", "output folder: evaluation.json, table.csv, grids/")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self):
        for name in ("concepts", "runs"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "n_per_concept")
        if "{}" not in self.prompt_template:
            raise ValueError(f"EvaluateConfig.prompt_template={self.prompt_template!r}: needs {{}} for the concept")
        if not self.runs:
            raise ValueError("EvaluateConfig.runs=(): give at least one sampler:steps setting")
        for r in self.runs:
            parse_run(r, self.guidance)


def parse_run(text: str, guidance: float) -> tuple[str, int, float]:
    """'ddim:50' → ('ddim', 50, guidance); 'ddim:50:1' → ('ddim', 50, 1.0)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in samplers.SAMPLERS:
        raise ValueError(f"runs: {text!r} is not sampler:steps[:guidance] with a sampler among "
                         f"{', '.join(samplers.SAMPLERS)}")
    try:
        steps, g = int(parts[1]), float(parts[2]) if len(parts) == 3 else guidance
    except ValueError:
        raise ValueError(f"runs: {text!r}: steps must be an integer and guidance a number") from None
    if steps < 1:
        raise ValueError(f"runs: {text!r}: steps must be >= 1")
    return parts[0], steps, g


PRESETS = {"default": EvaluateConfig(), "tiny": EvaluateConfig(runs=("ddim:5", "euler:4"), n_per_concept=2)}


class Judge:
    """A compact CLIP's image features and zero-shot classifier over a fixed concept list."""

    def __init__(self, path: str, concepts: list[str], device: str):
        self.encoder = encoders.load_compact(path, device)
        self.concepts = concepts
        texts = [t.format(c) for c in concepts for t in clip_train.TEMPLATES]
        emb = self.encoder.encode_texts(texts).reshape(len(concepts), len(clip_train.TEMPLATES), -1).mean(axis=1)
        self.text_emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.encode_images(list(images))

    def scores(self, feats: np.ndarray, labels: np.ndarray, prompts: list[str]) -> dict:
        acc = metrics.zero_shot_accuracy(feats, self.text_emb, labels)
        return {**acc, "clip_score": metrics.clip_score(feats, self.encoder.encode_texts(prompts))}


def _references(cfg: EvaluateConfig, pipe: Pipeline, concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    folder = cfg.data or pipe.info.get("train_config", {}).get("data", "")
    real = data.load_images(folder, pipe.image_size, concepts)
    return data.to_uint8(real.images), data.match_concepts(real.captions, concepts)


def _distances(real: np.ndarray, fake: np.ndarray) -> dict:
    size = min(1000, len(real), len(fake))
    kid, kid_std = metrics.kid(real, fake, subset_size=size)
    return {"kid": kid, "kid_std": kid_std, "fid": metrics.fid(real, fake)}


def evaluate_runs(cfg: EvaluateConfig, pipe: Pipeline, judge: Judge, concepts: list[str], real_feats: np.ndarray,
                  out: Path) -> tuple[list[dict], dict]:
    prompts = [cfg.prompt_template.format(c) for c in concepts for _ in range(cfg.n_per_concept)]
    labels = np.repeat(np.arange(len(concepts)), cfg.n_per_concept)
    rows, images = [], {}
    for run in cfg.runs:
        sampler, steps, g = parse_run(run, cfg.guidance)
        t0 = time.perf_counter()
        ims = pipe.generate(prompts, sampler, steps, g, seed=cfg.seed)
        sec = (time.perf_counter() - t0) / len(prompts)
        feats = judge.features(ims)
        nfe = samplers.SAMPLERS[sampler].nfe(steps)  # per image, before guidance doubles the batch
        row = {"run": run, "sampler": sampler, "steps": steps, "nfe": nfe, "guidance": g, "seconds_per_image": sec,
               **judge.scores(feats, labels, prompts), **_distances(real_feats, feats)}
        rows.append(row)
        images[run] = ims
        logger.info("%-14s top-1 %.1f%% (chance %.1f%%)  CLIP score %.1f  KID %.3g  FID %.3g  %.3f s/image", run,
                    100 * row["top1"], 100 * row["chance"], row["clip_score"], row["kid"], row["fid"], sec)
    return rows, images


def classifier_guidance_sweep(pipe: Pipeline, judge: Judge, classifier, scales: tuple[float, ...] = (0.0, 10.0, 30.0),
                              n_per_concept: int = 2, seed: int = 0, sampler: str = "ddim", steps: int = 50) -> list[dict]:
    """The article's classifier-guidance check: *unconditional* sampling (CFG scale 0) steered only by the
    noise-conditional latent classifier toward each concept; the judge's top-1 per classifier scale.

    `classifier` must classify `judge.concepts` in that order (as `classifier train` with the same concepts).
    """
    labels = np.repeat(np.arange(len(judge.concepts)), n_per_concept)
    prompts = [judge.concepts[i] for i in labels]
    rows = []
    for scale in scales:
        ims = pipe.generate(prompts, sampler, steps, 0.0, seed=seed, classifier=classifier, labels=labels.tolist(),
                            classifier_scale=scale)
        acc = metrics.zero_shot_accuracy(judge.features(ims), judge.text_emb, labels)
        rows.append({"classifier_scale": scale, "top1": acc["top1"], "top5": acc["top5"], "chance": acc["chance"],
                     "n": acc["n"]})
        logger.info("unconditional + classifier guidance %.0f: judge top-1 %.1f%% (chance %.1f%%)", scale,
                    100 * acc["top1"], 100 * acc["chance"])
    return rows


def write_grids(images: dict, concepts: list[str], n: int, out: Path) -> list[str]:
    """One grid per concept: a row per run, `n` images each."""
    (out / "grids").mkdir(parents=True, exist_ok=True)
    files = []
    for k, c in enumerate(concepts):
        tiles = np.concatenate([ims[k * n : (k + 1) * n] for ims in images.values()])
        name = f"grids/{k:03d}_{''.join(ch if ch.isalnum() else '-' for ch in c)[:40]}.png"
        grid.save_grid(tiles, out / name, nrow=n, row_labels=list(images), scale=3)
        files.append(name)
    return files


def run(cfg: EvaluateConfig) -> Path:
    """Write `evaluation.json`, `table.csv` and `grids/`; returns the output folder."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    pipe = Pipeline.load(cfg.checkpoint, cfg.device, cfg.clip)
    concepts = list(cfg.concepts or pipe.info.get("concepts") or [])
    if len(concepts) < 2:
        raise ValueError("concepts: give at least 2 concepts to evaluate (the checkpoint names none)")
    judge = Judge(cfg.judge or pipe.text.path, concepts, pipe.device)
    real, real_labels = _references(cfg, pipe, concepts)
    real_feats = judge.features(real)
    judge_real = judge.scores(real_feats, real_labels, [cfg.prompt_template.format(concepts[i]) for i in real_labels])
    floor = metrics.real_floor(real_feats, seed=cfg.seed) if len(real) >= 4 else {}
    rows, images = evaluate_runs(cfg, pipe, judge, concepts, real_feats, out)
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    result = {"features": f"{judge.encoder.name} image embeddings (compact CLIP, not Inception: KID/FID are "
                          "comparable only within this project)",
              "judge": judge.encoder.name, "concepts": concepts, "n_per_concept": cfg.n_per_concept,
              "real_images": len(real), "judge_on_real": judge_real, "real_vs_real_floor": floor, "runs": rows,
              "grids": write_grids(images, concepts, cfg.n_per_concept, out)}
    disk.write_text(out / "evaluation.json", json.dumps(result, indent=2, default=float) + "\n")
    logger.info("judge on the real images: top-1 %.1f%% (chance %.1f%%); real-vs-real KID %.3g → %s",
                100 * judge_real["top1"], 100 * judge_real["chance"], floor.get("kid", float("nan")), out)
    return out
