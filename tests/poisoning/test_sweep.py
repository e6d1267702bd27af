"""`poison sweep` end to end on the tiny model: poison → inject → continued training → judge, beside a control."""

import dataclasses
import json

import pandas as pd
import pytest

from poisoning import sweep


def test_sweep_writes_every_victim_beside_a_control(tiny_sweep):
    t = pd.read_parquet(tiny_sweep / "results.parquet")
    src = t[t.role == "source"]
    assert set(src.victim) == {"control-s0", "nightshade-n1-s0", "nightshade-n2-s0", "dirty_label-n1-s0",
                               "dirty_label-n2-s0", "anchor-n2-s0", "benign-n2-s0",
                               "nightshade-e8-n2-s0", "nightshade-e255-n2-s0", "control-jpeg-s0",
                               "nightshade-n2-jpeg-s0", "dirty_label-n2-jpeg-s0"}
    assert (src.generations == 8).all() and ((src.p_target >= 0) & (src.p_target <= 1)).all()
    assert ((src.p_target_low <= src.p_target) & (src.p_target <= src.p_target_high)).all()
    assert (src.p_target_high - src.p_target_low > 0.1).all()  # exact intervals of 8 generations: never zero-width
    detailed = set(t[t.role == "others"].victim)
    assert detailed == {"control-s0", "nightshade-n2-s0", "dirty_label-n2-s0", "implosion-nightshade-k1-s0",
                        "implosion-dirty_label-k1-s0"}
    imp = t[t.role == "implosion"]  # C → A and one more pair, poisoned at once
    assert len(imp) == 4 and set(imp.implosion) == {1} and (imp.concept == "cat").sum() == 2
    assert set(imp[imp.concept == "cat"].target_concept) == {"house"}
    for name in ("asr.png", "generations.png", "defences.json", "sweep.json"):
        assert (tiny_sweep / name).is_file()
    d = json.loads((tiny_sweep / "defences.json").read_text())
    assert set(d["clip_filter"]["attacks"]) == {"nightshade", "dirty_label", "anchor"}
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


def test_sweep_records_preconditions_doses_and_the_eps_curve(tiny_sweep):
    s = json.loads((tiny_sweep / "sweep.json").read_text())
    pre = s["preconditions"]
    assert isinstance(pre["ok"], bool) and len(pre["checks"]) == 3
    assert pre["ok"] or pre["why"]  # a failed precondition always says why
    assert s["judge_info"]["kind"] == "classifier" and s["judge"] == s["judge_info"]["name"]
    assert set(s["doses"]) == {"nightshade", "dirty_label", "anchor"}
    assert [d["n"] for d in s["doses"]["dirty_label"]] == [1, 2]
    for v in s["verdicts"].values():
        assert v["status"] in ("cannot_measure", "insensitive", "none_clears", "clears")
        if not pre["ok"]:
            assert v["status"] == "cannot_measure"
    eps = s["eps_curve"]
    assert [c["eps_255"] for c in eps] == [8, 10.2, 255]  # the sweep's own ε = 0.04 at N_max is on the curve
    assert eps[-1]["gap_closed"] > eps[0]["gap_closed"]  # a larger budget closes more of the latent gap
    assert (tiny_sweep / "doses.png").is_file() and (tiny_sweep / "eps.png").is_file()


def test_positive_control_poisons_are_the_anchor_image(tiny_sweep):
    from mithridate.core import schema

    t = schema.read(tiny_sweep / "poisons" / "anchor-s0" / "90000.parquet", "train").to_pylist()
    assert len(t) == 2 and t[0]["jpg"] == t[1]["jpg"]
    assert all("cat" in r["caption"] for r in t)


def test_detector_is_reported_beside_its_benign_control(tiny_sweep):
    d = json.loads((tiny_sweep / "defences.json").read_text())["detector"]
    assert "all" in d["benign"] and d["formats"]["all"] >= 2
    r = d["attacks"]["nightshade"]
    assert r["auc_margin_over_benign"] == pytest.approx(r["auc"] - d["benign"]["all"]["auc"])
    assert set(r["by_format"]) == set(d["formats"])


def test_the_training_signal_attacks_run_in_a_sweep_beside_the_same_controls(tiny_train, tiny_clean_model, tmp_path):
    """`poison sweep --attacks=gradient_matching,latent_target`: their victims, the control, the positive control,
    the benign victim and the defences, as for the other attacks."""
    cfg = dataclasses.replace(sweep.PRESETS["tiny"], data=str(tiny_train), checkpoint=str(tiny_clean_model),
                              out=str(tmp_path), source="cat", target="house", ns=(2,), purify=(), eps_sweep=(),
                              attacks=("gradient_matching", "latent_target"), craft_steps=4, craft_draws=2)
    out = sweep.run(cfg)
    t = pd.read_parquet(out / "results.parquet")
    src = t[t.role == "source"]
    assert set(src.victim) == {"control-s0", "gradient_matching-n2-s0", "latent_target-n2-s0", "anchor-n2-s0",
                               "benign-n2-s0"}
    assert (src[src.attack.isin(["gradient_matching", "latent_target"])].eps == cfg.eps).all()
    d = json.loads((out / "defences.json").read_text())
    assert set(d["clip_filter"]["attacks"]) == {"gradient_matching", "latent_target", "anchor"}
    s = json.loads((out / "sweep.json").read_text())
    assert set(s["verdicts"]) == {"gradient_matching", "latent_target", "anchor"}
    assert s["setting"] == {"gradient_matching": "white_box", "latent_target": "white_box"}
