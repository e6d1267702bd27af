"""Gradient matching for a latent diffusion model ("Witches' Brew", Geiping et al. 2021, aimed at the denoiser's
training signal instead of a classifier's).

The poisons are images x + δ of the source concept C with their own captions (clean label). δ is chosen, within a budget
(`poisoning.budget`: L∞, an SSIM floor or an LPIPS ceiling), so that the gradient a training step on them sends to the
UNet — the denoising loss of (E(x + δ), caption), summed over the poisons, with respect to a subset of the UNet's
parameters (`denoising.PARAMS`, e.g. its cross-attention) — points the way the gradient of (E(anchor of A), caption)
does: what a dirty-label poison would teach. The objective is 1 − cos(g_poison(δ), g_target), averaged over fixed
(timestep, noise) draws, and it is differentiated through the frozen autoencoder and the UNet's gradient (double
backward). The gradient is the clean model's: the victim of continued training starts from it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from mithridate.core import compute
from poisoning import quality
from poisoning.budget import Budget, minimise
from poisoning.denoising import CleanModel
from poisoning.nightshade import CraftResult

logger = logging.getLogger(__name__)

HELDOUT_SEED = 7919  # the held-out draws' seed offset: draws never used in crafting


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=0)


def craft(model: CleanModel, images: torch.Tensor, captions: list[str], anchor: torch.Tensor, *,
          budget: Budget = Budget(), steps: int = 100, restarts: int = 1, draws: int = 4, timesteps: str = "uniform",
          step_size: float | None = None, seed: int = 0, resample: bool = False) -> CraftResult:
    """Craft gradient-matching poisons of `images` (captioned `captions`) toward an anchor of the target concept.

    Args:
        model: the clean model, with the parameter subset whose gradient is matched.
        images: source-concept images `(N, 3, S, S)` in [−1, 1]; captions: their N captions (kept by the poisons).
        anchor: the target-concept image `(3, S, S)` or one per image `(N, 3, S, S)` in [−1, 1].
        budget: the perturbation budget; steps, restarts (L∞ only) and step_size: its optimiser's
            (`budget.minimise`; [0, 1] pixel units).
        draws: (timestep, noise) draws per poison, fixed for the optimisation; timesteps: where they lie
            (`denoising.TIMESTEPS`).
        seed: seeds the draws and the restarts.
        resample: draw new (timestep, noise) draws at every step (the expectation over draws a victim's training
            takes) instead of fixing them.

    Returns:
        `CraftResult`: poisons, and per image linf, psnr, ssim, the batch's gradient cosine before and after on the
        crafting draws (`grad_cos_before`, `grad_cos_after`) and on as many held-out draws (`grad_cos_heldout_before`,
        `grad_cos_heldout_after`: does the alignment carry to draws it was not optimised on?), and its gap closed
        toward the anchor in latent space (for comparison with Nightshade's objective).
    """
    if len(captions) != images.shape[0]:
        raise ValueError(f"captions: {len(captions)} for {images.shape[0]} images")
    anchor = anchor[None] if anchor.ndim == 3 else anchor
    gen = torch.Generator().manual_seed(seed)
    x = images.detach()
    d = model.draws(x.shape[0], draws, timesteps, gen)
    cond = model.condition(captions)
    with torch.no_grad():
        z_anchor = model.encode(anchor).expand(x.shape[0], -1, -1, -1)
    heldout = model.draws(x.shape[0], draws, timesteps, torch.Generator().manual_seed(seed + HELDOUT_SEED))
    target, target_h = model.gradient(z_anchor, cond, d).detach(), model.gradient(z_anchor, cond, heldout).detach()

    def cos(xp: torch.Tensor, dd, goal: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return _cos(model.gradient(model.encode(xp), cond, dd, create_graph=create_graph), goal)

    def objective(xp: torch.Tensor) -> torch.Tensor:  # one batch value, repeated per image (budget.minimise)
        if not resample:
            return (1 - cos(xp, d, target, create_graph=True)).expand(xp.shape[0])
        dd = model.draws(x.shape[0], draws, timesteps, gen)
        return (1 - cos(xp, dd, model.gradient(z_anchor, cond, dd).detach(), create_graph=True)).expand(xp.shape[0])

    with torch.enable_grad(), compute.math_attention():  # double backward: the fused attention kernels have none
        before, before_h = float(cos(x, d, target)), float(cos(x, heldout, target_h))
        poisons = minimise(objective, x, budget, steps, step_size, restarts, gen)
        after, after_h = float(cos(poisons, d, target)), float(cos(poisons, heldout, target_h))
    with torch.no_grad():
        f_x, f_p = model.encode(x), model.encode(poisons)
        cols = {"linf": quality.linf(x, poisons), "psnr": quality.psnr(x, poisons),
                "ssim": quality.ssim_or_nan(x, poisons), "gap_closed": quality.gap_closed(f_x, f_p, z_anchor)}
    stats = [{"budget": budget.kind, **{k: float(v[i]) for k, v in cols.items()}, "grad_cos_before": before,
              "grad_cos_after": after, "grad_cos_heldout_before": before_h, "grad_cos_heldout_after": after_h}
             for i in range(x.shape[0])]
    logger.info("gradient matching: %d poisons, gradient cosine %.3f → %.3f (held-out draws %.3f → %.3f; %d steps × %d "
                "restarts%s)", x.shape[0], before, after, before_h, after_h, steps, restarts,
                ", draws resampled" if resample else "")
    return CraftResult(poisons=poisons.to(images.dtype), stats=stats)
