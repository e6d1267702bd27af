"""Opt-out evaluation pieces: memorisation tests, the style probe's split, config checks. (The copy test, probe
validation, precondition and report: test_artist_removal_validity.py; the whole evaluation runs in the tiny demo,
tests/test_demo.py.)"""

import numpy as np
import pytest

from poisoning.audit import artist_removal as optout, memorisation, style_probe as style


def test_l2_ratio_flags_a_copy_of_a_training_image_and_not_a_new_image():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    copy = train[17:18].copy()
    new = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    ratio, nearest = memorisation.l2_ratio(np.concatenate([copy, new]), train)
    assert ratio[0] == pytest.approx(0.0, abs=1e-6) and nearest[0] == 17
    assert ratio[1] > memorisation.ALPHA  # a random image is about as far from all of them
    assert memorisation.l2_ratio(copy, train[17:18])[0][0] == 1.0  # one neighbour: no verdict possible
    with pytest.raises(ValueError, match="no training images"):
        memorisation.l2_ratio(copy, train[:0])


def test_nearest_similarity_against_the_leave_one_out_background():
    works = np.eye(4, dtype=np.float32)
    works[1] = [0.8, 0.6, 0, 0]
    bg = memorisation.background_similarity(works)
    assert bg[0] == pytest.approx(0.8) and bg[1] == pytest.approx(0.8) and bg[2] == pytest.approx(0.0)
    gen = np.array([[1.0, 0, 0, 0], [0, 0, 0.6, 0.8]], dtype=np.float32)
    assert memorisation.nearest_similarity(gen, works).tolist() == pytest.approx([1.0, 0.8])


def test_style_probe_holds_out_whole_concepts_deterministically():
    concepts = [c for c in "abcdefghij" for _ in range(3)]  # 10 concepts × 3 artists
    test = style.concept_split(concepts, 0.2, seed=1)
    assert test.sum() == 6 and len({c for c, t in zip(concepts, test) if t}) == 2
    assert (style.concept_split(concepts, 0.2, seed=1) == test).all()


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="policies: 'everything'"):
        optout.OptoutConfig(policies=("honor", "everything"))
    with pytest.raises(ValueError, match="probe_held_out"):
        optout.OptoutConfig(probe_held_out=1.0)
    with pytest.raises(ValueError, match="sampler='plms'"):
        optout.OptoutConfig(sampler="plms")
    with pytest.raises(ValueError, match="seeds"):
        optout.OptoutConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match=r"min_gold_accuracy=0: must be within \(0, 1\]"):
        optout.OptoutConfig(min_gold_accuracy=0)
    cfg = optout.OptoutConfig(filter=str(tmp_path), art=".", vae=".", clip=".", provenance=".", artist="openmoji",
                              control_artist="nobody")
    with pytest.raises(ValueError, match="filter=.*no config.json"):
        optout.check_inputs(cfg, ["notomono", "openmoji"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="control_artist='nobody': allowed artists are notomono, openmoji"):
        optout.check_inputs(cfg, ["notomono", "openmoji"])
