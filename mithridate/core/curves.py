"""Training curves: `curve.csv` and `curve.png` (loss, its running mean, optionally the learning rate)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_curve(curve: list[tuple], columns: list[str], out: Path, ylabel: str, log: bool = False,
                window: int = 20, title: str = "") -> None:
    """Write `<out>/curve.csv` with `columns` and `<out>/curve.png`.

    Args:
        curve: one tuple per step, in the order of `columns`; must hold "step" and "loss" (and may hold "lr",
            drawn dashed on a second axis).
        out: the folder. ylabel, title: axis label and title. log: log-scale loss axis.
        window: steps of the running mean.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    df = pd.DataFrame(curve, columns=columns)
    df.to_csv(out / "curve.csv", index=False)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(df["step"], df["loss"], lw=0.6, alpha=0.5, label="loss")
    ax.plot(df["step"], df["loss"].rolling(window, min_periods=1).mean(), lw=1.5, label=f"loss (mean of {window})")
    ax.set(xlabel="step", ylabel=ylabel, yscale="log" if log else "linear", title=title)
    ax.legend(loc="upper right")
    if "lr" in df:
        ax2 = ax.twinx()
        ax2.plot(df["step"], df["lr"], color="grey", lw=0.8, ls="--")
        ax2.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=100)
