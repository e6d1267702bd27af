"""`mithridate poison sweep`: attack success against the number of poisons N, for each attack, beside a control.

For each seed: a control (the clean model continued on the clean data), and for each attack the N_max poisons
crafted once (`poison inject`) and victims continued on clean data + the first N of them (nested sets: the
candidates are ranked, so the first N are what `--n=N` would choose). Every victim is judged on the same
fixed noise:

- source: `generations` images of the prompt C → P(top-1 = A), P(top-1 ≠ C) with bootstrap 95% intervals;
- bleed-through (control and N_max victims): the `bleed` concepts nearest to C in the text encoder's space
  and the `bleed` farthest (a control), `bleed_generations` images each;
- collateral (control and N_max victims): every other concept, `collateral_per_concept` images each →
  concept accuracy and KID against the real images of those concepts;
- purification (each method × attack at N_max, plus a purified control): every training row purified first;
- benign (N_max): the same candidates unperturbed — what adding N images of C does without the attack;
- implosion (optional, per attack): C → A and `implosion` more concept pairs poisoned at once → each pair's
  P(own target) (role "implosion") and the general quality on the other concepts (role "others").

Defences on the N_max poisons of the first seed: the CLIP-score filter at the `filter` stage's threshold, and
the latent-consistency detector at a fixed false-positive rate (`poisoning.defences`).

Outputs: `results.parquet` (one row per victim × prompt group), `asr.png`, `generations.png`, `defences.json`,
`sweep.json` (setup and summary), and `poisons/`, `data/`, `victims/` (resumable: finished victims are reused).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from curation.score import encoders
from diffusion import data, grid, pipeline
from diffusion.pipeline import Pipeline
from mithridate.core import disk, options, schema, stats_files, workers
from poisoning import (
    attacks,
    candidates,
    defences,
    denoising,
    dose_figure,
    doses,
    folders,
    inject,
    intervals,
    measure,
    nightshade as ns,
    victim,
)

logger = logging.getLogger(__name__)

ROLES = ("source", "near", "far", "others")


@dataclass(frozen=True)
class SweepConfig:
    data: str = options.opt("mithridate-out/train", "clean training shards (export output)")
    checkpoint: str = options.opt("mithridate-out/diffusion", "the clean model (victims continue from it)")
    pool: str = options.opt("", "attacker's images: training shards or an art corpus folder ('' = data)")
    filter: str = options.opt("", "the `filter` stage folder: its CLIP threshold tests the poisons ('' = the "
                              "lowest CLIP score among the clean rows)")
    out: str = options.opt("mithridate-out/poison-sweep", "output folder")
    source: str = options.opt("automobile", "source concept C whose prompt the attack hijacks")
    target: str = options.opt("elephant", "target concept A")
    ns: tuple[int, ...] = options.opt((1, 2, 4, 8), "numbers of poisons N (the control is N = 0); ignored when "
                                      "fractions are given")
    fractions: tuple[float, ...] = options.opt((), "poison doses as fractions of the clean images of C, e.g. "
                                               "0.005,0.01,0.02,0.05,0.1,0.2 (N = max(1, round(f·clean))); '' = ns")
    attacks: tuple[str, ...] = options.opt(("nightshade", "dirty_label"), "attacks to sweep")
    positive_control: bool = options.opt(True, "also poison with the anchor image itself at the largest dose (the "
                                         "limit of a clean-label attack): if it cannot move P(A), nothing can be seen")
    benign: bool = options.opt(True, "also train a victim on the N_max candidates unperturbed (the control that "
                               "separates nightshade's perturbation from merely adding images of C)")
    eps_sweep: tuple[float, ...] = options.opt((), "nightshade budgets in 1/255 pixel units swept at eps_dose, e.g. "
                                               "4,8,16,32,64,255 ('' = none)")
    eps_dose: float = options.opt(0.0, "dose of the ε sweep: a fraction of the clean C images (0 = the largest dose)")
    prompt: str = options.opt("{}", "prompt naming a concept ({} = its name), e.g. 'a {}' or 'an emoji by {}'")
    min_source_rate: float = options.opt(0.3, "precondition: the control's P(C) lower bound must reach this")
    min_judge_accuracy: float = options.opt(0.5, "precondition: the judge's held-out accuracy on real C and A images")
    seeds: tuple[int, ...] = options.opt((0,), "seeds (poison choice, crafting and victim training)")
    steps: int = options.opt(150, "victim training steps")
    lr: float = options.opt(3e-4, "victim peak learning rate")
    warmup_steps: int = options.opt(10, "victim warmup steps")
    batch_size: int = options.opt(64, "victim batch size")
    from_scratch: bool = options.opt(False, "train victims from scratch (the clean model's steps) instead of "
                                     "continuing the clean model")
    budget: Literal["linf", "ssim", "lpips"] = options.opt("linf", "perturbation budget of every crafted attack (see "
                                                                   "`poison inject --help`)")
    eps: float = options.opt(0.04, "L∞ budget in [0, 1] pixel units (linf budget)")
    ssim_floor: float = options.opt(0.9, "SSIM floor (ssim budget)")
    lpips_limit: float = options.opt(0.07, "LPIPS limit (lpips budget)")
    lpips_backbone: str = options.opt("", "lpips budget: torchvision AlexNet weights (.pth) for LPIPS' trunk")
    craft_steps: int = options.opt(500, "optimisation steps of every crafted attack")
    anchor: Literal["data", "generated", "nearest"] = options.opt(
        "data", "anchor: a pool image, the clean model's sample, or per source the nearest pool image in latent space")
    craft_restarts: int = options.opt(1, "gradient_matching, latent_target: PGD restarts (linf budget)")
    craft_draws: int = options.opt(4, "gradient_matching, latent_target: (timestep, noise) draws per poison")
    craft_timesteps: denoising.Timesteps = options.opt(
        "uniform", "gradient_matching, latent_target: where the draws' timesteps lie")
    craft_params: denoising.Params = options.opt(
        "cross_attention", "gradient_matching: the UNet parameters whose gradient is matched")
    craft_resample: bool = options.opt(False, "gradient_matching: new (timestep, noise) draws at every step")
    craft_retrain_steps: int = options.opt(
        0, "gradient_matching, latent_target: the retraining trick's steps (see `poison inject --help`); 0 = none")
    vae: str = options.opt("", "craft against this autoencoder instead of the victim's (a transfer attack)")
    craft_checkpoint: str = options.opt("", "gradient_matching, latent_target: craft on this diffusion checkpoint "
                                        "instead of the victims' clean model (a transfer attack)")
    judge: str = options.opt("", "who labels generations: '' = an independent pixel classifier trained here on the "
                             "clean rows (one artist held out); a `poison pair` judge/ folder; a compact CLIP folder; "
                             "'own' = the victim's own text CLIP (not independent: labelled so)")
    judge_steps: int = options.opt(600, "training steps of the independent judge when judge is ''")
    generations: int = options.opt(64, "generations of the source prompt per victim")
    bleed: int = options.opt(2, "nearest and farthest concepts to C measured for bleed-through (0 = none)")
    bleed_generations: int = options.opt(32, "generations per bleed-through concept")
    collateral_per_concept: int = options.opt(4, "generations per other concept for collateral (0 = none)")
    purify: tuple[str, ...] = options.opt(("jpeg",), "purifications tried at N_max ('' = none)")
    implosion: int = options.opt(0, "model implosion: per attack, one more victim poisoned on this many extra "
                                 "concept pairs at once (N_max each, as far as the pool allows); 0 = none")
    fpr: float = options.opt(0.05, "detector: false-positive rate on clean images")
    sampler: str = options.opt("euler", "sampler of the generations")
    sample_steps: int = options.opt(20, "sampler steps")
    guidance: float = options.opt(3.0, "classifier-free guidance scale")
    workers: int = options.opt(1, "victims trained side by side, each in its own process (0 = one per core; a "
                               "runtime field: the victims depend on threads, not on workers)")
    threads: int = options.opt(0, "torch threads of each victim's training (0 = torch's default; needed >= 1 when "
                               "workers != 1; float rounding depends on it)")

    def __post_init__(self):
        workers.check("SweepConfig", self.workers, self.threads)
        for name in ("ns", "attacks", "seeds", "purify", "fractions", "eps_sweep"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "steps", "lr", "batch_size", "craft_steps", "generations", "sample_steps",
                               "craft_restarts", "craft_draws")
        if not self.ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.ns):
            raise ValueError(f"SweepConfig.ns={self.ns!r}: expected positive integers (N = 0 is the control)")
        allowed = [a for a in attacks.ATTACKS if a != "benign"]
        if not self.attacks or any(a not in allowed for a in self.attacks):
            raise ValueError(f"SweepConfig.attacks={self.attacks!r}: expected some of {', '.join(allowed)} "
                             "(the benign control is the `benign` field)")
        if not self.seeds:
            raise ValueError("SweepConfig.seeds=(): expected at least one seed")
        for f in self.fractions:
            if isinstance(f, bool) or not 0 < f <= 1:
                raise ValueError(f"SweepConfig.fractions={self.fractions!r}: expected fractions within (0, 1]")
        for e in self.eps_sweep:
            if not 0 < e <= 255:
                raise ValueError(f"SweepConfig.eps_sweep={self.eps_sweep!r}: expected budgets within (0, 255] "
                                 "(1/255 pixel units)")
        if not 0 <= self.eps_dose <= 1:
            raise ValueError(f"SweepConfig.eps_dose={self.eps_dose!r}: must be within [0, 1] (0 = the largest dose)")
        if "{}" not in self.prompt:
            raise ValueError(f"SweepConfig.prompt={self.prompt!r}: needs {{}} where the concept's name goes")
        for name in ("min_source_rate", "min_judge_accuracy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SweepConfig.{name}={getattr(self, name)!r}: must be within [0, 1]")
        options.check_positive(self, "judge_steps")
        for p in self.purify:
            if p not in defences.PURIFICATIONS:
                raise ValueError(f"SweepConfig.purify={self.purify!r}: expected some of "
                                 f"{', '.join(defences.PURIFICATIONS)}")
        for name in ("budget", "anchor"):
            options.check_choice(self, name, options.literal_values(SweepConfig, name))
        if not 0 < self.eps <= 1:
            raise ValueError(f"SweepConfig.eps={self.eps!r}: must be within (0, 1] ([0, 1] pixel units)")
        if not 0 < self.ssim_floor < 1:
            raise ValueError(f"SweepConfig.ssim_floor={self.ssim_floor!r}: must be within (0, 1)")
        if not 0 < self.fpr < 1:
            raise ValueError(f"SweepConfig.fpr={self.fpr!r}: must be within (0, 1)")
        if not 0 < self.lpips_limit < 1:
            raise ValueError(f"SweepConfig.lpips_limit={self.lpips_limit!r}: must be within (0, 1)")
        if self.budget == "lpips" and not self.lpips_backbone:
            raise ValueError("SweepConfig.lpips_backbone='': budget=lpips needs AlexNet weights (a torchvision "
                             "state dict .pth); without them use budget=ssim")
        for name in ("bleed", "bleed_generations", "collateral_per_concept", "warmup_steps", "guidance", "implosion",
                     "craft_retrain_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SweepConfig.{name}={getattr(self, name)!r}: must be >= 0")
        if self.source == self.target:
            raise ValueError(f"SweepConfig.target={self.target!r}: must differ from source")
        from diffusion.samplers import SAMPLERS
        if self.sampler not in SAMPLERS:
            raise ValueError(f"SweepConfig.sampler={self.sampler!r}: expected one of {', '.join(SAMPLERS)}")

    @property
    def n_max(self) -> int:
        return max(self.ns)

    def training(self) -> victim.VictimTraining:
        return victim.VictimTraining(self.steps, self.lr, self.warmup_steps, self.batch_size, self.from_scratch)


PRESETS = {
    "default": SweepConfig(),
    # the README's dose study on a `poison pair` (~40 CPU-minutes per seed and pair on 2 cores): six doses, the
    # positive and benign controls at 20%, the ε sweep at 20%; victims continue the clean model long enough to learn
    # from a poison (800 steps of 32 at its peak learning rate: ~40 passes over a 621-row pair)
    "doses": SweepConfig(fractions=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2), seeds=(0, 1, 2), steps=800, lr=2e-3,
                         warmup_steps=20, batch_size=32, eps_sweep=(4, 8, 16, 32, 64, 255), purify=(), bleed=1,
                         collateral_per_concept=4),
    # `mithridate demo` on 2 CPU cores (~4 minutes a pair): one seed, two doses, the controls, one ε beside the
    # invisible one; the README's multi-seed `doses` preset is the study
    "demo": SweepConfig(fractions=(0.05, 0.2), steps=600, lr=2e-3, warmup_steps=20, batch_size=32, eps_sweep=(255,),
                        purify=(), bleed=1, collateral_per_concept=2),
    # seconds, for tests: the tiny model, few generations
    "tiny": SweepConfig(ns=(1, 2), steps=4, batch_size=16, craft_steps=10, generations=8, bleed=1,
                        bleed_generations=4, collateral_per_concept=1, sampler="ddim", sample_steps=4, judge_steps=40),
}


@dataclass(frozen=True)
class Victim:
    """One trained model of the sweep: attack "none" is a control."""
    name: str
    attack: str
    n: int
    seed: int
    purification: str  # "none" or a defences.PURIFICATIONS method
    data: Path
    pairs: tuple = ()  # implosion victims: every (source, target) pair poisoned at once
    eps: float = float("nan")  # nightshade's L∞ budget of these poisons (NaN: no perturbation crafted)
    eps_sweep: bool = False  # an extra victim of the ε sweep (not on the dose curve)


# --- the sweep -----------------------------------------------------------------------------------------------------


def _victims(cfg: SweepConfig, out: Path, image_size: int, n_eps: int) -> list[Victim]:
    """Every victim of the sweep, with its data folder built (poisons crafted once per attack and seed)."""
    vs = []
    for seed in cfg.seeds:
        vs.append(Victim(f"control-s{seed}", "none", 0, seed, "none", Path(cfg.data)))
        for attack in dose_attacks(cfg):
            poisons = craft(cfg, attack, seed, out)
            eps = cfg.eps if attack in attacks.PERTURBING else float("nan")
            for n in sorted(set(cfg.ns)) if attack in cfg.attacks else [cfg.n_max]:
                folder = folders.with_poisons(cfg.data, poisons, n, out / "data" / f"{attack}-n{n}-s{seed}")
                vs.append(Victim(f"{attack}-n{n}-s{seed}", attack, n, seed, "none", folder, eps=eps))
        vs += eps_victims(cfg, out, seed, n_eps)
        if cfg.benign:
            folder = folders.with_poisons(cfg.data, craft(cfg, "benign", seed, out), cfg.n_max,
                                          out / "data" / f"benign-n{cfg.n_max}-s{seed}")
            vs.append(Victim(f"benign-n{cfg.n_max}-s{seed}", "benign", cfg.n_max, seed, "none", folder))
        if cfg.implosion:
            vs += implosion_victims(cfg, out, image_size, seed)
        for method in cfg.purify:
            vs += purified_victims(cfg, out, image_size, seed, method)
    return vs


def dose_attacks(cfg: SweepConfig) -> list[str]:
    """The attacks swept over every dose: the configured ones, then the positive control."""
    return list(cfg.attacks) + (["anchor"] if cfg.positive_control and "anchor" not in cfg.attacks else [])


def eps_n(cfg: SweepConfig, clean_c: int) -> int:
    """N of the ε sweep: `eps_dose` of the clean C images (0: the largest dose)."""
    return cfg.n_max if not cfg.eps_dose else max(1, int(round(cfg.eps_dose * clean_c)))


def eps_victims(cfg: SweepConfig, out: Path, seed: int, n: int) -> list[Victim]:
    """Nightshade victims at the ε-sweep dose `n`, one per budget (the sweep's own ε at that dose is already a
    victim of the dose curve)."""
    vs = []
    for e in cfg.eps_sweep:
        eps = min(e / 255, 1.0)
        if abs(eps - cfg.eps) < 1e-9 and n in cfg.ns and "nightshade" in cfg.attacks:
            continue
        poisons = craft(cfg, "nightshade", seed, out, eps=eps, n=n)
        name = f"nightshade-e{e:g}-n{n}-s{seed}"
        folder = folders.with_poisons(cfg.data, poisons, n, out / "data" / name)
        vs.append(Victim(name, "nightshade", n, seed, "none", folder, eps=eps, eps_sweep=True))
    return vs


def purified_victims(cfg: SweepConfig, out: Path, image_size: int, seed: int, method: str) -> list[Victim]:
    """A purified control and, per attack, the N_max victim with every training row purified by `method`."""
    data_dir = out / "data"
    vs = [Victim(f"control-{method}-s{seed}", "none", 0, seed, method,
                 folders.purified(Path(cfg.data), method, image_size, data_dir / f"control-{method}-s{seed}", seed))]
    for attack in cfg.attacks:
        name = f"{attack}-n{cfg.n_max}-{method}-s{seed}"
        source = data_dir / f"{attack}-n{cfg.n_max}-s{seed}"
        vs.append(Victim(name, attack, cfg.n_max, seed, method,
                         folders.purified(source, method, image_size, data_dir / name, seed)))
    return vs


def implosion_pairs(cfg: SweepConfig, concepts: list[str], image_size: int, seed: int) -> list[tuple[str, str, int]]:
    """(source, target, n) for `cfg.implosion` extra pairs: the model's concepts with pool images as sources (in
    the model's order), each mapped to a seeded choice of another concept, n = min(N_max, its pool images)."""
    from poisoning import pool as attack_pool

    pool = attack_pool.load(cfg.pool or cfg.data, image_size)
    counts = np.bincount(data.match_concepts(pool.captions, concepts) + 1, minlength=len(concepts) + 1)[1:]
    sources = [c for c, k in zip(concepts, counts) if k and c not in (cfg.source, cfg.target)][: cfg.implosion]
    if len(sources) < cfg.implosion:
        raise ValueError(f"implosion={cfg.implosion}: only {len(sources)} other concepts have pool images")
    rng = np.random.default_rng(seed)
    have = [c for c, k in zip(concepts, counts) if k]
    pairs = []
    for c in sources:
        target = str(rng.choice([t for t in have if t != c]))
        pairs.append((c, target, int(min(cfg.n_max, counts[concepts.index(c)]))))
    return pairs


def implosion_victims(cfg: SweepConfig, out: Path, image_size: int, seed: int) -> list[Victim]:
    """Per attack, one victim poisoned on C → A (N_max) and on `cfg.implosion` more pairs at once."""
    concepts = list(pipeline.read_checkpoint(cfg.checkpoint)["concepts"])
    pairs = implosion_pairs(cfg, concepts, image_size, seed)
    vs = []
    for attack in cfg.attacks:
        folder = out / "data" / f"implosion-{attack}-k{len(pairs)}-s{seed}"
        folders.with_poisons(cfg.data, craft(cfg, attack, seed, out), cfg.n_max, folder)
        for k, (source, target, n) in enumerate(pairs, start=1):
            extra = craft(cfg, attack, seed, out / "implosion", source, target, n)
            shutil.copyfile(extra / inject.POISON_SHARD, folder / f"{int(inject.POISON_SHARD[:5]) + k:05d}.parquet")
        everything = ((cfg.source, cfg.target),) + tuple((s, t) for s, t, _ in pairs)
        vs.append(Victim(f"implosion-{attack}-k{len(pairs)}-s{seed}", attack, cfg.n_max, seed, "none", folder,
                         everything))
    return vs


def poison_folder(cfg: SweepConfig, out: Path, attack: str, seed: int, source: str = "", eps: float = 0.0) -> Path:
    """Where `craft` writes one attack's poisons: per seed, another source (implosion) or another ε (ε sweep)."""
    if eps and abs(eps - cfg.eps) > 1e-9:
        return out / "poisons" / f"{attack}-e{round(255 * eps, 3):g}-s{seed}"
    return out / "poisons" / (f"{attack}-s{seed}" if source in ("", cfg.source) else f"{attack}-{source}-s{seed}")


def craft(cfg: SweepConfig, attack: str, seed: int, out: Path, source: str = "", target: str = "",
          n: int = 0, eps: float = 0.0) -> Path:
    """The N_max poisons of one attack and seed (`poison inject`; reused when already written); another
    `source`/`target`/`n` for the implosion pairs, another `eps` for the ε sweep."""
    folder = poison_folder(cfg, out, attack, seed, source, eps)
    source, target, n = source or cfg.source, target or cfg.target, n or cfg.n_max
    icfg = inject.InjectConfig(data=cfg.data, checkpoint=cfg.checkpoint, out=str(folder), source=source,
                               target=target, pool=cfg.pool, n=n, attack=attack, budget=cfg.budget,
                               eps=eps or cfg.eps, ssim_floor=cfg.ssim_floor, lpips_limit=cfg.lpips_limit,
                               lpips_backbone=cfg.lpips_backbone, steps=cfg.craft_steps, anchor=cfg.anchor,
                               restarts=cfg.craft_restarts, draws=cfg.craft_draws, timesteps=cfg.craft_timesteps,
                               params=cfg.craft_params, vae=cfg.vae, seed=seed,
                               craft_checkpoint=cfg.craft_checkpoint if attack in attacks.TRAINING_SIGNAL else "",
                               retrain_steps=cfg.craft_retrain_steps if attack in attacks.TRAINING_SIGNAL else 0,
                               resample=cfg.craft_resample and attack == "gradient_matching")
    options.check_resumable(icfg, folder)
    if (folder / "manifest.json").is_file():
        return folder
    return inject.run(icfg)


def _real(judge, concepts: list[str], clean: data.ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Judge features and concept labels of the clean rows naming one of `concepts`."""
    labels = data.match_concepts(clean.captions, concepts)
    images = clean.subset(np.flatnonzero(labels >= 0))
    return judge.features(data.to_uint8(images.images)), labels[labels >= 0]


def _check(cfg: SweepConfig, ckpt: dict) -> list[str]:
    concepts = list(ckpt.get("concepts") or [])
    if not concepts:
        raise ValueError(f"checkpoint={cfg.checkpoint!r}: the model was not trained on a concept list; the judge "
                         "needs one (train with --concepts)")
    candidates.check_concept(cfg.source, concepts, "source")
    candidates.check_concept(cfg.target, concepts, "target")
    return concepts


def _formats(folder: str | Path) -> list[str]:
    """The stored format of every clean row ("png", "jpeg" or "other"), in `data.load_images` order."""
    out = []
    for f in data.shard_files(folder):
        for b in schema.read(f, "train", columns=["jpg"]).column("jpg").to_pylist():
            out.append("png" if b[:4] == b"\x89PNG" else "jpeg" if b[:2] == b"\xff\xd8" else "other")
    return out


def _poison_u8(cfg: SweepConfig, out: Path, attack: str, image_size: int) -> tuple[np.ndarray, list[str]]:
    """The first seed's poisons of one attack as uint8 images, with their captions."""
    p = data.load_shard(poison_folder(cfg, out, attack, cfg.seeds[0]) / inject.POISON_SHARD, image_size)
    return data.to_uint8(p.images), p.captions


def _detector(cfg: SweepConfig, ae, clean_u8: np.ndarray, formats: list[str], poisons: dict) -> dict:
    """The detector on each attack's poisons beside its benign control — the same candidates unperturbed, from the
    same source as the poisons — overall and against the clean rows of each stored format."""
    clean = defences.consistency_scores(ae, clean_u8)
    benign = defences.consistency_scores(ae, poisons["benign"][0])
    fmt = np.array(formats if len(formats) == len(clean) else ["unknown"] * len(clean))
    res = {"kind": "latent consistency under JPEG", "attacks": {}, "benign": {}, "formats": {}}
    splits = [("all", np.ones(len(clean), bool))] + [(f, fmt == f) for f in sorted(set(fmt)) if (fmt == f).sum() >= 2]
    for name, keep in splits:
        res["formats"][name] = int(keep.sum())
        res["benign"][name] = defences.detector(clean[keep], benign, cfg.fpr)
    for attack in dose_attacks(cfg):
        scores = defences.consistency_scores(ae, poisons[attack][0])
        per = {name: defences.detector(clean[keep], scores, cfg.fpr) for name, keep in splits}
        for name, r in per.items():
            r["auc_margin_over_benign"] = r["auc"] - res["benign"][name]["auc"]
            r["recall_margin_over_benign"] = r["recall"] - res["benign"][name]["recall"]
        res["attacks"][attack] = {**per["all"], "by_format": per}
    return res


def _defences(cfg: SweepConfig, out: Path, ckpt: dict, clean: data.ImageSet) -> dict:
    """CLIP filter and detector results on the N_max poisons of the first seed."""
    ae = pipeline.build_vae(ckpt["vae"])
    text_clip = encoders.load_compact(ckpt["text"]["path"], "cpu")
    image_size = int(ckpt["image_size"])
    clean_u8 = data.to_uint8(clean.images)
    threshold, source = _clip_threshold(cfg, clean, text_clip)
    craft(cfg, "benign", cfg.seeds[0], out)  # the detector's benign control, also when no benign victim is trained
    poisons = {a: _poison_u8(cfg, out, a, image_size) for a in dose_attacks(cfg) + ["benign"]}
    clean_c = np.flatnonzero(candidates.naming(clean.captions, cfg.source, ckpt["concepts"]))
    res = {"clip_filter": {"threshold": threshold, "threshold_from": source, "attacks": {}},
           "detector": _detector(cfg, ae, clean_u8, _formats(cfg.data), poisons),
           "clean_source_clip_scores": defences.clip_filter(text_clip, clean_u8[clean_c],
                                                            [clean.captions[i] for i in clean_c],
                                                            threshold)["scores"].tolist()}
    for attack in dose_attacks(cfg):
        u8, captions = poisons[attack]
        f = defences.clip_filter(text_clip, u8, captions, threshold)
        rate = intervals.exact(int(f["passed"].sum()), len(u8))
        res["clip_filter"]["attacks"][attack] = {
            "poisons": len(u8), "pass_rate": rate[0], "pass_rate_ci": list(rate[1:]),
            "mean_score": float(np.mean(f["scores"])), "scores": f["scores"].tolist()}
    return res


def _clip_threshold(cfg: SweepConfig, clean: data.ImageSet, text_clip) -> tuple[float, str]:
    if cfg.filter:
        stats = stats_files.read(cfg.filter)
        cut = stats.get("clip_threshold_effective")
        if cut is not None:
            return float(cut), f"filter stage ({cfg.filter})"
        logger.warning("filter=%s applied no CLIP cut; using the lowest clean CLIP score instead", cfg.filter)
    scores = [s for f in data.shard_files(cfg.data)
              for s in schema.read(f, "train", columns=["clip_score"]).column("clip_score").to_pylist()
              if s is not None]
    if scores:
        return float(min(scores)), "lowest CLIP score among the clean rows"
    scores = defences.clip_scores(text_clip, data.to_uint8(clean.images), clean.captions)
    return float(np.min(scores)), "lowest CLIP score among the clean rows (computed here: the shards have none)"


def _grid(rows: list[tuple[str, np.ndarray]], path: Path, k: int = 8) -> None:
    images = np.concatenate([im[:k] for _, im in rows])
    grid.save_grid(images, path, nrow=k, scale=3, row_labels=[name for name, _ in rows])


def resolve_doses(cfg: SweepConfig, clean_c: int) -> tuple[SweepConfig, dict[int, float]]:
    """The config with `ns` resolved from `fractions` (when given), and the dose fraction of every N."""
    if cfg.fractions:
        pairs = doses.doses(cfg.fractions, clean_c)
        return dataclasses.replace(cfg, ns=tuple(n for _, n in pairs)), {n: f for f, n in pairs}
    return cfg, {n: n / clean_c if clean_c else float("nan") for n in cfg.ns}


def build_judge(cfg: SweepConfig, concepts: list[str], clean: data.ImageSet, text_path: str, out: Path,
                device: str = "auto"):
    """The judge of every generation (see the `judge` field), calibrated on real images."""
    from poisoning import judge as judges

    if cfg.judge == "own":
        j = judges.ClipJudge(text_path, concepts, device, label=judges.VICTIM_LABEL)
    elif cfg.judge and (Path(cfg.judge) / "judge.json").is_file():
        j = judges.load(cfg.judge)
    elif cfg.judge:
        own = Path(cfg.judge).resolve() == Path(text_path).resolve()
        j = judges.ClipJudge(cfg.judge, concepts, device, label=judges.VICTIM_LABEL if own else "another compact CLIP")
    else:
        j = _trained_judge(cfg, concepts, clean, out / "judge")
    for field in ("source", "target"):
        if getattr(cfg, field) not in j.concepts:
            raise ValueError(f"SweepConfig.judge={cfg.judge!r}: the judge does not know {field} "
                             f"{getattr(cfg, field)!r} (it knows {', '.join(j.concepts)})")
    if j.kind == "clip":
        labels = data.match_concepts(clean.captions, j.concepts)
        j.calibrate(data.to_uint8(clean.images[labels >= 0]), labels[labels >= 0])
    return j


def _trained_judge(cfg: SweepConfig, concepts: list[str], clean: data.ImageSet, folder: Path):
    """An independent pixel classifier over the model's concepts, trained on the clean rows with one whole
    artist (style) held out when there are several, else a share of the rows."""
    from mithridate.core.compute import torch_threads
    from poisoning import judge as judges

    if (folder / "judge.json").is_file():
        return judges.load(folder)
    labels = data.match_concepts(clean.captions, concepts)
    rows = np.flatnonzero(labels >= 0)
    artists = [clean.artists[i] or "" for i in rows]
    per_class = {}
    for label, artist in zip(labels[rows], artists):
        per_class.setdefault(label, set()).add(artist)
    # hold out whole artists when every concept has several; else (a curated set may keep one artist per concept)
    # hold out rows
    groups = artists if min(len(a) for a in per_class.values()) > 1 else [clean.uids[i] for i in rows]
    with torch_threads(1):
        j = judges.train(data.to_uint8(clean.images[rows]), labels[rows], list(concepts), groups,
                         steps=cfg.judge_steps, seed=cfg.seeds[0])
    judges.save(j, folder)
    return j


def _gap(cfg: SweepConfig, out: Path, v: Victim) -> float:
    """Mean gap closed of the nightshade poisons a victim trained on (NaN for other victims)."""
    if v.attack != "nightshade" or v.purification != "none" or v.pairs:
        return float("nan")
    p = poison_folder(cfg, out, "nightshade", v.seed, eps=v.eps) / "poisons.parquet"
    if not p.is_file():
        return float("nan")
    g = pd.read_parquet(p, columns=["gap_closed"]).gap_closed.head(v.n)
    return float(g.mean())


def _setting(cfg: SweepConfig, out: Path, v: Victim) -> str:
    if v.attack == "none":
        return "none"
    return json.loads((poison_folder(cfg, out, v.attack, v.seed) / "manifest.json").read_text())["setting"]


def run(cfg: SweepConfig) -> Path:
    """Run the sweep; returns the output folder."""
    out = Path(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=("workers",))
    options.write_config(cfg, out)
    t0 = time.time()
    ckpt = pipeline.read_checkpoint(cfg.checkpoint)
    concepts = _check(cfg, ckpt)
    size = int(ckpt["image_size"])
    clean = data.load_images(cfg.data, size)
    clean_c = int(candidates.naming(clean.captions, cfg.source, concepts).sum())
    cfg, fraction = resolve_doses(cfg, clean_c)
    clean_pipe = Pipeline.load(cfg.checkpoint)
    judge = build_judge(cfg, concepts, clean, clean_pipe.text.path, out, str(clean_pipe.device))
    logger.info("judge: %s; held-out accuracy on real images %.2f (chance %.2f)", judge.name,
                judge.info()["heldout_accuracy"], judge.info()["chance"])
    groups = measure.bleed_concepts(clean_pipe, [c for c in concepts if c in judge.concepts], cfg.source,
                                    cfg.target, cfg.bleed)
    real_feats, real_labels = _real(judge, judge.concepts, clean)
    measurer = measure.Measurer(cfg, judge.concepts, judge, real_feats, real_labels, groups)
    victims = _victims(cfg, out, size, eps_n(cfg, clean_c))
    victim.train_all(cfg.checkpoint, [(v.data, out / "victims" / v.name, v.seed) for v in victims], cfg.training(),
                     cfg.workers, cfg.threads)
    results, shown = [], []
    for i, v in enumerate(tqdm(victims, desc="victims", unit="victim", disable=None)):
        logger.info("victim %d/%d: %s", i + 1, len(victims), v.name)
        folder = victim.train(cfg.checkpoint, v.data, out / "victims" / v.name, cfg.training(), v.seed)
        detailed = v.purification == "none" and v.n in (0, cfg.n_max) and v.attack not in ("benign", "anchor") \
            and not v.eps_sweep
        rows, images = measurer.measure(Pipeline.load(folder), detailed, v.pairs)
        for r in rows:
            results.append({"victim": v.name, "attack": v.attack, "n": v.n, "poison_ratio": v.n / max(clean_c, 1),
                            "fraction": fraction.get(v.n, v.n / max(clean_c, 1)) if v.n else 0.0,
                            "eps": v.eps, "eps_sweep": v.eps_sweep, "gap_closed": _gap(cfg, out, v),
                            "seed": v.seed, "purification": v.purification, "setting": _setting(cfg, out, v),
                            "implosion": max(len(v.pairs) - 1, 0), "target_concept": cfg.target,
                            "judge": judge.name, **r})
        if v.seed == cfg.seeds[0] and not v.pairs and not v.eps_sweep:
            shown.append((v.name, images))
    table = pd.DataFrame(results)
    with disk.atomic(out / "results.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    _grid(shown, out / "generations.png")
    dose_figure.asr_vs_n(table, out / "asr.png", cfg.source, cfg.target)
    dose_figure.dose_response(table, out / "doses.png", cfg.source, cfg.target)
    if cfg.eps_sweep:
        dose_figure.eps_curve(doses.eps_curve(table), out / "eps.png", cfg.target)
    defence = _defences(cfg, out, ckpt, clean)
    disk.write_text(out / "defences.json", json.dumps(defence, indent=2) + "\n")
    summary = setup(cfg, ckpt, concepts, groups, clean, out)
    summary.update(analysis(cfg, table, judge.info()))
    summary["seconds"] = round(time.time() - t0, 1)
    disk.write_text(out / "sweep.json", json.dumps(summary, indent=2) + "\n")
    for line in headline(summary):
        logger.info("%s", line)
    return out


def analysis(cfg: SweepConfig, table: pd.DataFrame, judge_info: dict) -> dict:
    """Preconditions, the positive control, the dose curves and verdicts per attack, the ε curve."""
    pre = doses.preconditions(table, judge_info, cfg.source, cfg.target, cfg.min_source_rate,
                              cfg.min_judge_accuracy)
    sens = doses.sensitivity(table)
    attacks = dose_attacks(cfg)
    return {"judge": judge_info["name"], "judge_info": judge_info, "preconditions": pre, "positive_control": sens,
            "control": {"p_target": doses.rate(doses.control(table)).as_dict(),
                        "p_source": doses.rate(doses.control(table), "hits_prompt").as_dict()},
            "doses": {a: doses.dose_curve(table, a) for a in attacks},
            "verdicts": {a: doses.verdict(table, a, pre, sens) for a in attacks},
            "eps_curve": doses.eps_curve(table)}


def setup(cfg: SweepConfig, ckpt: dict, concepts: list[str], groups: dict, clean: data.ImageSet, out: Path) -> dict:
    manifests = {a: json.loads((poison_folder(cfg, out, a, cfg.seeds[0]) / "manifest.json").read_text())
                 for a in cfg.attacks}
    quality = {}
    for a in cfg.attacks:
        p = pd.read_parquet(poison_folder(cfg, out, a, cfg.seeds[0]) / "poisons.parquet")
        cols = [c for c in ("linf", "psnr", "ssim", "gap_closed", "gap_closed_victim") if c in p]
        quality[a] = {c: float(p[c].replace([np.inf], np.nan).mean()) for c in cols}
    return {"config": options.to_dict(cfg), "concepts": concepts, "source": cfg.source, "target": cfg.target,
            "clean_source_samples": int(candidates.naming(clean.captions, cfg.source, concepts).sum()),
            "clean_target_samples": int(candidates.naming(clean.captions, cfg.target, concepts).sum()),
            "pool_candidates": {a: m["pool_candidates"] for a, m in manifests.items()},
            "setting": {a: m["setting"] for a, m in manifests.items()}, "bleed": groups, "poison_quality": quality,
            "budget": cfg.budget, "prompt": cfg.prompt,
            "budget_label": ns.budget_label(cfg.budget, cfg.eps, cfg.ssim_floor, cfg.lpips_limit)}


def headline(summary: dict) -> list[str]:
    """The sweep's conclusions: preconditions, the positive control, then one verdict per attack."""
    src, tgt = summary["source"], summary["target"]
    lines = [f"{src} → {tgt}; judge: {summary['judge']}; control P({src}) "
             f"{doses.as_rate(summary['control']['p_source']).text()}, P({tgt}) "
             f"{doses.as_rate(summary['control']['p_target']).text()}"]
    pre = summary["preconditions"]
    if not pre["ok"]:
        lines.append("PRECONDITIONS FAILED — " + "; ".join(pre["why"]))
    for attack, v in summary["verdicts"].items():
        lines.append(f"{attack}: {v['text']}")
    return lines
