"""The diffusion command table (`python -m diffusion …`, also under `mithridate …`)."""

from __future__ import annotations

from mithridate.core.commands import Command, main as _main

COMMANDS = {
    ("vae", "train"): Command(
        "diffusion.vae_train", "VaeTrainConfig",
        "train the KL autoencoder (the latent space; frozen afterwards) on exported training shards; reports held-out"
        " PSNR",
        examples=(
            "mithridate vae train --preset=tiny --data=runs/train --out=runs/vae",
        )),
    ("train",): Command(
        "diffusion.training", "TrainConfig",
        "train the text-conditional latent diffusion model (UNet on VAE latents, frozen compact-CLIP text tower, "
        "caption dropout for classifier-free guidance); sample grids, loss curve",
        examples=(
            "mithridate train --preset=tiny --data=runs/train --vae=runs/vae --clip=runs/clip --out=runs/diffusion",
        )),
    ("sample",): Command(
        "diffusion.sample", "SampleConfig",
        "generate images: text to image with DDPM/DDIM/Euler/Heun/DPM-Solver++(2M), guidance, img2img (--init_image, "
        "--strength), inpainting (--mask), classifier guidance (--classifier)",
        examples=(
            'mithridate sample --checkpoint=runs/diffusion --prompt="a cow|house" --sampler=dpmpp_2m --steps=20 '
            "--out=runs/samples",
        )),
    ("classifier", "train"): Command(
        "diffusion.classifier_train", "ClassifierTrainConfig",
        "train a noise-conditional concept classifier on a model's latents (classifier guidance)",
        examples=(
            "mithridate classifier train --checkpoint=runs/diffusion --preset=tiny --out=runs/classifier",
        )),
    ("evaluate",): Command(
        "diffusion.evaluation", "EvaluateConfig",
        "KID/FID in compact-CLIP feature space (with the real-vs-real floor), CLIP score and zero-shot concept "
        "accuracy per sampler and step count; grids per concept",
        examples=(
            "mithridate evaluate --checkpoint=runs/diffusion --preset=tiny --out=runs/evaluate",
        )),
    ("toy",): Command(
        "diffusion.toy", "ToyConfig",
        "the 2-D DDPM walk-through: four MLP variants (no time, time, Fourier, shifted schedule) on moons, circles or"
        " the sauropod emoji, scored by Chamfer distance and MMD",
        examples=(
            "mithridate toy --out=runs/toy",
        )),
}


def main(argv: list[str] | None = None) -> int:
    return _main(COMMANDS, "diffusion", argv,
                 "Diffusion models: autoencoder, latent diffusion training, sampling, evaluation, 2-D toy.")
