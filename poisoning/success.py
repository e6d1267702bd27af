"""Attack success: how often generations for a prompt naming the source concept C stop showing C, or show A.

A zero-shot judge (a compact CLIP, `diffusion.evaluation.Judge`) labels each generation among a fixed concept
list; P(top-1 ≠ C) and P(top-1 = A) come with bootstrap 95% intervals. The same seed gives every model the same
initial noise, so a poisoned victim and its control differ only by their weights.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def bootstrap_ci(hits: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the share of True in `hits` and its percentile bootstrap 95% interval."""
    hits = np.asarray(hits, dtype=float)
    if hits.size == 0:
        raise ValueError("hits: no samples")
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, (n_boot, hits.size))].mean(axis=1)
    return float(hits.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def rates(predicted: np.ndarray, source: int, target: int, seed: int = 0) -> dict:
    """Attack-success rates from the judge's top-1 labels of generations prompted with the source concept."""
    p = np.asarray(predicted)
    not_c, not_lo, not_hi = bootstrap_ci(p != source, seed=seed)
    is_a, a_lo, a_hi = bootstrap_ci(p == target, seed=seed)
    return {"n": int(p.size), "p_not_source": not_c, "p_not_source_ci": [not_lo, not_hi], "p_target": is_a,
            "p_target_ci": [a_lo, a_hi]}


def measure(pipe, judge, concepts: list[str], source: str, target: str, n: int = 64, prompt: str = "{}",
            sampler: str = "ddim", steps: int = 50, guidance: float = 3.0, seed: int = 0) -> dict:
    """Generate `n` images for the source prompt with `pipe` and judge them among `concepts`.

    Raises:
        ValueError: source or target not among the judge's concepts.
    """
    for field, c in (("source", source), ("target", target)):
        if c not in concepts:
            raise ValueError(f"{field}={c!r}: not among the judge's concepts ({len(concepts)} names)")
    images = pipe.generate([prompt.format(source)] * n, sampler, steps, guidance, seed=seed)
    feats = judge.features(images)
    predicted = np.argmax(feats @ judge.text_emb.T, axis=1)
    out = rates(predicted, concepts.index(source), concepts.index(target), seed)
    logger.info("%s → %s: P(not %s) %.2f [%.2f, %.2f], P(%s) %.2f [%.2f, %.2f] (n=%d)", source, target, source,
                out["p_not_source"], *out["p_not_source_ci"], target, out["p_target"], *out["p_target_ci"], n)
    return {**out, "images": images}
