"""Closed-form checks of the DDPM/DDIM noise schedule."""

import numpy as np
import pytest
import torch

from diffusion.schedule import NoiseSchedule


@pytest.mark.parametrize("kind", ["linear", "cosine", "shifted"])
def test_alpha_bar_decreases_within_unit_interval(kind):
    s = NoiseSchedule(200, kind)
    ab = s.alphas_cumprod
    assert (ab[1:] < ab[:-1]).all()
    assert 0 < float(ab[-1]) and float(ab[0]) < 1
    assert torch.allclose(ab, torch.cumprod(1 - s.betas, 0))


def test_unknown_kind_lists_allowed_values():
    with pytest.raises(ValueError, match="linear, cosine, shifted"):
        NoiseSchedule(10, "quadratic")


@pytest.mark.parametrize("final", [0.6, 0.3])
def test_shifted_schedule_ends_at_final_alpha_bar(final):
    s = NoiseSchedule(50, "shifted", beta_end=0.05, final_alpha_bar=final)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(final, abs=1e-6)
    linear = NoiseSchedule(50, "linear", beta_end=0.05)
    assert torch.allclose(s.betas / s.betas[0], linear.betas / linear.betas[0])  # same shape, rescaled


def test_add_noise_closed_form_and_broadcast():
    s = NoiseSchedule(1000)
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x = s.add_noise(x0, noise, 0)
    assert torch.allclose(x, (1 - 1e-4) ** 0.5 * x0 + 1e-2 * noise, atol=1e-5)  # t=0: ≈ x0, barely scaled
    t = torch.tensor([0, 10, 500, 999])
    x = s.add_noise(x0, noise, t)
    for i, ti in enumerate(t):
        ab = s.alphas_cumprod[ti].float()
        assert torch.allclose(x[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * noise[i], atol=1e-5)


def test_posterior_variance_and_mean_formulas():
    s = NoiseSchedule(100)
    t = 37
    ab, ab_prev, beta = (float(v) for v in (s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 2, generator=g, dtype=torch.float64)
    xt = s.add_noise(x0, torch.randn(16, 2, generator=g, dtype=torch.float64), t)
    mean, var = s.posterior(x0, xt, t)
    assert float(var.flatten()[0]) == pytest.approx((1 - ab_prev) / (1 - ab) * beta, rel=1e-12)
    expected = ab_prev ** 0.5 * beta / (1 - ab) * x0 + (1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab) * xt
    assert torch.allclose(mean, expected, atol=1e-12)
    # the DDPM step with the true noise has the posterior mean of the true x0
    eps = (xt - ab ** 0.5 * x0) / (1 - ab) ** 0.5
    assert torch.allclose(_ddpm_mean(s, eps, t, xt), mean, atol=1e-10)


def _ddpm_mean(s, eps, t, xt):
    """The mean of a DDPM step: the step minus its (seeded, reproduced) noise."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = s.ddpm_step(eps, t, xt, g1), s.ddpm_step(eps, t, xt, g2)
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(5), dtype=xt.dtype)
    assert torch.equal(a, b)
    return a - s.posterior_variance[t].sqrt() * z


def test_ddim_eta0_is_deterministic_and_recovers_x0_with_true_noise():
    s = NoiseSchedule(50, beta_end=0.05)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    xt = s.add_noise(x0, eps, 30)
    a = s.ddim_step(eps, 30, 20, xt, generator=torch.Generator().manual_seed(1))
    b = s.ddim_step(eps, 30, 20, xt, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert torch.allclose(a, s.add_noise(x0, eps, 20), atol=1e-5)  # the ODE moves along the same ε
    assert torch.allclose(s.ddim_step(eps, 30, -1, xt), x0, atol=1e-5)
    assert torch.allclose(s.ddim_step(eps, 30, -1, xt, clip_x0=0.5), x0.clamp(-0.5, 0.5), atol=1e-5)


def test_stochastic_steps_are_deterministic_under_a_seed():
    s = NoiseSchedule(50)
    xt, eps = torch.ones(5, 2), torch.zeros(5, 2)
    run = lambda seed: s.ddpm_step(eps, 10, xt, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    def ddim(seed):
        return s.ddim_step(eps, 10, 5, xt, eta=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(ddim(3), ddim(3)) and not torch.equal(ddim(3), ddim(4))
    assert torch.equal(s.ddpm_step(eps, 0, xt), s.ddpm_step(eps, 0, xt))  # no noise at the last step


def test_velocity_and_its_inverses():
    s = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 3, 2, 2, generator=g,
                                                                                    dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    v, xt = s.velocity(x0, eps, t), s.add_noise(x0, eps, t)
    for i, ti in enumerate(t):
        ab = s.alphas_cumprod[ti]
        assert torch.allclose(v[i], ab.sqrt() * eps[i] - (1 - ab).sqrt() * x0[i], atol=1e-12)
    assert torch.allclose(s.predict_x0_from_v(v, t, xt), x0, atol=1e-10)
    assert torch.allclose(s.predict_eps_from_v(v, t, xt), eps, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "cosine", "shifted"])
def test_sigmas_snr_and_integer_timesteps(kind):
    s = NoiseSchedule(200, kind)
    ab = s.alphas_cumprod
    assert s.sigmas.dtype == torch.float64 and (s.sigmas[1:] > s.sigmas[:-1]).all()
    assert torch.allclose(s.sigmas, ((1 - ab) / ab).sqrt(), rtol=1e-12)
    t = torch.arange(200)
    assert torch.equal(s.alpha_bar_at(t.double()), ab)  # integer t: the table, exactly
    assert torch.equal(s.t_from_sigma(s.sigmas), t.double())
    assert torch.allclose(s.snr(t), ab / (1 - ab)) and torch.allclose(s.snr(t), s.sigmas ** -2)
    assert float(s.snr(7)) == pytest.approx(float(ab[7] / (1 - ab[7])), rel=1e-12)


def test_fractional_timesteps_interpolate_log_sigma():
    s = NoiseSchedule(1000)
    ls = s.sigmas.log()
    expected_sigma = (0.75 * ls[3] + 0.25 * ls[4]).exp()
    assert float(s.sigma_at(3.25)) == pytest.approx(float(expected_sigma), rel=1e-12)
    assert float(s.alpha_bar_at(3.25)) == pytest.approx(1 / (1 + float(expected_sigma) ** 2), rel=1e-12)
    t = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 999
    assert torch.allclose(s.t_from_sigma(s.sigma_at(t)), t, atol=1e-9)  # t_from_sigma inverts sigma_at
    assert torch.allclose(s.alpha_bar_at(t), 1 / (1 + s.sigma_at(t) ** 2), rtol=1e-12)
    sigma = torch.exp(torch.linspace(-6, 6, 57, dtype=torch.float64))  # diffusers: np.interp of log σ, clamped
    reference = np.interp(sigma.log().numpy(), ls.numpy(), np.arange(1000))
    assert np.allclose(s.t_from_sigma(sigma).numpy(), reference, atol=1e-9)
    assert s.t_from_sigma(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]
    with pytest.raises(ValueError, match="t"):
        s.alpha_bar_at(999.5)
    with pytest.raises(ValueError, match="t"):
        s.alpha_bar_at(torch.tensor([-0.1]))
