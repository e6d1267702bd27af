"""The diffusion command table (`python -m diffusion …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import commands
from diffusion import classifier_train, evaluation, sample, toy, training, vae

COMMANDS = {
    ("vae", "train"): (vae.VaeTrainConfig, vae.PRESETS, vae.run,
                       "train the KL autoencoder (the latent space; frozen afterwards) on exported training shards; "
                       "reports held-out PSNR"),
    ("train",): (training.TrainConfig, training.PRESETS, training.run,
                 "train the text-conditional latent diffusion model (UNet on VAE latents, frozen compact-CLIP text "
                 "tower, caption dropout for classifier-free guidance); sample grids, loss curve"),
    ("sample",): (sample.SampleConfig, sample.PRESETS, sample.run,
                  "generate images: text to image with DDPM/DDIM/Euler/Heun/DPM-Solver++(2M), guidance, "
                  "img2img (--init_image, --strength), inpainting (--mask), classifier guidance (--classifier)"),
    ("classifier", "train"): (classifier_train.ClassifierTrainConfig, classifier_train.PRESETS, classifier_train.run,
                              "train a noise-conditional concept classifier on a model's latents (classifier "
                              "guidance)"),
    ("evaluate",): (evaluation.EvaluateConfig, evaluation.PRESETS, evaluation.run,
                    "KID/FID in compact-CLIP feature space (with the real-vs-real floor), CLIP score and zero-shot "
                    "concept accuracy per sampler and step count; grids per concept"),
    ("toy",): (toy.ToyConfig, toy.PRESETS, toy.run,
               "the 2-D DDPM walk-through: four MLP variants (no time, time, Fourier, shifted schedule) on "
               "moons, circles or the sauropod emoji, scored by Chamfer distance and MMD"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "diffusion", argv,
                         "Diffusion models: autoencoder, latent diffusion training, sampling, evaluation, 2-D toy.")
