"""Victims: the clean model's training config continued on other data; a finished victim is reused, another
config in its folder refused. One torch thread."""

import dataclasses
import json

import pytest
import torch

from diffusion import pipeline, training
from poisoning import victim

HOW = victim.VictimTraining(steps=3, lr=1e-4, warmup_steps=1, batch_size=8)


def test_config_continues_the_clean_model(clean_model, tiny_train, tiny_clip_checkpoint, tmp_path):
    base = pipeline.read_checkpoint(clean_model)["train_config"]
    cfg = victim.config(clean_model, tmp_path / "data", tmp_path / "out", HOW, seed=7)
    assert isinstance(cfg, training.TrainConfig)
    assert cfg.concepts == ("cat", "house", "anchor", "dog") and cfg.model == "tiny"
    assert (cfg.vae, cfg.clip) == (base["vae"], str(tiny_clip_checkpoint))
    for name in ("cross_attention", "prediction", "schedule", "timesteps", "min_snr_gamma", "caption_dropout",
                 "ema_decay", "weight_decay", "grad_clip", "max_rows"):
        assert getattr(cfg, name) == base[name], name
    assert cfg.data == str(tmp_path / "data") and cfg.out == str(tmp_path / "out")
    assert cfg.init == str(clean_model) and cfg.minutes == 0
    assert (cfg.steps, cfg.lr, cfg.warmup_steps, cfg.batch_size, cfg.seed) == (3, 1e-4, 1, 8, 7)
    assert cfg.sample_every == 0 and cfg.compile is False
    assert base["data"] == str(tiny_train) and base["steps"] == 5 and base["lr"] != 1e-4  # really replaced


def test_config_from_scratch(clean_model, tmp_path):
    base = pipeline.read_checkpoint(clean_model)["train_config"]
    cfg = victim.config(clean_model, tmp_path / "d", tmp_path / "o", dataclasses.replace(HOW, from_scratch=True), 2)
    assert cfg.init == ""
    assert cfg.steps == max(HOW.steps, base["steps"]) == 5  # at least the clean model's own training
    assert (cfg.lr, cfg.warmup_steps) == (base["lr"], base["warmup_steps"])  # the clean recipe, not the victim's
    assert cfg.batch_size == 8 and cfg.seed == 2 and cfg.minutes == 0
    assert cfg.concepts == ("cat", "house", "anchor", "dog")


def test_train_reuses_a_finished_victim_and_refuses_another_config(clean_model, tiny_train, tmp_path):
    out = tmp_path / "victim"
    assert victim.train(clean_model, tiny_train, out, HOW, seed=0) == out
    model = out / pipeline.CHECKPOINT_FILE
    assert model.is_file() and (out / "train.json").is_file()
    ckpt = pipeline.read_checkpoint(out)
    assert ckpt["train_config"]["init"] == str(clean_model) and ckpt["train_config"]["steps"] == 3
    clean_unet = pipeline.read_checkpoint(clean_model)["unet_state"]
    assert any(not torch.equal(v, clean_unet[k]) for k, v in ckpt["unet_state"].items())  # it trained
    assert json.loads((out / "train.json").read_text())
    before = model.stat().st_mtime_ns
    assert victim.train(clean_model, tiny_train, out, HOW, seed=0) == out
    assert model.stat().st_mtime_ns == before  # reused, not retrained
    with pytest.raises(ValueError, match="another config"):
        victim.train(clean_model, tiny_train, out, dataclasses.replace(HOW, steps=4), seed=0)
    with pytest.raises(ValueError, match="another config"):
        victim.train(clean_model, tiny_train, out, HOW, seed=1)
    assert model.stat().st_mtime_ns == before


def test_train_all_side_by_side_gives_the_victims_of_one_after_another(clean_model, tiny_train, tmp_path):
    """Two victims on two spawned processes, one torch thread each, are bit-identical to the same two trained one
    after another in this process on one thread: `workers` is a runtime field, `threads` is not."""
    states = {}
    for label, n_workers in (("seq", 1), ("pool", 2)):
        jobs = [(tiny_train, tmp_path / label / f"v{seed}", seed) for seed in (0, 1)]
        got = victim.train_all(clean_model, jobs, HOW, n_workers=n_workers, threads=1)
        assert got == [tmp_path / label / "v0", tmp_path / label / "v1"]
        states[label] = [pipeline.read_checkpoint(p)["unet_state"] for p in got]
    for seq, pool in zip(states["seq"], states["pool"]):
        assert all(torch.equal(seq[k], pool[k]) for k in seq)
    assert any(not torch.equal(v, states["seq"][1][k]) for k, v in states["seq"][0].items())  # seeds differ
