"""The training-signal attacks on the tiny clean model: gradient matching and the latent target — budget, frozen
model, determinism, and that each moves its own objective; the shared PGD; Nightshade's nearest anchor."""

from __future__ import annotations

import pytest
import torch

from diffusion import data
from diffusion.pipeline import Pipeline
from poisoning import denoising, gradient_matching, latent_target
from poisoning.pgd import pgd

EPS = 8 / 255


@pytest.fixture(scope="module")
def setup(tiny_train, tiny_clean_model, one_torch_thread):
    pipe = Pipeline.load(tiny_clean_model, "cpu")
    clean = data.load_images(tiny_train, pipe.image_size)
    cats = [i for i, c in enumerate(clean.captions) if "cat" in c][:3]
    houses = [i for i, c in enumerate(clean.captions) if "house" in c][:1]
    return pipe, clean.images[cats], [clean.captions[i] for i in cats], clean.images[houses[0]]


def _frozen(pipe: Pipeline) -> dict:
    return {name: p.detach().clone() for name, p in [*pipe.unet.named_parameters(), *pipe.vae.named_parameters()]}


def test_param_subsets_and_draws(setup):
    pipe, *_ = setup
    model = denoising.CleanModel(pipe, "cross_attention")
    every = {id(p) for p in pipe.unet.parameters()}
    assert 0 < len(model.params) < len(denoising.param_subset(pipe.unet, "attention")) < len(every)
    assert {id(p) for p in model.params} <= every
    with pytest.raises(ValueError, match="params='bias': allowed values are cross_attention, attention, all"):
        denoising.param_subset(pipe.unet, "bias")
    d = model.draws(3, 4, "high", torch.Generator().manual_seed(0))
    assert d.t.shape == (4, 3) and (d.t >= pipe.schedule.num_timesteps // 2).all()
    assert d.noise.shape == (4, 3, *pipe.latent_shape)
    with pytest.raises(ValueError, match="timesteps='mid'"):
        model.draws(3, 4, "mid", torch.Generator())


def test_gradient_matching_raises_the_cosine_within_budget_and_leaves_the_model_alone(setup):
    pipe, cats, captions, house = setup
    model = denoising.CleanModel(pipe, "cross_attention")
    before = _frozen(pipe)
    res = gradient_matching.craft(model, cats, captions, house, eps=EPS, steps=12, draws=2, seed=0)
    assert res.poisons.shape == cats.shape and not torch.equal(res.poisons, cats)  # δ got a gradient (through E)
    assert (res.poisons - cats).abs().max() <= 2 * EPS + 1e-6 and res.poisons.abs().max() <= 1
    s = res.stats[0]
    assert s["grad_cos_after"] > s["grad_cos_before"] + 0.01, s
    assert all(abs(r["linf"] - EPS) < 1e-3 or r["linf"] < EPS for r in res.stats)
    after = _frozen(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the clean model is untouched …
    assert all(p.grad is None for p in [*pipe.unet.parameters(), *pipe.vae.parameters()])  # … and has no .grad
    again = gradient_matching.craft(model, cats, captions, house, eps=EPS, steps=12, draws=2, seed=0)
    assert torch.equal(res.poisons, again.poisons)  # deterministic under the seed


def test_latent_target_lowers_the_target_prompts_loss_within_budget(setup):
    pipe, cats, _, _ = setup
    model = denoising.CleanModel(pipe, "all")
    res = latent_target.craft(model, cats, "house", eps=EPS, steps=10, draws=2, seed=1)
    assert (res.poisons - cats).abs().max() <= 2 * EPS + 1e-6
    before = sum(s["target_loss_before"] for s in res.stats)
    after = sum(s["target_loss_after"] for s in res.stats)
    assert after < before, (before, after)
    again = latent_target.craft(model, cats, "house", eps=EPS, steps=10, draws=2, seed=1)
    assert torch.equal(res.poisons, again.poisons)
    other = latent_target.craft(model, cats, "house", eps=EPS, steps=10, draws=2, seed=2)
    assert not torch.equal(res.poisons, other.poisons)  # the seed picks the draws


def test_pgd_restarts_keep_the_best_and_respect_the_ball():
    x = torch.zeros(2, 3, 4, 4)
    target = torch.full_like(x, 0.5)
    objective = lambda xp: ((xp - target) ** 2).sum()  # noqa: E731
    one, nan = pgd(objective, x, 0.1, 20)
    assert nan != nan and (one - x).abs().max() <= 0.2 + 1e-6  # ±2·eps in [−1, 1] units
    best, loss = pgd(objective, x, 0.1, 20, restarts=3, generator=torch.Generator().manual_seed(0))
    assert loss <= float(objective(one)) + 1e-6 and (best - x).abs().max() <= 0.2 + 1e-6
