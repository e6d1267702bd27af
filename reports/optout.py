"""The opt-out section: what each opt-out policy leaves in the dataset and what the model still draws, vs the gold
standard (retraining without the artist). Input: an `optout evaluate` folder (optout.json + figures)."""

from __future__ import annotations

import json
from pathlib import Path

from poisoning import optout
from reports import html as H

NAMES = {"honor": "honoured", "url_only": "URL-only", "ignore": "ignored", optout.GOLD: "retrained without X (gold)"}


def load(folder: str | Path) -> dict:
    path = Path(folder) / "optout.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `mithridate optout evaluate` first)")
    return json.loads(path.read_text())


def _row(result: dict, model: str, kind: str) -> dict:
    return next(r for r in result["summary"] if r["model"] == model and r["kind"] == kind)


def _verdict(r: dict) -> str:
    lo, hi = r["diff_vs_gold_ci"]
    if lo > 0:
        return "more of X's style than the gold model (leaks)"
    if hi < 0:
        return "less of X's style than the gold model"
    return "indistinguishable from the gold model"


def headline(result: dict) -> str:
    """One sentence per policy, computed from the data: P(X style) for prompts naming X vs gold, and the leak count."""
    x, parts = result["artist"], []
    gold = _row(result, optout.GOLD, "names_artist")
    for policy in [m for m in result["datasets"] if m != optout.GOLD]:
        r, ds = _row(result, policy, "names_artist"), result["datasets"][policy]
        parts.append(f"{NAMES.get(policy, policy)}: {ds['trained_artist_rows']} of {x}'s works among the "
                     f"{ds['trained_rows']} training rows; prompts naming {x} come out in {x}'s style "
                     f"{r['p_artist_style']:.2f} [{r['p_artist_style_ci'][0]:.2f}, {r['p_artist_style_ci'][1]:.2f}] "
                     f"vs gold {gold['p_artist_style']:.2f}, difference {r['diff_vs_gold']:+.2f} "
                     f"[{r['diff_vs_gold_ci'][0]:+.2f}, {r['diff_vs_gold_ci'][1]:+.2f}]: {_verdict(r)}; "
                     f"memorised copies of {x}'s works "
                     f"{_ci(r.get('memorised_artist_works', 0.0), r.get('memorised_artist_works_ci'))}.")
    return " ".join(parts)


def _table(result: dict) -> str:
    rows = []
    for r in result["summary"]:
        ds = result["datasets"][r["model"]]
        rows.append({"dataset": NAMES.get(r["model"], r["model"]), "prompt": r["kind"].replace("_", " "),
                     f"{result['artist']} rows (trained)": ds["trained_artist_rows"],
                     f"P({result['artist']} style)": f"{r['p_artist_style']:.2f} [{r['p_artist_style_ci'][0]:.2f}, "
                                                     f"{r['p_artist_style_ci'][1]:.2f}]",
                     "vs gold": f"{r['diff_vs_gold']:+.2f} [{r['diff_vs_gold_ci'][0]:+.2f}, "
                                f"{r['diff_vs_gold_ci'][1]:+.2f}]",
                     f"P({result['control_artist']} style)": f"{r['p_control_style']:.2f}",
                     "generations": r["generations"]})
    return H.table(rows)


def _compliance(result: dict) -> str:
    rows = [{"dataset": NAMES.get(k, k), "rows kept": v["rows"], f"{result['artist']} rows kept (leaks)":
             v["artist_rows"], f"rows naming {result['artist']}": v["rows_naming_artist"],
             f"{result['control_artist']} rows": v["control_rows"], "rows in the trained concepts": v["trained_rows"],
             f"{result['artist']} rows trained on": v["trained_artist_rows"]} for k, v in result["datasets"].items()]
    return H.table(rows)


def _closeness(result: dict) -> str:
    bg = result["background_nn_similarity"]
    rows = [{"dataset": NAMES.get(r["model"], r["model"]), "prompt": r["kind"].replace("_", " "),
             "NN similarity (median)": round(r["nn_similarity_median"], 3),
             "above background p95": round(r["above_background_p95"], 3), "memorised (l2 ratio)":
             round(r["memorised"], 3), f"memorised copies of {result['artist']}'s works": _ci(
                 r.get("memorised_artist_works", 0.0), r.get("memorised_artist_works_ci")),
             "copies vs gold": _ci(r.get("memorised_artist_works_diff_vs_gold", 0.0),
                                   r.get("memorised_artist_works_diff_vs_gold_ci"), "+")}
            for r in result["summary"] if r["kind"] == "names_artist"]
    return H.note(
        f"Nearest-neighbour cosine to {result['artist']}'s {bg['works']} works in {result['feature_space']}'s image "
        f"space; background (each work to its nearest other work): median {bg['median']:.3f}, p95 {bg['p95']:.3f}. "
        f"Memorised (Carlini et al. 2023): l2 to the nearest training image < {result['memorisation_test']['alpha']} "
        f"× mean l2 to the {result['memorisation_test']['neighbours']} nearest (capped by the training set).") + \
        H.table(rows)


def _ci(value: float, ci, sign: str = "") -> str:
    return f"{value:{sign}.2f}" + (f" [{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]" if ci else "")


def _png(path: Path, caption: str) -> str:
    return H.figure(path.read_bytes(), caption) if path.is_file() else ""


def sections(folder: str | Path) -> list[tuple[str, str]]:
    """(heading, html) sections of the opt-out evaluation."""
    folder = Path(folder)
    r = load(folder)
    p = r["probe"]
    setup = H.table([{"item": "opted-out artist X", "value": r["artist"]},
                     {"item": "control artist (did not opt out)", "value": r["control_artist"]},
                     {"item": "concepts the models learn", "value": ", ".join(r["concepts"])},
                     {"item": "models", "value": f"one per dataset and training seed (seeds {r.get('seeds', [0])}); "
                      "rates pool the seeds, differences to gold pair the same seed, prompt and noise"},
                     {"item": "style probe", "value": f"{', '.join(p['artists'])} on {p['feature_space']} features; "
                      f"held-out concepts ({p['heldout_images']} images): {100 * p['heldout_accuracy']:.1f}% on "
                      f"reconstructions, {100 * p['heldout_accuracy_originals']:.1f}% on originals, chance "
                      f"{100 * p['chance']:.0f}%"}])
    return [("Opt-out: headline", H.note(headline(r))), ("Opt-out: setup", setup),
            ("Opt-out: dataset compliance", _compliance(r)),
            ("Opt-out: what the models draw", _png(folder / "optout.png", "P(X's style) per dataset and prompt "
                                                   "kind, 95% intervals") + _table(r)
             + _png(folder / "generations.png", "prompts naming X, the same noise in every row")),
            ("Opt-out: closeness and memorisation", _closeness(r))]


def metrics(folder: str | Path) -> dict:
    r = load(folder)
    out = {"optout/probe_heldout_accuracy": r["probe"]["heldout_accuracy"]}
    for k, v in r["datasets"].items():
        out[f"optout/{k}/artist_rows_kept"] = v["artist_rows"]
    for s in r["summary"]:
        key = f"optout/{s['model']}/{s['kind']}"
        out.update({f"{key}/p_artist_style": s["p_artist_style"], f"{key}/p_artist_style_ci": s["p_artist_style_ci"],
                    f"{key}/diff_vs_gold": s["diff_vs_gold"], f"{key}/diff_vs_gold_ci": s["diff_vs_gold_ci"],
                    f"{key}/memorised": s["memorised"],
                    f"{key}/copies_of_artist": s.get("memorised_artist_works"),
                    f"{key}/copies_of_artist_ci": s.get("memorised_artist_works_ci")})
    return out
