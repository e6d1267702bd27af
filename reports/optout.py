"""The opt-out section: what each opt-out policy leaves in the dataset and what the model still draws, vs the gold
standard (retraining without the artist) and vs each policy's own gold (its rows minus the artist). Input: an
`optout evaluate` folder (optout.json + figures).

Verdicts come from the data and only when they can be given: the precondition (the gold model draws the prompted
concepts) must hold, else the section says the run cannot measure opt-out leakage and why; style verdicts also need
the style probe to clear its false-positive floor on generations (`probe_validation`)."""

from __future__ import annotations

import json
from pathlib import Path

from poisoning.audit import artist_removal
from reports import html as H

NAMES = {"honor": "honoured", "url_only": "URL-only", "ignore": "ignored",
         artist_removal.GOLD: "retrained without X (gold)"}


def load(folder: str | Path) -> dict:
    path = Path(folder) / "optout.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `mithridate optout evaluate` first)")
    return json.loads(path.read_text())


def _name(model: str) -> str:
    if model.endswith(artist_removal.MINUS):
        return f"{NAMES.get(model[: -len(artist_removal.MINUS)], model[: -len(artist_removal.MINUS)])} minus X"
    return NAMES.get(model, model)


def _row(result: dict, model: str, kind: str) -> dict:
    return next(r for r in result["summary"] if r["model"] == model and r["kind"] == kind)


def _dataset(result: dict, model: str) -> dict:
    return result["datasets"].get(model) or result.get("datasets_minus_artist", {})[model]


def _rate(d: dict | None) -> str:
    """'0.41 [0.30, 0.53]' (+ per-seed rates) from a `Rate.as_dict()`."""
    if not d:
        return "n/a"
    text = f"{d['rate']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"
    if len(d.get("seeds", [])) > 1:
        text += " (seeds " + " / ".join(f"{s['rate']:.2f}" for s in d["seeds"]) + ")"
    return text


def _diff(d: dict | None) -> str:
    return "n/a" if not d else f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _verdict(d: dict, what: str, gold: str) -> str:
    """What a paired difference to a gold model says: above, below, or no difference detected."""
    if d["low"] > 0:
        return f"more {what} than {gold} (leaks)"
    if d["high"] < 0:
        return f"less {what} than {gold}"
    return f"no difference from {gold} detected"


def _cannot_measure(result: dict) -> str:
    x, why = result["artist"], result["precondition"]["why"]
    kept = "; ".join(f"{_name(k)} kept {v['trained_artist_rows']} of {x}'s works among its {v['trained_rows']} "
                     f"training rows" for k, v in result["datasets"].items())
    return f"This run cannot measure opt-out leakage: {why}. What the datasets kept still holds: {kept}."


def _policy_sentence(result: dict, policy: str, style_ok: bool) -> str:
    x, r, ds = result["artist"], _row(result, policy, "names_artist"), result["datasets"][policy]
    own = r.get("artist_style_vs_own_gold")
    text = (f"{_name(policy)}: {ds['trained_artist_rows']} of {x}'s works among the {ds['trained_rows']} training "
            f"rows; prompts naming {x} come out in {x}'s style {_rate(r['artist_style'])}, vs gold "
            f"{_diff(r['artist_style_vs_gold'])}")
    if own:
        text += f", vs its own gold ({_name(own['vs'])}) {_diff(own)}"
    if style_ok:
        what = f"of {x}'s style"
        text += f": {_verdict(r['artist_style_vs_gold'], what, 'the gold model')}"
    text += (f"; copies of {x}'s works (vs the whole work) {_rate(r['copies_of_artist_works'])}, vs gold "
             f"{_diff(r['copies_vs_gold'])}: {_verdict(r['copies_vs_gold'], 'copies', 'the gold model')}.")
    return text


def headline(result: dict) -> str:
    """Computed from the data: the precondition, the probe check, then one sentence per policy (style and copies
    for prompts naming X vs gold and vs its own gold, the rows of X it trained on)."""
    if not result["precondition"]["ok"]:
        return _cannot_measure(result)
    val, parts = result["probe_validation"], []
    if not val["ok"]:
        parts.append(f"No style verdict: {val['why']}.")
    for policy in [m for m in result["datasets"] if m != artist_removal.GOLD]:
        parts.append(_policy_sentence(result, policy, val["ok"]))
    return " ".join(parts)


def _table(result: dict) -> str:
    x, rows = result["artist"], []
    for r in result["summary"]:
        rows.append({"dataset": _name(r["model"]), "prompt": r["kind"].replace("_", " "),
                     f"{x} rows (trained)": _dataset(result, r["model"])["trained_artist_rows"],
                     f"P({x} style)": _rate(r["artist_style"]), "vs gold": _diff(r["artist_style_vs_gold"]),
                     "vs own gold": _diff(r.get("artist_style_vs_own_gold")),
                     f"P({result['control_artist']} style)": _rate(r["control_style"]),
                     "concept drawn (zero-shot)": _rate(r.get("concept_accuracy")), "generations": r["generations"]})
    return H.table(rows)


def _checks(result: dict) -> str:
    """The precondition and the style probe's validation on generations."""
    pre, val, x = result["precondition"], result["probe_validation"], result["artist"]
    rows = [{"check": "precondition: the gold model draws the prompted concepts (prompts naming no artist)",
             "measured": _rate(pre["gold_concept_accuracy"]),
             "needs": f"≥ {pre['min_gold_accuracy']:.2f}, interval above chance {pre['chance']:.2f} "
                      f"({pre['concepts']} concepts, {pre['judge']} zero-shot)",
             "ok": "yes" if pre["ok"] else "no"},
            {"check": f"style probe, false-positive floor: P({x} style) on the gold model, prompts naming {x}",
             "measured": _rate(val["gold_floor"]), "needs": "below the positive control", "ok": ""}]
    if val.get("positive_control"):
        rows.append({"check": f"style probe, positive control: P({x} style) on the {_name(val['positive_control'])} "
                              f"model (trained on {val['positive_control_artist_rows']} of {x}'s works)",
                     "measured": _rate(val["positive_control_rate"]),
                     "needs": f"above the floor: difference {_diff(val['difference'])}, lower bound > 0",
                     "ok": "yes" if val["ok"] else "no"})
    notes = [why for why in (pre["why"], val["why"]) if why]
    return H.table(rows) + "".join(H.note(n + ".") for n in notes)


def _policy_gold(result: dict) -> str:
    """Each policy against its own gold (its rows minus the artist) beside the single gold."""
    x, rows = result["artist"], []
    for policy, own in result.get("policy_gold", {}).items():
        r = _row(result, policy, "names_artist")
        rows.append({"policy": _name(policy), "own gold": _name(own),
                     f"{x} rows (trained)": result["datasets"][policy]["trained_artist_rows"],
                     "own gold rows": _dataset(result, own)["trained_rows"],
                     "style vs own gold": _diff(r.get("artist_style_vs_own_gold")),
                     "style vs gold": _diff(r["artist_style_vs_gold"]),
                     "copies vs own gold": _diff(r.get("copies_vs_own_gold")),
                     "copies vs gold": _diff(r["copies_vs_gold"])})
    return H.note(f"Prompts naming {x}. A policy's own gold trains on exactly its rows without any row of {x}: "
                  "the difference is what the rows of X it kept add, other rows held equal.") + H.table(rows)


def _compliance(result: dict) -> str:
    x, both = result["artist"], {**result["datasets"], **result.get("datasets_minus_artist", {})}
    rows = [{"dataset": _name(k), "rows kept": v["rows"], f"{x} rows kept (leaks)": v["artist_rows"],
             f"rows naming {x}": v["rows_naming_artist"], f"{result['control_artist']} rows": v["control_rows"],
             "rows in the trained concepts": v["trained_rows"], f"{x} rows trained on": v["trained_artist_rows"]}
            for k, v in both.items()]
    return H.table(rows)


def _closeness(result: dict) -> str:
    bg, x = result["background_nn_similarity"], result["artist"]
    mem, copy = result["memorisation_test"], result.get("copy_test", {})
    rows = [{"dataset": _name(r["model"]), f"copies of {x}'s works (vs the whole work)":
             _rate(r["copies_of_artist_works"]), "copies vs gold": _diff(r["copies_vs_gold"]),
             "memorised (own training set)": _rate(r["memorised"]),
             f"memorised, nearest is {x}'s (own training set)": _rate(r["memorised_artist_works"]),
             "NN similarity (median)": round(r["nn_similarity_median"], 3),
             "above background p95": round(r["above_background_p95"], 3)}
            for r in result["summary"] if r["kind"] == "names_artist"]
    return H.note(
        f"Prompts naming {x}. A copy of {x}'s works (Carlini et al. 2023's l2-ratio test against a fixed reference "
        f"set: {copy.get('reference', 'n/a')}): the nearest reference image is {x}'s and l2 to it < {mem['alpha']} × "
        f"mean l2 to the {mem['neighbours']} nearest — a model that never saw {x} can score one. Memorised: the same "
        f"test against the model's own training images. Nearest-neighbour cosine to {x}'s {bg['works']} works in "
        f"{result['feature_space']}'s image space; background (each work to its nearest other work): median "
        f"{bg['median']:.3f}, p95 {bg['p95']:.3f}.") + H.table(rows)


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
                      "rates are means of per-seed rates (interval: seeds then generations resampled, never "
                      "narrower than the exact interval); differences to a gold model pair seed × concept"},
                     {"item": "style probe", "value": f"{', '.join(p['artists'])} on {p['feature_space']} features; "
                      f"held-out concepts ({p['heldout_images']} images): {100 * p['heldout_accuracy']:.1f}% on "
                      f"reconstructions, {100 * p['heldout_accuracy_originals']:.1f}% on originals, chance "
                      f"{100 * p['chance']:.0f}%"}])
    return [("Opt-out: headline", H.note(headline(r))), ("Opt-out: setup", setup),
            ("Opt-out: can this run measure leakage?", _checks(r)),
            ("Opt-out: dataset compliance", _compliance(r)),
            ("Opt-out: what the models draw", _png(folder / "optout.png", "P(X's style) and copies of X's works per "
                                                   "model and prompt kind, 95% intervals") + _table(r)
             + _png(folder / "generations.png", "prompts naming X, the same noise in every row")),
            ("Opt-out: each policy vs its own gold", _policy_gold(r)),
            ("Opt-out: copies and memorisation", _closeness(r))]


def metrics(folder: str | Path) -> dict:
    r = load(folder)
    out = {"optout/probe_heldout_accuracy": r["probe"]["heldout_accuracy"],
           "optout/precondition_ok": r["precondition"]["ok"], "optout/probe_validated": r["probe_validation"]["ok"],
           "optout/gold_concept_accuracy": r["precondition"]["gold_concept_accuracy"]["rate"]}
    for k, v in {**r["datasets"], **r.get("datasets_minus_artist", {})}.items():
        out[f"optout/{k}/artist_rows_kept"] = v["artist_rows"]
    for s in r["summary"]:
        key = f"optout/{s['model']}/{s['kind']}"
        out.update({f"{key}/p_artist_style": s["p_artist_style"], f"{key}/p_artist_style_ci": s["p_artist_style_ci"],
                    f"{key}/diff_vs_gold": s["diff_vs_gold"], f"{key}/diff_vs_gold_ci": s["diff_vs_gold_ci"],
                    f"{key}/memorised": s["memorised"]["rate"],
                    f"{key}/copies_of_artist": s["copies_of_artist_works"]["rate"],
                    f"{key}/copies_of_artist_ci": [s["copies_of_artist_works"]["low"],
                                                   s["copies_of_artist_works"]["high"]]})
        if s.get("artist_style_vs_own_gold"):
            d = s["artist_style_vs_own_gold"]
            out.update({f"{key}/diff_vs_own_gold": d["diff"], f"{key}/diff_vs_own_gold_ci": [d["low"], d["high"]]})
    return out
