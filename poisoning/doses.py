"""Reading a sweep as a reviewer would: doses as fractions, seed-level rates, preconditions, controls, verdicts.

Pure functions over the sweep's `results.parquet` (one row per victim × prompt group, with `seed`, `attack`, `n`,
`fraction`, `eps`, `hits_target`, `hits_prompt`, `generations`):

- `doses`: poison counts from fractions of the clean images of C (N = max(1, round(f · clean))).
- `rate`: a group's P(target) or P(C) over seeds (`intervals.seed_level`: each seed counts once, per-seed exact
  rates beside it).
- `versus_control`: a victim group minus the control of the same seeds (`intervals.paired_difference`, seeds as
  clusters) — the test of "the attack moved P(target)".
- `preconditions`: before any attack is read, the control must draw C (the lower bound of P(C) at or above a
  floor) and the judge must recognise C and A on held-out real images; otherwise the sweep cannot measure an
  attack on this concept, and says why.
- `sensitivity`: the positive control (the anchor image itself as every poison: the limit of a clean-label attack
  that closes the whole latent gap) must clear the control at the largest dose, or the measurement cannot see
  an attack at all.
- `verdict`: per attack, the smallest dose whose P(target) clears the control, or that none does up to the largest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from poisoning import intervals

POSITIVE = "anchor"  # the positive control's attack name


def doses(fractions, clean: int) -> list[tuple[float, int]]:
    """(fraction, N) per fraction of `clean` images: N = max(1, round(f · clean)); duplicates N kept once."""
    if clean < 1:
        raise ValueError(f"fractions={list(fractions)}: the clean data has no image of the source concept, so a "
                         "fraction of it is undefined; give ns instead")
    out, seen = [], set()
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise ValueError(f"fractions: {f!r} is not within (0, 1]")
        n = max(1, int(round(f * clean)))
        if n not in seen:
            seen.add(n)
            out.append((float(f), n))
    return out


def _counts(rows: pd.DataFrame, hits: str) -> pd.DataFrame:
    return rows.groupby("seed", sort=True)[[hits, "generations"]].sum()


def rate(rows: pd.DataFrame, hits: str = "hits_target") -> intervals.Rate:
    """P(hits) over the seeds of `rows` (summed per seed first)."""
    if rows.empty:
        raise ValueError(f"rate of {hits}: no rows")
    c = _counts(rows, hits)
    return intervals.seed_level(c[hits].to_numpy(), c["generations"].to_numpy(), c.index.tolist())


def versus_control(rows: pd.DataFrame, control: pd.DataFrame, hits: str = "hits_target") -> dict:
    """Paired difference `rows` − `control` over the seeds both have."""
    a, b = _counts(rows, hits), _counts(control, hits)
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise ValueError("versus_control: no seed in common with the control")
    a, b = a.loc[seeds], b.loc[seeds]
    d, lo, hi = intervals.paired_difference(a[hits], a["generations"], b[hits], b["generations"])
    return {"difference": d, "low": lo, "high": hi, "clears": lo > 0, "seeds": seeds}


def source_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the prompt C, no purification, not the ε sweep's extra victims."""
    t = table[(table.role == "source") & (table.purification == "none")]
    if "eps_sweep" in t:
        t = t[~t.eps_sweep.astype(bool)]
    return t


def control(table: pd.DataFrame) -> pd.DataFrame:
    return source_rows(table).query("attack == 'none'")


def dose_curve(table: pd.DataFrame, attack: str) -> list[dict]:
    """Per dose of one attack: fraction, N, P(target) and P(C) over seeds, and the difference to the control."""
    t, ctrl = source_rows(table), control(table)
    out = []
    for n, g in t[t.attack == attack].groupby("n", sort=True):
        row = {"n": int(n), "fraction": float(g.fraction.iloc[0]) if "fraction" in g else float("nan"),
               "p_target": rate(g).as_dict(), "p_source": rate(g, "hits_prompt").as_dict()}
        if not ctrl.empty:
            row["vs_control"] = versus_control(g, ctrl)
        out.append(row)
    return out


def preconditions(table: pd.DataFrame, judge: dict, source: str, target: str, min_source_rate: float,
                  min_judge_accuracy: float) -> dict:
    """Whether the sweep can measure an attack: the control draws C, the judge knows C and A on real images."""
    checks, why = [], []
    ctrl = control(table)
    if ctrl.empty:
        why.append("no control victim was measured")
    else:
        r = rate(ctrl, "hits_prompt")
        ok = r.low >= min_source_rate
        checks.append({"check": f"the control draws {source!r}", "value": r.as_dict(), "floor": min_source_rate,
                       "ok": ok})
        if not ok:
            why.append(f"the clean control draws {source!r} in {r.text()} of its generations (the lower bound must "
                       f"be ≥ {min_source_rate:g}): the model does not make C, so there is nothing to hijack")
    per_class = judge.get("heldout_per_class") or {}
    for concept in (source, target):
        acc = per_class.get(concept, {}).get("accuracy")
        ok = acc is not None and acc >= min_judge_accuracy
        checks.append({"check": f"the judge recognises {concept!r} on held-out real images", "value": acc,
                       "images": per_class.get(concept, {}).get("images"), "floor": min_judge_accuracy, "ok": ok})
        if not ok:
            shown = "not measured" if acc is None else f"{acc:.2f}"
            why.append(f"the judge recognises real {concept!r} images {shown} of the time (floor "
                       f"{min_judge_accuracy:g}): its labels of generations cannot be trusted for this concept")
    return {"ok": not why, "checks": checks, "why": why}


def sensitivity(table: pd.DataFrame) -> dict:
    """The positive control at its largest dose against the control: can the measurement see an attack?"""
    t = source_rows(table)
    pos = t[t.attack == POSITIVE]
    if pos.empty:
        return {"measured": False, "ok": None, "why": "no positive control in this sweep"}
    n = int(pos.n.max())
    vs = versus_control(pos[pos.n == n], control(table))
    return {"measured": True, "ok": bool(vs["clears"]), "n": n, "vs_control": vs,
            "p_target": rate(pos[pos.n == n]).as_dict()}


def verdict(table: pd.DataFrame, attack: str, pre: dict, sens: dict) -> dict:
    """The smallest dose whose P(target) clears the control, or why no verdict can be given."""
    curve = dose_curve(table, attack)
    if not pre["ok"]:
        return {"attack": attack, "status": "cannot_measure", "text": "cannot measure an attack on this concept: "
                + "; ".join(pre["why"])}
    if attack != POSITIVE and sens.get("measured") and not sens["ok"]:
        return {"attack": attack, "status": "insensitive", "text": "the measurement cannot see an attack: the "
                "positive control (the anchor image itself as every poison) does not move P(target) above the "
                "control"}
    cleared = [c for c in curve if c.get("vs_control", {}).get("clears")]
    if not curve:
        return {"attack": attack, "status": "not_run", "text": "not in this sweep"}
    top = curve[-1]
    if not cleared:
        return {"attack": attack, "status": "none_clears", "max_fraction": top["fraction"], "max_n": top["n"],
                "text": f"no dose up to {_pct(top['fraction'])} (N={top['n']}) moves P(target) above the control"}
    first = cleared[0]
    return {"attack": attack, "status": "clears", "fraction": first["fraction"], "n": first["n"],
            "text": f"P(target) clears the control from {_pct(first['fraction'])} (N={first['n']}) of the clean "
                    f"images of the concept: {as_rate(first['p_target']).text()}"}


def as_rate(d: dict) -> intervals.Rate:
    """A `Rate.as_dict()` back to a `Rate`."""
    return intervals.Rate(d["rate"], d["low"], d["high"], d["hits"], d["generations"], d["seeds"])


def _pct(f: float) -> str:
    return "—" if f is None or not np.isfinite(f) else f"{100 * f:.3g}%"


def eps_curve(table: pd.DataFrame) -> list[dict]:
    """Nightshade victims at the ε-sweep dose: ε, the gap closed measured on their poisons, P(target) over seeds."""
    t = table[(table.role == "source") & (table.purification == "none") & (table.attack == "nightshade")]
    if "eps_sweep" not in t or not t.eps_sweep.any():
        return []
    n = int(t[t.eps_sweep.astype(bool)].n.iloc[0])
    t = t[t.n == n]
    out = []
    for eps, g in t.groupby("eps", sort=True):
        out.append({"eps": float(eps), "eps_255": round(255 * float(eps), 1), "n": n,
                    "gap_closed": float(g.gap_closed.mean()), "p_target": rate(g).as_dict(),
                    "vs_control": versus_control(g, control(table))})
    return out
