"""`mithridate report generation`: the victim model in one page — autoencoder, diffusion training, evaluation.

Reads only stage outputs (`vae train`, `train`, `evaluate` folders), so it can be rebuilt without rerunning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mithridate.core import disk, options
from reports import html as H

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationReportConfig:
    vae: str = options.opt("mithridate-out/vae", "`vae train` folder (eval.json, recon.png)")
    diffusion: str = options.opt("mithridate-out/diffusion", "`train` folder (train.json, curve.png, samples/)")
    evaluate: str = options.opt("mithridate-out/evaluate", "`evaluate` folder (evaluation.json, grids/)")
    out: str = options.opt("mithridate-out/report", "report folder: generation.html, generation_metrics.json")
    grids: int = options.opt(8, "concept grids shown")

    def __post_init__(self):
        if self.grids < 0:
            raise ValueError(f"GenerationReportConfig.grids={self.grids!r}: must be >= 0")


PRESETS = {"default": GenerationReportConfig(), "tiny": GenerationReportConfig(grids=2)}


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the stage first)")
    return json.loads(path.read_text())


def _png(path: Path, caption: str) -> str:
    return H.figure(path.read_bytes(), caption) if path.is_file() else H.note(f"missing: {path}")


def metrics(vae: dict, train: dict, ev: dict) -> dict:
    """Flat `generation/*` metrics: held-out PSNR, training summary, and per run top-1/KID/FID/CLIP score."""
    m = {f"generation/vae_{k}": v for k, v in vae.items() if isinstance(v, (int, float))}
    m.update({f"generation/train_{k}": v for k, v in train.items() if isinstance(v, (int, float))})
    m["generation/judge_real_top1"] = ev["judge_on_real"]["top1"]
    m["generation/chance"] = ev["judge_on_real"]["chance"]
    for r in ev["runs"]:
        for k in ("top1", "top5", "clip_score", "kid", "fid", "seconds_per_image"):
            m[f"generation/{r['run']}/{k}"] = r[k]
    return m


def _runs_table(ev: dict) -> str:
    cols = ["run", "nfe", "guidance", "top1", "top5", "chance", "clip_score", "KID×10³", "KID sd×10³", "fid",
            "seconds_per_image"]
    floor = ev.get("real_vs_real_floor") or {}
    rows = list(ev["runs"]) + ([{"run": "real vs real (floor)", **floor}] if floor else [])
    rows = [{**r, "KID×10³": 1e3 * r["kid"], "KID sd×10³": 1e3 * r["kid_std"]} if "kid" in r else r for r in rows]
    rows.append({"run": "judge on real images", "top1": ev["judge_on_real"]["top1"],
                 "top5": ev["judge_on_real"]["top5"], "chance": ev["judge_on_real"]["chance"],
                 "clip_score": ev["judge_on_real"]["clip_score"]})
    return H.table(rows, cols)


def headline(ev: dict) -> str:
    best = max(ev["runs"], key=lambda r: r["top1"])
    return (f"The judge ({ev['judge']}) recognises the prompted concept in {100 * best['top1']:.0f}% of "
            f"generations ({best['run']}, {len(ev['concepts'])} concepts × {ev['n_per_concept']} images; chance "
            f"{100 * best['chance']:.1f}%); on real images of the same concepts it scores "
            f"{100 * ev['judge_on_real']['top1']:.0f}%.")


def write_showcase(checkpoint: str | Path, concepts: list[str], path: Path, seed: int = 0) -> Path:
    """img2img and inpainting on one real training image: a figure for the report.

    Row 1: the image, then its right half regenerated (the article's inpainting) for four prompts; row 2:
    img2img at strength 0.3 and 0.6 toward two other concepts.
    """
    import numpy as np

    from diffusion import data, grid
    from diffusion.pipeline import Pipeline

    pipe = Pipeline.load(checkpoint)
    real = data.load_images(pipe.info["train_config"]["data"], pipe.image_size, concepts[:1])
    init = np.repeat(data.to_uint8(real.images[:1]), 4, axis=0)
    mask = np.zeros((pipe.image_size, pipe.image_size), bool)
    mask[:, pipe.image_size // 2:] = True
    targets = (concepts * 4)[1:5]
    inpainted = pipe.generate(targets, "ddim", 50, init_images=init, mask=mask, seed=seed)
    low = pipe.generate(targets[:2], "ddim", 50, init_images=init[:2], strength=0.3, seed=seed)
    high = pipe.generate(targets[:2], "ddim", 50, init_images=init[:2], strength=0.6, seed=seed)
    tiles = np.concatenate([init[:1], inpainted, init[:1], low[:1], high[:1], low[1:], high[1:]])
    labels = ["original"] + [f"inpaint: {t}" for t in targets] + ["original"] + \
        [f"img2img {s}: {t}" for t in targets[:2] for s in (0.3, 0.6)]
    return grid.save_grid(tiles, path, nrow=5, labels=labels, scale=4)


def sections(cfg: GenerationReportConfig) -> tuple[list[tuple[str, str]], dict]:
    """(heading, html) sections of the generation report and its metrics."""
    vae_dir, dif_dir, ev_dir = Path(cfg.vae), Path(cfg.diffusion), Path(cfg.evaluate)
    vae, train, ev = _json(vae_dir / "eval.json"), _json(dif_dir / "train.json"), _json(ev_dir / "evaluation.json")
    parts = [
        ("Autoencoder", H.table([{"metric": k, "value": v} for k, v in vae.items() if not isinstance(v, (dict, list))])
         + _png(vae_dir / "recon.png", "held-out images (top) and their reconstructions (bottom)")),
        ("Diffusion training", H.table([{"metric": k, "value": v if not isinstance(v, list) else str(v)}
                                        for k, v in train.items()])
         + _png(dif_dir / "curve.png", "training loss") + _png(dif_dir / "samples" / "final.png",
                                                               "samples at the end of training (DDIM, guidance)")),
        ("Evaluation per sampler", H.note(headline(ev)) + H.note(ev["features"]) + _runs_table(ev)),
        ("Generations per concept", "".join(_png(ev_dir / g, f"{Path(g).stem}: one row per run")
                                            for g in ev["grids"][: cfg.grids])),
    ]
    if (ev_dir / "classifier_guidance.json").is_file():
        rows = json.loads((ev_dir / "classifier_guidance.json").read_text())
        parts.append(("Classifier guidance", H.note(
            "Unconditional sampling (classifier-free guidance 0) steered only by a noise-conditional classifier on "
            "the latents toward each concept; the judge's top-1 per classifier scale.") + H.table(rows)))
    if (ev_dir / "showcase.png").is_file():
        parts.append(("Inpainting and img2img", _png(ev_dir / "showcase.png", "right half regenerated for each "
                                                        "prompt (known half re-noised and pasted at every step); "
                                                        "img2img at strength 0.3 / 0.6")))
    return parts, metrics(vae, train, ev)


def build(cfg: GenerationReportConfig) -> Path:
    """Write `<out>/generation.html` and `<out>/generation_metrics.json`; returns the HTML path."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    vae_dir, dif_dir, ev_dir = Path(cfg.vae), Path(cfg.diffusion), Path(cfg.evaluate)
    parts, m = sections(cfg)
    page = H.page("Generation: the compact latent diffusion model", parts,
                  H.note(f"autoencoder: {vae_dir} · diffusion: {dif_dir} · evaluation: {ev_dir}"))
    disk.write_text(out / "generation.html", page)
    disk.write_text(out / "generation_metrics.json", json.dumps(m, indent=2, sort_keys=True, default=float) + "\n")
    logger.info("generation report: %s", out / "generation.html")
    return out / "generation.html"
