"""DDPM noise schedules and the closed-form forward/posterior/sampling steps of Ho et al. (2020) and DDIM.

Timesteps are 0-based indices `t = 0 … T-1`: index `t` holds β_{t+1} of the paper, so `alphas_cumprod[t]`
is ᾱ after `t+1` noising steps and `alphas_cumprod[-1]` is ᾱ_T. `add_noise(x0, noise, 0)` is therefore one
step of noise, not none. Every function broadcasts a per-sample timestep tensor over samples of any rank.

The same ᾱ_t also reads as a variance-exploding (Karras) noise level σ_t = √((1 − ᾱ_t)/ᾱ_t), i.e.
x_t/√ᾱ_t = x_0 + σ_t·ε. Fractional timesteps (used by the σ-space samplers) interpolate log σ linearly between
integer indices, as diffusers' EulerDiscreteScheduler does: `t_from_sigma` maps σ → t and `alpha_bar_at` maps
t → ᾱ = 1/(1 + σ²) consistently; integer t give the table values exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

KINDS = ("linear", "cosine", "shifted")


def _linear_betas(n: int, start: float, end: float) -> torch.Tensor:
    return torch.linspace(start, end, n, dtype=torch.float64)


def _cosine_betas(n: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = cos²(((t/T + s)/(1 + s))·π/2), betas clipped at `max_beta`."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _shifted_betas(n: int, start: float, end: float, final_alpha_bar: float) -> torch.Tensor:
    """The linear beta shape scaled (by bisection) so that ᾱ_T equals `final_alpha_bar`.

    This is the article's "less noise" schedule for low-dimensional data: training spends its timesteps on
    high-signal examples, and the last step keeps ᾱ_T ≈ 0.6 instead of going to pure noise.
    """
    if not 0 < final_alpha_bar < 1:
        raise ValueError(f"final_alpha_bar={final_alpha_bar!r}: must be in (0, 1)")
    shape = _linear_betas(n, start, end)
    lo, hi = 0.0, 1.0 / float(shape.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.prod(1 - mid * shape)) > final_alpha_bar:
            lo = mid
        else:
            hi = mid
    return shape * (lo + hi) / 2


def _gather(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """`values[t]` reshaped to broadcast against `like` (batch first), in `like`'s dtype and device."""
    t = torch.as_tensor(t, device=values.device, dtype=torch.long)
    out = values[t].to(device=like.device, dtype=like.dtype)
    return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))


class NoiseSchedule:
    """Precomputed β_t, α_t = 1 − β_t and ᾱ_t = ∏ α_s, with DDPM/DDIM steps.

    Args:
        num_timesteps: T, the number of noising steps.
        kind: "linear" (Ho et al.), "cosine" (Nichol & Dhariwal) or "shifted" (linear shape, ᾱ_T fixed).
        beta_start: first β of the linear and shifted schedules.
        beta_end: last β of the linear schedule (the shifted one rescales it).
        final_alpha_bar: ᾱ_T of the shifted schedule.

    Raises:
        ValueError: unknown `kind`, or a non-positive `num_timesteps`.
    """

    def __init__(self, num_timesteps: int = 1000, kind: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, final_alpha_bar: float = 0.6) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: allowed values are {', '.join(KINDS)}")
        if num_timesteps <= 0:
            raise ValueError(f"num_timesteps={num_timesteps!r}: must be > 0")
        self.num_timesteps, self.kind = num_timesteps, kind
        if kind == "linear":
            betas = _linear_betas(num_timesteps, beta_start, beta_end)
        elif kind == "cosine":
            betas = _cosine_betas(num_timesteps)
        else:
            betas = _shifted_betas(num_timesteps, beta_start, beta_end, final_alpha_bar)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas, self.alphas, self.alphas_cumprod, self.alphas_cumprod_prev = betas, alphas, alphas_cumprod, prev
        # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  (Ho et al. eq. 7); β̃ at the first step is 0.
        self.posterior_variance = (1 - prev) / (1 - alphas_cumprod) * betas
        # σ_t = √((1 − ᾱ_t)/ᾱ_t): the noise level of x_t/√ᾱ_t = x_0 + σ_t·ε (increasing in t).
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_timesteps={self.num_timesteps}, kind={self.kind!r}, "
                f"final_alpha_bar={float(self.alphas_cumprod[-1]):.4g})")

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Sample q(x_t | x_0) = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (Ho et al. eq. 4).

        Args:
            x0: clean samples, batch first, any rank.
            noise: ε, same shape as `x0`.
            t: timestep index per sample (shape `[batch]`) or one int for all.

        Returns:
            x_t, shape of `x0`.
        """
        ab = _gather(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, eps_pred: torch.Tensor, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
        """Invert `add_noise` with the predicted noise: x̂_0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t."""
        ab = _gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps_pred) / ab.sqrt()

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t−1} | x_t, x_0) (Ho et al. eq. 6–7).

        Returns:
            (μ̃_t, β̃_t): μ̃ = √ᾱ_{t−1}·β_t/(1 − ᾱ_t)·x_0 + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t, shape of `x_t`;
            β̃ broadcastable against it.
        """
        ab, ab_prev = _gather(self.alphas_cumprod, t, x_t), _gather(self.alphas_cumprod_prev, t, x_t)
        beta, alpha = _gather(self.betas, t, x_t), _gather(self.alphas, t, x_t)
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        return mean, _gather(self.posterior_variance, t, x_t)

    def ddpm_step(self, eps_pred: torch.Tensor, t: int, x_t: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """One ancestral step x_t → x_{t−1} (Ho et al. Algorithm 2, σ_t² = β̃_t) by `ddpm_update`; no noise at t = 0.

        Args:
            eps_pred: the model's ε̂(x_t, t).
            t: the current timestep index (one int for the whole batch).
            x_t: current samples.
            generator: source of the injected noise.
        """
        x0 = self.predict_x0(eps_pred, t, x_t)
        if t == 0:
            return x0
        ab, ab_prev = float(self.alphas_cumprod[t]), float(self.alphas_cumprod_prev[t])
        return ddpm_update(x0, x_t, ab, ab_prev, lambda: _randn_like(x_t, generator))

    def ddim_step(self, eps_pred: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor, eta: float = 0.0,
                  generator: torch.Generator | None = None, clip_x0: float | None = None) -> torch.Tensor:
        """One DDIM step x_t → x_{t_prev} (Song et al. 2021, eq. 12) by `ddim_update`; `eta=0` is the deterministic
        ODE sampler.

        Args:
            eps_pred: the model's ε̂(x_t, t).
            t: the current timestep index.
            t_prev: the target index (< t); −1 means "to x_0" (ᾱ = 1).
            x_t: current samples.
            eta: 0 = deterministic (DDIM), 1 = DDPM-like noise.
            generator: source of noise when `eta > 0`.
            clip_x0: clamp the predicted x̂_0 to [−clip_x0, clip_x0] when given.
        """
        ab = float(self.alphas_cumprod[t])
        ab_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        x0 = self.predict_x0(eps_pred, t, x_t)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps_pred = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        return ddim_update(x0, eps_pred, ab, ab_prev, eta, lambda: _randn_like(x_t, generator))

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t·ε − √(1 − ᾱ_t)·x_0 (Salimans & Ho, 2022)."""
        ab = _gather(self.alphas_cumprod, t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def predict_x0_from_v(self, v: torch.Tensor, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √ᾱ_t·x_t − √(1 − ᾱ_t)·v̂."""
        ab = _gather(self.alphas_cumprod, t, x_t)
        return ab.sqrt() * x_t - (1 - ab).sqrt() * v

    def predict_eps_from_v(self, v: torch.Tensor, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
        """ε̂ = √(1 − ᾱ_t)·x_t + √ᾱ_t·v̂."""
        ab = _gather(self.alphas_cumprod, t, x_t)
        return (1 - ab).sqrt() * x_t + ab.sqrt() * v

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t/(1 − ᾱ_t) (for min-SNR loss weighting), float64 on `t`'s device."""
        t = torch.as_tensor(t)
        ab = self.alphas_cumprod[t.to(self.alphas_cumprod.device, torch.long)]
        return (ab / (1 - ab)).to(t.device)

    def t_from_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The fractional timestep of noise level σ: log σ interpolated linearly between integer indices.

        σ below σ_0 maps to 0, above σ_{T−1} to T − 1. Returns a float64 tensor of `sigma`'s shape and device.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sigma = sigma.to(self.log_sigmas.device).log()
        if self.num_timesteps == 1:
            return torch.zeros_like(sigma)
        lo = (torch.searchsorted(self.log_sigmas, log_sigma, right=True) - 1).clamp(0, self.num_timesteps - 2)
        left, right = self.log_sigmas[lo], self.log_sigmas[lo + 1]
        w = ((log_sigma - left) / (right - left)).clamp(0, 1)
        return (lo + w).to(sigma.device)

    def sigma_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """σ at a fractional timestep (log σ linear between indices), float64 on `t`'s device; inverts
        `t_from_sigma` within [0, T − 1]."""
        log_sigma, _, _ = self._log_sigma_at(t)
        return log_sigma.exp().to(torch.as_tensor(t).device)

    def alpha_bar_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """ᾱ at a fractional timestep, 1/(1 + σ(t)²); integer t give `alphas_cumprod[t]` exactly.

        Args:
            t: timesteps in [0, T − 1], any shape.

        Returns:
            float64 tensor of `t`'s shape on `t`'s device.

        Raises:
            ValueError: a timestep outside [0, T − 1].
        """
        log_sigma, lo, w = self._log_sigma_at(t)
        ab = torch.where(w == 0, self.alphas_cumprod[lo], torch.sigmoid(-2 * log_sigma))
        return ab.to(torch.as_tensor(t).device)

    def _log_sigma_at(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log σ(t), floor index, fractional part), all on the tables' device."""
        t = torch.as_tensor(t, dtype=torch.float64).to(self.log_sigmas.device)
        if bool(((t < 0) | (t > self.num_timesteps - 1)).any()):
            raise ValueError(f"t: timesteps must be within [0, {self.num_timesteps - 1}]")
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        w = t - lo
        return self.log_sigmas[lo] + w * (self.log_sigmas[hi] - self.log_sigmas[lo]), lo, w


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def ddpm_update(x0: torch.Tensor, x_t: torch.Tensor, ab: float, ab_prev: float,
                noise: Callable[[], torch.Tensor]) -> torch.Tensor:
    """x_{t_prev} drawn from the posterior q(x_{t_prev} | x_t, x̂_0) with the fixed-small variance of the (respaced)
    step: β = 1 − ᾱ_t/ᾱ_{t_prev}, mean = (√ᾱ_prev·β·x̂_0 + √(1−β)·(1−ᾱ_prev)·x_t)/(1−ᾱ_t), variance
    (1−ᾱ_prev)/(1−ᾱ_t)·β. The one DDPM update: the samplers and `NoiseSchedule.ddpm_step` use it."""
    beta = 1 - ab / ab_prev
    mean = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * x_t) / (1 - ab)
    return mean + math.sqrt((1 - ab_prev) / (1 - ab) * beta) * noise()


def ddim_update(x0: torch.Tensor, eps: torch.Tensor, ab: float, ab_prev: float, eta: float,
                noise: Callable[[], torch.Tensor]) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): √ᾱ_prev·x̂_0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·ε', σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·
    (1 − ᾱ_t/ᾱ_prev)); noise is drawn only when σ > 0. The one DDIM update: the samplers and
    `NoiseSchedule.ddim_step` use it."""
    sigma = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0))
    x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        x = x + sigma * noise()
    return x
