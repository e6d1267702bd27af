"""`mithridate poison study`: which autoencoder designs a Nightshade-style attack can move, and at what cost.

For each design variant × seed: train the autoencoder (`vae train`, reused when already trained), measure its
attackability curve (`poison attackability`: gap closed per ε, white-box, and transfer to the same variant's
next seed) and its held-out reconstruction PSNR. Writes `study.parquet` (one row per variant × seed × ε),
`study.json` (per variant: mean over seeds at each ε, the verdict against the goal) and `frontier.png` (gap
closed at 8/255 against reconstruction PSNR, one point per autoencoder).

Variants (`VARIANTS`): the demo's 32 px f4 autoencoder, its KL-1e-6 twin (SD's KL weight), SD's structure at
the same 8×8×4 latent (64 px, factor 8), the same on textured backgrounds, a wider and longer-trained one, and
adversarially trained (robust) ones — the defence — at two penalty weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from diffusion import vae_train as vae  # noqa: E402
from mithridate.core import (
    disk,
    options,  # noqa: E402
)
from poisoning import attackability  # noqa: E402

logger = logging.getLogger(__name__)

# name → overrides of the `vae train` preset (the demo's "cpu" preset unless said otherwise)
VARIANTS = {
    "32px-f4": {},
    "32px-f4-kl1e-6": {"kl_weight": 1e-6},
    "64px-f8": {"image_size": 64, "channels": (32, 64, 64, 64), "kl_weight": 1e-6},
    "64px-f8-texture": {"image_size": 64, "channels": (32, 64, 64, 64), "kl_weight": 1e-6, "background": "texture"},
    "32px-f4-wide-long": {"channels": (64, 128, 128), "groups": 32, "steps": 3000, "minutes": 6.0},
    "32px-f4-robust": {"adv_eps": 8 / 255, "adv_weight": 10.0},
    "32px-f4-robust-strong": {"adv_eps": 8 / 255, "adv_weight": 1000.0},
}
STUDY_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)


@dataclass(frozen=True)
class StudyConfig:
    data: str = options.opt("mithridate-out/train", "autoencoder training and attack images (shards or an art "
                            "corpus folder)")
    out: str = options.opt("mithridate-out/attackability-study", "output folder (vaes/ inside)")
    variants: tuple[str, ...] = options.opt(tuple(VARIANTS), "design variants to train and attack")
    seeds: tuple[int, ...] = options.opt((0, 1), "seeds per variant (transfer: seed k's poisons on seed k+1)")
    vae_preset: str = options.opt("cpu", "`vae train` preset the variants modify")
    vae_steps: int = options.opt(0, "override every variant's training steps (0 = the variant's)")
    pairs: tuple[str, ...] = options.opt(("automobile:elephant", "cow:automobile"), "source:target pairs")
    eps: tuple[float, ...] = options.opt(STUDY_EPS, "L∞ budgets in [0, 1] pixel units")
    images: int = options.opt(8, "source images per pair")
    steps: int = options.opt(200, "attack steps per budget")

    def __post_init__(self):
        for name in ("variants", "seeds", "pairs", "eps"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if not self.variants or unknown:
            raise ValueError(f"StudyConfig.variants={self.variants!r}: unknown {unknown}; known: "
                             f"{', '.join(VARIANTS)}")
        if not self.seeds:
            raise ValueError("StudyConfig.seeds=(): give at least one seed")
        if self.vae_preset not in vae.PRESETS:
            raise ValueError(f"StudyConfig.vae_preset={self.vae_preset!r}: expected one of {', '.join(vae.PRESETS)}")
        if self.vae_steps < 0:
            raise ValueError(f"StudyConfig.vae_steps={self.vae_steps!r}: must be >= 0")
        attackability.AttackabilityConfig(pairs=self.pairs, eps=self.eps, images=self.images, steps=self.steps)


PRESETS = {"default": StudyConfig(),
           "tiny": StudyConfig(variants=("32px-f4", "32px-f4-robust"), vae_preset="tiny", vae_steps=20,
                               pairs=("cat:house",), eps=(4 / 255, 32 / 255), images=2, steps=5)}


def vae_config(cfg: StudyConfig, variant: str, seed: int, out: Path) -> vae.VaeTrainConfig:
    over = dict(VARIANTS[variant])
    if cfg.vae_preset == "tiny":  # the tiny preset's widths, whatever the variant's
        over.pop("channels", None), over.pop("groups", None)
        if over.get("image_size") == 64:
            over["channels"] = (8, 16, 16, 16)
    if cfg.vae_steps:
        over.update(steps=cfg.vae_steps, minutes=0.0)
    return dataclasses.replace(vae.PRESETS[cfg.vae_preset], data=cfg.data, seed=seed, out=str(out), **over)


def _rows(variant: str, seed: int, folder: Path, result: dict) -> list[dict]:
    psnr = json.loads((folder / "eval.json").read_text())["psnr_heldout_db"]
    return [{"variant": variant, "seed": seed, "recon_psnr_db": psnr, "eps": p["eps"], "eps_255": p["eps_255"],
             "gap_closed": p["gap_closed"][0], "gap_low": p["gap_closed"][1], "gap_high": p["gap_closed"][2],
             "gap_closed_transfer": p.get("gap_closed_transfer", [np.nan])[0], "poison_psnr_db": p["psnr"][0],
             "poison_ssim": p["ssim"][0]} for p in result["points"]]


def summary(table: pd.DataFrame) -> dict:
    """Per variant and ε: the mean over seeds (and their spread) of every number; the verdict at 8/255."""
    out = {}
    for variant, g in table.groupby("variant", sort=False):
        per_eps = g.groupby("eps_255").agg(gap=("gap_closed", "mean"), gap_min=("gap_closed", "min"),
                                           gap_max=("gap_closed", "max"), transfer=("gap_closed_transfer", "mean"),
                                           psnr=("poison_psnr_db", "mean")).reset_index()
        invisible = per_eps[(per_eps.eps_255 <= 8.0 + 1e-6) & (per_eps.psnr >= attackability.GOAL_PSNR)]
        best = float(invisible.gap.max()) if len(invisible) else None
        out[variant] = {"recon_psnr_db": float(g.recon_psnr_db.mean()), "seeds": int(g.seed.nunique()),
                        "points": per_eps.to_dict("records"), "best_invisible_gap": best,
                        "meets_goal": bool(best is not None and best >= attackability.GOAL_GAP)}
    return out


def frontier(table: pd.DataFrame, path: Path, eps_255: float = 8.0) -> Path:
    """Gap closed at `eps_255`/255 against reconstruction PSNR, one point per autoencoder (variant × seed)."""
    at = table[np.isclose(table.eps_255, eps_255)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for variant, g in at.groupby("variant", sort=False):
        ax.scatter(g.recon_psnr_db, g.gap_closed, label=variant, s=40)
    ax.axhline(attackability.GOAL_GAP, color="grey", linestyle=":", label="goal: 50% of the gap")
    ax.set_xlabel("autoencoder held-out PSNR (dB)")
    ax.set_ylabel(f"gap closed at ε = {eps_255:g}/255")
    ax.set_ylim(0, max(0.6, float(at.gap_closed.max()) * 1.1 if len(at) else 0.6))
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title("attackability frontier (white-box)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measured(acfg: attackability.AttackabilityConfig, folder: Path) -> dict:
    """The attackability of `folder`: reused when its attackability.json came from the same settings."""
    path = folder / "attackability.json"
    want = json.loads(json.dumps(options.to_dict(acfg), default=str))
    if path.is_file() and json.loads(path.read_text()).get("config") == want:
        logger.info("attackability of %s: measured earlier with these settings, reused", folder.name)
        return json.loads(path.read_text())
    return json.loads(attackability.run(acfg).read_text())


def run(cfg: StudyConfig) -> Path:
    """Train, attack and summarise every variant × seed; returns the output folder."""
    out = Path(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=("variants",))  # more variants: the trained ones are reused
    options.write_config(cfg, out)
    rows = []
    for variant in cfg.variants:
        folders = [vae.run(vae_config(cfg, variant, s, out / "vaes" / f"{variant}-s{s}")) for s in cfg.seeds]
        for k, (seed, folder) in enumerate(zip(cfg.seeds, folders)):
            other = folders[(k + 1) % len(folders)] if len(folders) > 1 else None
            acfg = attackability.AttackabilityConfig(vae=str(folder), data=cfg.data, pairs=cfg.pairs, eps=cfg.eps,
                                                     images=cfg.images, steps=cfg.steps, seed=seed,
                                                     transfer=str(other) if other else "")
            result = measured(acfg, folder)
            rows += _rows(variant, seed, folder, result)
    table = pd.DataFrame(rows)
    with disk.atomic(out / "study.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    result = summary(table)
    disk.write_text(out / "study.json", json.dumps(result, indent=2) + "\n")
    frontier(table, out / "frontier.png")
    for variant, r in result.items():
        at8 = next((p for p in r["points"] if abs(p["eps_255"] - 8.0) < 1e-6), None)
        logger.info("%-20s recon %.1f dB  gap@8/255 %s  transfer %s  goal met: %s", variant, r["recon_psnr_db"],
                    "n/a" if at8 is None else f"{at8['gap']:.3f} [{at8['gap_min']:.3f}–{at8['gap_max']:.3f}]",
                    "n/a" if at8 is None else f"{at8['transfer']:.3f}", r["meets_goal"])
    return out
