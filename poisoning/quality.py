"""Per-image image-quality and feature-gap measures for poisons.

Convention: every image argument is a torch float tensor in [−1, 1] (the autoencoder's range), shaped
`(N, C, H, W)` (or `(C, H, W)` for one image); uint8 arrays `(N, H, W, 3)` convert with `from_uint8`. Every
function returns one value per image, a float tensor of shape `(N,)`.

- `linf` is reported in [0, 1] *pixel units* (half the [−1, 1] difference), the units of Nightshade's `eps`:
  `linf × 255` is the change in 8-bit levels.
- `psnr` uses the peak-to-peak range 2 of [−1, 1], so it equals the usual PSNR of the images in [0, 1] or
  [0, 255]; identical images give `inf` (defined in `diffusion.metrics`, shared with the autoencoder's PSNR).
- `ssim` is Wang et al.'s SSIM: 11×11 Gaussian window (σ = 1.5) on each channel, 'valid' positions only,
  K1 = 0.01, K2 = 0.03, data range 2; mean over positions and channels. Differentiable (used as a perceptual
  budget by `poisoning.nightshade`).
- `gap_closed` is the feasibility study's "fraction of the latent gap closed".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from diffusion.metrics import IMAGE_RANGE as DATA_RANGE, image_pair as _pair, psnr  # noqa: F401 (re-exported)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)


def from_uint8(images) -> torch.Tensor:
    """uint8 images `(N, H, W, 3)` (or `(H, W, 3)`) → float32 `(N, 3, H, W)` in [−1, 1]."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise ValueError(f"images: expected a uint8 array (N, H, W, C) or (H, W, C), got {a.dtype} {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a if a.ndim == 4 else a[None])).permute(0, 3, 1, 2)
    return t.float() / 127.5 - 1.0


def linf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max |x − y| per image, in [0, 1] pixel units (i.e. half the difference of the [−1, 1] tensors)."""
    x, y = _pair(x, y)
    return (x - y).abs().flatten(1).amax(1) / DATA_RANGE


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (1 for identical images); differentiable in both arguments.

    Raises:
        ValueError: images smaller than the 11×11 window, or mismatched shapes.
    """
    x, y = _pair(x, y)
    c, h, w = x.shape[1:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"x: images of {h}×{w} px; SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW}")
    win = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, c, x)

    def blur(t):
        return F.conv2d(t, win, groups=c)

    c1, c2 = (SSIM_K[0] * DATA_RANGE) ** 2, (SSIM_K[1] * DATA_RANGE) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def gap_closed(f_x: torch.Tensor, f_poison: torch.Tensor, f_anchor: torch.Tensor) -> torch.Tensor:
    """1 − ‖f_poison − f_anchor‖ / ‖f_x − f_anchor‖ per image (L2 over all feature dimensions).

    0: the poison's features are as far from the anchor's as the clean image's; 1: they coincide with the
    anchor's; negative: farther. `f_anchor` may hold one row (broadcast to all images). NaN where the clean
    features already equal the anchor's.
    """
    f_x, f_poison, f_anchor = (torch.as_tensor(f).detach().double() for f in (f_x, f_poison, f_anchor))
    if f_x.shape != f_poison.shape:
        raise ValueError(f"f_poison: shape {tuple(f_poison.shape)}; expected f_x's {tuple(f_x.shape)}")
    if f_anchor.shape[1:] != f_x.shape[1:] or f_anchor.shape[0] not in (1, f_x.shape[0]):
        raise ValueError(f"f_anchor: shape {tuple(f_anchor.shape)}; expected (1 or {f_x.shape[0]}, "
                         f"{', '.join(map(str, f_x.shape[1:]))})")
    before = (f_x - f_anchor).flatten(1).norm(dim=1)
    after = (f_poison - f_anchor).flatten(1).norm(dim=1)
    return 1.0 - after / before


def ssim_or_nan(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`ssim`, or NaN per image where the images are smaller than the SSIM window."""
    if min(x.shape[-2:]) < SSIM_WINDOW:
        return torch.full((x.shape[0],), math.nan)
    return ssim(x, y)
