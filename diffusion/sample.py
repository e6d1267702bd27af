"""`mithridate sample`: images from a trained checkpoint — text to image, img2img, inpainting, classifier guidance."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diffusion import classifier as clf_mod, data, grid, samplers
from diffusion.pipeline import Pipeline
from mithridate.core import disk, options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleConfig:
    checkpoint: str = options.opt("mithridate-out/diffusion", "diffusion checkpoint (`train` folder or model.pt)")
    prompt: str = options.opt("a cow", "prompt(s), several separated by |")
    n: int = options.opt(4, "images per prompt")
    sampler: samplers.SamplerName = options.opt("ddim", "sampler")
    steps: int = options.opt(50, "sampler steps (ddpm: up to T, fixed-small variance when respaced)")
    guidance: float = options.opt(3.0, "classifier-free guidance scale s (1 = conditional, 0 = unconditional)")
    eta: float = options.opt(0.0, "DDIM η (0 = deterministic)")
    seed: int = options.opt(0, "seed of all noise")
    init_image: str = options.opt("", "img2img / inpainting: the starting image (any size; fitted to the model's)")
    strength: float = options.opt(0.6, "img2img: fraction of the schedule re-run (1 = ignore init_image)")
    mask: str = options.opt("", "inpainting: mask image, white = regenerate, black = keep (needs init_image)")
    classifier: str = options.opt("", "classifier guidance: a `classifier train` checkpoint (classifier.pt)")
    classifier_scale: float = options.opt(0.0, "classifier guidance scale (0 = off)")
    clip: str = options.opt("", "where the text encoder is, if not where the checkpoint says")
    out: str = options.opt("mithridate-out/samples", "output folder: one PNG per image, grid.png, samples.json")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self):
        options.check_positive(self, "n", "steps")
        options.check_choice(self, "sampler", samplers.SAMPLERS)
        if not 0 < self.strength <= 1:
            raise ValueError(f"SampleConfig.strength={self.strength!r}: must be within (0, 1]")
        if self.classifier_scale < 0:
            raise ValueError(f"SampleConfig.classifier_scale={self.classifier_scale!r}: must be >= 0")
        if self.eta < 0 or (self.eta > 0 and not samplers.SAMPLERS[self.sampler].takes_eta):
            takes = "|".join(n for n, s in samplers.SAMPLERS.items() if s.takes_eta)
            raise ValueError(f"SampleConfig.eta={self.eta!r}: η >= 0, and η > 0 only with sampler={takes}")
        if self.mask and not self.init_image:
            raise ValueError(f"SampleConfig.mask={self.mask!r}: inpainting needs init_image")
        if self.classifier_scale > 0 and not self.classifier:
            raise ValueError("SampleConfig.classifier_scale > 0 needs classifier=<classifier.pt>")


PRESETS = {"default": SampleConfig(), "tiny": SampleConfig(n=2, steps=5)}


def split_prompts(text: str) -> list[str]:
    """'a cow|a car' → ['a cow', 'a car']; empty parts are kept so that the pipeline rejects them by name."""
    return [p.strip() for p in text.split("|")]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def _read_image(path: str, size: int, mode: str = "RGB") -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    arr = data.decode(Path(path).read_bytes(), size)
    if arr is None:
        raise ValueError(f"{path}: not a readable image")
    return arr if mode == "RGB" else arr.mean(axis=-1) > 127


def _classifier(cfg: SampleConfig, pipe: Pipeline, prompts: list[str]) -> tuple:
    """(classifier, labels) for classifier guidance: each prompt's class is the concept it names."""
    if cfg.classifier_scale <= 0:
        return None, None
    model, info = clf_mod.load_classifier(cfg.classifier, pipe.device)
    labels = data.match_concepts(prompts, info["concepts"])
    if (labels < 0).any():
        bad = prompts[int(np.flatnonzero(labels < 0)[0])]
        raise ValueError(f"prompt={bad!r}: names none of the classifier's concepts ({', '.join(info['concepts'])})")
    return model, labels.tolist()


def run(cfg: SampleConfig) -> Path:
    """Write `<out>/NNN_<prompt>.png` per image, `grid.png` (a row per prompt) and `samples.json`."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    pipe = Pipeline.load(cfg.checkpoint, cfg.device, cfg.clip)
    prompts = split_prompts(cfg.prompt)
    pipe.text.check_prompts(prompts)
    every = [p for p in prompts for _ in range(cfg.n)]
    init = mask = None
    if cfg.init_image:
        init = np.repeat(_read_image(cfg.init_image, pipe.image_size)[None], len(every), axis=0)
    if cfg.mask:
        mask = _read_image(cfg.mask, pipe.image_size, mode="L")
    classifier, labels = _classifier(cfg, pipe, every)
    images = pipe.generate(every, cfg.sampler, cfg.steps, cfg.guidance, cfg.seed, cfg.eta, init, cfg.strength, mask,
                           classifier, labels, cfg.classifier_scale, progress=True)
    files = []
    for i, (p, im) in enumerate(zip(every, images)):
        files.append(f"{i:03d}_{_slug(p)}.png")
        Image.fromarray(im).save(out / files[-1])
    grid.save_grid(images, out / "grid.png", nrow=cfg.n, row_labels=prompts, scale=4)
    meta = {"checkpoint": str(cfg.checkpoint), "prompts": prompts, "files": files, "sampler": cfg.sampler,
            "steps": cfg.steps, "guidance": cfg.guidance, "seed": cfg.seed, "image_size": pipe.image_size,
            "mode": "inpaint" if mask is not None else "img2img" if init is not None else "text2img"}
    disk.write_text(out / "samples.json", json.dumps(meta, indent=2) + "\n")
    logger.info("%d images → %s (grid: %s)", len(images), out, out / "grid.png")
    return out
