"""The training-signal attacks on the tiny clean model: gradient matching and the latent target — budget, frozen
model, determinism, and that each moves its own objective; the shared PGD; Nightshade's nearest anchor."""

from __future__ import annotations

import pytest
import torch

from diffusion import data
from diffusion.pipeline import Pipeline
from poisoning import denoising, gradient_matching, latent_target
from poisoning.budget import Budget, minimise
from poisoning.penalty import penalised
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
    res = gradient_matching.craft(model, cats, captions, house, budget=Budget(eps=EPS), steps=12, draws=2, seed=0)
    assert res.poisons.shape == cats.shape and not torch.equal(res.poisons, cats)  # δ got a gradient (through E)
    assert (res.poisons - cats).abs().max() <= 2 * EPS + 1e-6 and res.poisons.abs().max() <= 1
    s = res.stats[0]
    assert s["grad_cos_after"] > s["grad_cos_before"] + 0.01, s
    assert all(abs(r["linf"] - EPS) < 1e-3 or r["linf"] < EPS for r in res.stats)
    after = _frozen(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the clean model is untouched …
    assert all(p.grad is None for p in [*pipe.unet.parameters(), *pipe.vae.parameters()])  # … and has no .grad
    again = gradient_matching.craft(model, cats, captions, house, budget=Budget(eps=EPS), steps=12, draws=2, seed=0)
    assert torch.equal(res.poisons, again.poisons)  # deterministic under the seed


def test_gradient_matching_with_resampled_draws_reports_the_alignment_on_held_out_draws(setup):
    pipe, cats, captions, house = setup
    model = denoising.CleanModel(pipe, "cross_attention")
    kw = {"budget": Budget(eps=EPS), "steps": 12, "draws": 2, "seed": 0}
    fixed = gradient_matching.craft(model, cats, captions, house, **kw)
    fresh = gradient_matching.craft(model, cats, captions, house, resample=True, **kw)
    assert not torch.equal(fixed.poisons, fresh.poisons)
    f, r = fixed.stats[0], fresh.stats[0]
    assert f["grad_cos_heldout_before"] == r["grad_cos_heldout_before"]  # the same held-out draws for both …
    assert f["grad_cos_heldout_before"] != f["grad_cos_before"]  # … and not the crafting ones
    assert r["grad_cos_heldout_after"] > r["grad_cos_heldout_before"], r  # expectation over draws: it carries


def test_latent_target_lowers_the_target_prompts_loss_within_budget(setup):
    pipe, cats, _, _ = setup
    model = denoising.CleanModel(pipe, "all")
    res = latent_target.craft(model, cats, "house", budget=Budget(eps=EPS), steps=10, draws=2, seed=1)
    assert (res.poisons - cats).abs().max() <= 2 * EPS + 1e-6
    before = sum(s["target_loss_before"] for s in res.stats)
    after = sum(s["target_loss_after"] for s in res.stats)
    assert after < before, (before, after)
    again = latent_target.craft(model, cats, "house", budget=Budget(eps=EPS), steps=10, draws=2, seed=1)
    assert torch.equal(res.poisons, again.poisons)
    other = latent_target.craft(model, cats, "house", budget=Budget(eps=EPS), steps=10, draws=2, seed=2)
    assert not torch.equal(res.poisons, other.poisons)  # the seed picks the draws


def test_pgd_restarts_keep_the_best_and_respect_the_ball():
    x = torch.zeros(2, 3, 4, 4)
    target = torch.full_like(x, 0.5)
    objective = lambda xp: ((xp - target) ** 2).sum()  # noqa: E731
    one, nan = pgd(objective, x, 0.1, 20)
    assert nan != nan and (one - x).abs().max() <= 0.2 + 1e-6  # ±2·eps in [−1, 1] units
    best, loss = pgd(objective, x, 0.1, 20, restarts=3, generator=torch.Generator().manual_seed(0))
    assert loss <= float(objective(one)) + 1e-6 and (best - x).abs().max() <= 0.2 + 1e-6


@pytest.mark.parametrize("attack", ["gradient_matching", "latent_target"])
def test_ssim_budget_holds_for_every_poison_and_moves_the_objective(setup, attack):
    pipe, cats, captions, house = setup
    model = denoising.CleanModel(pipe, "cross_attention" if attack == "gradient_matching" else "all")
    floor = Budget("ssim", ssim_floor=0.95)
    if attack == "gradient_matching":
        res = gradient_matching.craft(model, cats, captions, house, budget=floor, steps=8, draws=2, seed=0)
        moved = res.stats[0]["grad_cos_after"] > res.stats[0]["grad_cos_before"]
    else:
        res = latent_target.craft(model, cats, "house", budget=floor, steps=8, draws=2, seed=0)
        moved = sum(s["target_loss_after"] for s in res.stats) < sum(s["target_loss_before"] for s in res.stats)
    assert all(s["budget"] == "ssim" and s["ssim"] >= 0.95 - 1e-6 for s in res.stats), res.stats
    assert not torch.equal(res.poisons, cats) and moved
    assert res.poisons.abs().max() <= 1


def test_penalised_keeps_the_best_iterate_within_the_limit():
    x = torch.zeros(3, 3, 8, 8)
    objective = lambda xp: ((xp - 0.8) ** 2).flatten(1).mean(dim=1)  # noqa: E731  — wants δ = 0.8 everywhere
    distance = lambda a, b: (b - a).abs().flatten(1).amax(dim=1)  # noqa: E731
    out = penalised(objective, x, distance, 0.3, steps=200, lr=0.05)
    assert (distance(x, out) <= 0.3 + 1e-6).all()  # the limit holds for every image …
    assert (objective(out) < objective(x) * 0.4).all()  # … and the objective moved as far as the limit allows
    none = penalised(objective, x, distance, 0.0, steps=20, lr=0.05)
    assert torch.equal(none, x)  # nothing within the limit: the clean image


def test_budget_errors_name_the_field():
    with pytest.raises(ValueError, match="budget='l2': allowed values are linf, ssim, lpips"):
        Budget("l2")
    with pytest.raises(ValueError, match="budget='lpips': needs lpips_fn"):
        Budget("lpips")
    with pytest.raises(ValueError, match="restarts=2: the ssim budget runs once"):
        minimise(lambda xp: xp.flatten(1).sum(1), torch.zeros(1, 3, 8, 8), Budget("ssim"), 2, restarts=2)
