"""Attack success: how often generations for a prompt naming the source concept C stop showing C, or show A.

A judge (`poisoning.judge`: an independent pixel classifier, or a compact CLIP) labels each generation among a
fixed concept list; P(top-1 ≠ C) and P(top-1 = A) come with exact (Clopper–Pearson) 95% intervals, which are
never zero-width (over several training seeds, use `poisoning.intervals.seed_level`). The same seed gives every
model the same initial noise, so a poisoned victim and its control differ only by their weights.
"""

from __future__ import annotations

import logging

import numpy as np

from poisoning import intervals

logger = logging.getLogger(__name__)


def rates(predicted: np.ndarray, source: int, target: int) -> dict:
    """Attack-success rates of one model's generations prompted with the source concept, with exact intervals."""
    p = np.asarray(predicted)
    if p.size == 0:
        raise ValueError("predicted: no generations")
    not_c, not_lo, not_hi = intervals.exact(int((p != source).sum()), p.size)
    is_a, a_lo, a_hi = intervals.exact(int((p == target).sum()), p.size)
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
    out = rates(judge.predict(images), concepts.index(source), concepts.index(target))
    logger.info("%s → %s: P(not %s) %.2f [%.2f, %.2f], P(%s) %.2f [%.2f, %.2f] (n=%d)", source, target, source,
                out["p_not_source"], *out["p_not_source_ci"], target, out["p_target"], *out["p_target_ci"], n)
    return {**out, "images": images}
