"""Small pieces shared by the networks (UNet, latent classifier, autoencoder): the sinusoidal timestep embedding
and a parameter count."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[cos(t·f_k), sin(t·f_k)]` of float timesteps, f_k = max_period^(−k/half), (B, dim);
    an odd `dim` ends with one zero column."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `module`: all of them, or with `trainable_only` those with `requires_grad`."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
