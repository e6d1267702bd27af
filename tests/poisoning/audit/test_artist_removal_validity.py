"""Would a reviewer accept the opt-out numbers? The copy test against the artist's whole work, the style probe's
validation on generations, the gold model's precondition, seed-level intervals, and the report built from them —
on small synthetic tables of judged generations (no model is trained here)."""

import json

import numpy as np
import pandas as pd
import pytest

from poisoning.audit import artist_removal as optout, memorisation, removal_figure as optout_figure
from reports import optout as report

X, C = "openmoji", "notomono"
CONCEPTS = ["cat", "dog"]
MINUS = [optout.minus_artist(p) for p in optout.POLICIES]


def _table(style: dict, draws: float = 0.9, copies: dict | None = None, seeds=(0, 1), per: int = 8,
           models=optout.POLICIES + (optout.GOLD, *MINUS)):
    """Judged generations: per model, seed, kind, concept, `per` of them; for prompts naming X a `style[model]`
    share is in X's style; a `draws` share shows the prompted concept; a `copies[model]` share copies X's works."""
    rows, copies = [], copies or {}
    for model in models:
        for seed in seeds:
            for kind in optout.KINDS:
                for concept in CONCEPTS:
                    for i in range(per):
                        mine = kind == "names_artist" and i < round(style.get(model, 0) * per)
                        rows.append({"model": model, "seed": seed, "index": i, "kind": kind, "concept": concept,
                                     "style": X if mine else C, "nn_similarity": 0.5,
                                     "copy_of_artist_work": i < round(copies.get(model, 0) * per),
                                     "memorised": False, "memorised_artist_work": False,
                                     "draws_concept": i < round(draws * per)})
    return pd.DataFrame(rows)


def _datasets(names):
    return {n: {"rows": 40, "artist_rows": 0 if n == optout.GOLD or n in MINUS else 6, "rows_naming_artist": 3,
                "control_rows": 8, "trained_rows": 30, "trained_artist_rows": 5 if n == "ignore" else 0}
            for n in names}


def _result(gens, policies=optout.POLICIES, **cfg):
    c = optout.OptoutConfig(artist=X, control_artist=C, policies=policies, **cfg)
    datasets = _datasets((*policies, optout.GOLD))
    return {"artist": X, "control_artist": C, "concepts": CONCEPTS, "feature_space": "tiny-clip",
            "probe": {"artists": [C, X], "feature_space": "tiny-clip", "heldout_accuracy": 0.8,
                      "heldout_accuracy_originals": 0.9, "heldout_images": 10, "chance": 0.5},
            "background_nn_similarity": {"median": 0.5, "p95": 0.7, "works": 5},
            "memorisation_test": {"alpha": 0.5, "neighbours": 50, "reference": "own training images"},
            "copy_test": {"reference": "every work of X + other artists' works of the trained concepts"},
            "datasets": datasets, "datasets_minus_artist": _datasets([optout.minus_artist(p) for p in policies]),
            "policy_gold": {p: optout.minus_artist(p) for p in policies}, "seeds": [0, 1],
            **optout.evaluate(c, gens, datasets, CONCEPTS, "tiny-clip", np.linspace(0, 1, 10))}


def test_a_model_that_never_saw_the_artist_copies_one_of_their_works_when_it_draws_it():
    rng = np.random.default_rng(0)
    works = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    artists = [X] * 6 + [C] * 6  # the reference: X's works + the other artist's works of the same concepts
    gold_train = np.concatenate([works[6:], rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)])
    gold_gens = np.concatenate([works[2:3], works[7:8], rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)])
    copy, ratio, nearest = memorisation.copies(gold_gens, works, artists, X)
    assert copy.tolist() == [True, False, False] and nearest[:2].tolist() == [2, 7] and ratio[2] > memorisation.ALPHA
    own, near_own = memorisation.l2_ratio(gold_gens, gold_train)  # the old test never sees X's works: 0 by design
    assert not (own[0] < memorisation.ALPHA) and own[1] < memorisation.ALPHA and near_own[1] == 1
    with pytest.raises(ValueError, match="artist='nobody'"):
        memorisation.copies(gold_gens, works, artists, "nobody")


def test_the_style_probe_must_clear_its_gold_floor_on_generations():
    good = _result(_table({"ignore": 0.75, "url_only": 0.5}))["probe_validation"]
    assert good["ok"] and good["clears_floor"] and good["positive_control"] == "ignore" and not good["why"]
    assert good["gold_floor"]["rate"] == 0 and good["gold_floor"]["high"] > 0  # 0/32: never a zero-width interval
    assert good["difference"]["low"] > 0 and good["positive_control_rate"]["rate"] == 0.75
    bad = _result(_table({"ignore": 0.125, optout.GOLD: 0.125}))
    val = bad["probe_validation"]
    assert not val["ok"] and "cannot tell openmoji's style on generations" in val["why"]
    assert report.headline(bad).startswith("No style verdict: the style probe cannot tell")
    assert "of openmoji's style than" not in report.headline(bad)  # no style verdict, copies still reported
    missing = _result(_table({}, models=("honor", "url_only", optout.GOLD, *MINUS[:2])), ("honor", "url_only"))
    assert "positive control missing" in missing["probe_validation"]["why"]


def test_a_gold_model_that_cannot_draw_the_concepts_gives_no_verdict():
    failed = _result(_table({"ignore": 0.75}, draws=0.125))
    assert not failed["precondition"]["ok"] and "below the floor 0.30" in failed["precondition"]["why"]
    for text in (report.headline(failed), optout.headline(failed)):
        assert "cannot measure opt-out leakage" in text and "gold model" in text
        assert "no difference" not in text and "indistinguishable" not in text and "vs gold" not in text
    near_chance = _result(_table({"ignore": 0.75}, draws=0.625, seeds=(0,)))["precondition"]  # 10/16, chance 1/2
    assert not near_chance["ok"] and "reaches chance 0.50" in near_chance["why"]
    ok = _result(_table({"ignore": 0.75}))
    assert ok["precondition"]["ok"] and "ignored: 5 of openmoji's works" in report.headline(ok)
    assert "more of openmoji's style than the gold model (leaks)" in report.headline(ok)


def test_rates_are_seed_level_and_each_policy_meets_its_own_gold():
    one = _result(_table({"ignore": 0.5}, seeds=(3,), per=32))
    gold = [r for r in one["summary"] if r["model"] == optout.GOLD and r["kind"] == "names_artist"][0]
    assert gold["artist_style"]["generations"] == 64 and gold["diff_vs_gold"] == 0
    assert report._rate(gold["artist_style"]) == "0.00 [0.00, 0.06]"  # 0/64, exact
    two = _result(_table({"ignore": 0.5, "ignore-minus-artist": 0.25}))["summary"]
    ign = [r for r in two if r["model"] == "ignore" and r["kind"] == "names_artist"][0]
    assert [s["seed"] for s in ign["artist_style"]["seeds"]] == [0, 1] and ign["artist_style"]["rate"] == 0.5
    own = ign["artist_style_vs_own_gold"]
    assert own["vs"] == "ignore-minus-artist" and own["diff"] == 0.25 and own["clusters"] == 4
    assert ign["artist_style_vs_gold"]["diff"] == 0.5
    assert ign["copies_vs_gold"]["low"] < 0 < ign["copies_vs_gold"]["high"]  # 0 vs 0 copies: an interval, not a point
    minus = [r for r in two if r["model"] == "url_only-minus-artist"][0]
    assert minus["artist_style_vs_own_gold"] is None


def test_the_report_renders_the_checks_copies_and_per_policy_gold(tmp_path):
    result = _result(_table({"ignore": 0.75}, copies={optout.GOLD: 0.25, "ignore": 0.5}))
    (tmp_path / "optout.json").write_text(json.dumps(result))
    optout_figure.rates(result, tmp_path / "optout.png")
    html = "".join(body for _, body in report.sections(tmp_path))
    for text in ("positive control", "false-positive floor", "precondition", "ignored minus X", "style vs own gold",
                 "copies of openmoji&#x27;s works (vs the whole work)", "memorised (own training set)"):
        assert text in html or text.replace("&#x27;", "'") in html, text
    gold = [r for r in result["summary"] if r["model"] == optout.GOLD and r["kind"] == "names_artist"][0]
    assert gold["copies_of_artist_works"]["rate"] == 0.25  # the gold model can copy X's works
    m = report.metrics(tmp_path)
    assert m["optout/precondition_ok"] and "optout/ignore/names_artist/diff_vs_own_gold_ci" in m
    assert "optout/honor/names_artist/diff_vs_gold_ci" in m
