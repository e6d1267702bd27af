"""The shared warm-up + cosine learning-rate schedule, in both of its warm-up modes."""

import math

import pytest

from mithridate.core.lr import warmup_cosine


def test_warmup_scales_the_cosine_from_step_0():
    assert warmup_cosine(1e-3, 0, 10, 0.0) == pytest.approx(1e-4)
    assert warmup_cosine(1e-3, 9, 10, 0.5) == pytest.approx(0.5e-3)  # warm-up over, cosine half way
    assert warmup_cosine(1e-3, 0, 10, 0.05) < 1e-4  # the cosine already applies during the warm-up
    assert warmup_cosine(1e-3, 500, 0, 1.0) == 0.0 == warmup_cosine(1e-3, 500, 0, 3.0)  # progress clamped at 1


def test_warmup_first_then_cosine_to_the_floor():
    assert warmup_cosine(1e-3, 4, 10, -0.6, floor=0.1, warmup_first=True) == pytest.approx(5e-4)
    assert warmup_cosine(1e-3, 10, 10, 0.0, floor=0.1, warmup_first=True) == pytest.approx(1e-3)
    assert warmup_cosine(1e-3, 99, 10, 1.0, floor=0.1, warmup_first=True) == pytest.approx(1e-4)
    mid = warmup_cosine(1e-3, 50, 10, 0.5, floor=0.1, warmup_first=True)
    assert mid == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))
