"""Attack-success rates of one model with exact intervals."""

import numpy as np
import pytest

from poisoning import success


def test_one_models_rates_carry_exact_intervals_never_zero_width():
    r = success.rates(np.zeros(64, int), source=0, target=2)  # 0 of 64 generations hijacked toward 2
    assert r["p_target"] == 0 and r["p_target_ci"][0] == 0 and r["p_target_ci"][1] == pytest.approx(0.0560, abs=1e-4)
    assert r["p_not_source"] == 0 and r["p_not_source_ci"][1] > 0.05
    with pytest.raises(ValueError, match="no generations"):
        success.rates(np.array([], int), 0, 1)


def test_rates_count_hijacked_and_target_generations():
    r = success.rates(np.array([0, 0, 2, 1, 2, 0]), source=0, target=2)
    assert r["n"] == 6 and r["p_not_source"] == pytest.approx(0.5) and r["p_target"] == pytest.approx(1 / 3)
    assert r["p_target_ci"][0] <= 1 / 3 <= r["p_target_ci"][1]


def test_measure_refuses_concepts_outside_the_judge():
    with pytest.raises(ValueError, match="target='zebra'"):
        success.measure(None, None, ["cow", "car"], "cow", "zebra")
