"""Robust (adversarially trained) autoencoder: trains, records its settings, and moves less under an attack."""

import dataclasses

import pytest
import torch

from diffusion import data, vae_train as vae
from poisoning import nightshade


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


def _train(tiny_train, tmp_path_factory, **kw):
    cfg = dataclasses.replace(vae.PRESETS["tiny"], data=str(tiny_train), steps=60,
                              out=str(tmp_path_factory.mktemp("vae")), **kw)
    return vae.run(cfg)


def test_adversarial_training_shrinks_the_latent_gap_an_attack_closes(tiny_train, tmp_path_factory):
    plain = vae.load_vae(_train(tiny_train, tmp_path_factory))
    robust_dir = _train(tiny_train, tmp_path_factory, adv_eps=8 / 255, adv_weight=10.0)
    assert vae.read_checkpoint(robust_dir)["train_config"]["adv_eps"] == pytest.approx(8 / 255)
    robust = vae.load_vae(robust_dir)
    images = data.load_images(tiny_train, 32)
    x, anchor = images.images[:6], images.images[-1]
    gap = {name: torch.tensor([s["gap_closed"] for s in
                               nightshade.craft(ae.encode_latents, x, anchor, eps=8 / 255, steps=20).stats]).mean()
           for name, ae in (("plain", plain), ("robust", robust))}
    assert gap["robust"] < gap["plain"]


def test_bad_robust_settings_name_the_field():
    with pytest.raises(ValueError, match="adv_eps"):
        vae.VaeTrainConfig(adv_eps=2.0)
    with pytest.raises(ValueError, match="adv_weight"):
        vae.VaeTrainConfig(adv_weight=-1.0)
    with pytest.raises(ValueError, match="background"):
        vae.VaeTrainConfig(background="grey")
