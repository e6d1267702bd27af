"""The opt-out evaluation's figures: P(artist's style) and copies of the artist's works per model and prompt kind;
generations side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion import grid  # noqa: E402

KIND_LABELS = {"names_artist": "prompt names X", "names_control": "prompt names the control artist",
               "no_artist": "prompt names no artist"}


def rates(result: dict, path: str | Path) -> Path:
    """Grouped bars with 95% intervals, one group per model, one bar per prompt kind: P(X's style) (left) and the
    share of generations that copy one of X's works (fixed reference set, right)."""
    rows = result["summary"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(2.4 + 2.4 * len(models), 3.8))
    for ax, key, label in ((axes[0], "artist_style", f"P(generation in {result['artist']}'s style)"),
                           (axes[1], "copies_of_artist_works", f"P(copy of one of {result['artist']}'s works)")):
        _bars(ax, rows, models, kinds, key)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _bars(ax, rows: list[dict], models: list[str], kinds: list[str], key: str) -> None:
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        got = {r["model"]: r[key] for r in rows if r["kind"] == kind}
        ys = np.array([got[m]["rate"] for m in models])
        lo = ys - np.array([got[m]["low"] for m in models])
        hi = np.array([got[m]["high"] for m in models]) - ys
        ax.bar(np.arange(len(models)) + (k - (len(kinds) - 1) / 2) * width, ys, width, yerr=[lo, hi], capsize=3,
               label=KIND_LABELS.get(kind, kind))
    ax.set_xticks(np.arange(len(models)), [m.replace("_", " ").replace("-", "\n") for m in models], fontsize=7)
    ax.set_ylim(0, 1)


def _title(result: dict) -> str:
    x, title = result["artist"], f"Opt-out of {result['artist']}: what the model still draws"
    if not result["precondition"]["ok"]:
        return title + " — precondition failed (the gold model's concept accuracy): leakage not measurable"
    if not result["probe_validation"]["ok"]:
        return title + f" — the style probe cannot tell {x}'s style on generations"
    return title + f" (style probe validated on generations, {100 * result['probe']['heldout_accuracy']:.0f}% held-out)"


def generations(images: dict[str, np.ndarray], kinds: list[str], per_concept: int, path: str | Path,
                columns: int = 8) -> Path:
    """One row per model: its first `columns` generations for the prompts naming X (the same noise in each row)."""
    first = [i for i, k in enumerate(kinds) if k == "names_artist"][::per_concept][:columns]
    rows = np.concatenate([imgs[first] for imgs in images.values()])
    return grid.save_grid(rows, path, nrow=len(first), scale=3, row_labels=[n.replace("_", " ") for n in images])
