"""Matplotlib figures as PNG bytes (Agg backend, never shown), and image grids with captions."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def histogram(values, title: str, xlabel: str, lines: dict[str, float] | None = None, groups=None) -> bytes:
    """A histogram (one per group when `groups` maps label → values), with labelled vertical lines."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    series = groups if groups else {"all": values}
    finite = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in series.values()]
    lo = min((v.min() for v in finite if len(v)), default=0.0)
    hi = max((v.max() for v in finite if len(v)), default=1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    for (label, _), v in zip(series.items(), finite):
        ax.hist(v, bins=bins, alpha=0.6, label=f"{label} ({len(v)})")
    for label, x in (lines or {}).items():
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=8, va="top")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig)


def bars(counts: dict[str, int], title: str, xlabel: str = "rows", top: int = 15) -> bytes:
    """Horizontal bars of the `top` largest counts."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.0))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4a7bb7")
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return _png(fig)


def funnel(steps: list[tuple[str, int]], title: str) -> bytes:
    """The funnel: one bar per stage, widest first."""
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(steps) + 1.0))
    labels = [s for s, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    ax.barh(labels, values, color="#6a9f58")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_title(title)
    return _png(fig)


def thumbnail_png(jpg: bytes, size: int = 64) -> bytes:
    """A PNG thumbnail of an image (bytes); a grey square when the bytes do not decode."""
    try:
        im = Image.open(io.BytesIO(jpg)).convert("RGB")
    except Exception:  # noqa: BLE001 - a broken image is shown as such, not raised
        im = Image.new("RGB", (size, size), (200, 200, 200))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
