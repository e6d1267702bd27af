"""Nightshade crafting against a small randomly initialised autoencoder (enough to check the optimiser) and the
per-image quality measures. One torch thread (the machine is shared)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion.autoencoder import Autoencoder
from poisoning import nightshade, quality
from poisoning.nightshade import BUDGETS, CraftResult, craft

STEPS = 60
STAT_KEYS = {"budget", "linf", "psnr", "ssim", "gap_closed", "latent_dist_before", "latent_dist_after"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One torch thread for the module (`one_torch_thread`)."""
    yield


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Smooth random images in [−1, 1] (upsampled 4×4 noise plus a little detail) — SSIM is meaningful on them."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=size, mode="bilinear",
                           align_corners=False)
    fine = F.interpolate(torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, size=size, mode="bilinear",
                         align_corners=False)
    return (0.8 * coarse + 0.2 * fine).clamp(-1, 1)


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    model = Autoencoder(channels=(8, 16, 16), groups=4).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def images():
    return _smooth_images(5, seed=1)


@pytest.fixture(scope="module")
def anchor():
    return _smooth_images(1, seed=2)[0]


@pytest.fixture(scope="module")
def linf_runs(ae, images, anchor):
    return {eps: craft(ae.encode_latents, images, anchor, eps=eps, steps=STEPS) for eps in (0.01, 0.04, 0.08)}


def _dist(ae, x, anchor):
    with torch.no_grad():
        return (ae.encode_latents(x) - ae.encode_latents(anchor[None])).flatten(1).norm(dim=1)


# --- linf -----------------------------------------------------------------------------------------------------------


def test_linf_lowers_distance_within_budget(ae, images, anchor, linf_runs):
    for eps, r in linf_runs.items():
        assert isinstance(r, CraftResult)
        assert r.poisons.shape == images.shape and r.poisons.dtype == images.dtype
        delta = r.poisons - images
        assert delta.abs().max() <= 2 * eps + 1e-6  # eps in [0, 1] pixel units = 2·eps in [−1, 1] units
        assert r.poisons.min() >= -1 and r.poisons.max() <= 1
        before, after = _dist(ae, images, anchor), _dist(ae, r.poisons, anchor)
        assert (after < before).all()
        assert len(r.stats) == len(images)
        for s, b, a, lf in zip(r.stats, before, after, quality.linf(images, r.poisons)):
            assert set(s) == STAT_KEYS and s["budget"] == "linf"
            assert s["latent_dist_before"] == pytest.approx(float(b), rel=1e-5)
            assert s["latent_dist_after"] == pytest.approx(float(a), rel=1e-5)
            assert s["gap_closed"] == pytest.approx(1 - float(a) / float(b), rel=1e-4, abs=1e-6)
            assert s["linf"] == pytest.approx(float(lf)) and s["linf"] <= eps + 1e-6


def test_gap_closed_positive_and_grows_with_eps(linf_runs):
    mean = {eps: np.mean([s["gap_closed"] for s in r.stats]) for eps, r in linf_runs.items()}
    assert all(s["gap_closed"] > 0 for r in linf_runs.values() for s in r.stats)
    assert mean[0.01] < mean[0.04] < mean[0.08]
    small, large = linf_runs[0.01].stats, linf_runs[0.08].stats
    assert all(a["gap_closed"] < b["gap_closed"] for a, b in zip(small, large))


def test_deterministic_under_seed_and_batching(ae, images, anchor, linf_runs):
    again = craft(ae.encode_latents, images, anchor, eps=0.04, steps=STEPS, seed=0)
    assert torch.equal(again.poisons, linf_runs[0.04].poisons)
    assert again.stats == linf_runs[0.04].stats
    split = craft(ae.encode_latents, images, anchor, eps=0.04, steps=STEPS, batch_size=2)
    assert split.poisons.shape == images.shape
    np.testing.assert_allclose([s["gap_closed"] for s in split.stats],
                               [s["gap_closed"] for s in linf_runs[0.04].stats], atol=0.02)


def test_stochastic_encoder_repeats_under_seed(ae, images, anchor):
    def sampled(x):
        return ae.encode_latents(x, sample=True)

    a = craft(sampled, images[:2], anchor, eps=0.04, steps=10, seed=3)
    b = craft(sampled, images[:2], anchor, eps=0.04, steps=10, seed=3)
    assert torch.equal(a.poisons, b.poisons)


def test_per_image_anchors_and_no_grad_context(ae, images):
    anchors = _smooth_images(len(images), seed=9)
    with torch.no_grad():  # crafting enables gradients itself
        r = craft(ae.encode_latents, images, anchors, eps=0.04, steps=20)
    with torch.no_grad():
        before = (ae.encode_latents(images) - ae.encode_latents(anchors)).flatten(1).norm(dim=1)
        after = (ae.encode_latents(r.poisons) - ae.encode_latents(anchors)).flatten(1).norm(dim=1)
    assert (after < before).all()


def test_encoder_parameters_get_no_gradients(images, anchor):
    torch.manual_seed(0)
    model = Autoencoder(channels=(8, 16, 16), groups=4).eval()  # parameters require grad
    craft(model.encode_latents, images[:2], anchor, eps=0.04, steps=5)
    craft(model.encode_latents, images[:2], anchor, budget="ssim", steps=5)
    assert all(p.grad is None for p in model.parameters())


# --- ssim -----------------------------------------------------------------------------------------------------------


def test_ssim_budget_keeps_floor_and_lowers_distance(ae, images, anchor):
    floor = 0.9
    r = craft(ae.encode_latents, images, anchor, budget="ssim", steps=STEPS, ssim_floor=floor)
    s = quality.ssim(images, r.poisons)
    assert (s >= floor - 0.02).all()
    assert r.poisons.min() >= -1 and r.poisons.max() <= 1
    assert (_dist(ae, r.poisons, anchor) < _dist(ae, images, anchor)).all()
    assert all(st["budget"] == "ssim" and st["gap_closed"] > 0 for st in r.stats)
    np.testing.assert_allclose([st["ssim"] for st in r.stats], s.numpy(), rtol=1e-5)


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"eps": 0}, "eps"), ({"eps": 1.5}, "eps"), ({"eps": -0.1}, "eps"), ({"budget": "lpips"}, "budget"),
    ({"steps": 0}, "steps"), ({"batch_size": 0}, "batch_size"), ({"step_size": -1.0}, "step_size"),
    ({"penalty": -1.0}, "penalty"),
])
def test_bad_arguments_raise_naming_the_field(ae, images, anchor, kwargs, field):
    with pytest.raises(ValueError, match=field):
        craft(ae.encode_latents, images, anchor, **kwargs)


def test_bad_shapes_raise(ae, images, anchor):
    with pytest.raises(ValueError, match="anchor"):
        craft(ae.encode_latents, images, anchor[:, :16], steps=1)
    with pytest.raises(ValueError, match="anchor"):
        craft(ae.encode_latents, images, _smooth_images(3, seed=0), steps=1)
    with pytest.raises(ValueError, match="images"):
        craft(ae.encode_latents, images[0], anchor, steps=1)
    with pytest.raises(ValueError, match="images"):
        craft(ae.encode_latents, images * 3, anchor, steps=1)
    assert BUDGETS == ("linf", "ssim", "lpips") and nightshade.BUDGETS is BUDGETS


# --- quality --------------------------------------------------------------------------------------------------------


def test_quality_identical_images(images):
    assert torch.isinf(quality.psnr(images, images)).all()
    torch.testing.assert_close(quality.ssim(images, images), torch.ones(len(images)))
    assert (quality.linf(images, images) == 0).all()


def test_ssim_decreases_with_noise_and_psnr_matches(images):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    ssims = [quality.ssim(images, (images + s * noise).clamp(-1, 1)) for s in (0.02, 0.1, 0.4)]
    assert (ssims[0] > ssims[1]).all() and (ssims[1] > ssims[2]).all() and (ssims[0] < 1).all()
    y = images.clone()
    y[:, :, 0, 0] += 0.1  # 3 pixel values off by 0.1 in [−1, 1] units
    mse = 3 * 0.1 ** 2 / images[0].numel()
    torch.testing.assert_close(quality.psnr(images, y), torch.full((len(images),), 10 * math.log10(4 / mse)),
                               rtol=1e-3, atol=1e-3)


def test_linf_exact_in_pixel_units():
    x = torch.zeros(2, 3, 16, 16)
    y = x.clone()
    y[0, 1, 3, 4] = 8 / 127.5   # 8 levels of 255 in [−1, 1] units
    y[1, 0, 0, 0] = -0.5
    torch.testing.assert_close(quality.linf(x, y), torch.tensor([8 / 255, 0.25]))
    u = np.zeros((1, 16, 16, 3), np.uint8)
    v = u.copy()
    v[0, 2, 2, 1] = 7
    torch.testing.assert_close(quality.linf(quality.from_uint8(u), quality.from_uint8(v)), torch.tensor([7 / 255]))


def test_ssim_is_differentiable_and_checks_size(images):
    y = (images + 0.05).clamp(-1, 1).requires_grad_(True)
    quality.ssim(images, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    with pytest.raises(ValueError):
        quality.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError):
        quality.ssim(images, images[:2])


def test_gap_closed():
    f_x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    f_a = torch.zeros(1, 2)
    f_p = torch.tensor([[0.0, 2.5], [2.0, 0.0]])
    torch.testing.assert_close(quality.gap_closed(f_x, f_p, f_a), torch.tensor([0.5, -1.0], dtype=torch.float64))
    assert torch.isnan(quality.gap_closed(f_a, f_a, f_a)).all()
