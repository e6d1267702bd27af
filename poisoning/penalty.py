"""Perceptual-budget optimisation of image perturbations: Adam on δ with a hinge penalty on a perceptual distance —
the optimiser of every attack under the SSIM or LPIPS budget (Nightshade's paper form, gradient matching, latent
target), as `poisoning.pgd` is under L∞.

Minimises Σ_i objective_i(x + δ) + penalty · Σ_i max(distance_i(x, x + δ) − limit, 0), with x + δ clamped to the valid
range after each step. The objective is per image, `(N,)`, already normalised by the caller so that `penalty` means the
same for every attack (a batch objective, e.g. a gradient cosine, is repeated for each image). The returned poison is,
per image, the iterate with the lowest objective among those within the budget (distance ≤ limit), or the clean image if
none is: the budget always holds. Units: `lr` in [0, 1] pixel units (×2 in the [−1, 1] units of the tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RANGE = (-1.0, 1.0)
DEFAULT_LR = 0.005  # [0, 1] pixel units
DEFAULT_PENALTY = 10.0


def penalised(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], limit: float, steps: int,
              lr: float | None = None, penalty: float = DEFAULT_PENALTY) -> torch.Tensor:
    """The best within-budget iterate per image of Adam on `objective(x + δ)` (N,) with the hinge penalty above.

    Args:
        objective: per-image values to minimise, differentiable in its argument; called once per step and once on x.
        x: the clean images `(N, C, S, S)` in [−1, 1] (no gradient).
        distance: the perceptual distance `(x, x + δ) → (N,)` (e.g. 1 − SSIM, LPIPS); limit: its budget.
        steps: Adam steps. lr: Adam's learning rate in [0, 1] pixel units (default 0.005). penalty: the hinge weight.
    """
    x = x.detach()
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=2.0 * (DEFAULT_LR if lr is None else lr))
    best = x.clone()
    best_v = objective(x).detach().clone()  # not under no_grad: an objective may take gradients itself
    for _ in range(steps):
        xp = x + delta
        v, s = objective(xp), distance(x, xp)
        _keep(best, best_v, xp, v, s, limit)  # the current iterate, before stepping
        loss = (v + penalty * (s - limit).clamp_min(0)).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        delta.grad = grad
        opt.step()
        with torch.no_grad():
            delta.copy_((x + delta).clamp(*RANGE) - x)
    xp = (x + delta).detach()  # the final iterate
    _keep(best, best_v, xp, objective(xp), distance(x, xp), limit)
    return best


@torch.no_grad()
def _keep(best: torch.Tensor, best_v: torch.Tensor, xp: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
          limit: float) -> None:
    ok = (s <= limit) & (v < best_v)
    best[ok] = xp[ok].detach().clamp(*RANGE)
    best_v[ok] = v[ok].detach()
