"""The sweep's figures: attack success against N and against the dose (a fraction of the clean images of C), and
P(target) against the latent gap the ε sweep's poisons closed. Intervals are seed-level (`poisoning.intervals`);
each seed's own rate is drawn as a small dot beside them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from poisoning import doses  # noqa: E402

COLOURS = {"nightshade": "tab:purple", "dirty_label": "tab:orange", "benign": "tab:green", "none": "tab:grey",
           "anchor": "tab:red", "gradient_matching": "tab:blue", "latent_target": "tab:brown"}
NAMES = {"anchor": "positive control (anchor image as poison)", "dirty_label": "dirty-label", "none": "control",
         "gradient_matching": "gradient matching", "latent_target": "latent target"}


def pooled(rows: pd.DataFrame, hits: str) -> tuple[float, float, float]:
    """Rate and 95% interval of `hits` over the seeds of `rows` (`intervals.seed_level`: seeds resampled, then
    generations; one seed: the exact interval)."""
    r = doses.rate(rows, hits)
    return r.value, r.low, r.high


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
    fig.suptitle(f"prompt {source!r}: generations judged (95% seed-level intervals)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_seed(ax, x: float, rows: pd.DataFrame, hits: str, colour: str) -> None:
    c = rows.groupby("seed")[[hits, "generations"]].sum()
    ax.scatter(np.full(len(c), x), c[hits] / c["generations"], s=9, color=colour, alpha=0.45, zorder=3)


def dose_response(table: pd.DataFrame, path: str | Path, source: str, target: str) -> Path:
    """P(target) against the dose (% of the clean images of C) per attack, the control as a band, seeds as dots."""
    src = doses.source_rows(table)
    fig, ax = plt.subplots(figsize=(7, 4))
    ctrl = src[src.attack == "none"]
    if len(ctrl):
        p, lo, hi = pooled(ctrl, "hits_target")
        ax.axhspan(lo, hi, color=COLOURS["none"], alpha=0.2, label=f"control {p:.2f} [{lo:.2f}, {hi:.2f}]")
    for attack in [a for a in ("dirty_label", "nightshade", "anchor") if a in set(src.attack)] + \
            sorted(set(src.attack) - {"none", "benign", "dirty_label", "nightshade", "anchor"}):
        g = src[src.attack == attack]
        xs, ys, lo, hi = [], [], [], []
        for n, rows in g.groupby("n", sort=True):
            x = 100 * float(rows.fraction.iloc[0])
            p, a, b = pooled(rows, "hits_target")
            xs.append(x), ys.append(p), lo.append(p - a), hi.append(b - p)
            _per_seed(ax, x, rows, "hits_target", COLOURS.get(attack, "black"))
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, color=COLOURS.get(attack),
                    label=NAMES.get(attack, attack))
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"poisons as % of the clean {source!r} images (log scale)")
    ax.set_ylabel(f"P(judge says {target!r}) for prompt {source!r}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("dose response: 95% seed-level intervals, one dot per training seed", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def eps_curve(curve: list[dict], path: str | Path, target: str) -> Path:
    """P(target) against the gap closed measured on the ε sweep's poisons, each point labelled with its ε."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curve:
        r = c["p_target"]
        ax.errorbar([c["gap_closed"]], [r["rate"]], yerr=[[r["rate"] - r["low"]], [r["high"] - r["rate"]]],
                    marker="o", capsize=3, color=COLOURS["nightshade"])
        ax.annotate(f"ε={c['eps_255']:g}/255", (c["gap_closed"], r["rate"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("latent gap to the anchor closed by the poisons (measured)")
    ax.set_ylabel(f"P(judge says {target!r})")
    ax.grid(alpha=0.3)
    n = curve[0]["n"] if curve else "?"
    ax.set_title(f"Nightshade ε sweep at N={n}: what gap the pipeline needs", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
