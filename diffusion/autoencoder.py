"""The frozen image autoencoder of the latent diffusion model: a compact KL autoencoder (Stable Diffusion's VAE
in miniature).

    encoder  conv 3×3 → per level: ResBlocks, then a stride-2 conv between levels → mid ResBlock
             → GroupNorm/SiLU/conv 3×3 to 2·latent_channels (posterior mean and log-variance)
    decoder  conv 3×3 → mid ResBlock → per level (deepest first): ResBlocks, then nearest ×2 upsampling and a
             conv between levels → GroupNorm/SiLU/conv 3×3 to RGB

With `channels` of length L the image shrinks by `factor = 2 ** (L - 1)`: (64, 128, 128) maps 32×32×3 images to
8×8×4 latents. Every operation is out of place and `encode` holds no `torch.no_grad`, so the latent is
differentiable with respect to the input pixels (what a Nightshade-style attack needs).

Like Stable Diffusion's `scaling_factor`, the buffers `latent_shift` (per channel) and `latent_scale` (a scalar)
map posterior means to roughly zero-mean, unit-variance latents: `encode_latents` applies them and
`decode_latents` undoes them; `set_latent_stats` sets them after training.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOGVAR_RANGE = (-30.0, 20.0)  # as Stable Diffusion's DiagonalGaussianDistribution


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv 3×3, twice, plus a (1×1-projected when the width changes) skip connection.

    The second conv starts at zero, so each block starts as its skip path (trains faster: measured +0.3 dB
    held-out PSNR after 600 steps on the emoji corpus).
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a conv 3×3."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _head(ch: int, out_ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))


def _check_config(in_channels: int, latent_channels: int, channels: Sequence[int], layers_per_level: int,
                  groups: int) -> None:
    """Raise a ValueError naming the first invalid constructor argument."""
    if in_channels < 1 or latent_channels < 1:
        raise ValueError(f"Autoencoder: in_channels={in_channels!r}, latent_channels={latent_channels!r}: "
                         "must be >= 1")
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(f"Autoencoder.channels={tuple(channels)!r}: expected one width >= 1 per level, e.g. "
                         "64,128,128")
    if layers_per_level < 1:
        raise ValueError(f"Autoencoder.layers_per_level={layers_per_level!r}: must be >= 1")
    if groups < 1 or any(c % groups for c in channels):
        raise ValueError(f"Autoencoder.groups={groups!r}: must divide every width in channels={tuple(channels)}")


class Encoder(nn.Module):
    """Image `(B, in, S, S)` → `(B, 2·latent, S/f, S/f)` (mean and log-variance stacked on channels)."""

    def __init__(self, in_channels: int, latent_channels: int, channels: Sequence[int], layers: int, groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = channels[0]
        for level, ch in enumerate(channels):
            for _ in range(layers):
                blocks.append(ResBlock(prev, ch, groups))
                prev = ch
            if level < len(channels) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*blocks)
        self.mid = ResBlock(prev, prev, groups)
        self.out = _head(prev, 2 * latent_channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(self.blocks(self.conv_in(x))))


class Decoder(nn.Module):
    """Latent `(B, latent, s, s)` → image `(B, out, s·f, s·f)` (not clamped)."""

    def __init__(self, out_channels: int, latent_channels: int, channels: Sequence[int], layers: int, groups: int):
        super().__init__()
        prev = channels[-1]
        self.conv_in = nn.Conv2d(latent_channels, prev, 3, padding=1)
        self.mid = ResBlock(prev, prev, groups)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(channels))):
            for _ in range(layers):
                blocks.append(ResBlock(prev, channels[level], groups))
                prev = channels[level]
            if level > 0:
                blocks.append(Upsample(prev))
        self.blocks = nn.Sequential(*blocks)
        self.out = _head(prev, out_channels, groups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.mid(self.conv_in(z))))


class Autoencoder(nn.Module):
    """A KL-regularised convolutional autoencoder with latent normalisation buffers.

    Args:
        in_channels: image channels (3 for RGB).
        latent_channels: channels of the latent.
        channels: width of each resolution level; the image side shrinks by `2 ** (len(channels) - 1)`.
        layers_per_level: ResBlocks per level, in the encoder and in the decoder.
        groups: GroupNorm groups; must divide every width.

    Attributes:
        config: the constructor's keyword arguments (`Autoencoder(**ae.config)` rebuilds the architecture).
        factor: the spatial downsampling factor.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, channels: Sequence[int] = (64, 128, 128),
                 layers_per_level: int = 1, groups: int = 16):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        _check_config(in_channels, latent_channels, channels, layers_per_level, groups)
        self.config = {"in_channels": in_channels, "latent_channels": latent_channels, "channels": channels,
                       "layers_per_level": layers_per_level, "groups": groups}
        self.factor = 2 ** (len(channels) - 1)
        self.latent_channels = latent_channels
        self.encoder = Encoder(in_channels, latent_channels, channels, layers_per_level, groups)
        self.decoder = Decoder(in_channels, latent_channels, channels, layers_per_level, groups)
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"Autoencoder.encode: input of shape {tuple(x.shape)}; expected (B, C, H, W) with H "
                             f"and W divisible by {self.factor}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `(B, C, S, S)` in [−1, 1] → posterior (mean, logvar), each `(B, latent, S/f, S/f)`."""
        self._check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `(B, latent, s, s)` (unnormalised, as `encode` returns them) → images `(B, C, s·f, s·f)`."""
        return self.decoder(z)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised posterior sample `mean + σ·ε`; ε drawn from `generator` (on its own device)."""
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=device, dtype=torch.float32)
        return mean + torch.exp(0.5 * logvar) * eps.to(mean.device, mean.dtype)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Images → (reconstruction of a posterior sample, posterior mean, posterior logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample(mean, logvar, generator)), mean, logvar

    def set_latent_stats(self, shift: torch.Tensor, scale: float) -> None:
        """Set the normalisation: `encode_latents` returns `(mean − shift) · scale`.

        Args:
            shift: per-channel offset, shape `(latent_channels,)`.
            scale: a positive finite scalar.
        """
        shift = torch.as_tensor(shift, dtype=torch.float32).flatten()
        if shift.shape != (self.latent_channels,) or not torch.isfinite(shift).all():
            raise ValueError(f"latent shift of shape {tuple(shift.shape)}: expected {self.latent_channels} finite "
                             "values")
        scale = float(scale)
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"latent scale={scale!r}: must be a positive finite number")
        self.latent_shift.copy_(shift.to(self.latent_shift.device))
        self.latent_scale.fill_(scale)

    def encode_latents(self, x: torch.Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [−1, 1] → normalised latents `(mean [or a sample] − shift) · scale`, differentiable in x."""
        mean, logvar = self.encode(x)
        z = self.sample(mean, logvar, generator) if sample else mean
        return (z - self.latent_shift.view(1, -1, 1, 1)) * self.latent_scale

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → images (the inverse normalisation, then `decode`)."""
        return self.decode(z / self.latent_scale + self.latent_shift.view(1, -1, 1, 1))
