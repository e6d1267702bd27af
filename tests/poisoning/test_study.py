"""`poison study` on tiny autoencoders: every variant × seed trained, attacked, summarised; reruns reuse them."""

import dataclasses
import json

import pandas as pd
import pytest

from poisoning import study


def test_study_trains_attacks_and_summarises(tiny_train, tmp_path):
    cfg = dataclasses.replace(study.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path),
                              variants=("32px-f4", "64px-f8-texture"))
    out = study.run(cfg)
    t = pd.read_parquet(out / "study.parquet")
    assert len(t) == 2 * 2 * 2  # variants × seeds × ε
    assert set(t.variant) == {"32px-f4", "64px-f8-texture"} and t.gap_closed_transfer.notna().all()
    s = json.loads((out / "study.json").read_text())
    assert s["64px-f8-texture"]["seeds"] == 2 and isinstance(s["32px-f4"]["meets_goal"], bool)
    assert (out / "frontier.png").is_file()
    cfg64 = json.loads((out / "vaes" / "64px-f8-texture-s0" / "config.json").read_text())
    assert cfg64["image_size"] == 64 and cfg64["background"] == "texture"
    mtime = (out / "vaes" / "32px-f4-s0" / "vae.pt").stat().st_mtime
    study.run(cfg)  # a rerun reuses the trained autoencoders
    assert (out / "vaes" / "32px-f4-s0" / "vae.pt").stat().st_mtime == mtime


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match="known: 32px-f4"):
        study.StudyConfig(variants=("32px-f2",))


def test_a_rerun_with_more_variants_reuses_the_measured_ones(tiny_train, tmp_path, caplog):
    import logging

    cfg = dataclasses.replace(study.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path), variants=("32px-f4",))
    study.run(cfg)
    with caplog.at_level(logging.INFO, logger="poisoning.study"):
        study.run(dataclasses.replace(cfg, variants=("32px-f4", "32px-f4-robust")))
    assert "measured earlier with these settings, reused" in caplog.text
    assert set(pd.read_parquet(tmp_path / "study.parquet").variant) == {"32px-f4", "32px-f4-robust"}
