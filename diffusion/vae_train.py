"""`mithridate vae train`: the KL autoencoder that defines the latent space, trained on exported training shards.

The loss per image is the summed squared error over its pixels (in [−1, 1]) plus `kl_weight` times the KL
divergence of the posterior from N(0, I), averaged over the batch; AdamW with a linear warmup and a cosine decay
whose progress is max(step / steps, elapsed / minutes), so a time-capped run still completes its schedule.
A deterministic fraction of the images is held out for the PSNR. After training, the latent statistics (the
per-channel mean of the training images' posterior means and 1 / their overall std) are stored with the weights,
so `Autoencoder.encode_latents` gives the diffusion model roughly zero-mean, unit-variance latents.

    <out>/config.json   the resolved config (written first)
    <out>/last.pt       training state (model, optimizer, step, loss history), every `checkpoint_every` steps
    <out>/vae.pt        the frozen autoencoder: format, config, state_dict, latent_shift/scale, train_config, eval
    <out>/eval.json     held-out and training PSNR, image counts, parameters, steps, seconds, latent shape
    <out>/recon.png     up to 16 held-out images (top) and their reconstructions (bottom), ×4 nearest
    <out>/curve.png     the training loss; `curve.csv` holds the numbers

Randomness is drawn from a generator seeded by (seed, step), so an interrupted run resumed from `last.pt` ends
with the same weights as an uninterrupted one (on CPU; with `minutes` > 0 the schedule also depends on time).
A folder that already holds `vae.pt` and `eval.json` from the same config is reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from diffusion import data
from diffusion.autoencoder import Autoencoder
from diffusion.metrics import psnr
from diffusion.nn import count_parameters
from mithridate.core import checkpoints, compute, curves, disk, options, progress
from mithridate.core.lr import warmup_cosine

logger = logging.getLogger(__name__)

FORMAT = "mithridate-vae"
STATE_FORMAT = "mithridate-vae-train-state"
CHECKPOINT_FILE = "vae.pt"
STATE_FILE = "last.pt"
RUNTIME_FIELDS = ("device", "checkpoint_every", "threads")  # may change between a run and its resumption
TRAIN_EVAL_IMAGES = 512  # training PSNR on at most this many (evenly spaced) training images
# PSNR cap (dB) for identical images, so eval.json's means stay finite: 10·log10(255² / 1e-10), i.e. an MSE floor of
# 1e-10 in [0, 255]², in float32 as computed before the PSNR was shared with poisoning.quality.
MAX_PSNR_DB = float(10 * torch.log10(255.0**2 / torch.tensor(1e-10)))


class LossDiverged(RuntimeError, ValueError):
    """The training loss became NaN or infinite (a ValueError too, so the CLI prints one line)."""


@dataclass(frozen=True)
class VaeTrainConfig:
    data: str = options.opt("mithridate-out/train", "`export` output folder (NNNNN.parquet training shards)")
    out: str = options.opt("mithridate-out/vae", "output folder: vae.pt, eval.json, recon.png, curve.png, last.pt")
    image_size: int = options.opt(32, "image side in pixels: 32 or 64")
    channels: tuple[int, ...] = options.opt(
        (32, 64, 64), "width of each autoencoder level; the image shrinks by 2^(levels−1) (3 levels: ×4, 4: ×8)")
    latent_channels: int = options.opt(4, "latent channels")
    layers_per_level: int = options.opt(1, "ResBlocks per level in the encoder and in the decoder")
    groups: int = options.opt(16, "GroupNorm groups (must divide every width)")
    kl_weight: float = options.opt(1e-3, "weight of the KL term relative to the summed per-image squared error")
    steps: int = options.opt(1500, "training steps (0 = as many as fit in `minutes`)")
    minutes: float = options.opt(0.0, "optional time cap; the schedule compresses to fit it (0 = none: results "
                                 "depend on steps alone, not on how busy the machine is)")
    batch_size: int = options.opt(8, "images per step (capped at the number of training images)")
    lr: float = options.opt(2e-3, "peak AdamW learning rate (cosine decay after warmup)")
    weight_decay: float = options.opt(0.0, "AdamW weight decay")
    warmup_steps: int = options.opt(60, "linear warmup steps")
    heldout_fraction: float = options.opt(0.05, "fraction of images held out for PSNR (at least 1 when > 0)")
    augment_flip: bool = options.opt(True, "random horizontal flips of training images")
    adv_eps: float = options.opt(0.0, "robust training (a defence against encoder attacks): one signed-gradient "
                                 "perturbation per batch of at most this L∞ ([0, 1] pixel units) that moves the "
                                 "latent mean most; its latent shift is penalised (0 = off)")
    adv_weight: float = options.opt(10.0, "weight of the penalised latent shift (summed squares per image)")
    background: Literal["white", "texture"] = options.opt(
        "white", "what transparent pixels are drawn on (art corpus data): white, or a seeded smooth colour texture "
        "per image (closer to web images)")
    concepts: tuple[str, ...] = options.opt((), "train only on rows whose caption names one of these concepts")
    max_rows: int = options.opt(0, "use at most this many rows, in shard order (0 = all)")
    seed: int = options.opt(0, "seed of the split, initialisation, batches, flips and posterior noise")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = options.opt("auto", "autocast precision (auto = bf16 on CUDA)")
    checkpoint_every: int = options.opt(250, "steps between last.pt saves (resume after an interruption)")
    threads: int = options.opt(1, "CPU threads (0 = torch's default; more than 1 is much slower on a busy machine)")

    def __post_init__(self):
        for name in ("channels", "concepts"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_choice(self, "image_size", (32, 64))
        options.check_choice(self, "precision", options.literal_values(VaeTrainConfig, "precision"))
        options.check_positive(self, "latent_channels", "layers_per_level", "groups", "batch_size", "lr",
                               "checkpoint_every")
        _check_ranges(self)


def _check_ranges(cfg: VaeTrainConfig) -> None:
    def fail(name: str, why: str) -> ValueError:
        return ValueError(f"VaeTrainConfig.{name}={getattr(cfg, name)!r}: {why}")

    if not cfg.channels or min(cfg.channels) < 1:
        raise fail("channels", "expected one width >= 1 per level, e.g. 32,64,64")
    factor = 2 ** (len(cfg.channels) - 1)
    if cfg.image_size % factor:
        raise fail("channels", f"{len(cfg.channels)} levels shrink by {factor}, which does not divide "
                   f"image_size={cfg.image_size}")
    if any(c % cfg.groups for c in cfg.channels):
        raise fail("groups", f"must divide every width in channels={cfg.channels}")
    if not 0 <= cfg.adv_eps <= 1:
        raise fail("adv_eps", "must be within [0, 1] ([0, 1] pixel units; 0 = off)")
    options.check_choice(cfg, "background", data.BACKGROUNDS)
    for name in ("kl_weight", "weight_decay", "steps", "minutes", "warmup_steps", "max_rows", "threads", "seed",
                 "adv_weight"):
        if not getattr(cfg, name) >= 0 or not math.isfinite(getattr(cfg, name)):
            raise fail(name, "must be a finite number >= 0")
    if cfg.steps == 0 and cfg.minutes == 0:
        raise fail("steps", "give steps > 0 or minutes > 0 (both 0 would never stop)")
    if not 0 <= cfg.heldout_fraction < 1:
        raise fail("heldout_fraction", "must be within [0, 1)")
    if any(not str(c).strip() for c in cfg.concepts):
        raise fail("concepts", "concept names must be non-empty")
    compute.resolve_device(cfg.device)


PRESETS = {
    # the demo: 32 px → 8×8×4 latents, 0.61M parameters; 1,500 steps of 8 images take about 80 s on one CPU thread
    # and reach ≈22 dB held-out PSNR on the full emoji corpus (small batches learn more per image seen than 32 or
    # 64). One thread: with another process busy on one of 2 cores, two threads took 4 s per step instead of
    # 0.06 s (OpenMP threads spin waiting for each other); `--threads=0` uses torch's default on an idle machine.
    "cpu": VaeTrainConfig(),
    # 64 px, 4 levels (factor 8 → 8×8×4 latents), wider and longer; minutes on a GPU
    "gpu": VaeTrainConfig(image_size=64, channels=(64, 128, 256, 256), layers_per_level=2, groups=32, steps=6000,
                          batch_size=64, lr=1e-3, warmup_steps=200, checkpoint_every=500, threads=0),
    # seconds, for tests
    "tiny": VaeTrainConfig(channels=(8, 16, 16), groups=4, steps=80, minutes=0.0, batch_size=8, lr=5e-3,
                           warmup_steps=5, heldout_fraction=0.15, checkpoint_every=20),
}
PRESETS["default"] = PRESETS["cpu"]


# --- data ----------------------------------------------------------------------------------------------------------


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) image indices, each sorted: a seeded random `fraction` of `n` held out (>= 1 when > 0).

    Raises:
        ValueError: when nothing would be left to train on.
    """
    k = max(1, round(fraction * n)) if fraction > 0 else 0
    if n - k < 1:
        raise ValueError(f"VaeTrainConfig.heldout_fraction={fraction!r}: holding out {k} of {n} images leaves none "
                         "to train on")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


class BatchStream:
    """Batches as consecutive slices of an endless sequence of seeded permutations (one per epoch).

    The batch of step s depends only on (seed, s), so a resumed run draws exactly the batches it would have.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """The `(batch_size,)` training indices of step `step`."""
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epoch, out = pos // self.n, torch.empty(self.batch_size, dtype=torch.long)
        for e in torch.unique(epoch).tolist():  # one or two epochs
            at = epoch == e
            out[at] = self._perm(e)[pos[at] % self.n]
        return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step `step` (flips and posterior noise)."""
    return torch.Generator().manual_seed((seed * 7_919 + 1) * 1_000_003 + step)


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images `(B, C, S, S)` left–right."""
    mask = (torch.rand(len(x), generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


# --- model, loss, schedule -----------------------------------------------------------------------------------------


def build_model(cfg: VaeTrainConfig) -> Autoencoder:
    """The autoencoder of `cfg`, initialised from `cfg.seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return Autoencoder(latent_channels=cfg.latent_channels, channels=cfg.channels,
                           layers_per_level=cfg.layers_per_level, groups=cfg.groups)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction term, KL term), each a batch mean of per-image sums, in float32."""
    rec = (recon.float() - x.float()).pow(2).flatten(1).sum(1).mean()
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
    return rec + kl_weight * kl, rec, kl


def latent_shift(model: Autoencoder, x: torch.Tensor, mean: torch.Tensor, eps: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Batch mean of ‖μ(x + δ) − μ(x)‖² for one signed-gradient δ (‖δ‖∞ ≤ eps pixel units, from a random start)
    that increases the latent shift: adversarial training of the encoder, differentiable in the weights."""
    e = 2.0 * eps  # [−1, 1] units
    delta = (torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1) * e
    delta.requires_grad_(True)
    shift = (model.encode(x + delta)[0] - mean.detach()).pow(2).flatten(1).sum(1).sum()
    (grad,) = torch.autograd.grad(shift, delta)
    x_adv = (x + (delta + e * grad.sign()).clamp(-e, e)).clamp(-1, 1).detach()
    return (model.encode(x_adv)[0].float() - mean.float()).pow(2).flatten(1).sum(1).mean()


# --- training ------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What `last.pt` holds besides the model and optimizer."""

    step: int = 0
    seconds: float = 0.0
    curve: list = dataclasses.field(default_factory=list)  # (step, loss, rec, kl, lr, seconds)


def _config_json(cfg: VaeTrainConfig) -> str:
    return json.dumps(options.to_dict(cfg), sort_keys=True, default=str)


def save_state(path: Path, model: Autoencoder, opt: torch.optim.Optimizer, state: TrainState,
               cfg: VaeTrainConfig) -> None:
    """Write the training state to `path` atomically (temporary file, then rename)."""
    checkpoints.save({"format": STATE_FORMAT, "config": _config_json(cfg), "step": state.step,
                  "seconds": state.seconds, "curve": state.curve,
                  "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "optimizer": opt.state_dict()}, path)


def load_state(path: Path, model: Autoencoder, opt: torch.optim.Optimizer, cfg: VaeTrainConfig) -> TrainState:
    """Restore model and optimizer from `path` (when it exists) and return the step, time and loss history."""
    if not path.is_file():
        return TrainState()
    ckpt = checkpoints.load(path, "delete it to train from step 0 (or choose another output folder)",
                               "not a loadable training state")
    if not isinstance(ckpt, dict) or ckpt.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a vae training state; delete it or choose another output folder")
    old, new = json.loads(ckpt["config"]), json.loads(_config_json(cfg))
    diff = sorted(k for k in set(old) | set(new) if k not in RUNTIME_FIELDS and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{path} was written by another config ({', '.join(diff[:4])} differ); choose another "
                         "output folder or delete it to start over")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    logger.info("vae train: resuming from %s at step %d", path, ckpt["step"])
    return TrainState(ckpt["step"], ckpt["seconds"], [tuple(c) for c in ckpt["curve"]])


def train_step(model: Autoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, generator: torch.Generator,
               cfg: VaeTrainConfig, bf16: bool) -> tuple[float, float, float]:
    """One optimizer step on the batch `x`; returns (loss, reconstruction term, KL term)."""
    with compute.autocast(x.device.type, bf16):
        recon, mean, logvar = model(x, generator)
    loss, rec, kl = vae_loss(recon, x, mean, logvar, cfg.kl_weight)
    if cfg.adv_eps > 0:
        loss = loss + cfg.adv_weight * latent_shift(model, x, mean, cfg.adv_eps, generator)
    values = tuple(torch.stack([loss, rec, kl]).tolist())  # one device sync
    if not math.isfinite(values[0]):
        return values  # no step: the caller stops
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return values


def _diverged(step: int, value: float, state_path: Path, what: str = "loss") -> LossDiverged:
    kept = (f"last good checkpoint kept at {state_path}" if state_path.is_file()
            else "no checkpoint had been written yet")
    return LossDiverged(f"vae train: {what} became {'NaN' if math.isnan(value) else 'infinite'} at step {step}; "
                        f"{kept} (try a lower lr)")


def _save_if_finite(path: Path, model: Autoencoder, opt: torch.optim.Optimizer, state: TrainState,
                    cfg: VaeTrainConfig) -> None:
    """Checkpoint, unless a weight went NaN or infinite (then the last good checkpoint stays)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise _diverged(state.step - 1, float("nan"), path, "a weight")
    save_state(path, model, opt, state, cfg)


def _done(step: int, elapsed: float, cfg: VaeTrainConfig) -> bool:
    return (cfg.steps > 0 and step >= cfg.steps) or (cfg.minutes > 0 and elapsed >= cfg.minutes * 60)


def train(model: Autoencoder, images: torch.Tensor, cfg: VaeTrainConfig, device: str, out: Path) -> TrainState:
    """Train `model` in place on `images` `(N, 3, S, S)`, resuming from and checkpointing to `out/last.pt`."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path = out / STATE_FILE
    state = load_state(state_path, model, opt, cfg)
    model.to(device).train()
    images, stream, bf16 = images.to(device), BatchStream(len(images), cfg.batch_size, cfg.seed), compute.use_bf16(
        cfg.precision, device)
    t0, budget = time.perf_counter() - state.seconds, cfg.minutes * 60
    bar = progress.bar(range(state.step, cfg.steps or 10**9), "vae train", "step")
    first, first_seconds = state.step, state.seconds
    for step in bar:
        elapsed = time.perf_counter() - t0
        if _done(step, elapsed, cfg):
            break
        done = max(step / cfg.steps if cfg.steps else 0.0, elapsed / budget if budget else 0.0)
        lr = warmup_cosine(cfg.lr, step, cfg.warmup_steps, done)
        for group in opt.param_groups:
            group["lr"] = lr
        g = step_generator(cfg.seed, step)
        x = images[stream.indices(step).to(device)]
        loss, rec, kl = train_step(model, opt, flip(x, g) if cfg.augment_flip else x, g, cfg, bf16)
        if not math.isfinite(loss):
            raise _diverged(step, loss, state_path)
        seconds = time.perf_counter() - t0
        state.step, state.seconds = step + 1, seconds
        state.curve.append((step, round(loss, 4), round(rec, 4), round(kl, 3), lr, round(seconds, 2)))
        rate = len(x) * (state.step - first) / max(seconds - first_seconds, 1e-9)
        bar.set_postfix(loss=f"{loss:.2f}", img_s=f"{rate:.0f}", refresh=False)
        if step % 100 == 0:
            logger.info("step %d  loss %.3f (rec %.3f, kl %.1f)  lr %.2e  %.0f s", step, loss, rec, kl, lr, seconds)
        if state.step % cfg.checkpoint_every == 0:
            _save_if_finite(state_path, model, opt, state, cfg)
    state.seconds = time.perf_counter() - t0
    _save_if_finite(state_path, model, opt, state, cfg)
    return state


# --- evaluation ----------------------------------------------------------------------------------------------------


def _model_device(ae: Autoencoder) -> torch.device:
    return next(ae.parameters()).device


def _eval_batch(device: torch.device) -> int:
    return 512 if device.type == "cuda" else 64  # small batches stay in the CPU's caches


@torch.no_grad()
def reconstruct(ae: Autoencoder, images: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """Decoded posterior means of `images` `(N, 3, S, S)` in [−1, 1], clamped to [−1, 1], on the CPU in fp32."""
    was_training, dev = ae.training, _model_device(ae)
    batch = batch or _eval_batch(dev)
    ae.eval()
    out = [ae.decode(ae.encode(images[i : i + batch].to(dev))[0]).float().clamp(-1, 1).cpu()
           for i in range(0, len(images), batch)]
    ae.train(was_training)
    return torch.cat(out) if out else images[:0].float()


def evaluate(ae: Autoencoder, images: torch.Tensor) -> dict:
    """Reconstruction quality of `images` `(N, 3, S, S)` in [−1, 1] through the posterior mean.

    Returns:
        `{"psnr_db": mean per-image PSNR, "mse": mean squared error per pixel value, both in [0, 255] after
        clamping the reconstruction to [−1, 1], "images": N}`.
    """
    if len(images) == 0:
        return {"psnr_db": None, "mse": None, "images": 0}
    recon = reconstruct(ae, images)
    mse = ((recon - images.float()) * 127.5).pow(2).mean()
    return {"psnr_db": round(float(psnr(recon, images, MAX_PSNR_DB).mean()), 3), "mse": round(float(mse), 3),
            "images": len(images)}


@torch.no_grad()
def latent_stats(ae: Autoencoder, images: torch.Tensor, batch: int = 0) -> tuple[torch.Tensor, float]:
    """(per-channel mean, 1 / overall std) of the posterior means of `images`: the latent normalisation."""
    was_training, dev = ae.training, _model_device(ae)
    batch = batch or _eval_batch(dev)
    ae.eval()
    means = torch.cat([ae.encode(images[i : i + batch].to(dev))[0].float().cpu()
                       for i in range(0, len(images), batch)])
    ae.train(was_training)
    shift = means.mean(dim=(0, 2, 3))
    std = float((means - shift.view(1, -1, 1, 1)).std())
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"vae train: the training latents have std {std!r}; cannot normalise them")
    return shift, 1.0 / std


# --- outputs -------------------------------------------------------------------------------------------------------


def write_recon_grid(ae: Autoencoder, images: torch.Tensor, path: Path, n: int = 16, zoom: int = 4) -> None:
    """`path`: up to `n` originals (top row) over their reconstructions (bottom row), ×`zoom` nearest."""
    from PIL import Image

    x = images[:n]
    top, bottom = data.to_uint8(x), data.to_uint8(reconstruct(ae, x))
    s, gap = x.shape[-1] * zoom, 2
    canvas = np.full((2 * s + 3 * gap, len(x) * (s + gap) + gap, 3), 128, np.uint8)
    for j in range(len(x)):
        for row, tiles in enumerate((top, bottom)):
            tile = tiles[j].repeat(zoom, axis=0).repeat(zoom, axis=1)
            y0, x0 = gap + row * (s + gap), gap + j * (s + gap)
            canvas[y0 : y0 + s, x0 : x0 + s] = tile
    Image.fromarray(canvas).save(path)


def save_vae(ae: Autoencoder, cfg: VaeTrainConfig, metrics: dict, path: Path) -> None:
    """Write `vae.pt` atomically (what `load_vae` reads)."""
    checkpoints.save({"format": FORMAT, "version": 1, "config": ae.config,
                  "state_dict": {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()},
                  "latent_shift": ae.latent_shift.detach().cpu().clone(), "latent_scale": float(ae.latent_scale),
                  "train_config": dataclasses.asdict(cfg), "eval": metrics}, path)


def read_checkpoint(path: str | Path) -> dict:
    """Load and check a `vae.pt` (or the `vae train` folder holding it).

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not a `vae train` checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"autoencoder checkpoint not found: {path} (run `mithridate vae train` first)")
    ckpt = checkpoints.load(path, "delete it and rerun `mithridate vae train` (it resumes from last.pt)",
                               "not a loadable torch checkpoint")
    kind = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if kind != FORMAT:
        raise ValueError(f"{path}: not an autoencoder checkpoint (format {kind!r}, expected {FORMAT!r}; "
                         "give the vae.pt written by `mithridate vae train`)")
    return ckpt


def from_checkpoint(ckpt: dict, device: str = "cpu") -> Autoencoder:
    """The frozen autoencoder (eval mode, no gradients to its parameters) of a checkpoint dict with `config`,
    `state_dict`, `latent_shift`, `latent_scale` — a `vae.pt`, or the copy a diffusion checkpoint carries."""
    ae = Autoencoder(**ckpt["config"])
    ae.load_state_dict(ckpt["state_dict"], strict=True)
    ae.set_latent_stats(ckpt["latent_shift"], float(ckpt["latent_scale"]))
    return ae.to(device).eval().requires_grad_(False)


def load_vae(path: str | Path, device: str = "cpu") -> Autoencoder:
    """A trained autoencoder from a `vae.pt` or its folder, frozen, on `device` (see `read_checkpoint`)."""
    return from_checkpoint(read_checkpoint(path), device)


def mean_image_psnr(train: torch.Tensor, heldout: torch.Tensor) -> float | None:
    """Baseline: mean PSNR of predicting every held-out image by the mean training image."""
    if len(heldout) == 0:
        return None
    return round(float(psnr(train.float().mean(0, keepdim=True).expand_as(heldout), heldout, MAX_PSNR_DB).mean()), 3)


# --- driver --------------------------------------------------------------------------------------------------------


def _metrics(ae: Autoencoder, images: data.ImageSet, train_idx, held_idx, state: TrainState, cfg: VaeTrainConfig,
             device: str) -> dict:
    """The flat `eval.json` of a trained autoencoder (latent statistics already set)."""
    sample = train_idx[np.unique(np.linspace(0, len(train_idx) - 1, TRAIN_EVAL_IMAGES).astype(int))]
    held, train_set = evaluate(ae, images.images[held_idx]), evaluate(ae, images.images[sample])
    losses = [c[1] for c in state.curve] or [float("nan")]
    s = cfg.image_size // ae.factor
    return {"psnr_heldout_db": held["psnr_db"], "psnr_train_db": train_set["psnr_db"], "mse_heldout": held["mse"],
            "mse_train": train_set["mse"],
            "psnr_mean_image_heldout_db": mean_image_psnr(images.images[train_idx], images.images[held_idx]),
            "n_heldout": len(held_idx), "n_train": len(train_idx), "n_train_eval": len(sample),
            "parameters": count_parameters(ae),
            "steps": state.step, "seconds": round(state.seconds, 1), "device": device, "image_size": cfg.image_size,
            "latent_shape": [ae.latent_channels, s, s], "factor": ae.factor,
            "latent_shift": [round(float(v), 5) for v in ae.latent_shift], "latent_scale": float(ae.latent_scale),
            "stopped_by": "steps" if cfg.steps and state.step >= cfg.steps else "time",
            "loss_first": round(float(np.mean(losses[:10])), 3), "loss_last": round(float(np.mean(losses[-10:])), 3)}


def run(cfg: VaeTrainConfig) -> Path:
    """Train (or resume, or reuse) the autoencoder of `cfg`, evaluate it and write the output folder.

    Returns:
        `cfg.out`, holding config.json, vae.pt, eval.json, recon.png, curve.png, curve.csv and last.pt.
    """
    out = Path(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=RUNTIME_FIELDS)
    if (out / CHECKPOINT_FILE).is_file() and (out / "eval.json").is_file():
        logger.info("vae train: %s already holds a trained and evaluated autoencoder; reusing it", out)
        return out
    options.write_config(cfg, out)
    with compute.torch_threads(cfg.threads):
        _train_and_write(cfg, out)
    return out


def _train_and_write(cfg: VaeTrainConfig, out: Path) -> None:
    device = compute.resolve_device(cfg.device)
    images = data.load_images(cfg.data, cfg.image_size, cfg.concepts, cfg.max_rows, background=cfg.background)
    train_idx, held_idx = split_indices(len(images), cfg.heldout_fraction, cfg.seed)
    ae = build_model(cfg)
    logger.info("vae train: %d training and %d held-out images at %d px; %s parameters; latents %d×%d×%d; %s",
                len(train_idx), len(held_idx), cfg.image_size, f"{count_parameters(ae):,}", cfg.latent_channels,
                cfg.image_size // ae.factor, cfg.image_size // ae.factor, device)
    state = train(ae, images.images[train_idx], cfg, device, out)
    ae.eval()
    ae.set_latent_stats(*latent_stats(ae, images.images[train_idx]))
    metrics = _metrics(ae, images, train_idx, held_idx, state, cfg, device)
    save_vae(ae, cfg, metrics, out / CHECKPOINT_FILE)
    write_recon_grid(ae, images.images[held_idx if len(held_idx) else train_idx], out / "recon.png")
    curves.write_curve(state.curve, ["step", "loss", "rec", "kl", "lr", "seconds"], out,
                       "summed squared error + kl_weight · KL", log=True)
    disk.write_text(out / "eval.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logger.info("vae train: held-out PSNR %s dB (train %s dB, mean-image baseline %s dB) after %d steps in %.0f s "
                "→ %s", metrics["psnr_heldout_db"], metrics["psnr_train_db"], metrics["psnr_mean_image_heldout_db"],
                state.step, state.seconds, out)
