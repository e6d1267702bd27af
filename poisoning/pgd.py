"""Projected signed-gradient descent on image perturbations under an L∞ budget: the optimiser of every L∞ attack
(Nightshade's released code, gradient matching, latent target).

δ starts at 0 (and, for each further restart, uniformly inside the ball), steps against the sign of the
objective's gradient with a step size decaying linearly from η0 to η0/100 (the released Nightshade code's
schedule), and is projected after every step to ‖δ‖∞ ≤ ε and to the valid range. The restart whose final
objective is lowest is returned. Units: `eps` and `step_size` are in [0, 1] pixel units (×2 in the [−1, 1] units
of the tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RANGE = (-1.0, 1.0)


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, steps: int,
        step_size: float | None = None, restarts: int = 1,
        generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Minimise `objective(x + δ)` (a scalar) over ‖δ‖∞ ≤ eps with x + δ in [−1, 1].

    Args:
        objective: differentiable in its argument; called once per step.
        x: the clean images `(N, C, S, S)` in [−1, 1] (no gradient).
        eps: the L∞ budget; step_size: η0 (default eps); both in [0, 1] pixel units.
        steps: steps per restart. restarts: the first from δ = 0, the others from a uniform draw in the ball.
        generator: the random starts' source.

    Returns:
        (x + δ of the best restart, its final objective; NaN with one restart, which is not re-evaluated).
    """
    eps_pm = 2.0 * eps  # [−1, 1] units
    eta0 = 2.0 * (eps if step_size is None else step_size)
    best, best_loss = x.detach().clamp(*RANGE), float("inf")
    for r in range(restarts):
        start = torch.zeros_like(x) if r == 0 else (torch.rand(x.shape, generator=generator) * 2 - 1) * eps_pm
        delta = ((x + start).clamp(*RANGE) - x).detach().requires_grad_(True)
        for i in range(steps):
            eta = eta0 - (eta0 - eta0 / 100) * i / steps
            (grad,) = torch.autograd.grad(objective(x + delta), delta)
            with torch.no_grad():
                d = (delta - eta * grad.sign()).clamp(-eps_pm, eps_pm)
                delta.copy_((x + d).clamp(*RANGE) - x)
        xp = (x + delta).detach().clamp(*RANGE)
        if restarts == 1:  # nothing to compare: no extra evaluation (a stochastic objective's RNG stays untouched)
            return xp, float("nan")
        with torch.enable_grad():
            final = float(objective(xp))
        if final < best_loss:
            best, best_loss = xp, final
    return best, best_loss
