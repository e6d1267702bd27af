"""The opt-out evaluation's figures: P(artist's style) per dataset policy and prompt kind; generations side by side."""

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
    """Grouped bars: P(X's style) with 95% intervals, one group per model, one bar per prompt kind."""
    rows = result["summary"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 3.6))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        got = {r["model"]: r for r in rows if r["kind"] == kind}
        ys = np.array([got[m]["p_artist_style"] for m in models])
        lo = ys - np.array([got[m]["p_artist_style_ci"][0] for m in models])
        hi = np.array([got[m]["p_artist_style_ci"][1] for m in models]) - ys
        ax.bar(np.arange(len(models)) + (k - (len(kinds) - 1) / 2) * width, ys, width, yerr=[lo, hi], capsize=3,
               label=KIND_LABELS.get(kind, kind))
    ax.set_xticks(np.arange(len(models)), [m.replace("_", " ") for m in models])
    ax.set_ylabel(f"P(generation in {result['artist']}'s style)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Opt-out of {result['artist']}: what the model still draws (style probe "
                 f"{100 * result['probe']['heldout_accuracy']:.0f}% held-out)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def generations(images: dict[str, np.ndarray], kinds: list[str], per_concept: int, path: str | Path,
                columns: int = 8) -> Path:
    """One row per model: its first `columns` generations for the prompts naming X (the same noise in each row)."""
    first = [i for i, k in enumerate(kinds) if k == "names_artist"][::per_concept][:columns]
    rows = np.concatenate([imgs[first] for imgs in images.values()])
    return grid.save_grid(rows, path, nrow=len(first), scale=3, row_labels=[n.replace("_", " ") for n in images])
