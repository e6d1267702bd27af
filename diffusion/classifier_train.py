"""`mithridate classifier train`: a noise-conditional concept classifier on a diffusion model's latents.

Its gradient ∇ log p(concept | x_t) steers sampling (classifier guidance, Dhariwal & Nichol 2021): the article
shows that even a weak classifier steers. It is trained on the model's own latent space (its frozen VAE) and
noise schedule, with labels read from the captions (`data.match_concepts`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion import classifier as clf_mod, data, pipeline
from diffusion.schedule import NoiseSchedule
from mithridate.core import compute, disk, options

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    checkpoint: str = options.opt("mithridate-out/diffusion", "diffusion checkpoint whose VAE and schedule to use")
    data: str = options.opt("", "training shards ('' = the diffusion model's training data)")
    concepts: tuple[str, ...] = options.opt((), "classes ('' = the diffusion model's concepts); at least 2")
    out: str = options.opt("mithridate-out/classifier", "output folder: classifier.pt, classifier.json")
    steps: int = options.opt(600, "training steps")
    batch_size: int = options.opt(128, "latents per step")
    lr: float = options.opt(1e-3, "AdamW learning rate")
    width: int = options.opt(64, "channels of the classifier")
    depth: int = options.opt(2, "residual blocks per resolution")
    seed: int = options.opt(0, "seed of initialisation, batches and noise")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self):
        if isinstance(self.concepts, list):
            object.__setattr__(self, "concepts", tuple(self.concepts))
        options.check_positive(self, "steps", "batch_size", "lr", "width", "depth")
        compute.resolve_device(self.device)


PRESETS = {"default": ClassifierTrainConfig(),
           "tiny": ClassifierTrainConfig(steps=40, batch_size=32, width=16, depth=1)}


def labelled_latents(cfg: ClassifierTrainConfig, ckpt: dict, concepts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """The training rows naming a concept, encoded by the checkpoint's VAE, with their concept index."""
    folder = cfg.data or ckpt["train_config"].get("data", "")
    images = data.load_images(folder, int(ckpt["image_size"]), concepts)
    labels = data.match_concepts(images.captions, concepts)
    ae = pipeline.build_vae(ckpt["vae"])
    with torch.no_grad():
        z = torch.cat([ae.encode_latents(images.images[i : i + 256]) for i in range(0, len(images), 256)])
    return z, labels


def run(cfg: ClassifierTrainConfig) -> Path:
    """Write `classifier.pt` (with its concepts and schedule) and `classifier.json` (accuracy by noise level)."""
    out = Path(cfg.out)
    options.write_config(cfg, out)
    ckpt = pipeline.read_checkpoint(cfg.checkpoint)
    concepts = list(cfg.concepts or ckpt.get("concepts") or [])
    if len(concepts) < 2:
        raise ValueError("concepts: a classifier needs at least 2 concepts (the checkpoint names none; give them)")
    z, labels = labelled_latents(cfg, ckpt, concepts)
    present = sorted(set(labels.tolist()))
    logger.info("classifier: %d latents of %d/%d concepts", len(z), len(present), len(concepts))
    sched = NoiseSchedule(**ckpt["schedule"])
    model, stats = clf_mod.train_classifier(z, torch.as_tensor(labels), sched, len(concepts), steps=cfg.steps,
                                            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, width=cfg.width,
                                            depth=cfg.depth, device=compute.resolve_device(cfg.device),
                                            progress=True)
    info = {"concepts": concepts, "schedule": ckpt["schedule"], "image_size": int(ckpt["image_size"]),
            "diffusion_checkpoint": str(pipeline.checkpoint_path(cfg.checkpoint)), "latents": len(z), "stats": stats}
    clf_mod.save_classifier(model, out / "classifier.pt", info)
    disk.write_text(out / "classifier.json", json.dumps(info, indent=2, default=float) + "\n")
    logger.info("classifier: clean accuracy %.1f%% (chance %.1f%%) → %s", 100 * stats["acc_clean"],
                100 / len(concepts), out / "classifier.pt")
    return out
