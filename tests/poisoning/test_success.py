"""Attack-success rates with bootstrap intervals."""

import numpy as np
import pytest

from poisoning import success


def test_bootstrap_interval_brackets_the_share_and_narrows_with_n():
    small = success.bootstrap_ci(np.array([1, 0, 1, 0, 0, 0, 0, 0]))
    large = success.bootstrap_ci(np.tile([1, 0, 0, 0], 100))
    assert small[0] == pytest.approx(0.25) and small[1] <= 0.25 <= small[2]
    assert large[0] == pytest.approx(0.25) and (large[2] - large[1]) < (small[2] - small[1])
    assert success.bootstrap_ci(np.zeros(10)) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="hits"):
        success.bootstrap_ci(np.array([]))


def test_rates_count_hijacked_and_target_generations():
    r = success.rates(np.array([0, 0, 2, 1, 2, 0]), source=0, target=2)
    assert r["n"] == 6 and r["p_not_source"] == pytest.approx(0.5) and r["p_target"] == pytest.approx(1 / 3)
    assert r["p_target_ci"][0] <= 1 / 3 <= r["p_target_ci"][1]


def test_measure_refuses_concepts_outside_the_judge():
    with pytest.raises(ValueError, match="target='zebra'"):
        success.measure(None, None, ["cow", "car"], "cow", "zebra")
