"""The noise-conditional latent classifier: learns separable classes, steers by its gradient, round-trips."""

import pytest
import torch

from diffusion.classifier import LatentClassifier, guidance_grad, load_classifier, save_classifier, train_classifier
from diffusion.schedule import NoiseSchedule

K = 3


def _latents(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k = channel k shifted by +1, on N(0, 0.5²) noise; (n, 4, 4, 4)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    x = torch.randn(n, 4, 4, 4, generator=g) * 0.5
    x[torch.arange(n), labels] += 1.0
    return x, labels


@pytest.fixture(scope="module")
def trained():
    """One 150-step training shared by the tests (single thread: much faster on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = _latents()
        sched = NoiseSchedule(1000)
        model, stats = train_classifier(x, y, sched, K, steps=150, batch_size=64, width=16, lr=2e-3)
        yield model, stats, sched, x, y
    finally:
        torch.set_num_threads(old)


def test_learns_clean_classes_and_forgets_them_under_noise(trained):
    model, stats, sched, _, _ = trained
    assert not model.training
    assert stats["acc_clean"] > 0.9
    acc = stats["acc_by_t"]
    assert sorted(acc) == [0, 250, 500, 750, 999]
    assert acc[0] > 0.9
    assert acc[999] < 0.5 < acc[0]  # chance is 1/3: at ᾱ ≈ 4e-5 nothing is left to classify
    assert stats["loss_last"] < stats["loss_first"]


def _log_p(model, x, t, y):
    with torch.no_grad():
        return torch.log_softmax(model(x, t), -1).gather(1, y[:, None]).squeeze(1)


def test_guidance_gradient_ascends_log_p_and_points_to_the_class(trained):
    model, _, sched, x0, _ = trained
    source = x0[:30:K]  # class 0
    target = torch.full((len(source),), 1)
    t = torch.full((len(source),), 250.0)
    x_t = sched.add_noise(source, torch.randn(source.shape, generator=torch.Generator().manual_seed(3)), 250)
    with torch.no_grad():  # the sampler's context: the gradient must still be computed
        grad = guidance_grad(model, target)(x_t, t)
    assert grad.shape == x_t.shape and not grad.requires_grad
    before, after = _log_p(model, x_t, t, target), _log_p(model, x_t + 0.05 * grad, t, target)
    assert (after > before).float().mean() >= 0.9 and after.mean() > before.mean()
    per_channel = grad.mean(dim=(0, 2, 3))
    assert per_channel[1] > per_channel[0]  # toward class 1's channel, away from class 0's


def test_guidance_accepts_int_label_and_scalar_t(trained):
    model, *_ = trained
    x = torch.randn(2, 4, 4, 4)
    a = guidance_grad(model, 2)(x, torch.tensor(10.0))
    b = guidance_grad(model, torch.tensor([2, 2]))(x, torch.tensor([10.0, 10.0]))
    assert torch.allclose(a, b)


def test_save_load_roundtrip_gives_identical_logits(trained, tmp_path):
    model, stats, *_ = trained
    path = save_classifier(model, tmp_path / "clf.pt", {"stats": stats, "num_timesteps": 1000})
    loaded, meta = load_classifier(path)
    assert meta["config"] == model.config and meta["num_timesteps"] == 1000
    assert meta["stats"]["acc_by_t"] == stats["acc_by_t"]
    x, t = torch.randn(5, 4, 4, 4), torch.tensor([0.0, 10.0, 100.0, 500.0, 999.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


def test_load_refuses_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, other)
    with pytest.raises(ValueError, match="other.pt"):
        load_classifier(other)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt"):
        load_classifier(text)


def test_argument_validation():
    with pytest.raises(ValueError, match="num_classes"):
        LatentClassifier(num_classes=1)
    x, y = _latents(12)
    with pytest.raises(ValueError, match="labels: value 3"):
        train_classifier(x, torch.where(y == 2, 3, y), NoiseSchedule(10), K, steps=1)
    with pytest.raises(ValueError, match="labels: value -1"):
        guidance_grad(LatentClassifier(num_classes=K, width=8), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="labels: expected shape"):
        train_classifier(x, y[:5], NoiseSchedule(10), K, steps=1)


def test_params_at_default_size():
    n = sum(p.numel() for p in LatentClassifier(width=64).parameters())
    assert 100_000 <= n <= 300_000
