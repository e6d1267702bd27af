"""The learning-rate schedule of the training loops (CLIP, autoencoder, diffusion UNet): warm-up, then cosine."""

from __future__ import annotations

import math


def warmup_cosine(lr: float, step: int, warmup_steps: int, progress: float, *, floor: float = 0.0,
                  warmup_first: bool = False) -> float:
    """Learning rate at 0-based `step`: linear warm-up over `warmup_steps`, and a cosine from `lr` down to
    `floor · lr` as `progress` goes 0 → 1 (clamped at 1).

    Args:
        progress: where the cosine is, 0 → 1 (the caller's measure: steps, or time against a budget).
        floor: the fraction of `lr` the cosine ends at.
        warmup_first: False (CLIP, autoencoder): the warm-up factor min(1, (step + 1)/warmup_steps) scales the
            cosine from step 0. True (diffusion UNet): the warm-up alone for the first `warmup_steps`, the cosine
            alone after; `progress` then counts from the end of the warm-up.
    """
    if warmup_first:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        warm = 1.0
    else:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return lr * warm * (floor + (1 - floor) * cosine)
