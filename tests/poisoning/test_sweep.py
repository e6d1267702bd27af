"""`poison sweep` end to end on the tiny model: poison → inject → continued training → judge, beside a control."""

import json

import pandas as pd
import pytest

from poisoning import sweep


def test_sweep_writes_every_victim_beside_a_control(tiny_sweep):
    t = pd.read_parquet(tiny_sweep / "results.parquet")
    src = t[t.role == "source"]
    assert set(src.victim) == {"control-s0", "nightshade-n1-s0", "nightshade-n2-s0", "dirty_label-n1-s0",
                               "dirty_label-n2-s0", "benign-n2-s0", "control-jpeg-s0", "nightshade-n2-jpeg-s0",
                               "dirty_label-n2-jpeg-s0"}
    assert (src.generations == 8).all() and ((src.p_target >= 0) & (src.p_target <= 1)).all()
    assert ((src.p_target_low <= src.p_target) & (src.p_target <= src.p_target_high)).all()
    detailed = set(t[t.role == "others"].victim)
    assert detailed == {"control-s0", "nightshade-n2-s0", "dirty_label-n2-s0", "implosion-nightshade-k1-s0",
                        "implosion-dirty_label-k1-s0"}
    imp = t[t.role == "implosion"]  # C → A and one more pair, poisoned at once
    assert len(imp) == 4 and set(imp.implosion) == {1} and (imp.concept == "cat").sum() == 2
    assert set(imp[imp.concept == "cat"].target_concept) == {"house"}
    for name in ("asr.png", "generations.png", "defences.json", "sweep.json"):
        assert (tiny_sweep / name).is_file()
    d = json.loads((tiny_sweep / "defences.json").read_text())
    assert set(d["clip_filter"]["attacks"]) == {"nightshade", "dirty_label"}
    assert d["detector"]["attacks"]["nightshade"]["poisons"] == 2
    s = json.loads((tiny_sweep / "sweep.json").read_text())
    assert s["clean_source_samples"] == 3 and s["setting"] == {"nightshade": "white_box", "dirty_label": "white_box"}


def test_victims_hold_exactly_n_poisons(tiny_sweep):
    from diffusion import data

    clean = len(data.load_images(tiny_sweep / "data" / "nightshade-n1-s0", 32)) - 1
    for name, n in (("nightshade-n1-s0", 1), ("dirty_label-n2-s0", 2), ("benign-n2-s0", 2)):
        assert len(data.load_images(tiny_sweep / "data" / name, 32)) == clean + n


def test_bad_sweep_configs_name_the_field():
    with pytest.raises(ValueError, match="ns"):
        sweep.SweepConfig(ns=(0, 2))
    with pytest.raises(ValueError, match="attacks"):
        sweep.SweepConfig(attacks=("benign",))
    with pytest.raises(ValueError, match="purify"):
        sweep.SweepConfig(purify=("blur",))
    with pytest.raises(ValueError, match="eps"):
        sweep.SweepConfig(eps=0)
