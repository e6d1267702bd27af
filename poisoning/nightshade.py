"""Nightshade poison crafting: perturb source-concept images so their autoencoder latents approach an anchor's.

Objective (Shan et al., S&P 2024, §5): min_δ ‖F(x + δ) − F(x_anchor)‖ under a perceptual budget, F the image
feature extractor of the victim (for latent diffusion: the VAE encoder, `Autoencoder.encode_latents`). One
anchor image of the target concept is reused for every poison, as in the authors' released code.

Budgets (`BUDGETS`):

- "linf" — the released code's form (`opt.py`): signed-gradient descent on the per-image L2 latent distance
  from δ = 0, projected to ‖δ‖∞ ≤ ε and the valid range. Units: `eps` is in [0, 1] *pixel units* (the
  released code's `--eps`, default 0.04 ≈ 10.2/255), i.e. ε' = 2·eps in the [−1, 1] units of the tensors.
  The step size decays linearly from η0 to η0/100 over `steps` (the released code's schedule); η0 = `step_size`
  in [0, 1] pixel units, default `eps` (the released code's η0 = ε').
- "ssim" — the paper's penalty form with SSIM standing in for LPIPS (no LPIPS weights offline): Adam on δ
  minimising ‖F(x+δ) − F(a)‖² / ‖F(x) − F(a)‖² + penalty · max(ssim_floor − SSIM(x, x+δ), 0). The distance is
  normalised by the clean image's so that `penalty` means the same for every encoder. x + δ is clamped to the
  valid range after each step; the returned poison is, per image, the iterate with the lowest distance among
  those with SSIM ≥ ssim_floor (δ = 0 if none), so the floor always holds. `eps` is not used (no L∞ cap);
  `step_size` is Adam's learning rate in [0, 1] pixel units (default 0.005, i.e. 0.01 in [−1, 1] units).
- "lpips" — the paper's own form: the same optimisation with penalty · max(LPIPS(x, x+δ) − lpips_limit, 0)
  (p = 0.07 in the paper) and LPIPS ≤ lpips_limit holding for the returned poison; `lpips_fn` is the metric
  (`poisoning.perceptual.load`, with backbone weights the user supplies).

Gradients flow only to δ (`torch.autograd.grad`): the encoder's parameters never get `.grad`, whatever their
`requires_grad`. Pass the encoder in eval mode. Deterministic for a given `seed` (the global torch RNG is
seeded inside a forked RNG state, so a stochastic `encoder_fn` — e.g. posterior sampling — repeats too).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from poisoning import quality
from poisoning.budget import BUDGETS
from poisoning.penalty import penalised
from poisoning.pgd import pgd

logger = logging.getLogger(__name__)

RANGE = (-1.0, 1.0)
RANGE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CraftResult:
    """Poisons `(N, 3, S, S)` in [−1, 1] and, per image, a dict of linf ([0, 1] pixel units), psnr (dB), ssim,
    gap_closed, latent_dist_before and latent_dist_after (L2 distances of `encoder_fn` outputs to the anchor's)."""
    poisons: torch.Tensor
    stats: list[dict]


def budget_label(budget: str, eps: float, ssim_floor: float, lpips_limit: float = 0.07) -> str:
    """How a budget is named in every output (the SSIM budget is not the paper's LPIPS one)."""
    if budget == "linf":
        return f"L∞ ε = {eps:g} ({eps * 255:.1f}/255)"
    if budget == "lpips":
        return f"LPIPS ≤ {lpips_limit:g} (the paper's perceptual budget; AlexNet trunk from the user's weights)"
    return f"SSIM ≥ {ssim_floor:g} (SSIM-based perceptual budget standing in for the paper's LPIPS)"


def _check(images, anchor, budget, eps, steps, step_size, ssim_floor, penalty, batch_size) -> torch.Tensor:
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}: expected one of {', '.join(BUDGETS)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps <= 1):
        raise ValueError(f"eps={eps!r}: must be in (0, 1] ([0, 1] pixel units)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be an integer ≥ 1")
    if step_size is not None and not (isinstance(step_size, (int, float)) and 0 < step_size < math.inf):
        raise ValueError(f"step_size={step_size!r}: must be a positive number or None")
    if not (isinstance(ssim_floor, (int, float)) and -1 < ssim_floor <= 1):
        raise ValueError(f"ssim_floor={ssim_floor!r}: must be in (−1, 1]")
    if not (isinstance(penalty, (int, float)) and 0 <= penalty < math.inf):
        raise ValueError(f"penalty={penalty!r}: must be a finite number ≥ 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an integer ≥ 1")
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] == 0 or not images.is_floating_point():
        raise ValueError(f"images: expected a non-empty float tensor (N, C, H, W) in [−1, 1], got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if not torch.is_tensor(anchor) or anchor.ndim not in (3, 4) or not anchor.is_floating_point():
        raise ValueError("anchor: expected a float tensor (C, H, W) or (N, C, H, W) in [−1, 1]")
    anchor = anchor[None] if anchor.ndim == 3 else anchor
    if anchor.shape[1:] != images.shape[1:] or anchor.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"anchor: shape {tuple(anchor.shape)}; expected {tuple(images.shape[1:])} or "
                         f"{tuple(images.shape)} to match images")
    if budget == "ssim" and min(images.shape[-2:]) < quality.SSIM_WINDOW:
        raise ValueError(f"images: {images.shape[-2]}×{images.shape[-1]} px; the ssim budget needs at least "
                         f"{quality.SSIM_WINDOW}×{quality.SSIM_WINDOW}")
    for name, t in (("images", images), ("anchor", anchor)):
        if not torch.isfinite(t).all() or t.min() < RANGE[0] - RANGE_TOLERANCE or t.max() > RANGE[1] + RANGE_TOLERANCE:
            raise ValueError(f"{name}: values must be finite and in [−1, 1]")
    return anchor


def _dist(encoder_fn, x: torch.Tensor, f_anchor: torch.Tensor) -> torch.Tensor:
    return (encoder_fn(x) - f_anchor).flatten(1).norm(dim=1)


def _linf_batch(encoder_fn, x, f_anchor, eps, steps, step_size):
    return pgd(lambda xp: _dist(encoder_fn, xp, f_anchor).sum(), x, eps, steps, step_size)[0]


def _penalty_batch(encoder_fn, x, f_anchor, d0, steps, step_size, distance, limit, penalty):
    """The perceptual budgets: the latent distance normalised by the clean image's, under `penalty.penalised`."""
    scale = d0.clamp_min(1e-12) ** 2
    return penalised(lambda xp: _dist(encoder_fn, xp, f_anchor) ** 2 / scale, x, distance, limit, steps, step_size,
                     penalty)


def craft(encoder_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, anchor: torch.Tensor,
          budget: str = "linf", eps: float = 0.04, steps: int = 500, step_size: float | None = None,
          ssim_floor: float = 0.9, penalty: float = 10.0, batch_size: int = 64, seed: int = 0,
          progress: bool = False, lpips_fn: Callable | None = None, lpips_limit: float = 0.07) -> CraftResult:
    """Craft Nightshade poisons of `images` toward the features of `anchor`.

    Args:
        encoder_fn: differentiable `x (B, C, S, S) in [−1, 1] → features (B, ...)`, e.g. `ae.encode_latents`.
        images: source-concept images `(N, C, S, S)` in [−1, 1].
        anchor: the target-concept image `(C, S, S)` (reused for all) or one per image `(N, C, S, S)`.
        budget: "linf" (released code: signed-gradient PGD), "ssim" (Adam with an SSIM-floor penalty) or
            "lpips" (the paper's LPIPS penalty; needs `lpips_fn`).
        eps: L∞ budget in [0, 1] pixel units (ε' = 2·eps in [−1, 1] units); "linf" only.
        steps: optimisation steps per batch.
        step_size: "linf": initial step η0 (default eps), "ssim": Adam learning rate (default 0.005); both in
            [0, 1] pixel units.
        ssim_floor, penalty: the "ssim" budget's floor and the penalty weight of both perceptual budgets.
        lpips_fn, lpips_limit: the "lpips" budget's metric `(x, y) → (N,)` and its limit p.
        batch_size: images optimised together.
        seed: seeds torch's RNG for the run (in a forked RNG state).
        progress: log one line per batch.

    Returns:
        `CraftResult` (poisons on the images' device and dtype, stats per image).

    Raises:
        ValueError: a bad argument (the message names it).
    """
    anchor = _check(images, anchor, budget, eps, steps, step_size, ssim_floor, penalty, batch_size)
    if budget == "lpips" and (lpips_fn is None or not 0 < lpips_limit < 1):
        raise ValueError(f"budget='lpips': needs lpips_fn (poisoning.perceptual.load) and lpips_limit in (0, 1), "
                         f"got lpips_limit={lpips_limit!r}")
    n = images.shape[0]
    poisons, stats = [], []
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(seed)
        with torch.no_grad():
            f_anchor_all = encoder_fn(anchor).detach() if anchor.shape[0] == 1 else None
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].detach()
            if f_anchor_all is None:
                with torch.no_grad():
                    f_anchor = encoder_fn(anchor[start:start + batch_size]).detach()
            else:
                f_anchor = f_anchor_all.expand(x.shape[0], *f_anchor_all.shape[1:])
            with torch.no_grad():
                f_x = encoder_fn(x).detach()
            d0 = (f_x - f_anchor).flatten(1).norm(dim=1)
            if budget == "linf":
                xp = _linf_batch(encoder_fn, x, f_anchor, eps, steps, step_size)
            elif budget == "ssim":
                xp = _penalty_batch(encoder_fn, x, f_anchor, d0, steps, step_size,
                                    lambda a, b: 1 - quality.ssim(a, b), 1 - ssim_floor, penalty)
            else:
                xp = _penalty_batch(encoder_fn, x, f_anchor, d0, steps, step_size, lpips_fn, lpips_limit, penalty)
            with torch.no_grad():
                f_p = encoder_fn(xp).detach()
                d1 = (f_p - f_anchor).flatten(1).norm(dim=1)
                cols = {"linf": quality.linf(x, xp), "psnr": quality.psnr(x, xp), "ssim": quality.ssim_or_nan(x, xp),
                        **({"lpips": lpips_fn(x, xp)} if lpips_fn is not None else {}),
                        "gap_closed": quality.gap_closed(f_x, f_p, f_anchor),
                        "latent_dist_before": d0, "latent_dist_after": d1}
            for i in range(x.shape[0]):
                stats.append({"budget": budget, **{k: float(v[i]) for k, v in cols.items()}})
            poisons.append(xp.to(images.dtype))
            if progress:
                logger.info("nightshade %s: %d/%d images, mean gap closed %.3f", budget, start + x.shape[0], n,
                            float(cols["gap_closed"].mean()))
    return CraftResult(poisons=torch.cat(poisons), stats=stats)
