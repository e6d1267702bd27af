"""`mithridate report poisoning`: the `poison sweep` in one page — does a handful of poisons hijack a prompt?

Reads only the sweep folder (`sweep.json`, `results.parquet`, `defences.json`, `asr.png`, `generations.png`,
`poisons/`), so it can be rebuilt without rerunning. Every number on the page comes from those files, seeds
pooled (`poisoning.dose_figure.pooled`: bootstrap 95% intervals over all generations of a group). Sections:

1. Headline — P(judge says A) for the prompt C at each N, per attack, beside the clean control; whether each
   attack's interval overlaps the control's (no measurable effect); the CLIP filter's pass rate per attack.
2. Setup — concepts, clean images of C and A, N as a share of the clean C images, victim training, budget
   (verbatim label), judge, sampler, white-box or transfer setting.
3. Attack success — the ASR-vs-N figure and one row per (attack, N) without purification; the benign victim
   (the nightshade candidates unperturbed) is nightshade's control.
4. Generations — the first seed's victims on the prompt C, same noise for every row.
5. Bleed-through — the concepts nearest to and farthest from C, control vs the N_max victims.
6. Collateral — judge accuracy and KID on every other concept, control vs the N_max victims.
7. Poisons — originals above poisons, and their pixel quality (nightshade) or their caption pairing (dirty-label).
8. Defences — the CLIP-score filter, the latent-consistency detector, purification at N_max.
9. How to read this — judge, chance level, intervals.

Beside `poisoning.html` it writes `poisoning_metrics.json`, a flat dict of `poisoning/*` numbers.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mithridate.core import disk, options
from poisoning import attacks, doses
from poisoning.dose_figure import pooled
from reports import html as H

logger = logging.getLogger(__name__)

QUALITY = ("linf", "psnr", "ssim", "gap_closed", "gap_closed_victim", "latent_dist_before", "latent_dist_after")


@dataclass(frozen=True)
class PoisoningReportConfig:
    sweep: str = options.opt("mithridate-out/poison-sweep", "`poison sweep` folder (sweep.json, results.parquet, "
                             "defences.json, asr.png, generations.png, poisons/)")
    out: str = options.opt("mithridate-out/report", "report folder: poisoning.html, poisoning_metrics.json")
    attackability: str = options.opt("", "`poison attackability` output (attackability.json; '' = the one beside "
                                      "the victim's autoencoder, if any)")
    study: str = options.opt("", "`poison study` folder (study.json, frontier.png) to include ('' = none)")
    more: tuple[str, ...] = options.opt((), "further `poison sweep` folders (other concept pairs), each reported in "
                                        "its own sections after the first")


PRESETS = {"default": PoisoningReportConfig(), "tiny": PoisoningReportConfig()}


# --- loading -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """The sweep folder's outputs."""
    folder: Path
    info: dict  # sweep.json
    table: pd.DataFrame  # results.parquet without the implosion victims
    defences: dict  # defences.json
    implosion: pd.DataFrame  # results.parquet rows of the implosion victims (may be empty)

    @property
    def cfg(self) -> dict:
        return self.info["config"]

    @property
    def n_max(self) -> int:
        return max(self.cfg["ns"])

    @property
    def attacks(self) -> list[str]:
        """The swept attacks (not the control, not benign), in the config's order, then the positive control."""
        return [a for a in list(self.cfg["attacks"]) + [doses.POSITIVE] if a in set(self.table.attack)]

    @property
    def pair(self) -> str:
        return f"{self.info['source']} → {self.info['target']}"

    def poisons(self, attack: str) -> Path:
        return self.folder / "poisons" / f"{attack}-s{self.cfg['seeds'][0]}"


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run `mithridate poison sweep` first)")
    return path


def load(folder: str | Path) -> Sweep:
    folder = Path(folder)
    info = json.loads(_need(folder / "sweep.json").read_text())
    table = pd.read_parquet(_need(folder / "results.parquet"))
    defences = json.loads(_need(folder / "defences.json").read_text())
    imp = table.implosion > 0 if "implosion" in table else pd.Series(False, index=table.index)
    return Sweep(folder, info, table[~imp], defences, table[imp])


# --- rates ---------------------------------------------------------------------------------------------------------


def _rows(sw: Sweep, role: str, attack: str, n: int | None = None, purification: str = "none") -> pd.DataFrame:
    t = sw.table
    keep = (t.role == role) & (t.attack == attack) & (t.purification == purification)
    if "eps_sweep" in t:
        keep &= ~t.eps_sweep.astype(bool)
    return t[keep & (t.n == n)] if n is not None else t[keep]


def _rate(rows: pd.DataFrame, hits: str) -> tuple[float, float, float] | None:
    return pooled(rows, hits) if len(rows) and rows.generations.sum() > 0 else None


def _ci(r: tuple[float, float, float] | None, pct: bool = False) -> str:
    if r is None:
        return "—"
    if pct:
        return f"{100 * r[0]:.0f}% [{100 * r[1]:.0f}%, {100 * r[2]:.0f}%]"
    return f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"


def _cell(r: tuple[float, float, float] | None, pct: bool = False) -> str:
    """`_ci` for a table cell: kept on one line."""
    return _ci(r, pct).replace(" ", "\u00a0")


def _overlap(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and a[1] <= b[2] and b[1] <= a[2]


def _name(sw: Sweep, attack: str) -> str:
    """An attack's display name; transfer runs (crafted against another autoencoder) say so."""
    name = {"none": "control", "benign": "benign", doses.POSITIVE: "positive control (anchor image as poison)"}.get(
        attack, attack.replace("_", "-"))
    return name + (" (transfer)" if sw.info.get("setting", {}).get(attack) == "transfer" else "")


def _label(sw: Sweep, attack: str, n: int) -> str:
    if attack == "none":
        return "control (clean data)"
    if attack == "benign":
        return f"benign N={n} (candidates unperturbed: nightshade's control)"
    return f"{_name(sw, attack)} N={n}"


def _groups(sw: Sweep) -> list[tuple[str, int, pd.DataFrame]]:
    """(attack, N, source rows) without purification: control first, then each attack by N, then benign."""
    t = doses.source_rows(sw.table)
    order = ["none"] + sw.attacks + ["benign"]
    return [(a, int(n), g) for a in order for n, g in t[t.attack == a].groupby("n", sort=True)]


def _share(sw: Sweep, n: int) -> str:
    k = sw.info["clean_source_samples"]
    return f"{100 * n / k:.2g}%" if k else "no clean images of the source"


# --- headline ------------------------------------------------------------------------------------------------------


def _per_n(sw: Sweep) -> str:
    src, tgt, k = sw.info["source"], sw.info["target"], sw.info["clean_source_samples"]
    parts = []
    for n in sorted(sw.cfg["ns"]):
        cells = [f"{_name(sw, a)} {_ci(_rate(_rows(sw, 'source', a, n), 'hits_target'))}"
                 for a in sw.attacks + ["benign"] if len(_rows(sw, "source", a, n))]
        parts.append(f"at N={n}: " + ", ".join(cells))
    control = _ci(_rate(_rows(sw, "source", "none", 0), "hits_target"))
    prompt = sw.cfg.get("prompt", "{}").format(src)
    return (f"For the prompt {prompt!r}, P(judge says {tgt!r}) with 95% intervals is {control} for the control; "
            + "; ".join(parts) + f" (N={sw.n_max} is {_share(sw, sw.n_max)} of the {k} clean {src!r} images).")


def _overlaps(sw: Sweep, attack: str) -> str:
    """Whether the attack's P(target) interval overlaps the control's at each N, and P(source) at N_max."""
    tgt, src = sw.info["target"], sw.info["source"]
    control = _rate(_rows(sw, "source", "none", 0), "hits_target")
    ns = [n for n in sorted(sw.cfg["ns"]) if len(_rows(sw, "source", attack, n))]
    same = [n for n in ns if _overlap(_rate(_rows(sw, "source", attack, n), "hits_target"), control)]
    name = _name(sw, attack)
    name = name[:1].upper() + name[1:]
    if len(same) == len(ns):
        text = f"{name}'s P({tgt!r}) interval overlaps the control's at every N: no measurable effect toward {tgt!r}."
    elif not same:
        text = f"{name}'s P({tgt!r}) interval clears the control's at every N."
    else:
        text = (f"{name}'s P({tgt!r}) interval overlaps the control's at N={', '.join(map(str, same))} (no "
                f"measurable effect there) and clears it at N={', '.join(str(n) for n in ns if n not in same)}.")
    mine = _rate(_rows(sw, "source", attack, sw.n_max), "hits_prompt")
    ctrl = _rate(_rows(sw, "source", "none", 0), "hits_prompt")
    if mine is not None and ctrl is not None and not _overlap(mine, ctrl):
        text += f" At N={sw.n_max}, {_name(sw, attack)} moves P({src!r}) to {_ci(mine)} (control {_ci(ctrl)})."
        benign = _rate(_rows(sw, "source", "benign", sw.n_max), "hits_prompt")
        if attack == "nightshade" and benign is not None:
            text += (f" The benign victim (the same {sw.n_max} images unperturbed) gives {_ci(benign)}: "
                     + ("indistinguishable, so the drop is what adding those images does; the perturbation adds "
                        "nothing measurable." if _overlap(mine, benign)
                        else "the intervals do not overlap, so the perturbation changes what the images alone do."))
    return text


def _clip_sentence(sw: Sweep) -> str:
    f = sw.defences["clip_filter"]
    cells = [f"{_ci((r['pass_rate'], *r['pass_rate_ci']), pct=True)} of {r['poisons']} {_name(sw, a)} poisons"
             for a, r in f["attacks"].items()]
    return f"The CLIP-score filter (threshold {f['threshold']:.3f}) passes " + " and ".join(cells) + "."


def _verdicts(sw: Sweep) -> str:
    """Preconditions first; then per attack the smallest dose that clears the control (or none, or why not)."""
    i = sw.info
    pre, sens = i["preconditions"], i["positive_control"]
    if not pre["ok"]:
        return (f"This sweep cannot measure an attack on {i['source']!r}: " + "; ".join(pre["why"]) + ". No attack "
                "verdict is given (this is not 'no measurable effect').")
    parts = []
    if sens.get("measured"):
        vs = sens["vs_control"]
        parts.append(f"Positive control (the anchor image itself as every poison, N={sens['n']}): P({i['target']!r}) "
                     f"{doses.as_rate(sens['p_target']).text()}, {vs['difference']:+.2f} [{vs['low']:+.2f}, "
                     f"{vs['high']:+.2f}] vs the control — "
                     + ("the measurement can see an attack." if sens["ok"] else
                        "it does NOT clear the control: the measurement cannot see an attack here."))
    for attack, v in i["verdicts"].items():
        if attack != doses.POSITIVE:
            parts.append(f"{_name(sw, attack)[:1].upper() + _name(sw, attack)[1:]}: {v['text']}.")
    return " ".join(parts)


def _headline(sw: Sweep) -> str:
    if "verdicts" in sw.info:
        return " ".join([_per_n(sw), _verdicts(sw), _clip_sentence(sw)])
    return " ".join([_per_n(sw)] + [_overlaps(sw, a) for a in sw.attacks] + [_clip_sentence(sw)])


def headline(sweep_folder: str | Path) -> str:
    """The page's headline for a `poison sweep` folder (the demo logs it)."""
    return _headline(load(sweep_folder))


# --- sections ------------------------------------------------------------------------------------------------------


def _png(path: Path, caption: str) -> str:
    return H.figure(path.read_bytes(), caption) if path.is_file() else H.note(f"missing: {path}")


def _training(cfg: dict) -> str:
    how = "from scratch" if cfg.get("from_scratch") else "continued from the clean model"
    return (f"{cfg['steps']} steps, lr {cfg['lr']:g}, batch {cfg['batch_size']}, warmup "
            f"{cfg.get('warmup_steps', '?')}, {how}")


def _setting(sw: Sweep) -> str:
    words = {"white_box": "white-box (crafted against the victim's own autoencoder)",
             "transfer": f"TRANSFER (crafted against another autoencoder: {sw.cfg.get('vae') or '?'})"}
    training = {"white_box": "white-box (crafted on the clean model's autoencoder and UNet; the victim continues it)",
                "transfer": f"TRANSFER (crafted on another clean model: {sw.cfg.get('craft_checkpoint') or '?'})"}
    return "; ".join(f"{_name(sw, a)}: " + (training.get(s, s) if a in attacks.TRAINING_SIGNAL else words.get(s, s)
                                             if a == "nightshade" else "no perturbation crafted")
                     for a, s in sw.info.get("setting", {}).items())


def _setup(sw: Sweep) -> str:
    i, c = sw.info, sw.cfg
    ns = sorted(c["ns"])
    rows = [("source concept C (prompt hijacked)", i["source"]), ("target concept A", i["target"]),
            ("concepts in the model", f"{len(i['concepts'])}: {', '.join(i['concepts'])}"),
            ("clean training images of C / A", f"{i['clean_source_samples']} / {i['clean_target_samples']}"),
            ("pool candidates per attack", ", ".join(f"{_name(sw, a)} {k}" for a, k in i["pool_candidates"].items())),
            ("N (poisons)", ", ".join(map(str, ns))),
            ("N as a share of the clean C images", ", ".join(f"{n} → {_share(sw, n)}" for n in ns)),
            ("seeds", ", ".join(map(str, c["seeds"]))), ("victim training", _training(c)),
            ("nightshade budget", i["budget_label"]), ("craft steps", c["craft_steps"]),
            ("anchor", c.get("anchor", "?")), ("attack setting", _setting(sw)),
            ("benign victim (candidates unperturbed)", {True: "yes", False: "no"}.get(c.get("benign"), "not recorded")),
            ("judge", i["judge"]), ("prompt", c.get("prompt", "{}").format(i["source"])),
            ("dose fractions", ", ".join(f"{100 * f:.3g}%" for f in c.get("fractions") or []) or "— (N given)"),
            ("sampler", f"{c['sampler']}, {c['sample_steps']} steps, guidance {c['guidance']:g}"),
            ("generations per victim", f"{c['generations']} of the prompt C; {c['bleed_generations']} per "
                                       f"bleed-through concept; {c['collateral_per_concept']} per other concept"),
            ("purifications at N_max", ", ".join(c.get("purify") or []) or "none"),
            ("detector false-positive rate", c["fpr"]), ("sweep time (s)", i.get("seconds"))]
    return H.table([{"setting": k, "value": f"{v:g}" if isinstance(v, float) else str(v)} for k, v in rows])


def _success(sw: Sweep) -> str:
    src, tgt = sw.info["source"], sw.info["target"]
    rows = [{"victims": _label(sw, a, n), "N": n, "N / clean C": "—" if a == "none" else _share(sw, n),
             f"P({tgt})": _cell(_rate(g, "hits_target")), f"P({src})": _cell(_rate(g, "hits_prompt")),
             "generations": int(g.generations.sum()), "seeds pooled": int(g.seed.nunique())}
            for a, n, g in _groups(sw)]
    return (_png(sw.folder / "asr.png", f"P(judge says {tgt!r}) and P(judge says {src!r}) for the prompt {src!r} "
                 "against N (0 = control), seeds pooled, 95% bootstrap intervals") + H.table(rows))


def _preconditions(sw: Sweep) -> str:
    pre = sw.info.get("preconditions")
    if pre is None:
        return H.note("not recorded (a sweep written before preconditions were checked)")
    rows = []
    for c in pre["checks"]:
        v = c["value"]
        shown = doses.as_rate(v).text() if isinstance(v, dict) else "—" if v is None else f"{v:.2f}"
        rows.append({"check": c["check"], "measured": shown, "floor": c["floor"], "ok": "yes" if c["ok"] else "NO"})
    verdict = "All preconditions hold: the attacks below can be measured." if pre["ok"] else \
        "The experiment cannot measure an attack on this concept: " + "; ".join(pre["why"]) + "."
    j = sw.info.get("judge_info", {})
    judge = (f"Judge: {j.get('name', sw.info.get('judge'))}; held-out accuracy on real images "
             f"{j.get('heldout_accuracy', float('nan')):.2f} (chance {j.get('chance', float('nan')):.2f}; "
             f"{_split(j.get('split'))}).")
    return H.note(verdict) + H.table(rows) + H.note(judge)


def _split(split) -> str:
    """The judge's held-out split in words."""
    if not isinstance(split, dict):
        return split or "split not recorded"
    return (f"{len(split.get('heldout_groups', []))} whole {split.get('by', 'group')}s held out, "
            f"{split.get('train_groups', '?')} trained on ({split.get('train_images', '?')} images)")


def _dose_table(sw: Sweep) -> str:
    tgt, src = sw.info["target"], sw.info["source"]
    rows = []
    for attack, curve in sw.info["doses"].items():
        for d in curve:
            vs = d.get("vs_control", {})
            rows.append({"attack": _name(sw, attack), "dose": f"{100 * d['fraction']:.3g}%", "N": d["n"],
                         f"P({tgt}) (per seed)": doses.as_rate(d["p_target"]).text(),
                         "vs control": f"{vs.get('difference', float('nan')):+.2f} [{vs.get('low', float('nan')):+.2f}, "
                                       f"{vs.get('high', float('nan')):+.2f}]",
                         "clears": "yes" if vs.get("clears") else "no",
                         f"P({src})": doses.as_rate(d["p_source"]).text()})
    return H.table(rows)


def _poison_means(sw: Sweep, attack: str) -> dict:
    """Mean L∞ (×255), PSNR, SSIM of an attack's poisons over the seeds, and its crafting time per poison."""
    frames, secs = [], []
    for seed in sw.cfg["seeds"]:
        folder = sw.folder / "poisons" / f"{attack}-s{seed}"
        if (folder / "poisons.parquet").is_file():
            frames.append(pd.read_parquet(folder / "poisons.parquet"))
        if (folder / "manifest.json").is_file():
            secs.append(json.loads((folder / "manifest.json").read_text()).get("craft_seconds_per_poison"))
    p = pd.concat(frames) if frames else pd.DataFrame()
    mean = lambda c, k=1.0: k * float(p[c].replace([np.inf, -np.inf], np.nan).mean()) if c in p else math.nan  # noqa: E731
    secs = [s for s in secs if s is not None]
    return {"L∞ ×255": mean("linf", 255), "PSNR dB": mean("psnr"), "SSIM": mean("ssim"),
            "craft s/poison": float(np.mean(secs)) if secs else math.nan}


def _attack_table(sw: Sweep) -> str:
    """Attacks side by side: P(target) at every dose (seed-level intervals, * = clears the control), the poisons'
    budget used, crafting time, and the CLIP filter's pass rate."""
    clip = sw.defences.get("clip_filter", {}).get("attacks", {})
    col = lambda d: f"P({sw.info['target']}) at {100 * d['fraction']:.3g}% (N={d['n']})"  # noqa: E731
    cols = list(dict.fromkeys(col(d) for a in sw.attacks for d in sw.info["doses"].get(a, [])))
    rows = []
    for attack in sw.attacks:
        row = {"attack": _name(sw, attack), **dict.fromkeys(cols, "—")}
        for d in sw.info["doses"].get(attack, []):
            row[col(d)] = doses.as_rate(d["p_target"]).text() + (" *" if d.get("vs_control", {}).get("clears") else "")
        row.update({k: "—" if math.isnan(v) else f"{v:.3g}" for k, v in _poison_means(sw, attack).items()})
        c = clip.get(attack)
        row["CLIP filter pass"] = _cell((c["pass_rate"], *c["pass_rate_ci"]), pct=True) if c else "—"
        rows.append(row)
    return H.note("Every attack on the same victims, controls and seeds: * marks a dose whose P(target) clears the "
                  "control's (paired by seed). Budget used is measured on the poisons (NaN: no pixel change); "
                  "crafting time is per poison on this machine.") + H.table(rows)


def _doses(sw: Sweep) -> str:
    if "doses" not in sw.info:
        return H.note("not recorded (a sweep written before dose analysis)")
    c = sw.info["control"]
    intro = (f"Poisons as a share of the {sw.info['clean_source_samples']} clean {sw.info['source']!r} images; the "
             f"control (no poisons, same seeds and steps) gives P({sw.info['target']!r}) "
             f"{doses.as_rate(c['p_target']).text()}. Intervals: seeds resampled, then generations (never narrower "
             "than the exact interval of the pooled counts); 'vs control' pairs each victim with the control of its "
             "own seed.")
    return (H.note(intro) + _png(sw.folder / "doses.png", "P(target) against the dose, per attack; the grey band "
            "is the control; one small dot per training seed") + _dose_table(sw) + "<h3>Attacks side by side</h3>"
            + _attack_table(sw))


def _eps(sw: Sweep) -> str:
    curve = sw.info.get("eps_curve") or []
    if not curve:
        return H.note("no ε sweep in this run (`--eps_sweep=4,8,16,32,64,255`)")
    tgt = sw.info["target"]
    rows = [{"ε": f"{c['eps_255']:g}/255", "N": c["n"], "gap closed (measured)": f"{c['gap_closed']:.3f}",
             f"P({tgt})": doses.as_rate(c["p_target"]).text(),
             "vs control": f"{c['vs_control']['difference']:+.2f} [{c['vs_control']['low']:+.2f}, "
                           f"{c['vs_control']['high']:+.2f}]", "clears": "yes" if c["vs_control"]["clears"] else "no"}
            for c in curve]
    top = curve[-1]
    if not any(c["vs_control"]["clears"] for c in curve):
        note = (f"Even ε = {top['eps_255']:g}/255 (gap closed {top['gap_closed']:.2f}) does not move P({tgt!r}) above "
                "the control. If the positive control does, the 'smooth autoencoder' explanation is incomplete: "
                "a poison must close more than the gap measured here, or the pipeline undoes it.")
    else:
        first = next(c for c in curve if c["vs_control"]["clears"])
        note = (f"P({tgt!r}) first clears the control at ε = {first['eps_255']:g}/255, where the poisons close "
                f"{first['gap_closed']:.2f} of the latent gap: the pipeline needs about that much.")
    return _png(sw.folder / "eps.png", "P(target) against the latent gap closed by the ε sweep's poisons") + \
        H.table(rows) + H.note(note)


def _generations(sw: Sweep) -> str:
    return _png(sw.folder / "generations.png",
                f"one row per victim of seed {sw.cfg['seeds'][0]} (name at left): the first 8 generations of the "
                f"prompt {sw.info['source']!r}, the same noise in every row, so rows differ only by the weights")


def _detailed(sw: Sweep) -> list[tuple[str, str, int]]:
    """(label, attack, N) of the victims measured in detail: the control and each attack at N_max."""
    return [("control", "none", 0)] + [(f"{_name(sw, a)} N={sw.n_max}", a, sw.n_max) for a in sw.attacks]


def _concept_rows(sw: Sweep, role: str, attack: str, n: int, concept: str) -> pd.DataFrame:
    g = _rows(sw, role, attack, n)
    return g[g.concept == concept]


def _bleed_row(sw: Sweep, role: str, concept: str, sim: float) -> dict:
    row = {"concept": concept, "role": role, "similarity to C": float(sim)}
    for label, a, n in _detailed(sw):
        g = _concept_rows(sw, role, a, n, concept)
        row[f"{label}: P(concept)"] = _cell(_rate(g, "hits_prompt"))
        row[f"{label}: P({sw.info['target']})"] = _cell(_rate(g, "hits_target"))
    return row


def _bleed(sw: Sweep) -> str:
    groups = sw.info.get("bleed") or {}
    rows = [_bleed_row(sw, role, c, s) for role in ("near", "far") for c, s in groups.get(role, [])]
    if not rows:
        return H.note("no bleed-through concepts in this sweep (bleed = 0)")
    chance = 1 / len(sw.info["concepts"])
    control = {c: _rate(_concept_rows(sw, role, "none", 0, c), "hits_target")
               for role in ("near", "far") for c, _ in groups.get(role, [])}
    odd = [c for c, r in control.items() if r is not None and r[1] > chance]
    intro = H.note(f"Nearest and farthest concepts to {sw.info['source']!r} in the text encoder's space; does the "
                   f"attack also turn them into {sw.info['target']!r}?")
    warn = H.note(f"In the control, prompts for {', '.join(map(repr, odd))} are already judged "
                  f"{sw.info['target']!r} above chance: an attack's effect there cannot be told apart.") if odd else ""
    return intro + H.table(rows) + warn


def _collateral(sw: Sweep) -> str:
    rows = []
    for label, a, n in _detailed(sw):
        g = _rows(sw, "others", a, n)
        if len(g):
            rows.append({"victims": label, "prompts": g.concept.iloc[0], "generations": int(g.generations.sum()),
                         "concept accuracy": _cell(_rate(g, "hits_prompt")), "KID×10³": 1e3 * float(g.kid.mean())})
    if not rows:
        return H.note("no collateral measurement in this sweep (collateral_per_concept = 0)")
    return H.note("Every concept other than C and A, prompted and judged: does poisoning C damage the rest of the "
                  "model? KID compares those generations with the real images of the same concepts.") + H.table(rows)


def _implosion(sw: Sweep) -> str:
    """Per implosion victim: each poisoned pair's success, then general quality beside the control's."""
    if sw.implosion.empty:
        return H.note("no implosion victim in this sweep (`--implosion=K` poisons K more concept pairs at once)")
    ctrl = _rows(sw, "others", "none", 0)
    parts = []
    for name, g in sw.implosion.groupby("victim", sort=False):
        pairs = [{"poisoned prompt": r.concept, "target": r.target_concept, "generations": int(r.generations),
                  "P(target)": _cell(_rate(g[g.concept == r.concept].head(1), "hits_target")),
                  "P(prompt)": _cell(_rate(g[g.concept == r.concept].head(1), "hits_prompt"))}
                 for r in g[g.role == "implosion"].itertuples()]
        quality = [{"victims": label, "concept accuracy": _cell(_rate(x, "hits_prompt")),
                    "KID×10³": 1e3 * float(x.kid.mean())}
                   for label, x in (("control", ctrl), (name, g[g.role == "others"])) if len(x)]
        parts.append(f"<h3>{H.esc(name)}</h3>" + H.table(pairs) + H.table(quality))
    return H.note("Nightshade's 'model implosion': many concepts poisoned at once. Does the model's general quality "
                  "(all concepts but C and A) drop below the control's?") + "".join(parts)


def _implosion_metrics(sw: Sweep) -> dict:
    m = {}
    for name, g in sw.implosion.groupby("victim", sort=False):
        pairs, others = g[g.role == "implosion"], g[g.role == "others"]
        m[f"poisoning/implosion/{name}/pairs"] = len(pairs)
        m[f"poisoning/implosion/{name}/mean_p_target"] = float(pairs.p_target.mean()) if len(pairs) else None
        if len(others):
            m[f"poisoning/implosion/{name}/accuracy"] = float(_rate(others, "hits_prompt")[0])
            m[f"poisoning/implosion/{name}/kid"] = float(others.kid.mean())
    return m


def _attackability_path(cfg: PoisoningReportConfig, sw: Sweep) -> Path | None:
    if cfg.attackability:
        return _need(Path(cfg.attackability))
    from diffusion import pipeline
    from poisoning.attackability import vae_folder

    source = pipeline.read_checkpoint(sw.cfg["checkpoint"])["vae"].get("source", "")
    path = vae_folder(source) / "attackability.json" if source else None
    return path if path is not None and path.is_file() else None


def _attackability(path: Path | None, study_dir: str) -> str:
    """The victim autoencoder's attackability curve and, with a study, the design frontier."""
    if path is None and not study_dir:
        return H.note("not measured: run `mithridate poison attackability --vae=<the victim's vae folder>`")
    parts = []
    if path is not None:
        r = json.loads(path.read_text())
        rows = [{"ε (×1/255)": p["eps_255"], "gap closed": _cell(tuple(p["gap_closed"])),
                 "transfer": p["gap_closed_transfer"][0] if "gap_closed_transfer" in p else None,
                 "poison PSNR (dB)": p["psnr"][0], "poison SSIM": p["ssim"][0]} for p in r["points"]]
        v = r["verdict"]
        best = "none" if v["best_invisible_gap"] is None else f"{v['best_invisible_gap']:.3f}"
        parts.append(H.note(f"How much of the encoder-space distance to the anchor an L∞ attack can close on the "
                            f"victim's autoencoder ({', '.join(r['pairs'])}; {r['steps']} steps). Goal of a "
                            f"working clean-label attack: {v['goal']}; best at an invisible budget: {best}.")
                     + _png(path.with_suffix(".png"), "attackability: gap closed per budget") + H.table(rows))
    if study_dir:
        parts.append(_study(Path(study_dir)))
    return "".join(parts)


def _attackability_metrics(path: Path | None, study_dir: str) -> dict:
    m = {}
    if path is not None:
        for p in json.loads(path.read_text())["points"]:
            m[f"poisoning/attackability/eps{p['eps_255']:g}/gap_closed"] = p["gap_closed"][0]
            m[f"poisoning/attackability/eps{p['eps_255']:g}/poison_psnr"] = p["psnr"][0]
    if study_dir:
        for variant, r in json.loads((Path(study_dir) / "study.json").read_text()).items():
            m[f"poisoning/study/{variant}/recon_psnr_db"] = r["recon_psnr_db"]
            m[f"poisoning/study/{variant}/best_invisible_gap"] = r["best_invisible_gap"]
            for p in r["points"]:
                m[f"poisoning/study/{variant}/eps{p['eps_255']:g}/gap_closed"] = p["gap"]
    return m


def _study(folder: Path) -> str:
    s = json.loads(_need(folder / "study.json").read_text())
    rows = []
    for variant, r in s.items():
        at = {round(p["eps_255"], 1): p for p in r["points"]}
        rows.append({"autoencoder": variant, "seeds": r["seeds"], "recon PSNR (dB)": r["recon_psnr_db"],
                     **{f"gap @ {e:g}/255": at[e]["gap"] if e in at else None for e in (4.0, 8.0, 16.0, 64.0)},
                     "transfer @ 8/255": at[8.0]["transfer"] if 8.0 in at else None,
                     "best invisible gap": r["best_invisible_gap"], "meets goal": r["meets_goal"]})
    return ("<h3>Autoencoder design study</h3>" + H.note(_victim_choice(s)) + _png(
        folder / "frontier.png", "gap closed at 8/255 against reconstruction PSNR, one point per autoencoder")
        + H.table(rows))


def _victim_choice(study: dict) -> str:
    """Which autoencoder the victim should use, and why, from the study's verdicts."""
    meets = [v for v, r in study.items() if r["meets_goal"]]
    gaps = {v: r["best_invisible_gap"] or 0.0 for v, r in study.items()}
    best = max(gaps, key=gaps.get)
    if meets:
        return (f"Variants meeting the goal: {', '.join(meets)} — train the victim's autoencoder as one of them "
                "(`vae train` with that variant's settings, see `poison study --help`) to give clean-label poisoning "
                "a fair chance, and keep the smooth 32px-f4 as the contrast.")
    return (f"No variant meets the goal; the most attackable is {best} ({gaps[best]:.3f} of the gap at an invisible "
            "budget). The victim keeps the demo's 32 px f4 autoencoder — the smooth contrast — because no brittle "
            "configuration exists among those measured: a Nightshade-style attack here is expected to fail for the "
            "autoencoder's sake, not the attack's.")


def _quality_table(p: pd.DataFrame) -> str:
    rows = []
    for col in [c for c in QUALITY if c in p]:
        v = p[col].replace([np.inf, -np.inf], np.nan).dropna().astype(float)
        if len(v):
            rows.append({"metric": col, "mean": v.mean(), "min": v.min(), "max": v.max()})
        if col == "linf" and len(v):
            rows.append({"metric": "linf ×255", "mean": 255 * v.mean(), "min": 255 * v.min(), "max": 255 * v.max()})
    return H.table(rows)


def _dirty_note(sw: Sweep, p: pd.DataFrame) -> str:
    return H.note(f"No pixel change: {len(p)} images of {sw.info['target']!r} (from {p.original_uid.nunique()} "
                  f"distinct pool images) paired with captions of {sw.info['source']!r} candidates.") + \
        H.table(p[["uid", "original_uid", "caption", "candidate_clip_score"]].to_dict("records"))


def _poison_block(sw: Sweep, attack: str) -> str:
    folder = sw.poisons(attack)
    fig = _png(folder / "poisons.png", f"{_name(sw, attack)}: pool originals (top) above the poisons (bottom)")
    if not (folder / "poisons.parquet").is_file():
        return fig
    p = pd.read_parquet(folder / "poisons.parquet")
    if attack == "dirty_label":
        return fig + _dirty_note(sw, p)
    if attack == "benign":
        return fig + H.note(f"The {len(p)} nightshade candidates unperturbed, with their own captions.")
    transfer = " (under the attacked autoencoder; gap_closed_victim: under the victim's own)" \
        if "gap_closed_victim" in p else ""
    return fig + H.note(f"budget {sw.info['budget_label']}; gap_closed = the share of the encoder-space distance "
                        f"to the anchor that the perturbation removed{transfer}") + _quality_table(p)


def _poisons(sw: Sweep) -> str:
    attacks = sw.attacks + (["benign"] if sw.poisons("benign").is_dir() else [])
    return "".join(f"<h3>{H.esc(_name(sw, a))} (seed {sw.cfg['seeds'][0]})</h3>{_poison_block(sw, a)}"
                   for a in attacks)


def _clip_table(sw: Sweep) -> str:
    f = sw.defences["clip_filter"]
    rows = [{"images": f"{_name(sw, a)} poisons", "count": r["poisons"],
             "pass rate": _cell((r["pass_rate"], *r["pass_rate_ci"]), pct=True), "mean score": r["mean_score"],
             "min score": min(r["scores"], default=math.nan), "max score": max(r["scores"], default=math.nan)}
            for a, r in f["attacks"].items()]
    clean = np.asarray(sw.defences.get("clean_source_clip_scores") or [], dtype=float)
    if clean.size:
        rows.append({"images": f"clean {sw.info['source']!r} rows", "count": int(clean.size),
                     "pass rate": f"{100 * float(np.mean(clean >= f['threshold'])):.0f}%",
                     "mean score": float(clean.mean()), "min score": float(clean.min()),
                     "max score": float(clean.max())})
    return H.note(f"CLIP-score filter: image–caption score ≥ {f['threshold']:.4f} passes (threshold from: "
                  f"{f['threshold_from']}).") + H.table(rows)


def _detector_table(sw: Sweep) -> str:
    d = sw.defences["detector"]
    if "benign" not in d:
        rows = [{"poisons": _name(sw, a), "target FPR": r["fpr_target"], "achieved FPR": r["fpr"],
                 "recall": r["recall"], "precision": r["precision"], "AUC": r["auc"], "clean images": r["clean"],
                 "poison images": r["poisons"]} for a, r in d["attacks"].items()]
        return H.note(f"Detector: {d['kind']} (no benign control recorded).") + H.table(rows)
    rows = []
    for fmt in d["formats"]:
        b = d["benign"][fmt]
        rows.append({"clean rows": f"{fmt} ({d['formats'][fmt]})", "flagged images": "benign (unperturbed, same "
                     "source as the poisons)", "recall": b["recall"], "AUC": b["auc"], "margin over benign (AUC)": "—"})
        for a, r in d["attacks"].items():
            f = r["by_format"][fmt]
            rows.append({"clean rows": f"{fmt} ({d['formats'][fmt]})", "flagged images": _name(sw, a),
                         "recall": f["recall"], "AUC": f["auc"],
                         "margin over benign (AUC)": f"{f['auc_margin_over_benign']:+.2f}"})
    return H.note(f"Detector: {d['kind']}; flags an image whose score exceeds the clean images' (1 − FPR) quantile "
                  f"(FPR {sw.cfg['fpr']:g}). Beside each attack, the benign control: the same candidate images "
                  "unperturbed. What the detector sees in the benign row is where the images came from, not the "
                  "attack; the headline is the margin over it, per format of the clean rows.") + H.table(rows)


def _purify_table(sw: Sweep) -> str:
    methods = [m for m in sw.cfg.get("purify") or [] if (sw.table.purification == m).any()]
    if not methods:
        return H.note("no purification in this sweep")
    src, tgt = sw.info["source"], sw.info["target"]
    rows = []
    for a, n in [("none", 0)] + [(a, sw.n_max) for a in sw.attacks]:
        for m in ["none"] + methods:
            g = _rows(sw, "source", a, n, m)
            rows.append({"victims": _label(sw, a, n), "purification": m, f"P({tgt})": _cell(_rate(g, "hits_target")),
                         f"P({src})": _cell(_rate(g, "hits_prompt")), "generations": int(g.generations.sum())})
    return H.note("Every training row purified before the victim trains (a defender cannot tell poisons apart).") + \
        H.table(rows)


def _defences(sw: Sweep) -> str:
    return "<h3>CLIP filter</h3>" + _clip_table(sw) + "<h3>Detector</h3>" + _detector_table(sw) + \
        f"<h3>Purification at N={sw.n_max}</h3>" + _purify_table(sw)


def _how_to_read(sw: Sweep) -> str:
    k = len(sw.info.get("judge_info", {}).get("concepts") or sw.info["concepts"])
    return H.note(
        f"The judge ({sw.info['judge']}) labels each generation with one of {k} concepts; chance is 1/{k} = "
        f"{1 / k:.3f}. A rate of one model carries an exact (Clopper–Pearson) 95% interval; a rate over seeds, a "
        "two-stage bootstrap (seeds, then generations) widened to the exact interval of the pooled counts, with the "
        "per-seed rates beside it. Every victim samples from the same noise as its control, so 'vs control' pairs "
        "them by seed. A verdict is only given when the preconditions hold (the control draws C; the judge knows C "
        "and A on held-out real images) and the positive control shows that an attack can be seen. P(C) falling "
        "without P(A) rising means the prompt drifted to some other concept, not that it was hijacked.")


# --- metrics -------------------------------------------------------------------------------------------------------


def _rate_metrics(key: str, g: pd.DataFrame, prompt: str = "p_source") -> dict:
    """`key/p_target` and `key/<prompt>` (P(judge says the prompted concept)) with their intervals."""
    m = {}
    for name, hits in (("p_target", "hits_target"), (prompt, "hits_prompt")):
        r = _rate(g, hits)
        if r is not None:
            m.update({f"{key}/{name}": r[0], f"{key}/{name}_low": r[1], f"{key}/{name}_high": r[2]})
    m[f"{key}/generations"] = int(g.generations.sum())
    return m


def _setup_metrics(sw: Sweep) -> dict:
    i, c = sw.info, sw.cfg
    m = {"clean_source_samples": i["clean_source_samples"], "clean_target_samples": i["clean_target_samples"],
         "concepts": len(i["concepts"]), "chance": 1 / len(i["concepts"]), "n_max": sw.n_max,
         "seeds": len(c["seeds"]), "steps": c["steps"], "generations": c["generations"], "seconds": i.get("seconds")}
    m.update({f"pool_candidates/{a}": k for a, k in i["pool_candidates"].items()})
    return {f"poisoning/setup/{k}": v for k, v in m.items()}


def _defence_metrics(sw: Sweep) -> dict:
    f, d = sw.defences["clip_filter"], sw.defences["detector"]
    m = {"poisoning/clip_filter/threshold": f["threshold"]}
    for a, r in f["attacks"].items():
        m.update({f"poisoning/clip_filter/{a}/pass_rate": r["pass_rate"], f"poisoning/clip_filter/{a}/pass_rate_low":
                  r["pass_rate_ci"][0], f"poisoning/clip_filter/{a}/pass_rate_high": r["pass_rate_ci"][1],
                  f"poisoning/clip_filter/{a}/mean_score": r["mean_score"]})
    for a, r in d["attacks"].items():
        m.update({f"poisoning/detector/{a}/{k}": r[k] for k in ("recall", "precision", "auc", "fpr")})
    return m


def _dose_metrics(sw: Sweep) -> dict:
    """Preconditions, the positive control, per attack and dose P(target) over seeds with per-seed values, verdicts."""
    i = sw.info
    if "doses" not in i:
        return {}
    m = {"poisoning/preconditions_ok": i["preconditions"]["ok"],
         "poisoning/positive_control_ok": i["positive_control"].get("ok"),
         "poisoning/judge/heldout_accuracy": i.get("judge_info", {}).get("heldout_accuracy")}
    for attack, curve in i["doses"].items():
        for d in curve:
            key = f"poisoning/doses/{attack}/f{100 * d['fraction']:.3g}"
            r = d["p_target"]
            m.update({f"{key}/n": d["n"], f"{key}/p_target": r["rate"], f"{key}/p_target_low": r["low"],
                      f"{key}/p_target_high": r["high"], f"{key}/p_target_per_seed": [x["rate"] for x in r["seeds"]]})
            if "vs_control" in d:
                m.update({f"{key}/vs_control": d["vs_control"]["difference"],
                          f"{key}/vs_control_low": d["vs_control"]["low"],
                          f"{key}/vs_control_high": d["vs_control"]["high"]})
    for attack, v in i["verdicts"].items():
        m[f"poisoning/verdict/{attack}"] = v["status"]
        if v["status"] == "clears":
            m[f"poisoning/verdict/{attack}/fraction"] = v["fraction"]
    for c in i.get("eps_curve") or []:
        key = f"poisoning/eps/{c['eps_255']:g}"
        m.update({f"{key}/gap_closed": c["gap_closed"], f"{key}/p_target": c["p_target"]["rate"],
                  f"{key}/p_target_low": c["p_target"]["low"], f"{key}/p_target_high": c["p_target"]["high"]})
    d = sw.defences["detector"]
    for a, r in d["attacks"].items():
        if "auc_margin_over_benign" in r:
            m[f"poisoning/detector/{a}/auc_margin_over_benign"] = r["auc_margin_over_benign"]
    if "benign" in d:
        m["poisoning/detector/benign/auc"] = d["benign"]["all"]["auc"]
    return m


def _detail_metrics(sw: Sweep) -> dict:
    """Purification at N_max, bleed-through and collateral of the control and the N_max victims."""
    m = {}
    for a, n in [("none", 0)] + [(a, sw.n_max) for a in sw.attacks]:
        who = "control" if a == "none" else a
        for method in sw.cfg.get("purify") or []:
            g = _rows(sw, "source", a, n, method)
            if len(g):
                m.update(_rate_metrics(f"poisoning/purify/{method}/{who}", g))
        for role in ("near", "far"):
            for concept, g in _rows(sw, role, a, n).groupby("concept"):
                m.update(_rate_metrics(f"poisoning/bleed/{who}/{concept.replace(' ', '_')}", g, "p_concept"))
        g = _rows(sw, "others", a, n)
        if len(g):
            m[f"poisoning/collateral/{who}/accuracy"] = _rate(g, "hits_prompt")[0]
            m[f"poisoning/collateral/{who}/kid"] = float(g.kid.mean())
    return m


def metrics(sw: Sweep) -> dict:
    """Flat `poisoning/*` metrics: attack success per (attack, N), defences, bleed, collateral, quality, setup."""
    m = _setup_metrics(sw)
    for a, n, g in _groups(sw):
        key = "poisoning/control" if a == "none" else f"poisoning/{a}/n{n}"
        m.update(_rate_metrics(key, g))
        if a != "none":
            m[f"{key}/poison_ratio"] = float(g.poison_ratio.iloc[0])
    m.update(_defence_metrics(sw))
    m.update(_dose_metrics(sw))
    m.update(_detail_metrics(sw))
    m.update(_implosion_metrics(sw))
    m.update({f"poisoning/quality/{a}/{k}": v for a, q in sw.info.get("poison_quality", {}).items()
              for k, v in q.items()})
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in m.items()}


# --- build ---------------------------------------------------------------------------------------------------------


def _sweep_sections(sw: Sweep) -> list[tuple[str, str]]:
    return [("Headline", H.note(_headline(sw))), ("Preconditions", _preconditions(sw)), ("Setup", _setup(sw)),
            ("Dose response", _doses(sw)), ("ε sweep", _eps(sw)), ("Attack success", _success(sw)),
            ("Generations", _generations(sw)), ("Bleed-through", _bleed(sw)), ("Collateral", _collateral(sw)),
            ("Model implosion", _implosion(sw)), ("Poisons", _poisons(sw)), ("Defences", _defences(sw))]


def sections(cfg: PoisoningReportConfig) -> tuple[list[tuple[str, str]], dict]:
    """(heading, html) sections of the poisoning report and its metrics; with `more`, every sweep's sections are
    headed by its concept pair and its metrics namespaced `poisoning/<source>-<target>/…`."""
    sw = load(cfg.sweep)
    att = _attackability_path(cfg, sw)
    sweeps = [sw] + [load(f) for f in cfg.more]
    parts, m = [], {}
    for k, one in enumerate(sweeps):
        prefix = f"{one.pair}: " if len(sweeps) > 1 else ""
        parts += [(prefix + title, html) for title, html in _sweep_sections(one)]
        mine = metrics(one)
        if k:
            tag = f"{one.info['source']}-{one.info['target']}".replace(" ", "_")
            mine = {key.replace("poisoning/", f"poisoning/{tag}/", 1): v for key, v in mine.items()}
        m.update(mine)
    parts += [("Attackability", _attackability(att, cfg.study)), ("How to read this", _how_to_read(sw))]
    return parts, {**m, **_attackability_metrics(att, cfg.study)}


def headline_all(folders) -> str:
    """The headlines of several sweeps, one per concept pair."""
    sweeps = [load(f) for f in folders]
    if len(sweeps) == 1:
        return _headline(sweeps[0])
    return " ".join(f"[{sw.pair}] {_headline(sw)}" for sw in sweeps)


def build(cfg: PoisoningReportConfig) -> Path:
    """Write `<out>/poisoning.html` and `<out>/poisoning_metrics.json`; returns the HTML path."""
    info = load(cfg.sweep).info
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    parts, m = sections(cfg)
    page = H.page(f"Poisoning: can N poisons make {info['source']!r} produce {info['target']!r}?", parts,
                  H.note(f"sweep: {cfg.sweep}"))
    disk.write_text(out / "poisoning.html", page)
    disk.write_text(out / "poisoning_metrics.json", json.dumps(m, indent=2, sort_keys=True, default=float) + "\n")
    logger.info("poisoning report: %s", out / "poisoning.html")
    return out / "poisoning.html"
