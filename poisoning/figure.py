"""The sweep's figure: attack success against the number of poisons, both attacks on one plot, with intervals."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from poisoning import success  # noqa: E402

COLOURS = {"nightshade": "tab:purple", "dirty_label": "tab:orange", "benign": "tab:green", "none": "tab:grey"}


def pooled(rows: pd.DataFrame, hits: str) -> tuple[float, float, float]:
    """Share and bootstrap 95% interval of `hits` over all generations of `rows` (seeds pooled)."""
    total, h = int(rows.generations.sum()), int(rows[hits].sum())
    return success.bootstrap_ci(np.r_[np.ones(h), np.zeros(total - h)])


def _series(src: pd.DataFrame, attack: str, hits: str) -> tuple[list, list, list, list]:
    control = src[src.attack == "none"]
    parts = [(0, control)] + [(n, g) for n, g in src[src.attack == attack].groupby("n")]
    xs, ys, lo, hi = [], [], [], []
    for n, g in parts:
        p, a, b = pooled(g, hits)
        xs.append(n)
        ys.append(p)
        lo.append(p - a)
        hi.append(b - p)
    return xs, ys, lo, hi


def asr_vs_n(table: pd.DataFrame, path: str | Path, source: str, target: str) -> Path:
    """Two panels over N (0 = control, seeds pooled): P(top-1 = target) and P(top-1 = source) for prompt C."""
    src = table[(table.role == "source") & (table.purification == "none")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, hits, label in ((axes[0], "hits_target", f"P(judge says {target!r})"),
                            (axes[1], "hits_prompt", f"P(judge says {source!r})")):
        for attack in sorted(a for a in src.attack.unique() if a not in ("none", "benign")):
            xs, ys, lo, hi = _series(src, attack, hits)
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=COLOURS.get(attack),
                        label=attack.replace("_", "-"))
        for n, g in src[src.attack == "benign"].groupby("n"):
            p, a, b = pooled(g, hits)
            ax.errorbar([n], [p], yerr=[[p - a], [b - p]], marker="s", linestyle="none", capsize=3,
                        color=COLOURS["benign"], label="benign (unperturbed candidates)")
        ax.set_xscale("symlog", linthresh=1)
        ns = sorted(set(src.n))
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("poisons N (0 = control)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.suptitle(f"prompt {source!r}: generations judged (95% bootstrap intervals)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
