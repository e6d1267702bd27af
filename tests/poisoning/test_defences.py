"""Defences: purification, the fixed-FPR detector on hand-made scores, the CLIP filter with a real tiny compact
CLIP and the latent-consistency score with a small randomly initialised autoencoder. One torch thread."""

import numpy as np
import pytest
import torch

from curation.score import encoders
from diffusion import data
from diffusion.autoencoder import Autoencoder
from poisoning import defences, nightshade


def _noisy(n: int = 3, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _flat(colour=(200, 100, 50), n: int = 2, size: int = 32) -> np.ndarray:
    return np.zeros((n, size, size, 3), np.uint8) + np.asarray(colour, np.uint8)


# --- purify --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", defences.PURIFICATIONS)
def test_purify_keeps_shape_and_dtype(method):
    x = _noisy(3, size=16)
    y = defences.purify(x, method)
    assert y.shape == x.shape and y.dtype == np.uint8
    assert not np.array_equal(y, x)  # it did something to noise
    x2 = _noisy(2, size=32)[:, :, :24]  # non-square
    assert defences.purify(x2, method).shape == x2.shape


def test_jpeg_changes_noise_but_not_a_flat_colour():
    noisy = _noisy()
    assert np.abs(defences.purify(noisy, "jpeg").astype(int) - noisy).mean() > 10
    for colour in ((200, 100, 50), (128, 128, 128), (255, 255, 255)):
        flat = _flat(colour)
        assert np.abs(defences.purify(flat, "jpeg").astype(int) - flat).max() <= 2


def test_jpeg_is_deterministic_and_ignores_the_seed():
    x = _noisy()
    assert np.array_equal(defences.purify(x, "jpeg", seed=0), defences.purify(x, "jpeg", seed=5))


def test_noise_resize_is_seeded():
    x = _flat((120, 130, 140), n=3)
    a, b = defences.purify(x, "noise_resize", seed=1), defences.purify(x, "noise_resize", seed=1)
    c = defences.purify(x, "noise_resize", seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, x)  # the noise survives the resize on a flat image …
    assert np.abs(a.astype(int) - x).mean() < 8  # … but is small (σ = 8/255, then smoothed)
    assert not np.array_equal(a[0], a[1])  # each image gets its own noise


def test_unknown_purification_names_the_value():
    with pytest.raises(ValueError, match="'blur'"):
        defences.purify(_noisy(1), "blur")


# --- detector ------------------------------------------------------------------------------------------------------


def test_detector_by_hand():
    clean = np.arange(10, dtype=float)  # (1 − 0.2) quantile, linear interpolation: 7.2
    poison = np.array([1.0, 7.5, 8.0, 20.0])
    d = defences.detector(clean, poison, fpr=0.2)
    assert d["threshold"] == pytest.approx(7.2)
    assert d["fpr"] == pytest.approx(0.2)  # 8 and 9 flagged
    assert d["recall"] == pytest.approx(0.75)  # 7.5, 8, 20 caught
    assert d["precision"] == pytest.approx(3 / 5)  # 3 poisons among 5 flagged
    # AUC by pairs: 1 beats 1 clean and ties 1 (1.5), 7.5 beats 8, 8 beats 8 and ties 1 (8.5), 20 beats 10
    assert d["auc"] == pytest.approx((1.5 + 8 + 8.5 + 10) / 40)
    assert (d["clean"], d["poisons"], d["fpr_target"]) == (10, 4, 0.2)


def test_detector_threshold_is_the_clean_quantile():
    clean = np.arange(100, dtype=float)
    d = defences.detector(clean, np.array([50.0, 99.0, 200.0]), fpr=0.05)
    assert d["threshold"] == pytest.approx(94.05)
    assert d["fpr"] == pytest.approx(0.05) and d["recall"] == pytest.approx(2 / 3)
    assert d["precision"] == pytest.approx(2 / 7)


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_detector_fpr_within_target(fpr, seed):
    rng = np.random.default_rng(seed)
    clean = rng.normal(size=37)
    d = defences.detector(clean, rng.normal(2, 1, size=11), fpr=fpr)
    assert d["threshold"] == pytest.approx(np.quantile(clean, 1 - fpr))
    assert d["fpr"] <= fpr + 1 / len(clean)
    assert d["fpr"] == pytest.approx((clean > d["threshold"]).mean())
    ties = np.r_[np.zeros(30), np.ones(10)]  # many clean scores at the threshold: strict ">" keeps fpr in check
    assert defences.detector(ties, np.array([2.0]), fpr=fpr)["fpr"] <= fpr + 1 / len(ties)


def test_detector_separated_scores():
    d = defences.detector(np.linspace(0, 1, 20), np.linspace(2, 3, 5), fpr=0.1)
    assert d["auc"] == 1.0 and d["recall"] == 1.0
    d = defences.detector(np.linspace(2, 3, 20), np.linspace(0, 1, 5), fpr=0.1)  # poisons below every clean score
    assert d["auc"] == 0.0 and d["recall"] == 0.0
    assert d["precision"] == 0.0  # 2 clean flagged, no poison


def test_detector_nothing_flagged_has_nan_precision():
    d = defences.detector(np.zeros(5), np.array([-1.0]), fpr=0.1)
    assert d["fpr"] == 0 and d["recall"] == 0 and np.isnan(d["precision"])


@pytest.mark.parametrize("fpr", [0, 1, -0.1, 1.5])
def test_detector_bad_fpr(fpr):
    with pytest.raises(ValueError, match="fpr"):
        defences.detector(np.arange(10.0), np.arange(3.0), fpr=fpr)


def test_detector_too_few_scores():
    with pytest.raises(ValueError, match="clean"):
        defences.detector(np.array([1.0]), np.arange(3.0))
    with pytest.raises(ValueError, match="poison"):
        defences.detector(np.arange(5.0), np.zeros(0))


# --- CLIP filter ---------------------------------------------------------------------------------------------------


def test_clip_filter_scores_are_cosines(tiny_clip_checkpoint, tiny_train):
    enc = encoders.load_compact(tiny_clip_checkpoint, "cpu")
    rows = data.load_images(tiny_train, 32).subset(np.arange(0, 72, 8))
    images = data.to_uint8(rows.images)
    captions = rows.captions[:4] + ["a cat", "a house", "", "cow face", "the rolled-up newspaper"]
    img = enc.encode_images(list(images))
    txt = enc.encode_texts(captions)
    cos = np.array([np.dot(i, t) / (np.linalg.norm(i) * np.linalg.norm(t)) for i, t in zip(img, txt)])
    threshold = float(np.median(cos))  # 9 scores: the threshold is one of them, which passes (≥)
    got = defences.clip_filter(enc, images, captions, threshold)
    assert got["scores"].shape == (9,)
    np.testing.assert_allclose(got["scores"], cos, atol=1e-5)
    assert np.array_equal(got["passed"], got["scores"] >= threshold)
    assert 0 < got["passed"].sum() < 9 and got["passed"].sum() >= 5
    assert got["threshold"] == threshold
    assert not defences.clip_filter(enc, images, captions, 1.01)["passed"].any()
    assert defences.clip_filter(enc, images, captions, -1.01)["passed"].all()


# --- latent consistency --------------------------------------------------------------------------------------------


def _ae(seed: int) -> Autoencoder:
    torch.manual_seed(seed)
    ae = Autoencoder(channels=(8, 16, 16), groups=4).eval()
    ae.requires_grad_(False)
    return ae


def test_consistency_scores_shape_and_zero_for_jpeg_fixed_images(tiny_train):
    ae = _ae(0)
    images = np.concatenate([data.to_uint8(data.load_images(tiny_train, 32).images[:6]), _noisy(2),
                             _flat((128, 128, 128), 1), _flat((255, 255, 255), 1)])
    s = defences.consistency_scores(ae, images)
    assert s.shape == (10,) and s.dtype == np.float32 and (s >= 0).all() and np.isfinite(s).all()
    assert np.array_equal(defences.purify(images[-2:], "jpeg"), images[-2:])  # JPEG leaves these two alone …
    assert (s[-2:] == 0).all()  # … so their latents do not move
    assert (s[:-2] > 0).all()
    assert s[6:8].min() > s[:6].max()  # noise moves more than the emoji under JPEG
    np.testing.assert_allclose(defences.consistency_scores(ae, images, batch=3), s, rtol=1e-4, atol=1e-6)
    assert defences.consistency_scores(ae, images[:0]).shape == (0,)
    s2 = defences.consistency_scores(ae, images, method="noise_resize")
    assert s2.shape == (10,) and (s2 >= 0).all() and (s2[-2:] > 0).all()  # noise moves even flat images


@pytest.mark.parametrize("seed", [0, 1])
def test_nightshade_poisons_are_less_consistent_than_their_originals(tiny_train, seed):
    ae = _ae(seed)
    imgs = data.load_images(tiny_train, 32).images
    rng = np.random.default_rng(seed)
    x = imgs[rng.choice(len(imgs), 8, replace=False)]
    anchor = imgs[int(rng.integers(len(imgs)))]
    poisons = nightshade.craft(ae.encode_latents, x, anchor, eps=0.1, steps=30, seed=seed).poisons
    clean = defences.consistency_scores(ae, data.to_uint8(x))
    poison = defences.consistency_scores(ae, data.to_uint8(poisons))
    assert poison.mean() > 1.5 * clean.mean()  # ≥ 2.4× over 4 autoencoder seeds × 2 craft seeds when written
