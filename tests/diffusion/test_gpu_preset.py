"""The gpu presets' code paths on CPU at tiny widths — their model structures (a 4-level 64 px autoencoder; a 3-level
UNet with self- and cross-attention at two levels), bf16 autocast, `torch.compile` (traced forward and backward; the
kernels inductor would generate are not built here), the VAE's thread setting — so that only CUDA (and inductor's code
generation) is untested when no GPU is lent (`bench/gpu.sh` measures that on a GPU)."""

import dataclasses
import json
import math

import torch

from diffusion import pipeline, training, unet, vae_train as vae
from diffusion.pipeline import Pipeline

NARROW = {"channels": (16, 32, 32), "heads": 2, "groups": 8}  # the gpu UNet's structure at a width CPUs compile fast


def test_the_gpu_presets_train_and_sample_on_cpu_in_bf16_compiled(tiny_train, tiny_clip_checkpoint, tmp_path,
                                                                   one_torch_thread, monkeypatch):
    gpu_vae = vae.PRESETS["gpu"]
    vcfg = dataclasses.replace(gpu_vae, data=str(tiny_train), out=str(tmp_path / "vae"), steps=2, minutes=0.0,
                               batch_size=4, warmup_steps=1, checkpoint_every=2, precision="bf16",
                               channels=(8, 8, 16, 16), groups=4)
    vae_out = vae.run(vcfg)
    saved = vae.read_checkpoint(vae_out)["train_config"]
    assert saved["image_size"] == 64 and len(saved["channels"]) == len(gpu_vae.channels) == 4
    gpu = training.PRESETS["gpu"]
    assert gpu.compile and gpu.model == "gpu"  # what the preset runs on a GPU, run here on CPU
    monkeypatch.setitem(unet.PRESETS, "gpu", {**unet.PRESETS["gpu"], **NARROW})
    tcfg = dataclasses.replace(gpu, data=str(tiny_train), vae=str(vae_out), clip=str(tiny_clip_checkpoint),
                               out=str(tmp_path / "dif"), steps=2, minutes=0.0, batch_size=4, warmup_steps=1,
                               sample_every=0, sample_steps=2, checkpoint_every=2, precision="bf16", device="cpu",
                               compile_backend="aot_eager")  # inductor's C++ code generation takes minutes on 2 cores
    out = training.run(tcfg)
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["loss_last"])
    ckpt = pipeline.read_checkpoint(out)
    conf = ckpt["unet_config"]
    assert tuple(conf["attention_levels"]) == tuple(conf["cross_attention_levels"]) == (1, 2)  # the gpu structure
    assert all(not k.startswith("_orig_mod.") for k in ckpt["unet_state"])  # the compiled wrapper is not saved
    images = Pipeline.load(out, "cpu").generate(["a cat"], "ddim", 2, 3.0, seed=0)
    assert images.shape == (1, 64, 64, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the autocast dtype the preset trains under, on this CPU
        assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.bfloat16
