"""Distribution metrics on feature vectors: KID, FID, the real-vs-real floor, zero-shot accuracy, CLIP score; and
the per-image PSNR of image tensors (autoencoder reconstructions, poisons).

Every distribution metric takes numpy float arrays of shape (N, D) (one feature vector per row). KID and FID compare two
sets; a generated-vs-real number means little without the real-vs-real floor (`real_floor`) next to it.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import scipy.linalg
import torch

log = logging.getLogger(__name__)

FID_EPS = 1e-6
FID_IMAG_TOL = 1e-3


def _features(x, name: str, min_rows: int = 2) -> np.ndarray:
    """`x` as a float64 (N, D) array with at least `min_rows` rows; ValueError naming `name` otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {arr.shape}")
    if len(arr) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} samples, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _pair(real, fake, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real, fake = _features(real, "real", min_rows), _features(fake, "fake", min_rows)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake: feature dimensions differ ({real.shape[1]} vs {fake.shape[1]})")
    return real, fake


# ---------------------------------------------------------------- KID


def _poly_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef: float) -> np.ndarray:
    return (gamma * a @ b.T + coef) ** degree


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef: float) -> float:
    """The unbiased MMD² U-statistic: within-set kernel means skip the diagonal, the cross term keeps all m²."""
    m = len(x)
    k_xx = _poly_kernel(x, x, degree, gamma, coef)
    k_yy = _poly_kernel(y, y, degree, gamma, coef)
    k_xy = _poly_kernel(x, y, degree, gamma, coef)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
        coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) between two feature sets.

    The unbiased MMD² with the polynomial kernel k(x, y) = (γ·xᵀy + coef)^degree, averaged over random subsets
    of size min(`subset_size`, len(real), len(fake)), each drawn without replacement from each set.

    Args:
        real: (N, D) reference features.
        fake: (M, D) generated features.
        subsets: number of random subsets.
        subset_size: samples per subset (capped by the set sizes).
        degree: kernel degree.
        gamma: kernel scale; 1/D when None.
        coef: kernel offset.
        seed: seed of the numpy Generator that draws the subsets.

    Returns:
        (mean, std) of the per-subset estimates. The mean can be slightly negative (the estimator is unbiased).

    Raises:
        ValueError: non-2-D input, fewer than 2 samples, different feature dimensions, or `subsets` < 1.
    """
    real, fake = _pair(real, fake)
    if subsets < 1:
        raise ValueError(f"subsets={subsets!r}: must be >= 1")
    if subset_size < 2:
        raise ValueError(f"subset_size={subset_size!r}: must be >= 2")
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        values[i] = _mmd2_unbiased(x, y, degree, gamma, coef)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------- FID


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root, or NaNs when it fails or warns that `a` is singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            return np.asarray(scipy.linalg.sqrtm(a))
        except (ValueError, np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
            return np.full(a.shape, np.nan)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}), retrying with ε·I on both diagonals when the product is singular.

    Raises:
        ValueError: the square root has an imaginary part larger than FID_IMAG_TOL.
    """
    root = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        log.warning("fid: singular covariance product; adding %g to the diagonals", FID_EPS)
        offset = np.eye(len(sigma1)) * FID_EPS
        root = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(root).all():
        raise ValueError("fid: the matrix square root of the covariance product is not finite")
    if np.iscomplexobj(root):
        imag = float(np.abs(root.imag).max())
        if imag > FID_IMAG_TOL:
            raise ValueError(f"fid: matrix square root has imaginary component {imag:.3g} > {FID_IMAG_TOL}")
        root = root.real
    return float(np.trace(root))


def fid(real, fake) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).

    ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2(Σ_rΣ_g)^{1/2}), with sample covariances (ddof=1), clamped at 0. When the
    covariance product is singular (fewer samples than dimensions), FID_EPS·I is added to both diagonals.

    Args:
        real: (N, D) reference features, N >= 2.
        fake: (M, D) generated features, M >= 2.

    Raises:
        ValueError: non-2-D input, fewer than 2 samples (naming the set), different feature dimensions, or a
            covariance square root with a large imaginary part.
    """
    real, fake = _pair(real, fake)
    mu1, sigma1 = _gaussian(real)
    mu2, sigma2 = _gaussian(fake)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # rounding can leave identical sets at -1e-7


def real_floor(real, seed: int = 0, **kw) -> dict[str, float]:
    """KID and FID between two random halves of the real set: the floor a generated-vs-real number sits on.

    Args:
        real: (N, D) features, N >= 4.
        seed: seed of the split (and of KID's subsets).
        **kw: passed to `kid` (subsets, subset_size, degree, gamma, coef).

    Returns:
        {"kid": mean, "kid_std": std, "fid": value}.
    """
    real = _features(real, "real", min_rows=4)
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    a, b = real[order[:half]], real[order[half:2 * half]]
    kid_mean, kid_std = kid(a, b, seed=seed, **kw)
    return {"kid": kid_mean, "kid_std": kid_std, "fid": fid(a, b)}


# ---------------------------------------------------------------- CLIP-space metrics


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def zero_shot_accuracy(image_emb, text_emb, labels) -> dict:
    """Zero-shot classification by cosine similarity between image and class-prompt embeddings.

    Args:
        image_emb: (N, D) image embeddings (L2-normalised; rows are normalised again here).
        text_emb: (K, D) one embedding per class (likewise).
        labels: (N,) integer classes in [0, K).

    Returns:
        {"top1", "top5", "chance": 1/K, "n": N, "k": K}; top5 is top-min(5, K).

    Raises:
        ValueError: shape mismatches or labels outside [0, K) (naming the argument).
    """
    image_emb = _features(image_emb, "image_emb", min_rows=1)
    text_emb = _features(text_emb, "text_emb", min_rows=1)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb: dimensions differ ({image_emb.shape[1]} vs {text_emb.shape[1]})")
    labels = np.asarray(labels)
    n, k = len(image_emb), len(text_emb)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected {n} integers, got shape {labels.shape} dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= k:
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise ValueError(f"labels: value {int(bad)} outside [0, {k})")
    sims = _unit_rows(image_emb) @ _unit_rows(text_emb).T
    top = min(5, k)
    best = np.argsort(-sims, axis=1, kind="stable")[:, :top]
    return {"top1": float((best[:, 0] == labels).mean()), "top5": float((best == labels[:, None]).any(1).mean()),
            "chance": 1.0 / k, "n": n, "k": k}


def clip_score(image_emb, text_emb) -> float:
    """Mean over pairs of max(100·cos(image_i, text_i), 0) (torchmetrics' CLIPScore convention).

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (N, D) caption embeddings; row i belongs to image i.

    Raises:
        ValueError: shapes differ.
    """
    image_emb = _features(image_emb, "image_emb", min_rows=1)
    text_emb = _features(text_emb, "text_emb", min_rows=1)
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image_emb and text_emb: shapes differ ({image_emb.shape} vs {text_emb.shape})")
    cos = (_unit_rows(image_emb) * _unit_rows(text_emb)).sum(1)
    return float(np.maximum(100 * cos, 0).mean())


# ---------------------------------------------------------------- per-image PSNR of image tensors

IMAGE_RANGE = 2.0  # peak-to-peak of [−1, 1]


def image_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float image tensors in [−1, 1] of equal shape `(N, C, H, W)` (or `(C, H, W)`: one image), as 4-D
    tensors of their common dtype, at least float32; ValueError otherwise."""
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise ValueError("x, y: expected torch tensors in [−1, 1] (convert uint8 arrays with from_uint8 first)")
    x = x[None] if x.ndim == 3 else x
    y = y[None] if y.ndim == 3 else y
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"x, y: shapes {tuple(x.shape)} and {tuple(y.shape)}; expected equal (N, C, H, W)")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def psnr(x: torch.Tensor, y: torch.Tensor, max_db: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, shape `(N,)`, of images in [−1, 1] (see `image_pair`).

    The peak-to-peak range is 2, so it equals the usual PSNR of the images in [0, 1] or [0, 255]. Identical
    images give `inf`, or with `max_db` every value is capped at `max_db` (a finite mean for JSON).
    """
    x, y = image_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(1)
    db = 10.0 * torch.log10(IMAGE_RANGE ** 2 / mse)  # mse 0 → inf
    return db if max_db is None else db.clamp_max(max_db)
