"""The KL autoencoder and `vae train`: shapes, gradients, a tiny run that learns, latent statistics, resume,
refusals of other folders, files and configs, and a clear stop when the loss diverges."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffusion import cli, data, vae_train as vae
from diffusion.autoencoder import Autoencoder
from diffusion.nn import count_parameters


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """One torch thread for the module (`one_torch_thread`)."""
    yield


@pytest.fixture(scope="module")
def tiny_cfg(tiny_train, tmp_path_factory):
    return dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), out=str(tmp_path_factory.mktemp("vae")))


@pytest.fixture(scope="module")
def tiny_run(tiny_cfg):
    return vae.run(tiny_cfg)


@pytest.fixture(scope="module")
def tiny_images(tiny_cfg):
    """(train, held-out) images of the tiny run's split."""
    images = data.load_images(tiny_cfg.data, tiny_cfg.image_size).images
    train, held = vae.split_indices(len(images), tiny_cfg.heldout_fraction, tiny_cfg.seed)
    return images[train], images[held]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) * 127.5).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(255.0**2 / mse)).mean())


@pytest.mark.parametrize("channels, size, factor", [((8, 16, 16), 32, 4), ((8, 16, 16), 64, 4),
                                                    ((8, 16, 16, 16), 64, 8)])
def test_shapes_and_factor(channels, size, factor):
    ae = Autoencoder(channels=channels, groups=4)
    x = torch.rand(2, 3, size, size) * 2 - 1
    recon, mean, logvar = ae(x, torch.Generator().manual_seed(0))
    assert ae.factor == factor
    assert mean.shape == logvar.shape == (2, 4, size // factor, size // factor)
    assert recon.shape == x.shape and ae.decode_latents(ae.encode_latents(x)).shape == x.shape
    assert count_parameters(Autoencoder(**ae.config)) == count_parameters(ae)


def test_bad_architecture_raises():
    with pytest.raises(ValueError, match="groups=16: must divide"):
        Autoencoder(channels=(8, 16, 16))
    with pytest.raises(ValueError, match="layers_per_level=0"):
        Autoencoder(channels=(8, 16), groups=4, layers_per_level=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        Autoencoder(channels=(8, 16, 16), groups=4).encode(torch.zeros(1, 3, 30, 30))


def test_frozen_encoder_is_differentiable_in_the_pixels():
    ae = Autoencoder(channels=(8, 16, 16), groups=4).eval().requires_grad_(False)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    target = torch.randn(2, 4, 8, 8)
    (ae.encode_latents(x) - target).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.parameters())
    a = ae.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = ae.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, ae.encode_latents(x))


def test_tiny_run_learns(tiny_run, tiny_images):
    m = json.loads((tiny_run / "eval.json").read_text())
    train, held = tiny_images
    baseline = _psnr(train.mean(0, keepdim=True).expand_as(held), held)  # predicting the mean training image
    assert m["psnr_mean_image_heldout_db"] == pytest.approx(baseline, abs=1e-2)
    assert m["psnr_heldout_db"] > baseline + 1.5, (m["psnr_heldout_db"], baseline)
    assert m["loss_last"] < 0.6 * m["loss_first"]
    assert (m["steps"], m["n_heldout"], m["n_train"], m["latent_shape"]) == (80, len(held), len(train), [4, 8, 8])
    ae = vae.load_vae(tiny_run)
    assert vae.evaluate(ae, held)["psnr_db"] == pytest.approx(m["psnr_heldout_db"], abs=1e-3)
    for name in ("vae.pt", "last.pt", "config.json", "curve.csv"):
        assert (tiny_run / name).is_file()
    for name in ("recon.png", "curve.png"):
        assert (tiny_run / name).stat().st_size > 1000


def test_latent_stats_normalise_training_latents(tiny_run, tiny_images):
    ae = vae.load_vae(tiny_run)
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    with torch.no_grad():
        z = ae.encode_latents(tiny_images[0])
        assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        assert float(z.std()) == pytest.approx(1.0, rel=1e-3)
        mean = ae.encode(tiny_images[0][:4])[0]
        assert torch.allclose(ae.decode_latents(z[:4]), ae.decode(mean), atol=1e-5)


def test_save_load_roundtrip_reconstructs_identically(tiny_cfg, tiny_images, tmp_path):
    ae = vae.build_model(tiny_cfg).eval()
    ae.set_latent_stats(torch.tensor([0.1, -0.2, 0.3, 0.0]), 1.7)
    vae.save_vae(ae, tiny_cfg, {"psnr_heldout_db": 1.0}, tmp_path / "vae.pt")
    back = vae.load_vae(tmp_path)  # the folder or the file
    x = tiny_images[1]
    with torch.no_grad():
        assert torch.equal(back.decode_latents(back.encode_latents(x)), ae.decode_latents(ae.encode_latents(x)))
    assert float(back.latent_scale) == pytest.approx(1.7)
    assert torch.load(tmp_path / "vae.pt", weights_only=True)["train_config"]["image_size"] == 32


def _weights(folder) -> dict:
    return torch.load(folder / "vae.pt", weights_only=True)["state_dict"]


def test_interrupted_run_resumes_to_the_same_weights(tiny_cfg, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny_cfg, steps=20, checkpoint_every=5)
    whole = vae.run(dataclasses.replace(cfg, out=str(tmp_path / "whole")))
    calls, real_step = [], vae.train_step

    def counted(*args, **kwargs):
        calls.append(1)
        if interrupt_at and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(vae, "train_step", counted)
    out = tmp_path / "resumed"
    interrupt_at = 13  # steps 0–11 done, last.pt saved after step 10
    with pytest.raises(KeyboardInterrupt):
        vae.run(dataclasses.replace(cfg, out=str(out)))
    assert not (out / "vae.pt").exists()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 10
    calls.clear()
    interrupt_at = 0
    vae.run(dataclasses.replace(cfg, out=str(out), checkpoint_every=7))  # checkpoint_every may change
    assert len(calls) == 10  # steps 10–19 only
    assert all(torch.equal(a, b) for a, b in zip(_weights(whole).values(), _weights(out).values()))
    (out / "vae.pt").unlink()
    vae.run(dataclasses.replace(cfg, out=str(out)))  # finished training: only the outputs are rewritten
    assert len(calls) == 10 and (out / "vae.pt").is_file()


def test_folder_of_another_config_is_refused(tiny_run, tiny_cfg):
    with pytest.raises(ValueError, match="another config.*lr"):
        vae.run(dataclasses.replace(tiny_cfg, lr=1e-3))
    assert vae.run(tiny_cfg) == tiny_run  # the same config reuses the finished run


def test_load_vae_refuses_other_files(tiny_run, tiny_clip_checkpoint, tmp_path):
    for path in (tiny_clip_checkpoint, tiny_run / "last.pt"):
        with pytest.raises(ValueError, match=rf"{path.name}: not an autoencoder checkpoint"):
            vae.load_vae(path)
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="notes.pt: not a loadable torch checkpoint"):
        vae.load_vae(tmp_path / "notes.pt")
    with pytest.raises(FileNotFoundError, match="missing"):
        vae.load_vae(tmp_path / "missing")


@pytest.mark.parametrize("change, field", [
    ({"image_size": 48}, "image_size"), ({"kl_weight": -1.0}, "kl_weight"), ({"heldout_fraction": 1.5},
                                                                              "heldout_fraction"),
    ({"groups": 3}, "groups"), ({"steps": 0, "minutes": 0.0}, "steps"), ({"precision": "fp16"}, "precision"),
    ({"channels": (8,) * 7}, "channels"), ({"lr": 0.0}, "lr"), ({"device": "tpu"}, "device"),
])
def test_bad_config_values_name_the_field(change, field):
    with pytest.raises(ValueError, match=rf"\b{field}="):
        dataclasses.replace(vae.PRESETS["tiny"], **change)


def test_cli_reports_bad_values(tmp_path, capsys):
    assert cli.main(["vae", "train", "--preset", "tiny", "--out", str(tmp_path), "--image_size", "48"]) == 2
    assert "VaeTrainConfig.image_size=48" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    real_loss, calls = vae.vae_loss, []

    def poisoned(*args):
        calls.append(1)
        loss, rec, kl = real_loss(*args)
        return (loss * float("nan"), rec, kl) if len(calls) > 7 else (loss, rec, kl)

    monkeypatch.setattr(vae, "vae_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(vae.LossDiverged, match=r"loss became NaN at step 7; last good checkpoint kept at .*last\.pt"):
        vae.run(dataclasses.replace(tiny_cfg, out=str(out), checkpoint_every=5))
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "vae.pt").exists()
    assert issubclass(vae.LossDiverged, ValueError)  # the CLI prints it as one line


def test_batches_cover_each_epoch_once():
    stream = vae.BatchStream(10, 4, seed=3)
    seen = torch.cat([stream.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(vae.BatchStream(10, 4, seed=3).indices(3), stream.indices(3))
    train, held = vae.split_indices(72, 0.01, seed=0)
    assert len(held) == 1 and len(np.intersect1d(train, held)) == 0 and len(train) == 71
