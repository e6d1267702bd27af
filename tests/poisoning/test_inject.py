"""`poison inject` on the tiny shards: exact counts, dirty-label rows swap content, nightshade rows stay in
budget, the clean shards are copied unchanged, bad requests are clear errors."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from diffusion import data
from mithridate.cli import main
from poisoning import inject


def _cfg(tiny_train, clean_model, out, **kw):
    kw = {"source": "cat", "target": "house", **kw}
    return dataclasses.replace(inject.PRESETS["tiny"], data=str(tiny_train), checkpoint=str(clean_model), out=str(out),
                               **kw)


def test_dirty_label_pairs_target_images_with_source_captions(tiny_train, clean_model, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="dirty_label", n=3))
    poisoned = data.load_images(out, 32)
    clean = data.load_images(tiny_train, 32)
    assert len(poisoned) == len(clean) + 3
    meta = pd.read_parquet(out / "poisons.parquet")
    assert len(meta) == 3 and set(meta.attack) == {"dirty_label"}
    rows = poisoned.subset(np.arange(len(clean), len(poisoned)))
    assert all(data.match_concepts(rows.captions, ["cat"]) == 0)  # captions say "cat" …
    house_rows = np.flatnonzero(data.match_concepts(clean.captions, ["house"]) == 0)
    houses = {clean.uids[i]: clean.images[i] for i in house_rows}
    for k, uid in enumerate(meta.original_uid):  # … the pixels are a house
        assert uid in houses and (rows.images[k] - houses[uid]).abs().max() <= 1 / 127.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["poisons"] == 3 and manifest["clean_source_samples"] == 3


def _clean_label_poisons(out, tiny_train, eps: float) -> pd.DataFrame:
    """The poisons' rows, after checking each keeps its original's caption (of C) and stays within the budget."""
    meta = pd.read_parquet(out / "poisons.parquet")
    poisoned, clean = data.load_images(out, 32), data.load_images(tiny_train, 32)
    originals = {u: i for i, u in enumerate(clean.uids)}
    for k, uid in enumerate(meta.original_uid):
        i = originals[uid]
        assert poisoned.captions[len(clean) + k] == clean.captions[i] and "cat" in clean.captions[i]
        delta = (poisoned.images[len(clean) + k] - clean.images[i]).abs().max().item() / 2  # [0, 1] units
        assert 0 < delta <= eps + 1 / 255  # within budget, up to PNG rounding
    return meta


def test_nightshade_poisons_keep_captions_and_stay_in_budget(tiny_train, clean_model, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="nightshade", n=2, eps=8 / 255))
    meta = _clean_label_poisons(out, tiny_train, 8 / 255)
    assert (meta.gap_closed > 0).all() and (meta.psnr > 25).all()


def test_bad_requests_name_the_field(tiny_train, clean_model, tmp_path, capsys):
    with pytest.raises(ValueError, match="close names: cat"):
        inject.run(_cfg(tiny_train, clean_model, tmp_path, source="cats"))
    with pytest.raises(ValueError, match="n=9: only 3 candidates"):
        inject.run(_cfg(tiny_train, clean_model, tmp_path / "b", attack="dirty_label", n=9))
    assert main(["poison", "inject", "--eps=2", f"--out={tmp_path / 'c'}"]) == 2
    assert "eps" in capsys.readouterr().err


def test_attack_success_is_measured_on_a_real_pipeline(clean_model):
    from diffusion.pipeline import Pipeline
    from poisoning import judge as judges, success

    pipe = Pipeline.load(clean_model, "cpu")
    concepts = ["cat", "house", "anchor"]
    judge = judges.ClipJudge(pipe.text.path, concepts, "cpu", label=judges.VICTIM_LABEL)
    a = success.measure(pipe, judge, concepts, "cat", "house", n=6, steps=4, seed=1)
    b = success.measure(pipe, judge, concepts, "cat", "house", n=6, steps=4, seed=1)
    assert a["images"].shape == (6, 32, 32, 3) and 0 <= a["p_target"] <= a["p_not_source"] <= 1
    assert a["p_not_source"] == b["p_not_source"]  # same seed, same model → same verdicts


@pytest.mark.parametrize("attack", ["gradient_matching", "latent_target"])
def test_training_signal_attacks_keep_captions_stay_in_budget_and_record_their_objective(tiny_train, clean_model,
                                                                                         tmp_path, attack):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack=attack, n=2, eps=8 / 255, steps=6, draws=2))
    meta = _clean_label_poisons(out, tiny_train, 8 / 255)
    assert set(meta.attack) == {attack} and set(meta.setting) == {"white_box"}
    if attack == "gradient_matching":
        assert (meta.grad_cos_after > meta.grad_cos_before).all()
    else:
        assert meta.target_loss_after.sum() < meta.target_loss_before.sum()


def test_gradient_matching_under_the_ssim_budget_keeps_every_poison_above_the_floor(tiny_train, clean_model,
                                                                                    tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="gradient_matching", n=2, budget="ssim",
                          ssim_floor=0.95, steps=6, draws=2))
    meta = pd.read_parquet(out / "poisons.parquet")
    assert set(meta.budget) == {"ssim"} and (meta.ssim >= 0.95 - 1e-6).all() and (meta.linf > 0).any()


def test_the_retraining_trick_crafts_again_on_the_model_continued_on_the_first_poisons(tiny_train, clean_model,
                                                                                      tmp_path):
    kw = {"attack": "gradient_matching", "n": 2, "eps": 8 / 255, "steps": 4, "draws": 1}
    once = inject.run(_cfg(tiny_train, clean_model, tmp_path / "once", **kw))
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "twice", retrain_steps=2, **kw))
    retrained = out / inject.RETRAIN_DIR
    assert (retrained / "model" / "train.json").is_file()
    assert json.loads((retrained / "model" / "train.json").read_text())["steps"] == 2
    first, meta = pd.read_parquet(once / "poisons.parquet"), pd.read_parquet(out / "poisons.parquet")
    assert np.allclose(meta.first_grad_cos_after, first.grad_cos_after)  # round one is the plain attack …
    assert not np.allclose(meta.grad_cos_before, first.grad_cos_before)  # … round two sees another model
    assert (meta.retrain_steps == 2).all() and (meta.linf <= 8 / 255 + 1e-3).all()
    assert len(data.load_images(out, 32)) == len(data.load_images(once, 32))  # the retraining data is not read
    with pytest.raises(ValueError, match="retrain_steps=3: must be >= 0, and > 0 only for gradient_matching"):
        _cfg(tiny_train, clean_model, tmp_path, attack="nightshade", retrain_steps=3)


def test_nearest_anchor_gives_each_source_its_own_target_image(tiny_train, clean_model, tmp_path):
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path, attack="anchor", anchor="nearest", n=3))
    poisoned, clean = data.load_images(out, 32), data.load_images(tiny_train, 32)
    houses = clean.images[data.match_concepts(clean.captions, ["house"]) == 0]
    for k in range(3):  # every poison is one of the house images (the one nearest its source in latent space)
        assert min((poisoned.images[len(clean) + k] - h).abs().max().item() for h in houses) <= 1 / 127.5
    ns_out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "ns", attack="nightshade", anchor="nearest", n=2,
                             eps=8 / 255))
    assert (pd.read_parquet(ns_out / "poisons.parquet").gap_closed > 0).all()


def test_training_signal_attacks_refuse_what_they_cannot_do(tiny_train, clean_model, tmp_path):
    with pytest.raises(ValueError, match="restarts=2: restarts are L∞ PGD's; budget=ssim runs once"):
        _cfg(tiny_train, clean_model, tmp_path, attack="gradient_matching", budget="ssim", restarts=2)
    with pytest.raises(ValueError, match="vae='x': attack=latent_target is crafted on the clean model itself"):
        _cfg(tiny_train, clean_model, tmp_path, attack="latent_target", vae="x")


def test_training_signal_poisons_crafted_on_another_clean_model_are_a_transfer(tiny_train, clean_model, tmp_path):
    from diffusion import pipeline, training
    from mithridate.core.options import from_dict

    info = pipeline.read_checkpoint(clean_model)["train_config"]
    other = training.run(dataclasses.replace(from_dict(training.TrainConfig, info), seed=1, out=str(tmp_path / "s1")))
    out = inject.run(_cfg(tiny_train, clean_model, tmp_path / "t", attack="latent_target", n=2, steps=3, draws=1,
                          craft_checkpoint=str(other)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["setting"] == "transfer" and manifest["craft_seconds_per_poison"] > 0
    assert set(pd.read_parquet(out / "poisons.parquet").setting) == {"transfer"}
    same = inject.run(_cfg(tiny_train, clean_model, tmp_path / "w", attack="latent_target", n=2, steps=3, draws=1,
                           craft_checkpoint=str(clean_model)))
    assert json.loads((same / "manifest.json").read_text())["setting"] == "white_box"
    with pytest.raises(ValueError, match="craft_checkpoint='x': only gradient_matching, latent_target craft on"):
        _cfg(tiny_train, clean_model, tmp_path, attack="nightshade", craft_checkpoint="x")
