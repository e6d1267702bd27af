"""Concept-aware latent target: poisons whose latents the clean model already denoises as the target concept.

Nightshade pulls E(x + δ) toward one anchor image's latent. Here δ (within a `poisoning.budget`) minimises the clean
model's own denoising loss for the target prompt A on E(x + δ), averaged over fixed (timestep, noise) draws: the poison
moves toward whatever latent the UNet already associates with A, not toward one image of it. The poisons keep their
captions of C, so training on them teaches "C" on latents that look like A to the model. Gradients flow to δ through the
frozen autoencoder and UNet.
"""

from __future__ import annotations

import logging

import torch

from poisoning import quality
from poisoning.budget import Budget, minimise
from poisoning.denoising import CleanModel
from poisoning.nightshade import CraftResult

logger = logging.getLogger(__name__)

PROMPT = "{}"  # the target prompt: the concept's name, as the victim's generations are prompted


def craft(model: CleanModel, images: torch.Tensor, target: str, *, budget: Budget = Budget(), steps: int = 100,
          restarts: int = 1, draws: int = 4, timesteps: str = "uniform", step_size: float | None = None,
          seed: int = 0) -> CraftResult:
    """Craft latent-target poisons of `images` for the target concept `target`.

    Args:
        model: the clean model.
        images: source-concept images `(N, 3, S, S)` in [−1, 1].
        target: the target concept A (the prompt is its name).
        budget: the perturbation budget; steps, restarts (L∞ only), step_size: its optimiser's (`budget.minimise`;
            [0, 1] pixel units); draws, timesteps: the fixed
            (timestep, noise) draws per poison (`denoising.TIMESTEPS`); seed: seeds the draws and restarts.

    Returns:
        `CraftResult`: poisons, and per image linf, psnr, ssim and the clean model's denoising loss for the target
        prompt before and after (`target_loss_before`, `target_loss_after`).
    """
    gen = torch.Generator().manual_seed(seed)
    x = images.detach()
    d = model.draws(x.shape[0], draws, timesteps, gen)
    cond = model.condition([PROMPT.format(target)] * x.shape[0])
    with torch.no_grad():
        scale = model.loss(model.encode(x), cond, d).clamp_min(1e-12)  # the penalty form's objective is ≈ 1 at δ = 0
    with torch.enable_grad():
        poisons = minimise(lambda xp: model.loss(model.encode(xp), cond, d) / scale, x, budget, steps, step_size,
                           restarts, gen)
    with torch.no_grad():
        before, after = model.loss(model.encode(x), cond, d), model.loss(model.encode(poisons), cond, d)
        cols = {"linf": quality.linf(x, poisons), "psnr": quality.psnr(x, poisons),
                "ssim": quality.ssim_or_nan(x, poisons), "target_loss_before": before, "target_loss_after": after}
    stats = [{"budget": budget.kind, **{k: float(v[i]) for k, v in cols.items()}} for i in range(x.shape[0])]
    logger.info("latent target: %d poisons, denoising loss for %r %.4f → %.4f", x.shape[0], target,
                float(before.mean()), float(after.mean()))
    return CraftResult(poisons=poisons.to(images.dtype), stats=stats)
