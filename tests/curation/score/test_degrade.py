import random

import numpy as np
import pytest
from PIL import Image

from curation.score import degrade
from curation.world import art

SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def images(tiny_corpus):
    table = art.load(tiny_corpus).sort_values("item_id")
    return [Image.open(tiny_corpus / p).convert("RGB") for p in table["path64"].iloc[::9]]


def _px(im):
    return np.asarray(im, dtype=np.float64)


def _laplacian_var(im):
    a = _px(im.convert("L"))
    return (4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).var()


def _psnr(a, b):
    mse = ((_px(a) - _px(b)) ** 2).mean()
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def _curve(images, kind, measure):
    """Mean of `measure(original, degraded)` over the images, at each severity."""
    return [np.mean([measure(im, degrade.degrade(im, kind, s, random.Random(7))) for im in images]) for s in SEVERITIES]


@pytest.mark.parametrize("kind", degrade.KINDS)
def test_degradations_are_deterministic_and_change_the_image(images, kind):
    im = images[0]
    a = degrade.degrade(im, kind, 0.6, random.Random(3))
    b = degrade.degrade(im, kind, 0.6, random.Random(3))
    assert a.mode == "RGB" and a.size == im.size
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != im.tobytes()
    assert degrade.degrade(im, kind, 0.0, random.Random(3)).tobytes() == im.tobytes()  # severity 0: clean copy


@pytest.mark.parametrize("kind", ["noise", "watermark"])
def test_random_kinds_follow_the_rng(images, kind):
    a = degrade.degrade(images[0], kind, 0.8, random.Random(1))
    b = degrade.degrade(images[0], kind, 0.8, random.Random(2))
    assert a.tobytes() != b.tobytes()


def test_blur_lowers_laplacian_variance_monotonically(images):
    for im in images:
        lv = [_laplacian_var(degrade.degrade(im, "blur", s, random.Random(0))) for s in SEVERITIES]
        assert all(x > y for x, y in zip(lv, lv[1:])), lv
        assert lv[-1] < lv[0] / 20


@pytest.mark.parametrize("kind", ["jpeg", "noise", "lowres", "watermark"])
def test_psnr_falls_as_severity_rises(images, kind):
    curve = _curve(images, kind, _psnr)
    assert curve[0] == float("inf")
    assert all(x > y for x, y in zip(curve, curve[1:])), (kind, curve)
    assert curve[-1] < 25, (kind, curve)


def test_watermark_covers_more_of_the_image_as_severity_rises(images):
    changed = _curve(images, "watermark", lambda a, b: (np.abs(_px(a) - _px(b)).sum(2) > 30).mean())
    assert all(x < y for x, y in zip(changed, changed[1:])), changed


def test_quality_rating_runs_from_ten_clean_to_one_at_full_severity():
    assert degrade.quality_rating(None, None) == 10.0
    for kind in degrade.KINDS:
        ratings = [degrade.quality_rating(kind, s) for s in SEVERITIES]
        assert ratings[0] == 10.0 and ratings[-1] == pytest.approx(1.0)
        assert all(x > y for x, y in zip(ratings, ratings[1:]))


@pytest.mark.parametrize("kind,severity", [("sepia", 0.5), ("blur", 1.5), ("jpeg", -0.1)])
def test_bad_kind_or_severity_is_a_clear_error(images, kind, severity):
    with pytest.raises(ValueError, match="kind|severity"):
        degrade.degrade(images[0], kind, severity, random.Random(0))
    with pytest.raises(ValueError, match="kind|severity"):
        degrade.quality_rating(kind, severity)
