"""`mithridate poison attackability`: how far an L∞ attack can move an autoencoder's latents, budget by budget.

For each (source, target) pair: source-concept images and one anchor image of the target (seeded choices from
the data), crafted against the autoencoder's encoder at every ε (`poisoning.nightshade.craft`, the released
code's signed-gradient attack). The *fraction of the latent gap closed* (1 − ‖F(x+δ) − F(a)‖ / ‖F(x) − F(a)‖)
is the attackability at that ε; with `transfer` the same poisons are measured under a second autoencoder
(another seed: the transfer setting). Poison PSNR and SSIM sit beside each point, so the curve reads as
"how much of the way to the anchor, at what visible cost".

Outputs (by default into the autoencoder's own folder): `attackability.json` and `attackability.png`.
Nightshade on Stable Diffusion needs poisons whose latents land near the anchor's; a smooth encoder that
closes a few percent of the gap at invisible budgets defeats clean-label poisoning (see the feasibility notes).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusion import vae_train as vae_mod  # noqa: E402
from mithridate.core import (
    disk,
    options,  # noqa: E402
)
from poisoning import candidates, intervals, nightshade, pool as attack_pool, quality  # noqa: E402

logger = logging.getLogger(__name__)

EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 0.04, 16 / 255, 32 / 255, 64 / 255)
GOAL_EPS, GOAL_GAP, GOAL_PSNR = 8 / 255, 0.5, 32.0  # issue 7's target: invisible budget, half the gap


@dataclass(frozen=True)
class AttackabilityConfig:
    vae: str = options.opt("mithridate-out/vae", "the autoencoder under attack (`vae train` folder or vae.pt)")
    data: str = options.opt("mithridate-out/train", "images: training shards or an art corpus folder")
    pairs: tuple[str, ...] = options.opt(("automobile:elephant",), "source:target concept pairs")
    eps: tuple[float, ...] = options.opt(EPS, "L∞ budgets in [0, 1] pixel units")
    images: int = options.opt(8, "source images per pair (fewer when the data hold fewer)")
    steps: int = options.opt(200, "signed-gradient steps per budget")
    transfer: str = options.opt("", "a second autoencoder (e.g. another seed): the poisons measured on it too")
    background: str = options.opt("", "what transparent pixels are drawn on: white or texture ('' = what the "
                                  "autoencoder was trained on)")
    seed: int = options.opt(0, "seed of the image and anchor choice and of the attack")
    out: str = options.opt("", "output folder ('' = the autoencoder's folder)")

    def __post_init__(self):
        for name in ("pairs", "eps"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "images", "steps")
        if not self.eps or any(not 0 < e <= 1 for e in self.eps):
            raise ValueError(f"AttackabilityConfig.eps={self.eps!r}: budgets must be within (0, 1] ([0, 1] pixel "
                             "units; 8/255 ≈ 0.031)")
        if self.background not in ("", "white", "texture"):
            raise ValueError(f"AttackabilityConfig.background={self.background!r}: expected '', white or texture")
        if not self.pairs:
            raise ValueError("AttackabilityConfig.pairs=(): give at least one source:target pair")
        for p in self.pairs:
            if p.count(":") != 1 or not all(x.strip() for x in p.split(":")) or len(set(p.split(":"))) < 2:
                raise ValueError(f"AttackabilityConfig.pairs: {p!r} is not 'source:target' with two different "
                                 "concepts")


PRESETS = {"default": AttackabilityConfig(),
           # `mithridate demo`: four budgets, 6 images, ~10 s on 2 CPU cores
           "demo": AttackabilityConfig(eps=(4 / 255, 8 / 255, 16 / 255, 64 / 255), images=6, steps=100),
           "tiny": AttackabilityConfig(pairs=("cat:house",), eps=(4 / 255, 16 / 255), images=2, steps=10)}


def pair_images(pool, source: str, target: str, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `k` pool images naming `source` and one anchor image naming `target` (seeded choices)."""
    rng = np.random.default_rng(seed)
    out = []
    for field, concept in (("source", source), ("target", target)):
        idx = np.flatnonzero(candidates.naming(pool.captions, concept))
        if len(idx) == 0:
            close = sorted({c for c in pool.captions if concept.split()[0] in c})[:3]
            raise ValueError(f"pairs: {field} {concept!r} names no image in the data"
                             + (f" (captions with {concept.split()[0]!r}: {close})" if close else ""))
        out.append(idx)
    src = rng.permutation(out[0])[:k]
    return pool.images[torch.from_numpy(src)], pool.images[int(rng.choice(out[1]))]


def _mean_ci(values: list[float]) -> list[float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [float("nan")] * 3
    mean, lo, hi = intervals.mean_interval(v)  # percentile bootstrap of the mean (non-binary values)
    return [mean, lo, hi]


def measure(ae, images: torch.Tensor, anchor: torch.Tensor, eps: float, steps: int, seed: int,
            transfer=None) -> list[dict]:
    """Per image at one budget: gap closed (white-box and, with `transfer`, under the second encoder), PSNR, SSIM."""
    r = nightshade.craft(ae.encode_latents, images, anchor, eps=eps, steps=steps, seed=seed)
    rows = [{"gap_closed": s["gap_closed"], "psnr": s["psnr"], "ssim": s["ssim"], "linf": s["linf"]} for s in r.stats]
    if transfer is not None:
        with torch.no_grad():
            f = transfer.encode_latents
            gap = quality.gap_closed(f(images), f(r.poisons), f(anchor[None]))
        for row, g in zip(rows, gap.tolist()):
            row["gap_closed_transfer"] = g
    return rows


def curve(cfg: AttackabilityConfig) -> dict:
    """The attackability curve over `cfg.eps`, pairs pooled."""
    ae = vae_mod.load_vae(cfg.vae)
    other = vae_mod.load_vae(cfg.transfer) if cfg.transfer else None
    train_cfg = vae_mod.read_checkpoint(cfg.vae)["train_config"]
    size = int(train_cfg["image_size"])
    background = cfg.background or train_cfg.get("background", "white")
    pool = attack_pool.load(cfg.data, size, background)
    sets = [pair_images(pool, *p.split(":"), cfg.images, cfg.seed) for p in cfg.pairs]
    points = []
    for eps in cfg.eps:
        rows = [row for images, anchor in sets for row in measure(ae, images, anchor, eps, cfg.steps, cfg.seed, other)]
        point = {"eps": eps, "eps_255": round(eps * 255, 2), "images": len(rows),
                 **{k: _mean_ci([r[k] for r in rows]) for k in rows[0] if k != "linf"}}
        points.append(point)
        logger.info("ε = %5.1f/255: gap closed %.3f [%.3f, %.3f]%s, PSNR %.1f dB", eps * 255, *point["gap_closed"],
                    f", transfer {point['gap_closed_transfer'][0]:.3f}" if other is not None else "",
                    point["psnr"][0])
    return {"config": json.loads(json.dumps(options.to_dict(cfg), default=str)), "vae": str(cfg.vae),
            "transfer": cfg.transfer, "pairs": list(cfg.pairs), "steps": cfg.steps,
            "image_size": size, "background": background, "points": points, "verdict": verdict(points)}


def verdict(points: list[dict]) -> dict:
    """Whether some budget ≤ 8/255 with poison PSNR ≥ 32 dB closes ≥ 50% of the gap (issue 7's goal)."""
    ok = [p for p in points if p["eps"] <= GOAL_EPS + 1e-9 and p["psnr"][0] >= GOAL_PSNR]
    best = max(ok, key=lambda p: p["gap_closed"][0], default=None)
    return {"goal": f"gap closed ≥ {GOAL_GAP:.0%} at ε ≤ 8/255 with PSNR ≥ {GOAL_PSNR:g} dB",
            "best_invisible_gap": None if best is None else best["gap_closed"][0],
            "attackable": bool(best is not None and best["gap_closed"][0] >= GOAL_GAP)}


def figure(result: dict, path: Path) -> Path:
    pts = result["points"]
    x = [p["eps_255"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, label, colour in (("gap_closed", "white-box", "tab:purple"), ("gap_closed_transfer", "transfer",
                                                                          "tab:blue")):
        if key in pts[0]:
            y = np.array([p[key] for p in pts])
            ax.errorbar(x, y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]], marker="o", capsize=3,
                        color=colour, label=label)
    ax.axhline(GOAL_GAP, color="grey", linestyle=":", label="50% of the gap")
    ax.axvline(GOAL_EPS * 255, color="grey", linestyle="--", label="8/255")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L∞ budget ε (×1/255)")
    ax.set_ylabel("fraction of the latent gap closed")
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.0)
    twin = ax.twinx()
    twin.plot(x, [p["psnr"][0] for p in pts], color="tab:green", alpha=0.5, linestyle="-.", label="PSNR")
    twin.set_ylabel("poison PSNR (dB)", color="tab:green")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8)
    ax.set_title(f"attackability of {Path(result['vae']).name}: {', '.join(result['pairs'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(cfg: AttackabilityConfig) -> Path:
    """Write `attackability.json` and `attackability.png`; returns the JSON path."""
    out = Path(cfg.out) if cfg.out else vae_folder(cfg.vae)
    out.mkdir(parents=True, exist_ok=True)
    result = curve(cfg)
    path = out / "attackability.json"
    disk.write_text(path, json.dumps(result, indent=2) + "\n")
    figure(result, out / "attackability.png")
    v = result["verdict"]
    logger.info("attackability: best gap closed at an invisible budget %s (%s) → %s",
                "n/a" if v["best_invisible_gap"] is None else f"{v['best_invisible_gap']:.3f}",
                v["goal"], path)
    return path


def vae_folder(path: str) -> Path:
    """The folder of a `vae train` output given as the folder or its vae.pt."""
    p = Path(path)
    return p.parent if p.suffix == ".pt" else p
