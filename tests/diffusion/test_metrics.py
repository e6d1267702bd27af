"""KID, FID, the real-vs-real floor, zero-shot accuracy and CLIP score against closed forms."""

import numpy as np
import pytest

from diffusion.metrics import clip_score, fid, kid, real_floor, zero_shot_accuracy


def _normal(n: int, d: int, seed: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, (n, d))


def test_kid_near_zero_for_same_distribution_and_grows_with_shift():
    real = _normal(500, 8, 0)
    values = [kid(real, _normal(500, 8, 1, mean=shift), subsets=20, subset_size=250)[0]
              for shift in (0.0, 0.25, 0.5, 1.0)]
    assert abs(values[0]) < 0.02
    assert values[1] > 0.02
    assert values[0] < values[1] < values[2] < values[3]


def test_kid_is_unbiased():
    # Mean of independent full-set U-statistics on same-distribution pairs stays within 3 standard errors of
    # 0 (the biased V-statistic would sit ≈ 0.25 above it here).
    vals = np.array([kid(_normal(100, 4, 2 * i), _normal(100, 4, 2 * i + 1), subsets=1, subset_size=100)[0]
                     for i in range(60)])
    assert abs(vals.mean()) < 3 * vals.std() / np.sqrt(len(vals))


def test_kid_subsets_are_seeded():
    real, fake = _normal(200, 4, 0), _normal(200, 4, 1, mean=0.5)
    assert kid(real, fake, subsets=5, subset_size=50, seed=3) == kid(real, fake, subsets=5, subset_size=50, seed=3)
    mean, std = kid(real, fake, subsets=5, subset_size=50, seed=3)
    assert std > 0


def test_fid_closed_forms():
    x = _normal(20000, 4, 0)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    m = np.array([1.0, -0.5, 0.0, 2.0])
    assert fid(x, _normal(20000, 4, 1) + m) == pytest.approx(m @ m, rel=0.02)  # ‖m‖² = 5.25
    assert fid(x, _normal(20000, 4, 2, std=2.0)) == pytest.approx(4.0, rel=0.03)  # Tr(I + 4I − 2·2I) = D


def test_fid_with_fewer_samples_than_dimensions_is_finite():
    a, b = _normal(3, 16, 0), _normal(3, 16, 1)
    assert np.isfinite(fid(a, b)) and fid(a, b) > 0


def test_real_floor_keys_and_values():
    floor = real_floor(_normal(400, 4, 0), subsets=10, subset_size=100)
    assert set(floor) == {"kid", "kid_std", "fid"}
    assert floor["kid_std"] > 0 and abs(floor["kid"]) < 3 * floor["kid_std"]
    assert 0 <= floor["fid"] < 0.2


def test_zero_shot_accuracy_constructed_case():
    k = 10
    text = np.eye(k)
    labels = np.array([0, 1, 2])
    ranks = [0, 2, 7]  # where the true class ranks for each image
    images = np.zeros((3, k))
    for i, (y, r) in enumerate(zip(labels, ranks)):
        order = [c for c in range(k) if c != y]
        order.insert(r, y)
        images[i, order] = np.linspace(1.0, 0.1, k)  # decreasing similarity along `order`
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    out = zero_shot_accuracy(images, text, labels)
    assert out == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3), "chance": 0.1, "n": 3, "k": 10}
    small = zero_shot_accuracy(np.eye(3), np.eye(3), np.array([0, 2, 1]))
    assert small["top1"] == pytest.approx(1 / 3) and small["top5"] == 1.0  # top-5 capped at K = 3


def test_clip_score_closed_form():
    angles = np.array([np.arccos(0.3), np.arccos(-0.2), 0.0])
    images = np.tile([[1.0, 0.0]], (3, 1))
    texts = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert clip_score(images, texts) == pytest.approx((30 + 0 + 100) / 3)


def test_errors_name_the_argument():
    a = _normal(10, 4, 0)
    with pytest.raises(ValueError, match="real and fake: feature dimensions differ"):
        kid(a, _normal(10, 5, 1))
    with pytest.raises(ValueError, match="real and fake"):
        fid(a, _normal(10, 5, 1))
    with pytest.raises(ValueError, match="fake: needs at least 2 samples"):
        fid(a, a[:1])
    with pytest.raises(ValueError, match="real: needs at least 2 samples"):
        fid(a[:1], a)
    with pytest.raises(ValueError, match="real: expected a 2-D"):
        kid(a[0], a)
    with pytest.raises(ValueError, match="labels: value 4"):
        zero_shot_accuracy(np.eye(4), np.eye(4), np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="image_emb and text_emb"):
        zero_shot_accuracy(np.eye(4), np.eye(3), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="image_emb and text_emb: shapes differ"):
        clip_score(np.eye(4), np.eye(4)[:3])


def test_psnr_of_identical_images_is_inf_or_the_cap_and_matches_the_closed_form():
    import torch

    from diffusion.metrics import psnr

    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert torch.isinf(psnr(x, x)).all()
    assert (psnr(x, x, max_db=100.0) == 100.0).all()
    y = x + torch.tensor([0.02, 0.2]).view(2, 1, 1, 1)  # mse 4e-4 and 4e-2 → 40 and 20 dB (range 2)
    torch.testing.assert_close(psnr(x, y), torch.tensor([40.0, 20.0]))
    torch.testing.assert_close(psnr(x, y, max_db=30.0), torch.tensor([30.0, 20.0]))
    assert psnr(x[0], y[0]).shape == (1,)
    with pytest.raises(ValueError, match="shapes"):
        psnr(x, y[:1])
