"""Samplers checked against an analytic denoiser: for Gaussian data x0 ~ N(μ, s²·I) the optimal ε̂ is closed form.

For x_t = √ᾱ·x0 + √(1 − ᾱ)·ε, E[x0 | x_t] = μ + g_t·(x_t − √ᾱ·μ) with g_t = √ᾱ·s²/(ᾱ·s² + 1 − ᾱ), and the
probability-flow ODE maps x at timestep t0 to μ + s·(x − √ᾱ_t0·μ)/√(ᾱ_t0·s² + 1 − ᾱ_t0), an affine map the ODE
samplers must converge to at their order. Everything runs in float64 on one thread (the machine is shared).
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from diffusion import samplers
from diffusion.samplers import PREDICTIONS, SAMPLERS, Denoiser, classifier_free, karras_sigmas, sample, timesteps
from diffusion.schedule import NoiseSchedule

MU = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(4, 2, 2)
S = 0.5
N = 4000
LINEAR = NoiseSchedule(1000)
COSINE = NoiseSchedule(1000, "cosine")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One torch thread for the module (`one_torch_thread`)."""
    yield


def _ab(schedule, t, like):
    return schedule.alpha_bar_at(t).to(like).reshape((-1,) + (1,) * (like.dim() - 1))


def _posterior_mean(schedule, x_t, t, mu=MU, s=S):
    ab = _ab(schedule, t, x_t)
    return mu + ab.sqrt() * s ** 2 / (ab * s ** 2 + 1 - ab) * (x_t - ab.sqrt() * mu)


def analytic_net(schedule, prediction="eps", mu=MU, s=S):
    """The optimal ε- (or v-) prediction network for x0 ~ N(mu, s²·I)."""
    def net(x_t, t):
        x = x_t.double()
        ab = _ab(schedule, t, x)
        x0 = _posterior_mean(schedule, x, t, mu, s)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return (eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0).to(x_t.dtype)

    return net


def _noise(seed, n=N):
    return torch.randn(n, *MU.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(sampler, steps, schedule=LINEAR, seed=0, clip_x0=None, **kw):
    den = Denoiser(analytic_net(schedule), schedule, clip_x0=clip_x0)
    return sample(den, _noise(seed), sampler, steps, generator=torch.Generator().manual_seed(seed + 100), **kw)


def _errors(out, mu=MU, s=S):
    return float((out.mean(0) - mu).abs().max()), float((out.std(0) - s).abs().max())


# (sampler, steps, schedule, clip_x0, mean tolerance, std tolerance). The standard error of each of the 16
# coordinates' mean is s/√n ≈ 0.008, of its std ≈ 0.006; the rest of each std tolerance is the sampler's
# discretisation bias at that step count (measured over seeds 0–3: max |mean error| ≤ 0.03 everywhere; max
# |std error| 0.018 ddpm-1000, 0.043 ddpm-100, 0.040 ddim-50, 0.027 ddim-50 cosine, 0.041 euler-50,
# 0.027 heun-25, 0.038 dpmpp_2m-20; the first-order samplers shrink the std by ≈ 6 % at 50 steps).
CASES = [
    ("ddpm", 1000, LINEAR, None, 0.04, 0.03),
    ("ddpm", 100, LINEAR, None, 0.04, 0.06),
    ("ddim", 50, LINEAR, None, 0.04, 0.05),
    ("ddim", 50, COSINE, 3.0, 0.04, 0.04),
    ("euler", 50, LINEAR, None, 0.04, 0.05),
    ("heun", 25, LINEAR, None, 0.04, 0.04),
    ("dpmpp_2m", 20, LINEAR, None, 0.04, 0.05),
]


@pytest.mark.parametrize("sampler,steps,schedule,clip_x0,mean_tol,std_tol", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2].kind}" for c in CASES])
def test_samples_follow_the_data_distribution(sampler, steps, schedule, clip_x0, mean_tol, std_tol):
    out = _run(sampler, steps, schedule, clip_x0=clip_x0)
    mean_err, std_err = _errors(out)
    assert out.shape == (N, *MU.shape) and out.dtype == torch.float64
    assert mean_err < mean_tol and std_err < std_tol, (mean_err, std_err)


def _ode_slope(sampler, steps, schedule=LINEAR, start_t=None):
    """The per-coordinate slope of the sampler's (affine) map x → x0, against the exact ODE's."""
    den = Denoiser(analytic_net(schedule), schedule)
    x = torch.stack([torch.zeros(MU.shape), torch.ones(MU.shape)]).double()
    out = sample(den, x, sampler, steps, start_t=start_t)
    t0 = schedule.num_timesteps - 1 if start_t is None else start_t
    ab = float(schedule.alphas_cumprod[t0])
    return float((out[1] - out[0]).mean()), S / math.sqrt(ab * S ** 2 + 1 - ab)


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_samplers_converge_at_their_order(sampler, order):
    """Halving the step size divides the error by 2 (first order) or ≈ 4.5 (second order). Far beyond 100
    steps the second-order samplers reach the floor of the final step x̂_0(σ_min = σ_0): ≈ σ_0²/(2s²) = 2e-4."""
    errors = []
    for steps in (25, 50, 100):
        slope, exact = _ode_slope(sampler, steps)
        errors.append(abs(slope - exact) / exact)
    assert errors[2] < (0.035 if order == 1 else 0.002), errors
    for coarse, fine in zip(errors, errors[1:]):
        assert (1.7 < coarse / fine < 2.3) if order == 1 else (3.5 < coarse / fine < 6), errors


def test_eps_and_v_prediction_give_the_same_ddim_samples():
    x = _noise(1, 64)
    eps = sample(Denoiser(analytic_net(LINEAR, "eps"), LINEAR), x, "ddim", 20)
    v = sample(Denoiser(analytic_net(LINEAR, "v"), LINEAR, "v"), x, "ddim", 20)
    assert torch.allclose(eps, v, atol=1e-9)
    eps = sample(Denoiser(analytic_net(LINEAR, "eps"), LINEAR), x, "dpmpp_2m", 10)
    assert torch.allclose(eps, sample(Denoiser(analytic_net(LINEAR, "v"), LINEAR, "v"), x, "dpmpp_2m", 10))


def test_v_prediction_matches_the_schedule_formulas():
    den = Denoiser(analytic_net(LINEAR, "v"), LINEAR, "v")
    x = _noise(2, 8)
    t = torch.tensor([0, 10, 500, 999] * 2)
    x0, eps = den(x, t)
    v = analytic_net(LINEAR, "v")(x, t.double())
    assert torch.allclose(x0, LINEAR.predict_x0_from_v(v, t, x), atol=1e-12)
    assert torch.allclose(eps, LINEAR.predict_eps_from_v(v, t, x), atol=1e-12)
    assert torch.allclose(x0, _posterior_mean(LINEAR, x, t), atol=1e-9)


def test_denoiser_integer_t_uses_the_table_and_fractional_t_interpolates():
    seen = []

    def net(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    den = Denoiser(net, LINEAR)
    x = torch.ones(3, 2, dtype=torch.float64)
    x0, _ = den(x, 7)
    assert torch.equal(x0, x / LINEAR.alphas_cumprod[7].sqrt()) and seen[-1].shape == (3,)
    x0, _ = den(x, 7.5)
    sigma = math.exp((math.log(LINEAR.sigmas[7]) + math.log(LINEAR.sigmas[8])) / 2)
    assert torch.allclose(x0, x * math.sqrt(1 + sigma ** 2), rtol=1e-12)
    den(x.float(), torch.tensor([1.0, 2.0, 3.5]))
    assert seen[-1].dtype == torch.float32 and seen[-1].tolist() == [1.0, 2.0, 3.5]


def test_clip_x0_bounds_x0_and_rederives_eps_on_the_cosine_schedule():
    def wrong_net(x_t, t):  # the analytic ε̂ with a 1 % error: at ᾱ_999 ≈ 2e-9 x̂_0 explodes
        return analytic_net(COSINE)(x_t, t) + 0.01

    x, t = _noise(3, 16), COSINE.num_timesteps - 1
    x0, _ = Denoiser(wrong_net, COSINE)(x, t)
    assert float(x0.abs().max()) > 100
    x0, eps = Denoiser(wrong_net, COSINE, clip_x0=2.0)(x, t)
    ab = COSINE.alphas_cumprod[t]
    assert float(x0.abs().max()) <= 2.0
    assert torch.allclose(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x, atol=1e-12)
    def mean_error(clip_x0):
        out = sample(Denoiser(wrong_net, COSINE, clip_x0=clip_x0), _noise(4, 1000), "ddim", 50)
        return float((out.mean(0) - MU).abs().max())

    assert mean_error(None) > 1 and mean_error(3.0) < 0.2  # measured: 3.1 and 0.12 (the net's own bias)


def test_same_seed_same_samples_and_ddim_eta0_ignores_the_generator():
    den = Denoiser(analytic_net(LINEAR), LINEAR)
    x = _noise(5, 32)

    def run(sampler, seed, **kw):
        return sample(den, x, sampler, 20, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run("ddpm", 1), run("ddpm", 1)) and not torch.allclose(run("ddpm", 1), run("ddpm", 2))
    assert torch.equal(run("ddim", 1), run("ddim", 2))
    assert torch.equal(run("ddim", 1, eta=1.0), run("ddim", 1, eta=1.0))
    assert not torch.allclose(run("ddim", 1, eta=1.0), run("ddim", 2, eta=1.0))
    for sampler in ("euler", "heun", "dpmpp_2m"):
        assert torch.equal(run(sampler, 1), run(sampler, 2))


def test_ddim_eta1_samples_the_data_distribution():
    mean_err, std_err = _errors(_run("ddim", 100, eta=1.0))
    assert mean_err < 0.04 and std_err < 0.06  # measured ≤ 0.019 / 0.043


def test_timesteps_spacing():
    assert timesteps(LINEAR, 50) == list(range(999, 0, -20))
    assert timesteps(LINEAR, 50, "leading") == list(range(980, -1, -20))
    assert timesteps(LINEAR, 1000) == list(range(999, -1, -1))
    for steps in (1, 7, 33, 999):  # diffusers' trailing: round(arange(T, 0, −T/steps)) − 1
        expected = (np.round(np.arange(1000, 0, -1000 / steps)) - 1).astype(int).tolist()
        assert timesteps(LINEAR, steps) == expected
        assert timesteps(LINEAR, steps, "leading") == (np.arange(steps) * (1000 // steps))[::-1].tolist()
    assert timesteps(LINEAR, 5, start=499) == [499, 399, 299, 199, 99]
    assert timesteps(LINEAR, 3, start=2) == [2, 1, 0]
    with pytest.raises(ValueError, match="steps"):
        timesteps(LINEAR, 4, start=2)
    with pytest.raises(ValueError, match="spacing"):
        timesteps(LINEAR, 4, "middle")
    with pytest.raises(ValueError, match="start"):
        timesteps(LINEAR, 4, start=1000)


def test_karras_sigmas():
    sig = karras_sigmas(0.01, 157.0, 10)
    assert sig.shape == (11,) and sig.dtype == torch.float64
    assert float(sig[0]) == 157.0 and float(sig[-2]) == 0.01 and float(sig[-1]) == 0
    assert (sig[1:] < sig[:-1]).all()
    lo, hi = 0.01 ** (1 / 7), 157.0 ** (1 / 7)
    assert float(sig[3]) == pytest.approx((hi + 3 / 9 * (lo - hi)) ** 7, rel=1e-12)
    assert karras_sigmas(0.5, 0.5, 1).tolist() == [0.5, 0.0]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_start_t_runs_only_the_schedule_below_it(sampler):
    seen = []
    net = analytic_net(LINEAR)

    def recording(x_t, t):
        seen.append(float(t[0]))
        return net(x_t, t)

    steps = 10
    sample(Denoiser(recording, LINEAR), _noise(6, 4), sampler, steps, start_t=300)
    assert len(seen) == SAMPLERS[sampler].nfe(steps)
    assert seen[0] == 300 and max(seen) == 300 and min(seen) >= 0
    with pytest.raises(ValueError, match="steps"):
        sample(Denoiser(net, LINEAR), _noise(6, 4), sampler, 302, start_t=300)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_stays_near_z0_at_small_start_t_and_forgets_it_at_T(sampler):
    z0 = MU + 1.0  # two data stds from the data mean
    den = Denoiser(analytic_net(LINEAR), LINEAR)
    g = torch.Generator().manual_seed(7)
    x = LINEAR.add_noise(z0.expand(1000, *MU.shape), _noise(8, 1000), 50)
    out = sample(den, x, sampler, 20, start_t=50, generator=g)
    assert float((out - z0).pow(2).mean().sqrt()) < 0.3  # measured 0.18 (ODEs), 0.25 (ddpm)
    x = LINEAR.add_noise(z0.expand(1000, *MU.shape), _noise(8, 1000), 999)
    out = sample(den, x, sampler, 20, start_t=999, generator=g)
    assert float((out - z0).pow(2).mean().sqrt()) > 0.9  # ≈ √(s² + 1)
    assert float((out.mean(0) - MU).abs().max()) < 0.07  # √ᾱ_T·1 ≈ 0.006: z0 is forgotten


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_the_known_region_and_samples_the_rest(sampler):
    known = torch.full(MU.shape, 3.0, dtype=torch.float64)
    mask = torch.zeros(1, 4, 1, 1, dtype=torch.float64)
    mask[:, :2] = 1  # channels 0–1 known
    steps = 100 if sampler in ("ddpm", "ddim", "euler") else 25
    out = _run(sampler, steps, inpaint=(known, mask))
    assert torch.equal(out[:, :2], known[:2].expand(N, 2, 2, 2))
    mean_err, std_err = _errors(out[:, 2:], MU[2:])  # coordinates are independent: unknown ones keep the prior
    assert mean_err < 0.04 and std_err < 0.055, (mean_err, std_err)  # measured ≤ 0.023 / 0.041 (ddpm)


def _classifier_grad(target, tau):
    """∇_{x_t} log p(y | x_t) for p(y | x0) = N(target; x0, τ²): exact under the Gaussian prior (autograd)."""
    def grad_fn(x_t, t):
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            ab = _ab(LINEAR, t, x)
            var = S ** 2 * (1 - ab) / (ab * S ** 2 + 1 - ab)  # Var[x0 | x_t]
            logp = -(target - _posterior_mean(LINEAR, x, t)) ** 2 / (2 * (tau ** 2 + var))
            return torch.autograd.grad(logp.sum(), x)[0]

    return grad_fn


def test_classifier_guidance_moves_samples_toward_the_target():
    """Scale 1 samples the exact posterior p(x0 | y) = N((μ + target)/2, s²/2) (τ = s); larger scales tilt it
    further (measured mean shifts 0, 0.28, 0.50, 0.81 for scales 0, 0.5, 1, 2)."""
    target, tau = MU + 1.0, S
    shifts = []
    for scale in (0.0, 0.5, 1.0, 2.0):
        den = Denoiser(analytic_net(LINEAR), LINEAR, grad_fn=_classifier_grad(target, tau), grad_scale=scale)
        out = sample(den, _noise(9), "heun", 25)
        shifts.append(float((out.mean(0) - MU).mean()))
        if scale == 0:
            assert torch.equal(out, _run("heun", 25, seed=9))
        if scale == 1:
            assert shifts[-1] == pytest.approx(0.5, abs=0.03)
            assert float(out.std(0).mean()) == pytest.approx(S / math.sqrt(2), rel=0.05)
    assert abs(shifts[0]) < 0.02 and shifts[1] > 0.2 and shifts[3] > shifts[2] + 0.2 and shifts[3] < 1.0


def test_classifier_free_combines_cond_and_uncond_in_one_batch():
    calls = []

    def fn(x2, t2):  # the toy "network": cond half 2x + t, uncond half −x
        calls.append(x2.shape[0])
        b = x2.shape[0] // 2
        return torch.cat([2 * x2[:b] + t2[:b, None], -x2[b:]])

    x, t = torch.arange(6.0).reshape(3, 2), torch.tensor([1.0, 2.0, 3.0])
    cond, uncond = 2 * x + t[:, None], -x
    assert torch.equal(classifier_free(fn, 1.0)(x, t), cond)
    assert torch.equal(classifier_free(fn, 0.0)(x, t), uncond)
    assert torch.allclose(classifier_free(fn, 3.0)(x, t), uncond + 3 * (cond - uncond))
    assert calls == [6, 6, 6]


def test_classifier_free_inside_a_denoiser_samples():
    net = analytic_net(LINEAR)

    def doubled(x2, t2):  # cond = the model, uncond = a model of N(0, I) data (ε̂ = x_t)
        b = x2.shape[0] // 2
        return torch.cat([net(x2[:b], t2[:b]), x2[b:]])

    out = sample(Denoiser(classifier_free(doubled, 1.0), LINEAR), _noise(10, 500), "ddim", 20)
    assert torch.allclose(out, sample(Denoiser(net, LINEAR), _noise(10, 500), "ddim", 20))


def test_progress_bar_and_float32(capsys):
    den = Denoiser(analytic_net(LINEAR), LINEAR)
    out = sample(den, _noise(11, 8).float(), "heun", 3, progress=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert "heun" in capsys.readouterr().err


def test_registry_names_orders_and_cli_choices():
    assert typing.get_args(samplers.SamplerName) == tuple(SAMPLERS)  # the static Literal follows the registry
    assert all(name == s.name for name, s in SAMPLERS.items())
    assert {n: s.order for n, s in SAMPLERS.items()} == {"ddpm": 1, "ddim": 1, "euler": 1, "heun": 2, "dpmpp_2m": 1}
    assert [SAMPLERS["heun"].nfe(k) for k in (1, 2, 10)] == [1, 3, 19]  # the step to σ = 0 is one evaluation
    assert SAMPLERS["dpmpp_2m"].nfe(10) == 10
    assert [n for n, s in SAMPLERS.items() if s.takes_eta] == ["ddim"]
    assert {n: s.space for n, s in SAMPLERS.items()} == {"ddpm": "vp", "ddim": "vp", "euler": "ve", "heun": "ve",
                                                         "dpmpp_2m": "ve"}
    with pytest.raises(ValueError, match="space"):
        samplers.Sampler("x", samplers.SAMPLERS["euler"].fn, "edm")


def test_bad_inputs_name_the_field():
    den = Denoiser(analytic_net(LINEAR), LINEAR)
    x = _noise(12, 2)
    with pytest.raises(ValueError, match="ddpm, ddim, euler, heun, dpmpp_2m"):
        sample(den, x, "plms")
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="steps"):
            sample(den, x, "ddim", steps)
    with pytest.raises(ValueError, match="start_t"):
        sample(den, x, "ddim", 10, start_t=1000)
    with pytest.raises(ValueError, match="eta"):
        sample(den, x, "ddim", 10, eta=-0.1)
    with pytest.raises(ValueError, match="eta"):
        sample(den, x, "euler", 10, eta=1.0)
    with pytest.raises(ValueError, match="inpaint"):
        sample(den, x, "ddim", 10, inpaint=(x[0], torch.ones(3, 1, 1, 1)))
    with pytest.raises(ValueError, match=", ".join(PREDICTIONS)):
        Denoiser(analytic_net(LINEAR), LINEAR, "x0")
    with pytest.raises(ValueError, match="clip_x0"):
        Denoiser(analytic_net(LINEAR), LINEAR, clip_x0=0)
    with pytest.raises(ValueError, match="grad_scale"):
        Denoiser(analytic_net(LINEAR), LINEAR, grad_scale=-1)


def test_karras_samplers_start_at_sigma_max_not_at_the_cosine_schedules_huge_sigma():
    sched = NoiseSchedule(1000, "cosine")
    assert float(sched.sigmas[-1]) > 1e4  # ᾱ_999 ≈ 2e-9
    seen = []

    def net(x_t, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x_t)

    for sampler in ("euler", "heun", "dpmpp_2m"):
        seen.clear()
        samplers.sample(samplers.Denoiser(net, sched, "eps"), torch.randn(2, 4), sampler, 10)
        assert float(sched.sigma_at(torch.tensor(max(seen)))) == pytest.approx(samplers.SIGMA_MAX, rel=1e-3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_the_schedules_steps_and_the_samplers_are_one_update(sampler):
    """`NoiseSchedule.ddpm_step`/`ddim_step` (the toy's) and the samplers share `ddpm_update`/`ddim_update`: at
    every timestep they agree bit for bit, noise draws included."""
    sched = NoiseSchedule(20, "cosine")
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    eps_of = lambda x, t: net(x) * 0.5  # noqa: E731
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    with torch.no_grad():
        got = sample(Denoiser(eps_of, sched, "eps"), x, sampler, 20, generator=g1, eta=0.5 * (sampler == "ddim"))
        want = x
        for t in range(19, -1, -1):
            eps = eps_of(want, torch.full((64,), float(t)))
            want = (sched.ddpm_step(eps, t, want, g2) if sampler == "ddpm"
                    else sched.ddim_step(eps, t, t - 1, want, eta=0.5, generator=g2))
    assert torch.equal(got, want)
