"""Intervals against known binomial values, and the seed-level and paired intervals' behaviour."""

import numpy as np
import pytest

from poisoning import intervals


def test_exact_matches_known_clopper_pearson_values():
    # 0/64: upper bound 1 − 0.025^(1/64); 64/64 mirrors it; 5/10: the textbook (0.1871, 0.8129)
    p, lo, hi = intervals.exact(0, 64)
    assert (p, lo) == (0.0, 0.0) and hi == pytest.approx(1 - 0.025 ** (1 / 64), abs=1e-9)
    assert hi == pytest.approx(0.0560, abs=1e-4)
    p, lo, hi = intervals.exact(64, 64)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 64), abs=1e-9)
    assert intervals.exact(5, 10)[1:] == pytest.approx((0.18709, 0.81291), abs=1e-4)


def test_wilson_and_newcombe_known_values():
    # Wilson 95% for 0/10: (0, 0.2775); Newcombe (1998) example 56/70 vs 48/80: 0.2 (0.0524, 0.3339)
    assert intervals.wilson(0, 10)[2] == pytest.approx(0.2775, abs=1e-4)
    d, lo, hi = intervals.newcombe(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-3) and hi == pytest.approx(0.3339, abs=1e-3)


def test_no_rate_is_zero_width_at_zero_or_one():
    for k in (0, 64):
        r = intervals.seed_level([k, k, k], [64, 64, 64])
        assert r.high - r.low > 0.01
        assert r.low <= r.value <= r.high


def test_seed_level_interval_widens_with_disagreeing_seeds():
    steady = intervals.seed_level([32, 32, 32], [64, 64, 64])
    spread = intervals.seed_level([5, 32, 59], [64, 64, 64])
    assert steady.value == pytest.approx(spread.value)
    assert (spread.high - spread.low) > 2 * (steady.high - steady.low)
    assert [s["rate"] for s in spread.seeds] == pytest.approx([5 / 64, 0.5, 59 / 64])
    assert "seeds 0.08 / 0.50 / 0.92" in spread.text()


def test_seed_level_counts_each_seed_once():
    # a seed with many generations does not outweigh the others: the value is the mean of per-seed rates
    r = intervals.seed_level([0, 100], [10, 100])
    assert r.value == pytest.approx(0.5)


def test_paired_difference_sees_a_consistent_effect_and_not_noise():
    clear = intervals.paired_difference([30, 34, 28], [64] * 3, [2, 0, 3], [64] * 3)
    assert clear[1] > 0
    none = intervals.paired_difference([3, 1, 2], [64] * 3, [2, 2, 1], [64] * 3)
    assert none[1] < 0 < none[2]
    assert intervals.clears([30, 34, 28], [64] * 3, [2, 0, 3], [64] * 3)
    assert not intervals.clears([3, 1, 2], [64] * 3, [2, 2, 1], [64] * 3)


def test_bad_counts_are_clear_errors():
    with pytest.raises(ValueError, match="hits"):
        intervals.exact(5, 3)
    with pytest.raises(ValueError, match="seeds"):
        intervals.seed_level([1, 2], [4, 4], seeds=[0])
    with pytest.raises(ValueError, match="paired"):
        intervals.paired_difference([1], [4], [1, 2], [4, 4])
    with pytest.raises(ValueError, match="values"):
        intervals.mean_interval([np.nan])
