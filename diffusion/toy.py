"""The article's 2-D DDPM walk-through: an MLP noise predictor on a point cloud, four variants compared.

Variants (the article's sequence, from worst to best):

    no_time          ε̂(x): the MLP never sees the timestep
    time             ε̂(x, t/T): the normalised timestep as a third input
    fourier          ε̂ on random Fourier features [cos 2πBz, sin 2πBz] (L = 32) of z = t/T or z = (x, t/T)
    fourier_shifted  fourier, trained and sampled with the "shifted" schedule (ᾱ_T ≈ 0.6)

Each variant is trained with Adam on the ε-prediction loss, sampled with DDPM ancestral sampling and scored
against the data with the Chamfer distance and an RBF-kernel MMD. `run(cfg)` writes into `cfg.out`:

    config.json       the resolved config
    toy.json          per-variant metrics, steps, seconds (and a data-vs-data reference)
    variants.png      samples of each variant over the data
    forward.png       forward noising snapshots under the linear and shifted schedules
    trajectories.png  reverse SDE (DDPM) vs ODE (DDIM, eta=0) paths of the last variant
    losses.png        training loss curves
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from diffusion.schedule import NoiseSchedule
from mithridate.core import disk, options

log = logging.getLogger(__name__)

VARIANTS = ("no_time", "time", "fourier", "fourier_shifted")
DATASETS = ("moons", "circles", "dino")
DINO_CONCEPTS = ("sauropod", "T-Rex")  # preferred first; then any concept named like a dinosaur
MMD_BANDWIDTHS = (0.1, 0.3, 1.0)


@dataclass(frozen=True)
class ToyConfig:
    """The 2-D diffusion experiment: data, training, sampling and output folder."""

    dataset: Literal["moons", "circles", "dino"] = options.opt("dino", "2-D point cloud to learn")
    tsv_path: str = options.opt("", "Datasaurus-style TSV (dataset,x,y; 'dino' rows) used for dataset=dino")
    art_dir: str = options.opt("", "art corpus folder for dataset=dino without tsv_path; empty: build/reuse one")
    n_data: int = options.opt(2000, "points drawn for moons/circles and the emoji silhouette")
    variants: tuple[str, ...] = options.opt(VARIANTS, "variants to train, in order")
    steps: int = options.opt(15000, "training steps per variant")
    batch_size: int = options.opt(256, "training batch size")
    lr: float = options.opt(1e-3, "Adam learning rate")
    hidden: int = options.opt(64, "width of the MLP's 3 hidden layers")
    timesteps: int = options.opt(50, "diffusion steps T (the article uses 50)")
    beta_end: float = options.opt(0.05, "last β of the linear schedule (0.05 at T=50: ᾱ_T ≈ 0.28, as in the article)")
    final_alpha_bar: float = options.opt(0.6, "ᾱ_T of the shifted schedule")
    fourier_features: int = options.opt(32, "L, the number of random frequencies")
    fourier_scale: float = options.opt(1.0, "std of the random frequency matrix B")
    fourier_of: Literal["t", "xt"] = options.opt("xt", "Fourier-encode (x, t/T) as the article does, or t/T only")
    n_samples: int = options.opt(1000, "samples drawn per variant (and data points they are scored against)")
    seed: int = options.opt(0, "seed of data, initialisation, batches and sampling")
    out: str = options.opt("runs/diffusion-toy", "output folder")


PRESETS = {
    "default": ToyConfig(),
    "tiny": ToyConfig(dataset="moons", n_data=500, steps=300, batch_size=128, lr=3e-3, n_samples=200),
}


def check(cfg: ToyConfig) -> None:
    """Raise a ValueError naming the first invalid field of `cfg`."""
    options.check_choice(cfg, "dataset", DATASETS)
    options.check_choice(cfg, "fourier_of", ("t", "xt"))
    if not cfg.variants:
        raise ValueError("ToyConfig.variants is empty: choose among " + ", ".join(VARIANTS))
    for v in cfg.variants:
        if v not in VARIANTS:
            raise ValueError(f"ToyConfig.variants: {v!r} is not a variant; allowed values are {', '.join(VARIANTS)}")
    options.check_positive(cfg, "n_data", "steps", "batch_size", "lr", "hidden", "timesteps", "beta_end",
                           "final_alpha_bar", "fourier_features", "fourier_scale", "n_samples")


# ---------------------------------------------------------------- data


def normalise(points: np.ndarray) -> np.ndarray:
    """Zero mean, unit std (one std over both axes, so the shape keeps its aspect)."""
    points = points - points.mean(0)
    return (points / points.std()).astype(np.float32)


def load_tsv(path: str | Path) -> np.ndarray:
    """The `dino` rows of a Datasaurus-style table (columns dataset, x, y; tab or comma separated)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tsv_path={str(path)!r}: no such file")
    df = pd.read_csv(path, sep=None, engine="python")
    missing = {"dataset", "x", "y"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(sorted(missing))} (need dataset, x, y)")
    rows = df[df["dataset"].astype(str).str.strip() == "dino"]
    if rows.empty:
        raise ValueError(f"{path}: no rows with dataset == 'dino'")
    return rows[["x", "y"]].to_numpy(dtype=np.float64)


def _dino_row(table):
    """The row of the preferred dinosaur concept (sauropod first), the first artist in name order."""
    for concept in DINO_CONCEPTS:
        rows = table[table["concept"] == concept]
        if len(rows):
            return rows.sort_values("artist").iloc[0]
    rows = table[table["concept"].str.contains("dino|saur|rex", case=False, regex=True)]
    if len(rows):
        return rows.sort_values(["concept", "artist"]).iloc[0]
    raise ValueError("the art corpus has no dinosaur concept (sauropod, T-Rex, …); pass art_dir= a corpus "
                     "built with include=sauropod, or tsv_path= a Datasaurus TSV")


def silhouette_points(image: np.ndarray, n: int, rng: np.random.Generator, threshold: int = 200) -> np.ndarray:
    """`n` points drawn uniformly over the non-white pixels of an RGB image (y pointing up)."""
    rows, cols = np.nonzero(image[..., :3].min(-1) < threshold)
    if len(rows) == 0:
        raise ValueError("the dinosaur image has no non-white pixels")
    pick = rng.integers(0, len(rows), n)
    x = cols[pick] + rng.random(n)
    y = (image.shape[0] - rows[pick]) - rng.random(n)
    return np.stack([x, y], 1)


def load_emoji_dino(cfg: ToyConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """A point cloud from the 🦕 silhouette (64 px) of the art corpus, built or reused when `art_dir` is empty."""
    from PIL import Image

    from curation.world import art

    folder = Path(cfg.art_dir) if cfg.art_dir else art.run(art.ArtConfig(max_concepts=2, include=DINO_CONCEPTS))
    if not (folder / "art.parquet").exists():
        raise FileNotFoundError(f"art_dir={str(folder)!r}: no art.parquet (build one with `art build`)")
    row = _dino_row(art.load(folder))
    log.info("dino: %s by %s", row["concept"], row["artist"])
    image = np.asarray(Image.open(art.image_path(folder, row, 64)).convert("RGB"))
    return silhouette_points(image, n, rng)


def make_data(cfg: ToyConfig, n: int, seed: int) -> np.ndarray:
    """`n` normalised 2-D points of `cfg.dataset` (the TSV's points as they are, whatever `n`)."""
    rng = np.random.default_rng(seed)
    if cfg.dataset == "moons":
        from sklearn.datasets import make_moons

        points = make_moons(n, noise=0.05, random_state=seed)[0]
    elif cfg.dataset == "circles":
        from sklearn.datasets import make_circles

        points = make_circles(n, noise=0.03, factor=0.5, random_state=seed)[0]
    elif cfg.dataset == "dino":
        points = load_tsv(cfg.tsv_path) if cfg.tsv_path else load_emoji_dino(cfg, n, rng)
    else:
        raise ValueError(f"dataset={cfg.dataset!r}: allowed values are {', '.join(DATASETS)}")
    return normalise(points)


# ---------------------------------------------------------------- model


class FourierEncoding(nn.Module):
    """[cos 2πBz, sin 2πBz] with a fixed random Gaussian B of shape (L, D)."""

    def __init__(self, in_dim: int, features: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("B", torch.randn(features, in_dim, generator=generator) * scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        proj = 2 * torch.pi * z @ self.B.T
        return torch.cat([proj.cos(), proj.sin()], -1)


class NoiseMLP(nn.Module):
    """ε̂(x_t, t): an MLP with 3 hidden ReLU layers, given no time, t/T, or Fourier features.

    Args:
        variant: one of VARIANTS (both Fourier variants share the architecture).
        timesteps: T, to normalise t.
        hidden: hidden width.
        features, scale, fourier_of: the Fourier encoding (L, std of B, and what it encodes).
        generator: draws B (the weights use torch's global RNG, seeded by the caller).
    """

    def __init__(self, variant: str, timesteps: int, hidden: int = 64, features: int = 32, scale: float = 1.0,
                 fourier_of: str = "xt", generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.variant, self.timesteps, self.fourier_of = variant, timesteps, fourier_of
        self.encode = None
        in_dim = 2 if variant == "no_time" else 3
        if variant.startswith("fourier"):
            enc_dim = 1 if fourier_of == "t" else 3
            self.encode = FourierEncoding(enc_dim, features, scale, generator)
            in_dim = 3 + 2 * features
        layers, width = [], in_dim
        for _ in range(3):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.variant == "no_time":
            return self.net(x)
        tn = (t.float() / max(self.timesteps - 1, 1)).unsqueeze(-1)
        z = torch.cat([x, tn], -1)
        if self.encode is not None:
            z = torch.cat([z, self.encode(tn if self.fourier_of == "t" else z)], -1)
        return self.net(z)


def schedule_for(cfg: ToyConfig, variant: str) -> NoiseSchedule:
    """The shifted schedule for `fourier_shifted`, the linear one otherwise."""
    kind = "shifted" if variant == "fourier_shifted" else "linear"
    return NoiseSchedule(cfg.timesteps, kind, beta_end=cfg.beta_end, final_alpha_bar=cfg.final_alpha_bar)


# ---------------------------------------------------------------- train and sample


def train(model: NoiseMLP, sched: NoiseSchedule, data: torch.Tensor, cfg: ToyConfig,
          generator: torch.Generator) -> list[float]:
    """Adam on ‖ε − ε̂(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²; returns the loss of every step."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.steps):
        x0 = data[torch.randint(0, len(data), (cfg.batch_size,), generator=generator)]
        t = torch.randint(0, sched.num_timesteps, (cfg.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def sample(model: NoiseMLP, sched: NoiseSchedule, n: int, generator: torch.Generator, ode: bool = False,
           keep: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reverse diffusion from x_T ~ N(0, I): DDPM ancestral (SDE) or DDIM eta=0 (ODE).

    Returns:
        (x_0 samples [n, 2], the paths of the first `keep` samples [T+1, keep, 2] or None).
    """
    x = torch.randn(n, 2, generator=generator)
    path = [x[:keep].clone()] if keep else None
    for t in range(sched.num_timesteps - 1, -1, -1):
        eps = model(x, torch.full((n,), t, dtype=torch.long))
        x = sched.ddim_step(eps, t, t - 1, x) if ode else sched.ddpm_step(eps, t, x, generator)
        if keep:
            path.append(x[:keep].clone())
    return x, (torch.stack(path) if keep else None)


# ---------------------------------------------------------------- metrics


def chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric Chamfer distance: mean nearest-neighbour (Euclidean) distance a→b plus b→a, halved."""
    d = torch.cdist(a.double(), b.double())
    return float((d.min(1).values.mean() + d.min(0).values.mean()) / 2)


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidths: tuple[float, ...] = MMD_BANDWIDTHS) -> float:
    """Squared MMD (biased estimate) with a sum of RBF kernels exp(−‖x−y‖²/2σ²), averaged over σ."""
    a, b = a.double(), b.double()
    daa, dbb, dab = torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2
    total = 0.0
    for s in bandwidths:
        k = lambda d: torch.exp(-d / (2 * s * s)).mean()  # noqa: E731
        total += float(k(daa) + k(dbb) - 2 * k(dab))
    return total / len(bandwidths)


def score(samples: torch.Tensor, data: torch.Tensor) -> dict[str, float]:
    """Chamfer and MMD of `samples` against `data`."""
    return {"chamfer": chamfer(samples, data), "mmd": mmd(samples, data)}


# ---------------------------------------------------------------- figures


def _scatter(ax, data, points=None, title="", size=2):
    ax.scatter(data[:, 0], data[:, 1], s=size, c="0.8", linewidths=0)
    if points is not None:
        ax.scatter(points[:, 0], points[:, 1], s=size, c="C0", linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_variants(path: Path, data: np.ndarray, samples: dict, metrics: dict) -> None:
    """One panel per variant: its samples (blue) over the data (grey)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(3 * len(samples), 3.2), squeeze=False)
    for ax, (name, pts) in zip(axes[0], samples.items()):
        m = metrics[name]
        _scatter(ax, data, pts, f"{name}\nChamfer {m['chamfer']:.3f}  MMD {m['mmd']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forward(path: Path, data: np.ndarray, cfg: ToyConfig, seed: int) -> None:
    """The data noised to several timesteps, under the linear (top) and shifted (bottom) schedules."""
    import matplotlib.pyplot as plt

    ts = np.linspace(0, cfg.timesteps - 1, 6).round().astype(int)
    fig, axes = plt.subplots(2, len(ts), figsize=(2.4 * len(ts), 5))
    x0 = torch.from_numpy(data)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    for row, variant in enumerate(("time", "fourier_shifted")):
        sched = schedule_for(cfg, variant)
        for ax, t in zip(axes[row], ts):
            ab = float(sched.alphas_cumprod[t])
            _scatter(ax, data, sched.add_noise(x0, noise, int(t)).numpy(), f"{sched.kind} t={t + 1} ᾱ={ab:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(path: Path, data: np.ndarray, runs: dict, name: str) -> None:
    """Reverse paths of a few samples: DDPM (SDE, noisy) beside DDIM eta=0 (ODE, smooth)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4.2), squeeze=False)
    for ax, (label, (final, paths)) in zip(axes[0], runs.items()):
        _scatter(ax, data, final.numpy(), f"{name}: {label}")
        for i in range(paths.shape[1]):
            ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.6, alpha=0.7, c="C3")
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=8, c="k", marker="x", linewidths=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(path: Path, losses: dict) -> None:
    """Training losses (moving average over 2% of the steps) of every variant."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, ls in losses.items():
        w = max(1, len(ls) // 50)
        ax.plot(np.convolve(ls, np.ones(w) / w, mode="valid"), label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("ε-prediction MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- run


def run_variant(cfg: ToyConfig, variant: str, data: torch.Tensor, ref: torch.Tensor) -> tuple[dict, NoiseMLP]:
    """Train one variant (seeded identically to the others), sample it and score it against `ref`."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # the MLP's initial weights
    gen = torch.Generator().manual_seed(cfg.seed)
    sched = schedule_for(cfg, variant)
    model = NoiseMLP(variant, cfg.timesteps, cfg.hidden, cfg.fourier_features, cfg.fourier_scale, cfg.fourier_of,
                     gen)
    losses = train(model, sched, data, cfg, gen)
    model.eval()
    samples, _ = sample(model, sched, cfg.n_samples, torch.Generator().manual_seed(cfg.seed + 1))
    tail = max(1, cfg.steps // 10)
    result = {**score(samples, ref), "steps": cfg.steps, "seconds": round(time.perf_counter() - start, 2),
              "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
              "alpha_bar_T": float(sched.alphas_cumprod[-1]), "schedule": sched.kind}
    log.info("%-16s chamfer %.4f  mmd %.5f  loss %.3f → %.3f  (%.1fs)", variant, result["chamfer"], result["mmd"],
             result["loss_first"], result["loss_last"], result["seconds"])
    return {**result, "_losses": losses, "_samples": samples}, model


def _ordering(metrics: dict, key: str) -> bool:
    """Whether the variants that ran, in VARIANTS order, get strictly better (lower) on `key`."""
    vals = [metrics[v][key] for v in VARIANTS if v in metrics]
    return all(a > b for a, b in zip(vals, vals[1:]))


def run(cfg: ToyConfig) -> Path:
    """Train, sample, score and plot every variant of `cfg`; returns the output folder."""
    check(cfg)
    out = Path(cfg.out)
    options.write_config(cfg, out)
    start = time.perf_counter()
    data_np = make_data(cfg, cfg.n_data, cfg.seed)
    data = torch.from_numpy(data_np)
    ref = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.n_samples]]
    log.info("%s: %d points; %d variants × %d steps", cfg.dataset, len(data), len(cfg.variants), cfg.steps)
    results, models = {}, {}
    for variant in cfg.variants:
        results[variant], models[variant] = run_variant(cfg, variant, data, ref)
    metrics = {v: {k: x for k, x in r.items() if not k.startswith("_")} for v, r in results.items()}
    reference = {}
    if not cfg.tsv_path:  # a fresh draw of the data: the floor a perfect model would reach
        fresh = torch.from_numpy(make_data(cfg, cfg.n_data, cfg.seed + 1))[:cfg.n_samples]
        reference = score(fresh, ref)
    summary = {
        "dataset": cfg.dataset, "n_data": len(data), "variants": metrics, "data_vs_fresh_data": reference,
        "ordering_holds": {k: _ordering(metrics, k) for k in ("chamfer", "mmd")},
        "best": {k: min(metrics, key=lambda v: metrics[v][k]) for k in ("chamfer", "mmd")},
        "seconds": round(time.perf_counter() - start, 2),
    }
    plot_variants(out / "variants.png", data_np, {v: r["_samples"].numpy() for v, r in results.items()}, metrics)
    plot_forward(out / "forward.png", data_np, cfg, cfg.seed)
    last = cfg.variants[-1]
    runs = {label: sample(models[last], schedule_for(cfg, last), cfg.n_samples,
                          torch.Generator().manual_seed(cfg.seed + 2), ode=ode, keep=30)
            for label, ode in (("reverse SDE (DDPM)", False), ("ODE (DDIM, eta=0)", True))}
    plot_trajectories(out / "trajectories.png", data_np, runs, last)
    plot_losses(out / "losses.png", {v: r["_losses"] for v, r in results.items()})
    summary["seconds"] = round(time.perf_counter() - start, 2)
    disk.write_text(out / "toy.json", json.dumps(summary, indent=2) + "\n")
    log.info("ordering (no_time worst … fourier_shifted best) holds: %s", summary["ordering_holds"])
    return out

