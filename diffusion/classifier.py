"""A noise-conditional classifier p(y | x_t, t) on latents, for classifier guidance (Dhariwal & Nichol 2021).

Even a weak classifier steers sampling: guidance adds s·∇_{x_t} log p(y | x_t) to the score, and
`guidance_grad` supplies that gradient. Timesteps are the schedule's 0-based indices (0 … T−1), given as floats.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.nn import timestep_embedding
from diffusion.schedule import NoiseSchedule
from mithridate.core import checkpoints, disk

log = logging.getLogger(__name__)

FORMAT = "mithridate-latent-classifier"
EVAL_SAMPLES = 1024


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → time scale-shift → GroupNorm → SiLU → conv1×1, plus the input."""

    def __init__(self, width: int, time_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(width), nn.Conv2d(width, width, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * width)
        self.norm2, self.conv2 = _norm(width), nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class LatentClassifier(nn.Module):
    """logits(x_t, t): conv stem → `depth` residual blocks at full and at half resolution → global pool → linear.

    About 270k parameters at width 64, depth 2, time_dim 128. The half-resolution level (2×2 average pool) is
    skipped for 1-pixel inputs, so any latent size works.

    Args:
        in_channels: latent channels.
        num_classes: number of classes (>= 2).
        width: channels of every block.
        depth: residual blocks per resolution.
        time_dim: size of the sinusoidal timestep embedding and of its MLP.

    Raises:
        ValueError: num_classes < 2 or a non-positive size.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 10, width: int = 64, depth: int = 2,
                 time_dim: int = 128) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: must be >= 2")
        for name, value in (("in_channels", in_channels), ("width", width), ("depth", depth), ("time_dim", time_dim)):
            if value < 1:
                raise ValueError(f"{name}={value!r}: must be >= 1")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "depth": depth,
                       "time_dim": time_dim}
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim), nn.SiLU())
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.levels = nn.ModuleList([nn.ModuleList([ResBlock(width, time_dim) for _ in range(depth)])
                                     for _ in range(2)])
        self.out_norm, self.head = _norm(width), nn.Linear(width, num_classes)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for latents (B, C, H, W) at float timesteps t (B,) on the 0 … T−1 scale."""
        emb = self.time_mlp(timestep_embedding(t, self.config["time_dim"]))
        h = self.stem(x_t)
        for i, blocks in enumerate(self.levels):
            if i > 0 and min(h.shape[-2:]) >= 2:
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            for block in blocks:
                h = block(h, emb)
        return self.head(F.silu(self.out_norm(h)).mean(dim=(2, 3)))


# ---------------------------------------------------------------- training


def _check_data(latents: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: must be >= 2")
    if latents.dim() != 4:
        raise ValueError(f"latents: expected (N, C, H, W), got shape {tuple(latents.shape)}")
    if labels.shape != (len(latents),):
        raise ValueError(f"labels: expected shape ({len(latents)},), got {tuple(labels.shape)}")
    _check_labels(labels, num_classes)


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integer classes, got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"labels: value {int(bad[0])} outside [0, {num_classes})")


@torch.no_grad()
def accuracy(model: LatentClassifier, latents: torch.Tensor, labels: torch.Tensor, schedule: NoiseSchedule | None,
             t: int, seed: int = 0, batch_size: int = 512) -> float:
    """Accuracy on `latents` noised to step `t` (fixed noise from `seed`); clean latents when `schedule` is None."""
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    correct = 0
    for start in range(0, len(latents), batch_size):
        x0, y = latents[start:start + batch_size], labels[start:start + batch_size]
        x = x0
        if schedule is not None:
            noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
            x = schedule.add_noise(x0, noise, t)
        tt = torch.full((len(x0),), float(t), device=x0.device)
        correct += int((model(x, tt).argmax(1) == y).sum())
    return correct / len(latents)


def _eval_timesteps(num_timesteps: int) -> list[int]:
    return sorted({0, num_timesteps // 4, num_timesteps // 2, 3 * num_timesteps // 4, num_timesteps - 1})


def _make_model(in_channels: int, num_classes: int, width: int, depth: int, seed: int) -> LatentClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentClassifier(in_channels, num_classes, width, depth)


def train_classifier(latents: torch.Tensor, labels: torch.Tensor, schedule: NoiseSchedule, num_classes: int,
                     steps: int = 300, batch_size: int = 128, lr: float = 1e-3, seed: int = 0, width: int = 64,
                     depth: int = 2, device: str = "cpu", progress: bool = False) -> tuple[LatentClassifier, dict]:
    """Cross-entropy on x_t = add_noise(x_0, ε, t) with t uniform in [0, T), AdamW.

    Args:
        latents: (N, C, H, W) clean latents.
        labels: (N,) integer classes in [0, num_classes).
        schedule: the diffusion model's noise schedule (the classifier must see the sampler's x_t).
        num_classes: number of classes (>= 2).
        steps, batch_size, lr: optimisation (batches are drawn with replacement).
        seed: seeds the weights, the batches, t and ε.
        width, depth: LatentClassifier size.
        device: where to train.
        progress: log the loss ten times during training.

    Returns:
        (model in eval mode, stats): stats has "loss_first", "loss_last" (mean of the first/last ≤10 steps),
        "acc_clean" (t=0 on clean latents) and "acc_by_t" {t: accuracy} for five t, measured on (up to) the
        first EVAL_SAMPLES training latents with fixed noise.

    Raises:
        ValueError: bad shapes, num_classes < 2, labels out of range, steps or batch_size < 1.
    """
    labels = torch.as_tensor(labels)
    _check_data(latents, labels, num_classes)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps!r}, batch_size={batch_size!r}: both must be >= 1")
    latents, labels = latents.float().to(device), labels.long().to(device)
    model = _make_model(latents.shape[1], num_classes, width, depth, seed).to(device)
    losses = _fit(model, latents, labels, schedule, steps, batch_size, lr, seed, progress)
    model.eval()
    x_eval, y_eval = latents[:EVAL_SAMPLES], labels[:EVAL_SAMPLES]
    stats = {"loss_first": sum(losses[:10]) / len(losses[:10]), "loss_last": sum(losses[-10:]) / len(losses[-10:]),
             "acc_clean": accuracy(model, x_eval, y_eval, None, 0),
             "acc_by_t": {t: accuracy(model, x_eval, y_eval, schedule, t, seed + 1)
                          for t in _eval_timesteps(schedule.num_timesteps)}}
    log.info("classifier: loss %.3f → %.3f, clean accuracy %.3f, by t %s", stats["loss_first"], stats["loss_last"],
             stats["acc_clean"], {t: round(a, 3) for t, a in stats["acc_by_t"].items()})
    return model, stats


def _fit(model: LatentClassifier, latents: torch.Tensor, labels: torch.Tensor, schedule: NoiseSchedule, steps: int,
         batch_size: int, lr: float, seed: int, progress: bool) -> list[float]:
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses, every = [], max(1, steps // 10)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen, device=latents.device)
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=gen, device=latents.device)
        noise = torch.randn((batch_size, *latents.shape[1:]), generator=gen, device=latents.device)
        x_t = schedule.add_noise(latents[idx], noise, t)
        loss = F.cross_entropy(model(x_t, t.float()), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress and (step + 1) % every == 0:
            log.info("classifier step %d/%d: loss %.4f", step + 1, steps, losses[-1])
    return losses


# ---------------------------------------------------------------- guidance


def guidance_grad(classifier: LatentClassifier,
                  labels: torch.Tensor | int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The classifier-guidance gradient ∇_{x_t} Σ_i log p(labels_i | x_t,i, t_i).

    Args:
        classifier: a trained LatentClassifier (used as is; put it in eval mode).
        labels: (B,) target classes, or one int for the whole batch.

    Returns:
        grad_fn(x_t (B, C, H, W), t (B,) float) → (B, C, H, W), computed on a detached copy of x_t under
        torch.enable_grad(), so it also works inside torch.no_grad(). t may also be a scalar.

    Raises:
        ValueError: labels outside [0, num_classes).
    """
    num_classes = classifier.config["num_classes"]
    labels = torch.as_tensor(labels)
    _check_labels(labels.reshape(-1), num_classes)

    def grad_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().float().requires_grad_(True)
            tt = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(len(x))
            y = labels.to(x.device).long().reshape(-1).expand(len(x))
            log_p = F.log_softmax(classifier(x, tt), dim=-1)
            (grad,) = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), x)
        return grad.to(x_t.dtype)

    return grad_fn


# ---------------------------------------------------------------- checkpoints


def save_classifier(model: LatentClassifier, path: str | Path, extra: dict | None = None) -> Path:
    """Write {"format", "config", "state_dict", **extra} with torch.save, atomically; returns the path.

    Raises:
        ValueError: `extra` uses one of the reserved keys.
    """
    extra = dict(extra or {})
    clash = sorted({"format", "config", "state_dict"} & extra.keys())
    if clash:
        raise ValueError(f"extra: reserved keys {', '.join(clash)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with disk.atomic(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, "config": dict(model.config), "state_dict": state, **extra}, fh)
    return path


def load_classifier(path: str | Path, device: str = "cpu") -> tuple[LatentClassifier, dict]:
    """Rebuild a classifier written by `save_classifier`.

    Returns:
        (model in eval mode on `device`, the checkpoint without its state_dict: format, config and the extras).

    Raises:
        ValueError: the file is not a torch checkpoint or not a mithridate latent classifier (naming the file).
    """
    path = Path(path)
    if path.is_dir():  # one line for the CLI (checkpoints.load lets IsADirectoryError through)
        raise ValueError(f"{path}: a folder, not a torch checkpoint; give the classifier.pt inside it")
    ckpt = checkpoints.load(path, "rerun `mithridate classifier train` (or give another classifier.pt)",
                            "not a torch checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a {FORMAT} checkpoint (found {found!r})")
    model = LatentClassifier(**ckpt["config"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}
