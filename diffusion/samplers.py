"""Samplers of a latent diffusion model: DDPM, DDIM, Euler, Heun and DPM-Solver++(2M), written on a `Denoiser`.

The samplers see the network only through `Denoiser(x_t, t) -> (x̂_0, ε̂)`, which turns a raw ε- or
v-prediction into both estimates at any (possibly fractional) timestep and applies x̂_0 clipping and classifier
guidance. Classifier-free guidance wraps the network before that (`classifier_free`).

Two parametrisations of the same forward process are used (see `diffusion.schedule`):

    VP (ddpm, ddim)                 x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, on integer timesteps (`timesteps`, trailing)
    VE (euler, heun, dpmpp_2m)      y = x_t/√ᾱ_t = x_0 + σ·ε, on Karras σs (ρ = 7) from σ(start_t) to σ(0), then 0

`sample` takes and returns VP latents whatever the sampler: the starting latent is x at timestep `start_t`
(default T − 1: x_T ~ N(0, I)), the result is the final x̂_0 (no noise is added by the last step). Everything
runs under `torch.no_grad()`; a classifier-guidance `grad_fn` enables gradients itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from diffusion.schedule import NoiseSchedule, ddim_update, ddpm_update

log = logging.getLogger(__name__)

# the sampler names, static for configs' CLI choices; equal to SAMPLERS' keys (registry at the end, tested)
SamplerName = Literal["ddpm", "ddim", "euler", "heun", "dpmpp_2m"]
SPACES = ("vp", "ve")
# highest σ of the Karras samplers (EDM's σ_max). The cosine schedule's σ(T−1) ≈ 2·10⁴ would spend half of a
# 10-step Karras ladder above σ = 200, where x is pure noise, and leave second-order steps too coarse below.
SIGMA_MAX = 80.0
PREDICTIONS = ("eps", "v")
SPACINGS = ("trailing", "leading")

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoiser:
    """Turns a raw network into (x̂_0, ε̂) at any (possibly fractional) timestep.

    Args:
        net: `net(x_t, t) -> ε̂ or v̂` with `t` a float tensor of shape [B] (float64 when `x_t` is float64,
            else float32). Wrap it with `classifier_free` for classifier-free guidance.
        schedule: the noise schedule the network was trained with. Fractional t use its log-σ interpolation
            (`NoiseSchedule.alpha_bar_at`); integer t use the ᾱ table exactly.
        prediction: "eps" (the network predicts ε) or "v" (v = √ᾱ·ε − √(1 − ᾱ)·x_0).
        clip_x0: clamp x̂_0 to [−clip_x0, clip_x0] and re-derive ε̂ = (x_t − √ᾱ·x̂_0)/√(1 − ᾱ). This keeps
            ε-prediction usable where ᾱ ≈ 0 (the cosine schedule's ᾱ_999 ≈ 2e-9 turns a 1 % error of ε̂ into
            an x̂_0 of thousands).
        grad_fn: classifier guidance (Dhariwal & Nichol 2021): `grad_fn(x_t, t) -> ∇_{x_t} log p(y | x_t)`.
            It is called under `torch.no_grad()` and must enable gradients itself (`torch.enable_grad()`).
        grad_scale: the guidance scale s ≥ 0: ε̂ ← ε̂ − s·√(1 − ᾱ_t)·∇ log p(y | x_t), then x̂_0 re-derived
            (before clipping); 0 disables guidance.

    Raises:
        ValueError: unknown `prediction`, a non-positive `clip_x0` or a negative `grad_scale`.
    """

    def __init__(self, net: Net, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: float | None = None,
                 grad_fn: Net | None = None, grad_scale: float = 0.0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: allowed values are {', '.join(PREDICTIONS)}")
        if clip_x0 is not None and clip_x0 <= 0:
            raise ValueError(f"clip_x0={clip_x0!r}: must be > 0 (or None for no clipping)")
        if grad_scale < 0:
            raise ValueError(f"grad_scale={grad_scale!r}: must be >= 0")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.clip_x0, self.grad_fn, self.grad_scale = clip_x0, grad_fn, grad_scale

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) for samples `x_t` at timestep(s) `t` (one number, or a tensor of shape [B]).

        The arithmetic runs in at least float32 (half-precision ᾱ would round 1 − ᾱ_0 to 0), so half-precision
        inputs give float32 outputs.
        """
        shared = not torch.is_tensor(t) or t.numel() == 1
        t = self._times(x_t, t)
        ab = self.schedule.alpha_bar_at(t[:1] if shared else t)  # one lookup when the batch shares t
        ab = ab.to(torch.promote_types(x_t.dtype, torch.float32)).reshape((-1,) + (1,) * (x_t.dim() - 1))
        with torch.no_grad():
            out = self.net(x_t, t)
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        else:
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
            eps = (1 - ab).sqrt() * x_t + ab.sqrt() * out
        if self.grad_fn is not None and self.grad_scale > 0:
            eps = eps - self.grad_scale * (1 - ab).sqrt() * self.grad_fn(x_t, t)
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return x0, eps

    @staticmethod
    def _times(x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """`t` as a float tensor of shape [B] on `x_t`'s device."""
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        t = torch.as_tensor(t, dtype=dtype, device=x_t.device)
        return t.reshape(1).repeat(x_t.shape[0]) if t.numel() == 1 else t


def classifier_free(fn: Net, scale: float) -> Net:
    """Classifier-free guidance (Ho & Salimans 2022) around a network bound to a doubled batch.

    Args:
        fn: `fn(x2, t2) -> out2` on the doubled batch `[cond; uncond]`: the caller has bound the conditioning
            (e.g. text embeddings) so that the first half of the batch is conditional, the second unconditional.
        scale: the guidance scale s in the diffusers convention: out_u + s·(out_c − out_u). s = 1 is the plain
            conditional prediction, s = 0 the unconditional one, s > 1 extrapolates away from the latter.

    Returns:
        `g(x_t, t)` for a Denoiser: one batched forward of `fn` on cat([x_t, x_t]), cat([t, t]).
    """
    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = fn(torch.cat([x_t, x_t]), torch.cat([t, t])).chunk(2)
        if scale == 1:
            return cond
        return uncond if scale == 0 else uncond + scale * (cond - uncond)

    return guided


def timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "trailing", start: int | None = None) -> list[int]:
    """Descending integer timesteps for a `steps`-step sampler over indices 0 … start.

    Args:
        schedule: gives T (the default `start` is T − 1).
        steps: number of timesteps, 1 … start + 1.
        spacing: "trailing" (diffusers; first = start, last ≈ (start + 1)/steps − 1) or "leading" (diffusers'
            older default: k·⌊(start + 1)/steps⌋ for k = steps − 1 … 0; ends at 0 but never visits start, so a
            sampler started from pure noise at T − 1 would mislabel it; `sample` uses trailing).
        start: the highest timestep index, 0 … T − 1.

    Raises:
        ValueError: bad `steps`, `spacing` or `start`.
    """
    start = _check_start(schedule, start)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r}: allowed values are {', '.join(SPACINGS)}")
    n = start + 1
    if not 1 <= steps <= n:
        raise ValueError(f"steps={steps!r}: must be within 1 … {n} (start={start})")
    if spacing == "leading":
        return [k * (n // steps) for k in range(steps - 1, -1, -1)]
    return [round(n - k * n / steps) - 1 for k in range(steps)]


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) noise levels: (σ_max^(1/ρ) + k/(steps − 1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, k = 0 …
    steps − 1, descending, then a final 0 (steps + 1 values, float64; both ends exact)."""
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: need 0 < sigma_min <= sigma_max")
    if steps < 1:
        raise ValueError(f"steps={steps!r}: must be >= 1")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max
    if steps > 1:
        sigmas[-1] = sigma_min
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sample(denoiser: Denoiser, x: torch.Tensor, sampler: str = "ddim", steps: int = 50, *, eta: float = 0.0,
           generator: torch.Generator | None = None, start_t: int | None = None,
           inpaint: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
    """Run `sampler` from the latent `x` at timestep `start_t` down to the clean latent.

    Args:
        denoiser: the model, with its schedule.
        x: the starting latent at noise level `start_t` (VP convention). Text-to-image: x_T ~ N(0, I) with the
            default start_t = T − 1. img2img: `schedule.add_noise(z0, noise, start_t)` with that `start_t`; only
            the part of the schedule at or below `start_t` is run (`steps` spread over it).
        sampler: one of SAMPLERS. "ddpm" is ancestral sampling with the fixed-small posterior variance β̃; with
            steps < T it uses the respaced betas β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_(i−1)} of the visited subsequence
            (fixed-small respaced works; the fixed-large variance β' makes respaced samples collapse). "ddim"
            is Song et al.'s sampler with `eta`. "euler", "heun" (EDM Algorithm 1, no churn; first order on the
            last step to σ = 0) and "dpmpp_2m" (DPM-Solver++(2M), the first and last steps first order) solve
            the probability-flow ODE in σ on Karras sigmas.
        steps: sampler steps, 1 … start_t + 1 (network evaluations: `SAMPLERS[sampler].nfe(steps)`).
        eta: DDIM's noise scale (0 = deterministic ODE, 1 = DDPM-like); only for the samplers that take it
            (`Sampler.takes_eta`: "ddim").
        generator: source of all noise (ddpm, ddim with eta > 0, inpainting); on `x`'s device.
        start_t: the timestep index of `x` (default T − 1).
        inpaint: `(z_known, mask)`, both broadcastable to `x`; mask is 1 on the known region. After every step
            the known region is replaced by z_known re-noised (fresh noise) to the new noise level; at the end
            it is pasted exactly.
        progress: show a tqdm bar.

    Returns:
        The clean latent x̂_0, shape of `x`.

    Raises:
        ValueError: unknown `sampler`, `steps` out of range, bad `start_t`, negative or misplaced `eta`, or an
            `inpaint` pair not broadcastable to `x`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: allowed values are {', '.join(SAMPLERS)}")
    spec = SAMPLERS[sampler]
    if eta < 0:
        raise ValueError(f"eta={eta!r}: must be >= 0")
    if eta > 0 and not spec.takes_eta:
        raise ValueError(f"eta={eta!r}: only sampler={_eta_names()} takes eta (got sampler={sampler!r})")
    start_t = _check_start(denoiser.schedule, start_t, "start_t")
    ts = timesteps(denoiser.schedule, steps, "trailing", start_t)
    _check_inpaint(inpaint, x)
    log.debug("sampling %s: %d steps from t=%d, batch %s", sampler, steps, start_t, tuple(x.shape))
    with torch.no_grad(), tqdm(total=steps, desc=sampler, disable=not progress) as bar:
        run = _Run(denoiser, generator, inpaint, bar, eta)
        if spec.space == "vp":
            return spec.fn(run, x, ts)
        sched = denoiser.schedule
        sigma_start = float(sched.sigmas[start_t])
        sigma_max = min(sigma_start, SIGMA_MAX)
        sigmas = karras_sigmas(float(sched.sigmas[0]), sigma_max, steps).tolist()
        # y = x/√ᾱ = z0 + σ_start·ε, brought down to σ_max by scaling (z0's share is ≤ 1/σ_max of the noise there)
        return spec.fn(run, x * math.sqrt(1 + sigma_start ** 2) * (sigma_max / sigma_start), sigmas)


def _eta_names() -> str:
    """'ddim' (quoted, '|'-joined): the samplers that take η."""
    return "|".join(repr(n) for n, s in SAMPLERS.items() if s.takes_eta)


def _check_start(schedule: NoiseSchedule, start: int | None, name: str = "start") -> int:
    if start is None:
        return schedule.num_timesteps - 1
    if not 0 <= start < schedule.num_timesteps:
        raise ValueError(f"{name}={start!r}: must be within 0 … {schedule.num_timesteps - 1}")
    return int(start)


def _check_inpaint(inpaint: tuple[torch.Tensor, torch.Tensor] | None, x: torch.Tensor) -> None:
    if inpaint is None:
        return
    known, mask = inpaint
    try:
        shape = torch.broadcast_shapes(x.shape, known.shape, mask.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"inpaint: z_known {tuple(known.shape)} and mask {tuple(mask.shape)} must broadcast "
                         f"to x {tuple(x.shape)}")


@dataclass
class _Run:
    """What every sampler shares: the model, the noise source, the inpainting pair, the progress bar and η (DDIM's
    noise scale; 0 for every other sampler, as `sample` checks)."""

    denoiser: Denoiser
    generator: torch.Generator | None
    inpaint: tuple[torch.Tensor, torch.Tensor] | None
    bar: tqdm
    eta: float = 0.0

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t, with t = −1 meaning the clean data (ᾱ = 1)."""
        return float(self.denoiser.schedule.alphas_cumprod[t]) if t >= 0 else 1.0

    def x0_ve(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(y, σ): the denoiser's x̂_0 for y = x_0 + σ·ε, i.e. x_t = y/√(1 + σ²) at t = t_from_sigma(σ)."""
        t = float(self.denoiser.schedule.t_from_sigma(sigma))
        return self.denoiser(y / math.sqrt(1 + sigma ** 2), t)[0]

    def paste_vp(self, x: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """Replace the known region by z_known noised to ᾱ (exactly z_known at ᾱ = 1); count the step."""
        self.bar.update()
        if self.inpaint is None:
            return x
        known, mask = self.inpaint
        if alpha_bar < 1:
            known = math.sqrt(alpha_bar) * known + math.sqrt(1 - alpha_bar) * self.noise(x)
        return mask * known + (1 - mask) * x

    def paste_ve(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """Replace the known region by z_known + σ·ε' (exactly z_known at σ = 0); count the step."""
        self.bar.update()
        if self.inpaint is None:
            return y
        known, mask = self.inpaint
        if sigma > 0:
            known = known + sigma * self.noise(y)
        return mask * known + (1 - mask) * y


def _ddpm(run: _Run, x: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """Ancestral sampling with the fixed-small posterior variance of the (respaced) betas."""
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0, _ = run.denoiser(x, t)
        ab, ab_prev = run.alpha_bar(t), run.alpha_bar(t_prev)
        x = x0 if t_prev < 0 else ddpm_update(x0, x, ab, ab_prev, lambda: run.noise(x))
        x = run.paste_vp(x, ab_prev)
    return x


def _ddim(run: _Run, x: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on the denoiser's x̂_0 and ε̂, with η = `run.eta`."""
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0, eps = run.denoiser(x, t)
        ab, ab_prev = run.alpha_bar(t), run.alpha_bar(t_prev)
        x = x0 if t_prev < 0 else ddim_update(x0, eps, ab, ab_prev, run.eta, lambda: run.noise(x))
        x = run.paste_vp(x, ab_prev)
    return x


def _euler(run: _Run, y: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Euler steps of dy/dσ = (y − D(y, σ))/σ; the step to σ = 0 lands on D."""
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        denoised = run.x0_ve(y, sigma)
        y = denoised if nxt == 0 else y + (nxt - sigma) * (y - denoised) / sigma
        y = run.paste_ve(y, nxt)
    return y


def _heun(run: _Run, y: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Heun's method (EDM Algorithm 1 without churn): Euler predictor, trapezoidal corrector except to σ = 0."""
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        denoised = run.x0_ve(y, sigma)
        if nxt == 0:
            y = denoised
        else:
            d = (y - denoised) / sigma
            y_euler = y + (nxt - sigma) * d
            d_next = (y_euler - run.x0_ve(y_euler, nxt)) / nxt
            y = y + (nxt - sigma) * (d + d_next) / 2
        y = run.paste_ve(y, nxt)
    return y


def _dpmpp_2m(run: _Run, y: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) in λ = −log σ: exact exponential integrator of the data prediction,
    linearly extrapolated from the previous step's D (first order on the first step and the step to σ = 0)."""
    prev, h_prev = None, None
    for sigma, nxt in zip(sigmas, sigmas[1:]):
        denoised = run.x0_ve(y, sigma)
        if nxt == 0:
            y = denoised
        else:
            h = math.log(sigma / nxt)
            d = denoised
            if prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * denoised - prev / (2 * r)
            y = (nxt / sigma) * y - math.expm1(-h) * d
            prev, h_prev = denoised, h
        y = run.paste_ve(y, nxt)
    return y


@dataclass(frozen=True)
class Sampler:
    """One entry of `SAMPLERS`.

    Attributes:
        name: its key in `SAMPLERS` (and the CLI's `sampler=` value).
        fn: `fn(run, x, grid) -> x̂_0`, one signature for all: in space "vp", x is the VP latent and grid the
            descending integer timesteps (`timesteps`, trailing); in "ve", x is y = x/√ᾱ and grid the Karras σs
            ending in 0. η, noise and inpainting come with `run`.
        space: "vp" or "ve" (module docstring); `sample` builds the grid and the starting point from it.
        order: network evaluations per step, as diffusers' `SchedulerMixin.order` (not the accuracy order:
            DPM-Solver++(2M) is second-order accurate from one evaluation per step); the last step, to σ = 0
            or t = −1, always takes one.
        takes_eta: accepts DDIM's η > 0.
    """

    name: str
    fn: Callable[[_Run, torch.Tensor, list], torch.Tensor]
    space: str
    order: int = 1
    takes_eta: bool = False

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"Sampler {self.name!r}: space={self.space!r}: allowed values are {', '.join(SPACES)}")
        if self.order < 1:
            raise ValueError(f"Sampler {self.name!r}: order={self.order!r}: must be >= 1")

    def nfe(self, steps: int) -> int:
        """Network evaluations of a `steps`-step run (order per step, one on the last), before classifier-free
        guidance doubles the batch."""
        return steps + (self.order - 1) * (steps - 1)


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", _ddpm, "vp"),
    Sampler("ddim", _ddim, "vp", takes_eta=True),
    Sampler("euler", _euler, "ve"),
    Sampler("heun", _heun, "ve", order=2),
    Sampler("dpmpp_2m", _dpmpp_2m, "ve"),
)}
