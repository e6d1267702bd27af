"""The perturbation budget of the training-signal attacks and the optimiser it implies: L∞ (`poisoning.pgd`, signed
steps projected to the ball) or a perceptual one, an SSIM floor or an LPIPS ceiling (`poisoning.penalty`, Adam with
a hinge penalty; the budget holds for every returned poison). Nightshade's `craft` takes the same three budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from poisoning import quality
from poisoning.penalty import DEFAULT_PENALTY, penalised
from poisoning.pgd import pgd

BUDGETS = ("linf", "ssim", "lpips")


@dataclass(frozen=True)
class Budget:
    """kind (BUDGETS); eps: the L∞ radius in [0, 1] pixel units; ssim_floor: the least SSIM of a poison to its
    original; lpips_fn and lpips_limit: the LPIPS metric (`poisoning.perceptual.load`) and its ceiling; penalty: the
    perceptual budgets' hinge weight."""
    kind: str = "linf"
    eps: float = 8 / 255
    ssim_floor: float = 0.9
    lpips_limit: float = 0.07
    lpips_fn: Callable | None = None
    penalty: float = DEFAULT_PENALTY

    def __post_init__(self):
        if self.kind not in BUDGETS:
            raise ValueError(f"budget={self.kind!r}: allowed values are {', '.join(BUDGETS)}")
        if self.kind == "lpips" and self.lpips_fn is None:
            raise ValueError("budget='lpips': needs lpips_fn (poisoning.perceptual.load)")

    def distance(self, x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        """The perceptual distance (N,) the budget bounds by `limit`."""
        return 1 - quality.ssim(x, xp) if self.kind == "ssim" else self.lpips_fn(x, xp)

    @property
    def limit(self) -> float:
        return 1 - self.ssim_floor if self.kind == "ssim" else self.lpips_limit


def minimise(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, budget: Budget, steps: int,
             step_size: float | None = None, restarts: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """x + δ minimising the per-image `objective(x + δ)` (N,) within `budget`: L∞ PGD on its sum (with restarts), or
    the perceptual budgets' penalty form (one run: `restarts` must be 1; `objective` normalised to ≈ 1 at δ = 0)."""
    if budget.kind == "linf":
        return pgd(lambda xp: objective(xp).sum(), x, budget.eps, steps, step_size, restarts, generator)[0]
    if restarts != 1:
        raise ValueError(f"restarts={restarts}: the {budget.kind} budget runs once (restarts are L∞ PGD's)")
    return penalised(objective, x, budget.distance, budget.limit, steps, step_size, budget.penalty)
