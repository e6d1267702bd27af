"""Reading a sweep's results: doses, preconditions, the positive control, verdicts (synthetic result tables)."""

import numpy as np
import pandas as pd
import pytest

from poisoning import doses

JUDGE = {"heldout_per_class": {"vehicle": {"accuracy": 0.9, "images": 30}, "animal": {"accuracy": 0.8, "images": 40}}}


def _rows(attack, n, fraction, hits_target, hits_prompt, seeds=(0, 1, 2), g=64):
    return [{"role": "source", "purification": "none", "eps_sweep": False, "attack": attack, "n": n,
             "fraction": fraction, "seed": s, "hits_target": t, "hits_prompt": p, "generations": g, "eps": np.nan,
             "gap_closed": np.nan} for s, t, p in zip(seeds, hits_target, hits_prompt)]


def _table(control_source=(50, 52, 49), positive=(40, 45, 38), attack_hits=((1, 0, 2), (3, 1, 2), (20, 25, 30))):
    rows = _rows("none", 0, 0.0, (1, 0, 2), control_source)
    for (n, f), hits in zip(((1, 0.01), (3, 0.02), (15, 0.1)), attack_hits):
        rows += _rows("dirty_label", n, f, hits, (40, 40, 40))
        rows += _rows("anchor", n, f, positive if n == 15 else (2, 2, 2), (40, 40, 40))
    return pd.DataFrame(rows)


def test_doses_from_fractions_round_and_merge():
    assert doses.doses((0.005, 0.01, 0.02, 0.05, 0.1, 0.2), 150) == [(0.005, 1), (0.01, 2), (0.02, 3), (0.05, 8),
                                                                     (0.1, 15), (0.2, 30)]
    assert doses.doses((0.001, 0.002), 100) == [(0.001, 1)]  # both round to one poison: kept once
    with pytest.raises(ValueError, match="no image of the source"):
        doses.doses((0.1,), 0)
    with pytest.raises(ValueError, match="within"):
        doses.doses((1.5,), 10)


def test_verdict_names_the_smallest_dose_that_clears_the_control():
    t = _table()
    pre = doses.preconditions(t, JUDGE, "vehicle", "animal", 0.3, 0.5)
    sens = doses.sensitivity(t)
    assert pre["ok"] and sens["ok"] and sens["n"] == 15
    v = doses.verdict(t, "dirty_label", pre, sens)
    assert v["status"] == "clears" and v["n"] == 15 and v["fraction"] == 0.1


def test_no_dose_clearing_says_so_with_the_largest_dose():
    t = _table(attack_hits=((1, 0, 2), (2, 1, 0), (1, 2, 1)))
    pre, sens = doses.preconditions(t, JUDGE, "vehicle", "animal", 0.3, 0.5), doses.sensitivity(t)
    v = doses.verdict(t, "dirty_label", pre, sens)
    assert v["status"] == "none_clears" and "10%" in v["text"] and "N=15" in v["text"]


def test_a_control_that_does_not_draw_the_source_means_no_verdict():
    t = _table(control_source=(0, 3, 1))
    pre = doses.preconditions(t, JUDGE, "vehicle", "animal", 0.3, 0.5)
    assert not pre["ok"] and "does not make C" in pre["why"][0]
    v = doses.verdict(t, "dirty_label", pre, doses.sensitivity(t))
    assert v["status"] == "cannot_measure" and "no measurable effect" not in v["text"]


def test_a_judge_that_does_not_know_the_target_means_no_verdict():
    judge = {"heldout_per_class": {"vehicle": {"accuracy": 0.9, "images": 30}, "animal": {"accuracy": 0.2,
                                                                                          "images": 40}}}
    pre = doses.preconditions(_table(), judge, "vehicle", "animal", 0.3, 0.5)
    assert not pre["ok"] and any("'animal'" in w for w in pre["why"])


def test_a_positive_control_that_moves_nothing_makes_the_sweep_insensitive():
    t = _table(positive=(1, 0, 2))
    pre, sens = doses.preconditions(t, JUDGE, "vehicle", "animal", 0.3, 0.5), doses.sensitivity(t)
    assert pre["ok"] and not sens["ok"]
    assert doses.verdict(t, "dirty_label", pre, sens)["status"] == "insensitive"


def test_dose_curve_pairs_each_dose_with_the_control_by_seed():
    curve = doses.dose_curve(_table(), "dirty_label")
    assert [c["n"] for c in curve] == [1, 3, 15]
    top = curve[-1]
    assert top["vs_control"]["seeds"] == [0, 1, 2] and top["vs_control"]["clears"]
    assert [s["hits"] for s in top["p_target"]["seeds"]] == [20, 25, 30]
    assert top["p_target"]["low"] < top["p_target"]["rate"] < top["p_target"]["high"]
