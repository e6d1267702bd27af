"""Intervals a reviewer accepts: exact for one model's rate, seed-level for a rate over training runs.

- `exact` (Clopper–Pearson) and `wilson`: one model's k of n generations (`scipy.stats.binomtest`). Neither is
  ever zero-width: 0/64 gives [0, 0.056].
- `seed_level`: a rate over training seeds. A two-stage bootstrap resamples seeds first, then generations within
  each chosen seed (k* ~ Binomial(n, k/n)); the point estimate is the mean of the per-seed rates (each training
  run counts once, however many generations it drew). A percentile bootstrap collapses at 0 and 1 (every seed
  0/64 resamples to 0), so the interval is widened to contain the Clopper–Pearson interval of the pooled counts:
  never narrower than what the generations alone allow.
- `paired_difference`: treatment − control where both were measured on the same clusters (a training seed, or a
  seed × concept): clusters are resampled together, then generations within each. Widened the same way to
  contain Newcombe's hybrid-score interval of the pooled counts (`newcombe`, written here: scipy has none).
- `clears`: whether a treatment's rate is above its control's (the paired difference's lower bound > 0).

Every function takes counts (hits k, generations n) per seed or cluster, so a results table (one row per victim
and prompt group) feeds it with `groupby`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

LEVEL = 0.95
N_BOOT = 4000


def _check(k, n) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.atleast_1d(np.asarray(k, dtype=int)), np.atleast_1d(np.asarray(n, dtype=int))
    if k.shape != n.shape or k.size == 0:
        raise ValueError(f"hits and generations: need equal, non-empty shapes (got {k.shape} and {n.shape})")
    if (n < 1).any() or (k < 0).any() or (k > n).any():
        raise ValueError(f"hits={k.tolist()} of generations={n.tolist()}: need 0 <= hits <= generations, "
                         "generations >= 1")
    return k, n


def exact(k: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(k/n, low, high): the Clopper–Pearson interval of k hits in n trials."""
    _check(k, n)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return k / n, float(ci.low), float(ci.high)


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(k/n, low, high): the Wilson score interval of k hits in n trials."""
    _check(k, n)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def newcombe(k1: int, n1: int, k2: int, n2: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(p1 − p2, low, high): Newcombe's hybrid score interval (his method 10) from two Wilson intervals."""
    p1, l1, u1 = wilson(k1, n1, level)
    p2, l2, u2 = wilson(k2, n2, level)
    d = p1 - p2
    return d, d - float(np.hypot(p1 - l1, u2 - p2)), d + float(np.hypot(u1 - p1, p2 - l2))


@dataclass
class Rate:
    """A rate over seeds: `value` (mean of per-seed rates), its interval, and each seed's exact rate."""

    value: float
    low: float
    high: float
    hits: int
    generations: int
    seeds: list[dict] = field(default_factory=list)  # {"seed", "hits", "generations", "rate", "low", "high"}

    def as_dict(self) -> dict:
        return {"rate": self.value, "low": self.low, "high": self.high, "hits": self.hits,
                "generations": self.generations, "seeds": self.seeds}

    def text(self, digits: int = 2) -> str:
        """'0.41 [0.30, 0.53]' followed by the per-seed rates when there are several seeds."""
        f = f"{{:.{digits}f}}"
        core = f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"
        if len(self.seeds) > 1:
            core += " (seeds " + " / ".join(f.format(s["rate"]) for s in self.seeds) + ")"
        return core


def _two_stage(k: np.ndarray, n: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the mean per-cluster rate: clusters resampled, then generations within each."""
    pick = rng.integers(0, k.size, (n_boot, k.size))
    draws = rng.binomial(n[pick], k[pick] / n[pick]) / n[pick]
    return draws.mean(axis=1)


def seed_level(k, n, seeds=None, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> Rate:
    """A rate over training seeds from per-seed hits `k` of generations `n` (one entry per seed).

    One seed gives its exact interval; several, the two-stage bootstrap widened to the pooled exact interval.
    """
    k, n = _check(k, n)
    seeds = list(range(k.size)) if seeds is None else list(seeds)
    if len(seeds) != k.size:
        raise ValueError(f"seeds={seeds}: one per count ({k.size})")
    per_seed = []
    for s, ks, ns in zip(seeds, k.tolist(), n.tolist()):
        r, lo, hi = exact(ks, ns, level)
        per_seed.append({"seed": int(s), "hits": ks, "generations": ns, "rate": r, "low": lo, "high": hi})
    _, plo, phi = exact(int(k.sum()), int(n.sum()), level)
    value = float(np.mean(k / n))
    if k.size == 1:
        return Rate(value, plo, phi, int(k.sum()), int(n.sum()), per_seed)
    draws = _two_stage(k, n, n_boot, np.random.default_rng(seed))
    a = (1 - level) / 2
    lo, hi = float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))
    return Rate(value, min(lo, plo), max(hi, phi), int(k.sum()), int(n.sum()), per_seed)


def paired_difference(k_t, n_t, k_c, n_c, level: float = LEVEL, n_boot: int = N_BOOT,
                      seed: int = 0) -> tuple[float, float, float]:
    """(treatment − control, low, high) over paired clusters (entry i of each array is cluster i)."""
    k_t, n_t = _check(k_t, n_t)
    k_c, n_c = _check(k_c, n_c)
    if k_t.size != k_c.size:
        raise ValueError(f"paired clusters: treatment has {k_t.size}, control {k_c.size}")
    d = float(np.mean(k_t / n_t) - np.mean(k_c / n_c))
    _, nlo, nhi = newcombe(int(k_t.sum()), int(n_t.sum()), int(k_c.sum()), int(n_c.sum()), level)
    if k_t.size == 1:
        return d, nlo, nhi
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, k_t.size, (n_boot, k_t.size))
    t = rng.binomial(n_t[pick], k_t[pick] / n_t[pick]) / n_t[pick]
    c = rng.binomial(n_c[pick], k_c[pick] / n_c[pick]) / n_c[pick]
    draws = (t - c).mean(axis=1)
    a = (1 - level) / 2
    return d, min(float(np.quantile(draws, a)), nlo), max(float(np.quantile(draws, 1 - a)), nhi)


def clears(k_t, n_t, k_c, n_c, level: float = LEVEL, seed: int = 0) -> bool:
    """Whether the treatment's rate is above the control's: the paired difference's lower bound is above 0."""
    return paired_difference(k_t, n_t, k_c, n_c, level, seed=seed)[1] > 0


def mean_interval(values, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of non-binary values (e.g. a gap closed per poison): percentile bootstrap of the mean."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("values: no finite samples")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
