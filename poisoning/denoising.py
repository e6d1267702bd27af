"""The clean model's denoising loss, seen by an attacker of its continued training: what the training-signal attacks
(`gradient_matching`, `latent_target`) aim at.

A continued-training victim starts from a checkpoint the attacker knows, and trains with its recipe: the UNet's
(min-SNR weighted) ε/v loss on autoencoder latents of (image, caption) pairs (`diffusion.training.per_sample_loss`).
`CleanModel` exposes that loss on images the attacker controls, through the frozen autoencoder, at fixed (timestep,
noise) draws, and the gradients it sends to a chosen subset of the UNet's parameters. Nothing here changes the
model: its parameters never get `.grad` (gradients are taken with `torch.autograd.grad`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from diffusion.pipeline import Pipeline
from diffusion.text import Conditioning
from diffusion.training import per_sample_loss

PARAMS = ("cross_attention", "attention", "all")  # the UNet parameters whose gradient is matched
TIMESTEPS = ("uniform", "low", "high")  # where the draws' timesteps lie: all of [0, T), its first or second half
Params, Timesteps = Literal[PARAMS], Literal[TIMESTEPS]  # config fields' types, derived from the tuples
DEFAULT_GAMMA = 5.0  # `TrainConfig.min_snr_gamma`'s default, for checkpoints that do not record theirs


@dataclass(frozen=True)
class Draws:
    """K fixed (timestep, noise) draws per image: `t` (K, N) long, `noise` (K, N, C, h, w)."""
    t: torch.Tensor
    noise: torch.Tensor


def param_subset(unet: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """The UNet parameters of `which` (PARAMS): its cross-attention (text → image), all its attention blocks, or all."""
    if which not in PARAMS:
        raise ValueError(f"params={which!r}: allowed values are {', '.join(PARAMS)}")
    if which == "all":
        return list(unet.parameters())
    key = "cross_attn" if which == "cross_attention" else "attn"
    chosen = [p for name, p in unet.named_parameters() if key in name]
    if not chosen:
        raise ValueError(f"params={which!r}: this UNet has no {key} parameters (trained without attention?); "
                         "use params=all")
    return chosen


class CleanModel:
    """The clean checkpoint's autoencoder, UNet, text encoder and schedule, frozen, with its training loss.

    Args:
        pipe: the clean model (`Pipeline.load`).
        params: which UNet parameters the gradient is taken of (PARAMS).
        gamma: the min-SNR γ of its training (default: the checkpoint's `train_config`, else 5).
    """

    def __init__(self, pipe: Pipeline, params: str = "cross_attention", gamma: float | None = None):
        self.pipe, self.unet, self.vae, self.schedule = pipe, pipe.unet.eval(), pipe.vae.eval(), pipe.schedule
        self.prediction = pipe.prediction
        train = pipe.info.get("train_config") or {}
        self.gamma = float(train.get("min_snr_gamma", DEFAULT_GAMMA)) if gamma is None else float(gamma)
        self.params = param_subset(self.unet, params)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised latents of images in [−1, 1], differentiable with respect to the images."""
        return self.vae.encode_latents(images)

    def condition(self, prompts: list[str]) -> Conditioning:
        return self.pipe.text.encode(prompts).to(self.pipe.device)

    def draws(self, n: int, k: int, timesteps: str, generator: torch.Generator) -> Draws:
        """`k` (timestep, noise) draws for each of `n` latents, fixed for a whole optimisation."""
        if timesteps not in TIMESTEPS:
            raise ValueError(f"timesteps={timesteps!r}: allowed values are {', '.join(TIMESTEPS)}")
        if k < 1:
            raise ValueError(f"draws={k!r}: must be ≥ 1")
        T = self.schedule.num_timesteps
        low, high = {"uniform": (0, T), "low": (0, T // 2), "high": (T // 2, T)}[timesteps]
        t = torch.randint(low, high, (k, n), generator=generator)
        noise = torch.randn((k, n, *self.pipe.latent_shape), generator=generator)
        return Draws(t, noise)

    def loss(self, z: torch.Tensor, cond: Conditioning, draws: Draws) -> torch.Tensor:
        """Each latent's training loss averaged over its draws, `(N,)`: what one training step on it would
        minimise."""
        k, n = draws.t.shape
        rep = torch.arange(n).repeat(k)
        per = per_sample_loss(self.unet, self.schedule, z.repeat(k, 1, 1, 1), cond.index(rep), draws.t.flatten(),
                              draws.noise.flatten(0, 1), self.prediction, self.gamma)
        return per.view(k, n).mean(dim=0)

    def gradient(self, z: torch.Tensor, cond: Conditioning, draws: Draws, create_graph: bool = False) -> torch.Tensor:
        """The gradient of the summed training loss of the latents with respect to the chosen UNet parameters,
        flattened into one vector (differentiable in `z` with `create_graph`)."""
        grads = torch.autograd.grad(self.loss(z, cond, draws).sum(), self.params, create_graph=create_graph)
        return torch.cat([g.flatten() for g in grads])
