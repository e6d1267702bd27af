"""End to end on the tiny shards: vae train → train → sample (every sampler, img2img, inpainting, classifier
guidance) → evaluate; resume, NaN and bad-input handling."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffusion import classifier_train, evaluation, pipeline, sample, training, unet, vae_train as vae
from diffusion.pipeline import Pipeline
from mithridate.cli import main
from mithridate.core import options


@pytest.fixture(scope="module")
def tiny_vae(tiny_train, tmp_path_factory):
    cfg = dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path_factory.mktemp("vae")))
    return vae.run(cfg)


def _train_cfg(tiny_train, tiny_vae, clip, out, **kw):
    return dataclasses.replace(training.PRESETS["tiny"], data=str(tiny_train), vae=str(tiny_vae), clip=str(clip),
                               out=str(out), concepts=("cat", "house", "sunrise", "anchor"), **kw)


@pytest.fixture(scope="module")
def tiny_model(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path_factory):
    return training.run(_train_cfg(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path_factory.mktemp("dif"),
                                   steps=40))


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return Pipeline.load(tiny_model, "cpu")


def test_training_writes_a_checkpoint_that_samples(tiny_model):
    summary = json.loads((tiny_model / "train.json").read_text())
    assert summary["images"] == 12 and summary["steps"] == 40
    assert summary["loss_last"] < summary["loss_first"]  # it learns
    for f in ("model.pt", "last.pt", "curve.png", "curve.csv", "samples/final.png", "config.json"):
        assert (tiny_model / f).is_file(), f
    ckpt = pipeline.read_checkpoint(tiny_model)
    assert ckpt["concepts"] == ["cat", "house", "sunrise", "anchor"] and ckpt["prediction"] == "v"


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddim", 8), ("euler", 8), ("heun", 4), ("dpmpp_2m", 8)])
def test_every_sampler_gives_images_deterministic_under_a_seed(pipe, sampler, steps):
    a = pipe.generate(["a cat", "house"], sampler, steps, guidance=2.0, seed=3)
    b = pipe.generate(["a cat", "house"], sampler, steps, guidance=2.0, seed=3)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    if sampler == "ddpm":
        assert not np.array_equal(a, pipe.generate(["a cat", "house"], sampler, steps, guidance=2.0, seed=4))


def test_img2img_strength_controls_distance_to_the_init_image(pipe, tiny_train):
    from diffusion import data

    init = data.to_uint8(data.load_images(tiny_train, 32, concepts=("cat",)).images[:1])
    near = pipe.generate(["a cat"], "ddim", 10, init_images=init, strength=0.05, seed=0)
    far = pipe.generate(["a cat"], "ddim", 10, init_images=init, strength=1.0, seed=0)
    d_near = np.abs(near.astype(int) - init).mean()
    assert d_near < np.abs(far.astype(int) - init).mean() and d_near < 40


def test_inpainting_keeps_the_unmasked_pixels(pipe, tiny_train):
    from diffusion import data

    init = data.to_uint8(data.load_images(tiny_train, 32, concepts=("house",)).images[:2])
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True  # regenerate the centre
    out = pipe.generate(["a house", "a cat"], "ddim", 10, init_images=init, mask=mask, seed=0)
    assert np.array_equal(out[:, ~mask], init[:, ~mask])
    assert not np.array_equal(out[:, mask], init[:, mask])


def test_classifier_guidance_steers_toward_the_class(tiny_model, tmp_path, pipe):
    from diffusion import classifier as clf

    out = classifier_train.run(dataclasses.replace(classifier_train.PRESETS["tiny"], checkpoint=str(tiny_model),
                                                   out=str(tmp_path / "clf")))
    model, info = clf.load_classifier(out / "classifier.pt")
    assert info["concepts"] == ["cat", "house", "sunrise", "anchor"]
    labels = torch.zeros(6, dtype=torch.long)  # "cat"
    grad = clf.guidance_grad(model, labels)
    t = torch.full((6,), 500.0)

    def cat_logprob(images):
        z = pipe.encode_images(images)
        with torch.no_grad():
            return torch.log_softmax(model(z, torch.zeros(len(z))), -1)[:, 0].mean().item()

    plain = pipe.generate(["house"] * 6, "ddim", 8, seed=1)
    steered = pipe.generate(["house"] * 6, "ddim", 8, seed=1, classifier=model, labels=[0] * 6,
                            classifier_scale=30.0, batch_size=4)  # labels follow the prompts across batches
    assert grad(torch.zeros(6, *pipe.latent_shape), t).abs().sum() > 0
    assert cat_logprob(steered) > cat_logprob(plain)


def test_sample_command_writes_images_grid_and_metadata(tiny_model, tmp_path):
    rc = main(["sample", "--preset=tiny", f"--checkpoint={tiny_model}", "--prompt=a cat|house", "--sampler=euler",
               f"--out={tmp_path}", "--device=cpu"])
    assert rc == 0
    meta = json.loads((tmp_path / "samples.json").read_text())
    assert len(meta["files"]) == 4 and (tmp_path / "grid.png").is_file() and meta["mode"] == "text2img"


def test_unknown_sampler_is_refused_by_the_parser(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", f"--checkpoint={tiny_model}", f"--out={tmp_path}", "--sampler=plms"])
    assert exit_.value.code == 2 and "invalid choice: 'plms'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--sampler=euler", "--eta=0.5"], "eta"),
    (["--prompt=" + " ".join(["cat"] * 40)], "context"),
    (["--prompt=a cat|"], "empty prompt"),
    (["--mask=m.png"], "needs init_image"),
])
def test_sample_rejects_bad_input_in_one_line(tiny_model, tmp_path, capsys, args, message):
    rc = main(["sample", "--preset=tiny", f"--checkpoint={tiny_model}", f"--out={tmp_path}", *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_checkpoint_of_another_kind_or_architecture_is_refused(tiny_model, tiny_vae, tmp_path):
    with pytest.raises(ValueError, match="not a diffusion checkpoint"):
        Pipeline.load(tiny_vae / "vae.pt")
    ckpt = torch.load(tiny_model / "model.pt", weights_only=True)
    ckpt["unet_config"] = {**ckpt["unet_config"], "channels": [24, 48]}
    torch.save(ckpt, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="another architecture"):
        Pipeline.load(tmp_path / "model.pt")


def test_resume_continues_from_last_checkpoint(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path):
    cfg = _train_cfg(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path, steps=20)
    training.run(cfg)
    first = torch.load(tmp_path / "model.pt", weights_only=True)["unet_state"]
    (tmp_path / "model.pt").unlink()
    training.run(cfg)  # finished run: resumes at step 20 of 20, trains nothing, rewrites the same model
    again = torch.load(tmp_path / "model.pt", weights_only=True)["unet_state"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(ValueError, match="another config"):
        training.run(dataclasses.replace(cfg, lr=1e-2))


def test_nan_loss_stops_with_a_clear_message(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path, monkeypatch):
    real = training.loss_fn
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] > 12 else 1.0)

    monkeypatch.setattr(training, "loss_fn", flaky)
    cfg = _train_cfg(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path, steps=20)
    with pytest.raises(ValueError, match="loss became nan at step 12.*last.pt"):
        training.run(cfg)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "model.pt").exists()


def test_bad_train_config_names_the_field():
    with pytest.raises(ValueError, match="caption_dropout"):
        dataclasses.replace(training.PRESETS["tiny"], caption_dropout=1.5)
    with pytest.raises(ValueError, match="prediction"):
        dataclasses.replace(training.PRESETS["tiny"], prediction="x0")


def test_the_model_choices_are_the_unet_registry(capsys):
    names = tuple(unet.PRESETS)
    assert options.literal_values(training.TrainConfig, "model") == names
    assert {cfg.model for cfg in training.PRESETS.values()} <= set(names)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"--model {{{','.join(names)}}}" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"TrainConfig.model='huge': allowed values are {', '.join(names)}$"):
        dataclasses.replace(training.PRESETS["tiny"], model="huge")


def test_evaluate_reports_metrics_per_run_with_floor_and_chance(tiny_model, tmp_path):
    out = evaluation.run(dataclasses.replace(evaluation.PRESETS["tiny"], checkpoint=str(tiny_model),
                                             out=str(tmp_path), device="cpu"))
    ev = json.loads((out / "evaluation.json").read_text())
    assert [r["run"] for r in ev["runs"]] == ["ddim:5", "euler:4"]
    assert "not Inception" in ev["features"]
    for r in ev["runs"]:
        assert r["chance"] == pytest.approx(0.25) and 0 <= r["top1"] <= 1 and np.isfinite(r["kid"])
    assert set(ev["real_vs_real_floor"]) >= {"kid", "fid"} and ev["judge_on_real"]["n"] == 12
    assert len(ev["grids"]) == 4 and all((out / g).is_file() for g in ev["grids"])
    with pytest.raises(ValueError, match="runs"):
        dataclasses.replace(evaluation.PRESETS["tiny"], runs=("plms:10",))


def test_continued_training_starts_from_the_init_checkpoint(tiny_train, tiny_vae, tiny_clip_checkpoint, tiny_model,
                                                            tmp_path):
    cfg = _train_cfg(tiny_train, tiny_vae, tiny_clip_checkpoint, tmp_path / "cont", steps=10, init=str(tiny_model))
    training.run(cfg)
    first = json.loads((tiny_model / "train.json").read_text())
    cont = json.loads((tmp_path / "cont" / "train.json").read_text())
    assert cont["loss_first"] < first["loss_first"]  # it starts where the first run ended, not from scratch
    with pytest.raises(ValueError, match="prediction"):
        training.run(dataclasses.replace(cfg, out=str(tmp_path / "eps"), prediction="eps"))
    with pytest.raises(ValueError, match="not a diffusion checkpoint"):
        training.run(dataclasses.replace(cfg, out=str(tmp_path / "bad"), init=str(tiny_vae / "vae.pt")))


def test_sample_strength_out_of_range_is_refused():
    with pytest.raises(ValueError, match="strength"):
        dataclasses.replace(sample.PRESETS["tiny"], strength=1.5)
