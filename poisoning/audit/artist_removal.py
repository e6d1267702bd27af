"""`mithridate optout evaluate`: does honouring opt-outs remove an opted-out artist from the *model*?

From the same downloaded shards (download policy `record`, so opted-out rows are there to be kept or not), the
filter stage builds one dataset per opt-out policy — **honor** (signals + registry + re-upload matching),
**url_only** (signals and URL/domain registry entries: re-uploads elsewhere slip through), **ignore** — plus the
gold standard, **without_artist**: the honoured dataset with every row of artist X removed (ground-truth
provenance), and one gold per policy, **<policy>-minus-artist**: that policy's rows without any row of X (what
the policy would have trained on had it caught every row of X). One model per distinct dataset and seed, same
training budget, on the same concepts. Each model generates on the same noise for prompts naming X ("cow emoji by
X"), naming a control artist who did not opt out, and naming no artist. Measured per model and prompt kind:

- how often a generation is in X's style (`poisoning.audit.style_probe`). The probe is validated on generations: its
  rate on the positive control (the `ignore` model, trained on X's works) must clear its false-positive floor
  (the gold model), else no style verdict is given;
- copies of X's works: the ℓ2-ratio test against a fixed reference set (every work of X in the art corpus plus
  the other artists' works of the trained concepts; `memorisation.copies`), the same for every model — a gold
  model can score above 0; the older test against the model's own training set is kept as `memorised`;
- nearest-neighbour similarity to X's works in the compact CLIP's feature space, against the train-to-train
  background;
- the precondition: the gold model must draw the prompted concepts (zero-shot accuracy of the compact CLIP on
  its prompts naming no artist, at least `min_gold_accuracy` and above chance), else the run cannot measure
  leakage and says why;
- the compliance side: rows of X (and rows naming X) that each dataset kept.

Every rate over seeds is `intervals.seed_level` on per-seed counts (one seed: its exact interval); every
difference to a gold model is `intervals.paired_difference` over seed × concept clusters (same prompts, noise).

Outputs: `datasets/<name>/{filter,train}`, `models/<name>/`, `generations.parquet`, `optout.json`, `optout.png`,
`generations.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curation.score import encoders
from curation.select import export, filtering, subsets
from diffusion import data, samplers, training, unet, vae_train as vae_mod
from diffusion.pipeline import Pipeline
from mithridate.core import disk, options, schema, stats_files, workers
from poisoning import intervals
from poisoning.audit import memorisation, style_probe

logger = logging.getLogger(__name__)

POLICIES = ("honor", "url_only", "ignore")
GOLD = "without_artist"
MINUS = "-minus-artist"
POSITIVE_CONTROL = "ignore"  # the policy whose model trains on X's works
KINDS = ("names_artist", "names_control", "no_artist")


@dataclass(frozen=True)
class OptoutConfig:
    filter: str = options.opt("mithridate-out/filter", "a filter run folder: its config (shards, embeddings, "
                              "registry, thresholds) is reused for every policy, only `optout` changes")
    provenance: str = options.opt("", "parquet with url → artist, licence (the demo web manifest): the ground truth "
                                  "for the gold dataset and the leak counts")
    art: str = options.opt("", "art corpus folder: the style probe's training data and the artist's works ('' = "
                           "the corpus of art_preset, built or reused from the cache)")
    art_preset: str = options.opt("default", "art preset used when art is ''")
    vae: str = options.opt("mithridate-out/vae", "frozen autoencoder shared by every model")
    clip: str = options.opt("mithridate-out/clip", "compact CLIP: frozen text encoder and the feature space")
    out: str = options.opt("mithridate-out/optout", "output folder")
    artist: str = options.opt("", "the opted-out artist X (an artist of the art corpus)")
    control_artist: str = options.opt("", "an artist who did not opt out (the control)")
    policies: tuple[str, ...] = options.opt(POLICIES, "opt-out policies compared (filter `optout` values)")
    concepts: tuple[str, ...] = options.opt((), "concepts the models learn (rows whose caption names one); '' = "
                                            "the max_concepts concepts with the most rows of both artists")
    max_concepts: int = options.opt(12, "concepts chosen when concepts is ''")
    candidates: tuple[str, ...] = options.opt((), "concepts to choose from when concepts is '' ('' = every corpus "
                                              "concept; the demo gives its diffusion model's concepts)")
    model: unet.PresetName = options.opt("cpu", "UNet size preset (diffusion/unet.py PRESETS)")
    steps: int = options.opt(300, "training steps of every model (the same budget)")
    batch_size: int = options.opt(64, "images per step")
    lr: float = options.opt(1e-3, "peak learning rate")
    per_concept: int = options.opt(4, "generations per concept and prompt kind (same noise for every model)")
    sampler: str = options.opt("euler", "sampler of the generations")
    sample_steps: int = options.opt(20, "sampler steps")
    guidance: float = options.opt(3.0, "classifier-free guidance scale")
    probe_held_out: float = options.opt(0.2, "fraction of the corpus concepts held out to test the style probe")
    seeds: tuple[int, ...] = options.opt((0,), "training seeds: one model per dataset and seed (its generations use "
                                         "the same seed's noise); rates pool the seeds, differences pair them")
    min_gold_accuracy: float = options.opt(0.3, "precondition: the gold model's zero-shot concept accuracy on "
                                           "prompts naming no artist must reach this (and its interval must be "
                                           "above chance 1/K), else the run cannot measure opt-out leakage")
    seed: int = options.opt(0, "seed of the probe split and the bootstrap")
    workers: int = options.opt(1, "models trained side by side, each in its own process (0 = one per core; a "
                               "runtime field: the models depend on threads, not on workers)")
    threads: int = options.opt(0, "torch threads of each model's training (0 = torch's default; needed >= 1 when "
                               "workers != 1; float rounding depends on it)")

    def __post_init__(self):
        workers.check("OptoutConfig", self.workers, self.threads)
        for name in ("policies", "concepts", "candidates", "seeds"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "steps", "batch_size", "lr", "per_concept", "sample_steps", "max_concepts")
        options.check_choice(self, "model", options.literal_values(OptoutConfig, "model"))
        if self.sampler not in samplers.SAMPLERS:
            raise ValueError(f"OptoutConfig.sampler={self.sampler!r}: allowed values are "
                             f"{', '.join(samplers.SAMPLERS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"OptoutConfig.seeds={list(self.seeds)}: give one or more distinct seeds")
        for p in self.policies:
            if p not in POLICIES:
                raise ValueError(f"OptoutConfig.policies: {p!r} is not a policy; allowed: {', '.join(POLICIES)}")
        if not 0 < self.probe_held_out < 1:
            raise ValueError(f"OptoutConfig.probe_held_out={self.probe_held_out}: must be within (0, 1)")
        if not 0 < self.min_gold_accuracy <= 1:
            raise ValueError(f"OptoutConfig.min_gold_accuracy={self.min_gold_accuracy}: must be within (0, 1]")


PRESETS = {
    "default": OptoutConfig(),
    # the demo's: the tiny UNet converges on ~30–90 rows in 1,200 steps (~30 s each on 2 cores); the cpu UNet at
    # the same cost (300 steps) leaves the largest dataset under-fitted, which would read as "less of X's style"
    "demo": OptoutConfig(model="tiny", steps=1200, batch_size=32, lr=2e-3, per_concept=8),
    "tiny": OptoutConfig(model="tiny", steps=20, batch_size=16, lr=2e-3, per_concept=2, sample_steps=4),
}


def check_inputs(cfg: OptoutConfig, artists: list[str]) -> None:
    """Clear errors for missing folders and artists that are not in the corpus."""
    for name in ("filter", "vae", "clip", "provenance"):
        if not getattr(cfg, name) or not Path(getattr(cfg, name)).exists():
            raise ValueError(f"OptoutConfig.{name}={getattr(cfg, name)!r}: not found (it is needed)")
    if not (Path(cfg.filter) / "config.json").is_file():
        raise ValueError(f"OptoutConfig.filter={cfg.filter!r}: no config.json (give a `mithridate filter` folder)")
    for name in ("artist", "control_artist"):
        if getattr(cfg, name) not in artists:
            raise ValueError(f"OptoutConfig.{name}={getattr(cfg, name)!r}: allowed artists are {', '.join(artists)}")
    if cfg.artist == cfg.control_artist:
        raise ValueError(f"OptoutConfig.control_artist={cfg.control_artist!r}: must differ from artist")


# --- datasets ------------------------------------------------------------------------------------------------------


def base_filter(cfg: OptoutConfig) -> filtering.FilterConfig:
    """The filter config every policy shares (from the given filter run's config.json)."""
    return options.from_dict(filtering.FilterConfig, json.loads((Path(cfg.filter) / "config.json").read_text()))


def build_dataset(cfg: OptoutConfig, policy: str, base: filtering.FilterConfig) -> Path:
    """filter (this policy) → export; returns the train folder (reused when finished)."""
    folder = Path(cfg.out) / "datasets" / policy
    if stats_files.done(folder / "train"):
        return folder / "train"
    filt = filtering.run(dataclasses.replace(base, optout=policy, out=str(folder / "filter")))
    return export.run(export.ExportConfig(shards=base.shards, filter=str(filt), provenance=cfg.provenance,
                                          out=str(folder / "train")))


def minus_artist(policy: str) -> str:
    """The name of a policy's own gold dataset: its rows without any row of the artist."""
    return policy + MINUS


def build_without(cfg: OptoutConfig, name: str, source: Path, base: filtering.FilterConfig) -> Path:
    """`source`'s export rows without any row of the artist (provenance), exported as dataset `name`."""
    folder = Path(cfg.out) / "datasets" / name
    if stats_files.done(folder / "train"):
        return folder / "train"
    rows = train_rows(source)
    keep = rows.loc[rows["artist"] != cfg.artist, "uid"]
    folder.mkdir(parents=True, exist_ok=True)
    with disk.atomic(folder / "keep.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, subsets.from_uids(keep))
    return export.run(export.ExportConfig(shards=base.shards, filter=str(source.parent / "filter"),
                                          provenance=cfg.provenance, subset=str(folder / "keep.npy"),
                                          out=str(folder / "train")))


def build_gold(cfg: OptoutConfig, honoured: Path, base: filtering.FilterConfig) -> Path:
    """The honoured dataset without any row of the artist (provenance): retraining without X."""
    return build_without(cfg, GOLD, honoured, base)


def train_rows(folder: Path) -> pd.DataFrame:
    """uid, caption, artist of an export folder."""
    parts = [schema.read(f, "train", columns=["uid", "caption", "artist"]).to_pandas()
             for f in data.shard_files(folder)]
    return pd.concat(parts, ignore_index=True).fillna({"caption": "", "artist": ""})


def choose_concepts(cfg: OptoutConfig, tables: dict[str, pd.DataFrame], names: list[str]) -> tuple[str, ...]:
    """The configured concepts, else up to `max_concepts` corpus concepts with rows of the artist in the widest
    dataset (the one that kept most of them) *and* rows in the gold dataset (so every model has rows to learn),
    most rows first; when no concept has both, half from each side."""
    if cfg.concepts:
        return cfg.concepts
    wide = max(tables.values(), key=lambda t: ((t["artist"] == cfg.artist).sum(), len(t)))
    mine = _counts(wide[wide["artist"] == cfg.artist], names)
    gold = _counts(tables[GOLD], names)
    order = sorted(range(len(names)), key=lambda i: (-min(mine[i], gold[i]), -(mine[i] + gold[i]), names[i]))
    chosen = [names[i] for i in order[: cfg.max_concepts] if min(mine[i], gold[i]) > 0]
    if not chosen:
        half = max(cfg.max_concepts // 2, 1)
        chosen = [names[i] for i in np.argsort(-mine, kind="stable")[:half] if mine[i] > 0]
        chosen += [names[i] for i in np.argsort(-gold, kind="stable")[:half] if gold[i] > 0 and names[i] not in chosen]
    if not chosen:
        raise ValueError("OptoutConfig.concepts: no caption names a corpus concept in the datasets; name the concepts")
    logger.info("optout: %d concepts: %s", len(chosen), ", ".join(chosen))
    return tuple(chosen)


def _counts(rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    label = data.match_concepts(rows["caption"].tolist(), names)
    return np.bincount(label[label >= 0], minlength=len(names))


def compliance(cfg: OptoutConfig, rows: pd.DataFrame) -> dict:
    """Rows a dataset (`train_rows`) kept: all, of the artist, naming the artist; the same within the trained
    concepts."""
    names = rows["caption"].str.contains(cfg.artist, case=False, regex=False)
    inside = data.match_concepts(rows["caption"].tolist(), list(cfg.concepts)) >= 0 if cfg.concepts else \
        np.ones(len(rows), bool)
    mine = rows["artist"] == cfg.artist
    return {"rows": len(rows), "artist_rows": int(mine.sum()), "rows_naming_artist": int(names.sum()),
            "control_rows": int((rows["artist"] == cfg.control_artist).sum()),
            "trained_rows": int(inside.sum()), "trained_artist_rows": int((mine & inside).sum()),
            "trained_rows_naming_artist": int((names & inside).sum()),
            "uids": sorted(rows.loc[inside, "uid"])}


# --- models --------------------------------------------------------------------------------------------------------


def train_model(cfg: OptoutConfig, name: str, train_dir: Path, seed: int) -> Path:
    """One model per dataset and seed, the same budget."""
    out = Path(cfg.out) / "models" / f"{name}-s{seed}"
    if (out / "model.pt").is_file() and (out / "train.json").is_file():
        return out
    tc = dataclasses.replace(training.PRESETS["tiny" if cfg.model == "tiny" else "cpu"], model=cfg.model,
                             data=str(train_dir), vae=cfg.vae, clip=cfg.clip, out=str(out), concepts=cfg.concepts,
                             steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, minutes=0.0,
                             sample_every=0, checkpoint_every=max(cfg.steps // 2, 1),
                             warmup_steps=min(training.PRESETS["cpu"].warmup_steps, cfg.steps // 5))
    return training.run(tc)


def prompts(cfg: OptoutConfig, concepts: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(prompts, kind, concept) for every concept × kind × per_concept, in a fixed order."""
    text = {"names_artist": "{} emoji by " + cfg.artist, "names_control": "{} emoji by " + cfg.control_artist,
            "no_artist": "{}"}
    rows = [(text[k].format(c), k, c) for k in KINDS for c in concepts for _ in range(cfg.per_concept)]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


@dataclass
class Reference:
    """What every model's generations are judged against (the same for every model).

    works: compact-CLIP features of every work of the artist (nearest-work similarity). copy_images (uint8) and
    copy_artists: the copy test's reference set — every work of the artist plus the other artists' works of the
    trained concepts. concept_emb: `(K, D)` zero-shot text embeddings of the trained concepts.
    """

    works: np.ndarray
    copy_images: np.ndarray
    copy_artists: list[str]
    concept_emb: np.ndarray


def concept_embeddings(encoder, concepts: list[str]) -> np.ndarray:
    """Zero-shot class embeddings: the mean of the CLIP templates' text embeddings per concept, L2-normalised."""
    from curation.score import clip_train

    texts = [t.format(c) for c in concepts for t in clip_train.TEMPLATES]
    emb = encoder.encode_texts(texts).reshape(len(concepts), len(clip_train.TEMPLATES), -1).mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def measure(cfg: OptoutConfig, model_dir: Path, probe, encoder, ref: Reference, concepts: list[str],
            seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Generate on the seed's noise and judge each image: style, copy of the artist's works (fixed reference),
    ℓ2 ratio to the model's own training set, nearest-work similarity, the concept it draws (zero-shot)."""
    pipe = Pipeline.load(model_dir)
    texts, kinds, cons = prompts(cfg, concepts)
    images = pipe.generate(texts, cfg.sampler, cfg.sample_steps, cfg.guidance, seed=seed)
    feats = encoder.encode_images(list(images))
    train = data.load_images(pipe.info["train_config"]["data"], images.shape[1], cfg.concepts)
    ratio, nearest = memorisation.l2_ratio(images, data.to_uint8(train.images))
    own_artist = np.array(train.artists)[nearest]
    copy, copy_ratio, copy_near = memorisation.copies(images, ref.copy_images, ref.copy_artists, cfg.artist)
    drawn = np.array(concepts)[np.argmax(feats @ ref.concept_emb.T, axis=1)]
    return pd.DataFrame({
        "seed": seed, "index": np.arange(len(texts)), "prompt": texts, "kind": kinds, "concept": cons,
        "style": [probe.artists[i] for i in probe.predict(feats)],
        "nn_similarity": memorisation.nearest_similarity(feats, ref.works),
        "copy_l2_ratio": copy_ratio, "copy_nearest_artist": np.array(ref.copy_artists)[copy_near],
        "copy_of_artist_work": copy, "l2_ratio": ratio, "nearest_train_artist": own_artist,
        "memorised": ratio < memorisation.ALPHA,
        "memorised_artist_work": (ratio < memorisation.ALPHA) & (own_artist == cfg.artist),
        "drawn_concept": drawn, "draws_concept": drawn == np.array(cons)}), images


# --- statistics ----------------------------------------------------------------------------------------------------


def counts(g: pd.DataFrame, column: str) -> pd.DataFrame:
    """Hits `k` (True in boolean `column`) and generations `n` per cluster, indexed by (seed, concept)."""
    if g.empty:
        raise ValueError(f"counts of {column!r}: no generations")
    c = g.groupby(["seed", "concept"], sort=True)[column].agg(k="sum", n="size")
    return c.astype(int)


def seed_rate(c: pd.DataFrame, seed: int = 0) -> intervals.Rate:
    """The rate over training seeds of cluster counts `c` (`counts`): per-seed hits, `intervals.seed_level`."""
    per = c.groupby(level="seed").sum()
    return intervals.seed_level(per["k"].to_numpy(), per["n"].to_numpy(), per.index.tolist(), seed=seed)


def difference(t: pd.DataFrame, c: pd.DataFrame, vs: str, seed: int = 0) -> dict:
    """Treatment − control of two cluster counts (same seeds × concepts): `intervals.paired_difference`."""
    if not t.index.equals(c.index):
        raise ValueError(f"paired difference vs {vs!r}: the clusters (seed × concept) differ")
    d, lo, hi = intervals.paired_difference(t["k"].to_numpy(), t["n"].to_numpy(), c["k"].to_numpy(),
                                            c["n"].to_numpy(), seed=seed)
    return {"vs": vs, "diff": d, "low": lo, "high": hi, "clusters": len(t)}


def _hits(cfg: OptoutConfig, gens: pd.DataFrame) -> pd.DataFrame:
    return gens.assign(artist_style=gens["style"] == cfg.artist, control_style=gens["style"] == cfg.control_artist)


def _group(gens: pd.DataFrame, model: str, kind: str) -> pd.DataFrame:
    return gens[(gens["model"] == model) & (gens["kind"] == kind)]


# --- summary -------------------------------------------------------------------------------------------------------


def precondition(cfg: OptoutConfig, gens: pd.DataFrame, concepts: list[str], judge: str) -> dict:
    """Does the gold model draw the prompted concepts? Zero-shot accuracy (the compact CLIP among the trained
    concepts) of its generations for prompts naming no artist, against `min_gold_accuracy` and chance 1/K."""
    rate = seed_rate(counts(_group(gens, GOLD, "no_artist"), "draws_concept"), cfg.seed)
    chance = 1 / len(concepts)
    out = {"gold_concept_accuracy": rate.as_dict(), "min_gold_accuracy": cfg.min_gold_accuracy, "chance": chance,
           "concepts": len(concepts), "judge": judge}
    if rate.value < cfg.min_gold_accuracy:
        why = f"below the floor {cfg.min_gold_accuracy:.2f}: its generations are not recognisably the concepts"
    elif rate.low <= chance:
        why = (f"its interval reaches chance {chance:.2f}: too few generations to tell its drawings of the concepts "
               "from chance")
    else:
        return {"ok": True, "why": "", **out}
    return {"ok": False, "why": f"the gold model (retrained without {cfg.artist}) draws the prompted concept in "
            f"{rate.text()} of its generations for prompts naming no artist ({judge} zero-shot among "
            f"{len(concepts)} concepts), {why}; so whether {cfg.artist}'s style or works come through cannot be "
            "told", **out}


def probe_validation(cfg: OptoutConfig, gens: pd.DataFrame, datasets: dict) -> dict:
    """The style probe on generations: its rate on the positive control (the model trained on the artist's works,
    prompts naming the artist) against its false-positive floor (the gold model, same prompts); `ok` when the
    paired difference's lower bound is above 0."""
    gens = _hits(cfg, gens)
    floor_c = counts(_group(gens, GOLD, "names_artist"), "artist_style")
    floor = seed_rate(floor_c, cfg.seed)
    out = {"positive_control": None, "gold_floor": floor.as_dict()}
    if POSITIVE_CONTROL not in datasets:
        return {**out, "ok": False, "clears_floor": False, "why": f"positive control missing: the "
                f"{POSITIVE_CONTROL!r} policy (the model trained on {cfg.artist}'s works) is not among the "
                "policies, so the style probe is not validated on generations"}
    pos_c = counts(_group(gens, POSITIVE_CONTROL, "names_artist"), "artist_style")
    pos, diff = seed_rate(pos_c, cfg.seed), difference(pos_c, floor_c, GOLD, cfg.seed)
    rows, clears = datasets[POSITIVE_CONTROL]["trained_artist_rows"], diff["low"] > 0
    out.update(positive_control=POSITIVE_CONTROL, positive_control_artist_rows=rows,
               positive_control_rate=pos.as_dict(), difference=diff, clears_floor=clears, ok=clears)
    if clears:
        return {**out, "why": ""}
    return {**out, "why": f"the style probe cannot tell {cfg.artist}'s style on generations: it says {cfg.artist} "
            f"for {pos.text()} of the positive control's ({POSITIVE_CONTROL}, trained on {rows} of {cfg.artist}'s "
            f"works) and {floor.text()} of the gold model's, difference {_ci(diff)} (not above 0)"}


def summarise(cfg: OptoutConfig, gens: pd.DataFrame, background: np.ndarray) -> list[dict]:
    """One row per (model, prompt kind): rates over seeds (style, copies of the artist's works, memorisation,
    concept accuracy) and paired differences to the gold model and to the policy's own gold."""
    gens, rows, cut = _hits(cfg, gens), [], float(np.quantile(background, 0.95))
    for (name, kind), g in gens.groupby(["model", "kind"], sort=False):
        rate = {col: seed_rate(counts(g, col), cfg.seed) for col in
                ("artist_style", "control_style", "copy_of_artist_work", "memorised", "memorised_artist_work",
                 "draws_concept")}
        style_d = _differences(cfg, gens, name, kind, g, "artist_style")
        row = {"model": name, "kind": kind, "generations": len(g), "seeds": int(g["seed"].nunique()),
               "p_artist_style": rate["artist_style"].value,
               "p_artist_style_ci": [rate["artist_style"].low, rate["artist_style"].high],
               "p_control_style": rate["control_style"].value,
               "p_control_style_ci": [rate["control_style"].low, rate["control_style"].high],
               "diff_vs_gold": style_d["gold"]["diff"], "diff_vs_gold_ci": [style_d["gold"]["low"],
                                                                              style_d["gold"]["high"]],
               "artist_style": rate["artist_style"].as_dict(), "control_style": rate["control_style"].as_dict(),
               "artist_style_vs_gold": style_d["gold"], "artist_style_vs_own_gold": style_d.get("own"),
               "copies_of_artist_works": rate["copy_of_artist_work"].as_dict(),
               "nn_similarity_median": float(g["nn_similarity"].median()),
               "above_background_p95": float((g["nn_similarity"] > cut).mean()),
               "memorised": rate["memorised"].as_dict(),
               "memorised_artist_works": rate["memorised_artist_work"].as_dict(),
               "concept_accuracy": rate["draws_concept"].as_dict()}
        copy_d = _differences(cfg, gens, name, kind, g, "copy_of_artist_work")
        row.update(copies_vs_gold=copy_d["gold"], copies_vs_own_gold=copy_d.get("own"))
        rows.append(row)
    return rows


def _differences(cfg: OptoutConfig, gens: pd.DataFrame, name: str, kind: str, g: pd.DataFrame,
                 column: str) -> dict:
    """Paired differences of `column` to the gold model and, for a policy, to its own gold."""
    mine = counts(g, column)
    out = {"gold": difference(mine, counts(_group(gens, GOLD, kind), column), GOLD, cfg.seed)}
    own = minus_artist(name)
    if name in cfg.policies and (gens["model"] == own).any():
        out["own"] = difference(mine, counts(_group(gens, own, kind), column), own, cfg.seed)
    return out


def evaluate(cfg: OptoutConfig, gens: pd.DataFrame, datasets: dict, concepts: list[str], judge: str,
             background: np.ndarray) -> dict:
    """The measured part of optout.json: the precondition, the probe's validation on generations, the summary."""
    return {"precondition": precondition(cfg, gens, concepts, judge),
            "probe_validation": probe_validation(cfg, gens, datasets), "summary": summarise(cfg, gens, background)}


def _ci(d: dict | None) -> str:
    if not d:
        return "n/a"
    if "diff" in d:
        return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
    return f"{d['rate']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def headline(result: dict) -> str:
    """The precondition and probe checks, then one line per model for prompts naming X: P(X's style) vs gold and
    vs its own gold, copies of X's works (fixed reference set) — no numbers when the precondition fails."""
    x, pre, val = result["artist"], result["precondition"], result["probe_validation"]
    lines = [f"opt-out of {x!r} (style probe: {100 * result['probe']['heldout_accuracy']:.0f}% on held-out "
             f"concepts, chance {100 * result['probe']['chance']:.0f}%):"]
    if not pre["ok"]:
        lines.append(f"  cannot measure opt-out leakage: {pre['why']}")
        lines += [f"  {k:<22} kept {v['artist_rows']} of {x}'s rows" for k, v in result["datasets"].items()]
        return "\n".join(lines)
    if not val["ok"]:
        lines.append(f"  no style verdict: {val['why']}")
    for r in result["summary"]:
        if r["kind"] != "names_artist":
            continue
        ds = result["datasets"].get(r["model"]) or result["datasets_minus_artist"][r["model"]]
        lines.append(f"  {r['model']:<22} P({x} style) {_ci(r['artist_style'])} vs gold "
                     f"{_ci(r['artist_style_vs_gold'])}, vs own gold {_ci(r['artist_style_vs_own_gold'])}; "
                     f"copies of {x}'s works {_ci(r['copies_of_artist_works'])} vs gold {_ci(r['copies_vs_gold'])} "
                     f"({ds['trained_artist_rows']} of its training rows are {x}'s)")
    return "\n".join(lines)


# --- driver --------------------------------------------------------------------------------------------------------


def _reference(cfg: OptoutConfig, encoder, size: int, concepts: list[str]):
    """The style probe, the fixed reference (`Reference`), the train-to-train background, the reference's record."""
    corpus = data.load_corpus(cfg.art, size)
    names = [c.rsplit(" emoji by ", 1)[0] for c in corpus.captions]
    probe = style_probe.train(corpus, names, encoder, vae_mod.load_vae(cfg.vae), cfg.probe_held_out, cfg.seed)
    artists = np.array(corpus.artists)
    mine = artists == cfg.artist
    pick = np.flatnonzero(mine | (data.match_concepts(corpus.captions, concepts) >= 0))
    images = data.to_uint8(corpus.images)
    works = encoder.encode_images(list(images[np.flatnonzero(mine)]))
    ref = Reference(works, images[pick], artists[pick].tolist(), concept_embeddings(encoder, concepts))
    record = {"alpha": memorisation.ALPHA, "neighbours": memorisation.NEIGHBOURS,
              "reference": f"every work of {cfg.artist} in the art corpus ({int(mine.sum())}, all concepts) + the "
                           f"other artists' works of the {len(concepts)} trained concepts "
                           f"({len(pick) - int(mine.sum())}); the same set for every model",
              "reference_works": {a: int((artists[pick] == a).sum()) for a in sorted(set(artists[pick]))},
              "art": cfg.art, "image_size": size}
    return probe, ref, memorisation.background_similarity(works), record


def _datasets(cfg: OptoutConfig) -> dict[str, Path]:
    """Every policy's dataset, the gold (honoured minus the artist) and each policy minus the artist."""
    base = base_filter(cfg)
    folders = {p: build_dataset(cfg, p, base) for p in cfg.policies}
    honoured = folders.get("honor") or build_dataset(cfg, "honor", base)
    folders[GOLD] = build_gold(cfg, honoured, base)
    for p in cfg.policies:  # honor minus the artist is the gold dataset itself
        folders[minus_artist(p)] = folders[GOLD] if p == "honor" else build_without(cfg, minus_artist(p),
                                                                                   folders[p], base)
    for name, folder in folders.items():
        if stats_files.read(folder)["rows"] == 0:
            raise ValueError(f"optout: the {name!r} dataset kept no rows ({folder}); nothing to train on — check the "
                             f"exclusion reasons of the filter run {cfg.filter} or loosen it")
    return folders


def _models(cfg: OptoutConfig, folders: dict[str, Path], comp: dict) -> dict[tuple[str, int], Path]:
    """Train one model per distinct training set and seed; identical sets share a model (same data, seed, budget).
    The distinct ones train `cfg.workers` side by side."""
    same, seen, jobs = {}, {}, []  # same: (name, seed) → the (name, seed) whose model it uses
    for seed in cfg.seeds:
        for name, folder in folders.items():
            if name.endswith(MINUS) and comp[name]["trained_rows"] == 0:
                logger.warning("optout: %s has no row in the trained concepts: no model, so that policy is compared "
                               "with the single gold only", name)
                continue
            key = (tuple(comp[name]["uids"]), seed)
            if key in seen:
                logger.info("optout: %s trains on exactly the rows of %s: same model", name, seen[key])
                same[name, seed] = (seen[key], seed)
                continue
            logger.info("optout: the %s model, seed %d (%d rows)", name, seed, comp[name]["trained_rows"])
            seen[key], same[name, seed] = name, (name, seed)
            jobs.append((cfg, name, folder, seed))
    trained = workers.run(train_model, jobs, cfg.workers, cfg.threads, "model training")
    paths = {(job[1], job[3]): path for job, path in zip(jobs, trained)}
    return {key: paths[owner] for key, owner in same.items()}


def _generations(cfg: OptoutConfig, models: dict, probe, encoder, ref: Reference,
                 concepts: list[str]) -> tuple[pd.DataFrame, dict]:
    """Every model's judged generations (a shared model is generated once), and the first seed's images."""
    gens, images, done = [], {}, {}
    for (name, seed), model_dir in models.items():
        if (model_dir, seed) not in done:
            done[model_dir, seed] = measure(cfg, model_dir, probe, encoder, ref, concepts, seed)
        g, imgs = done[model_dir, seed]
        gens.append(g.assign(model=name))
        if seed == cfg.seeds[0]:
            images[name] = imgs
    return pd.concat(gens, ignore_index=True), images


def run(cfg: OptoutConfig) -> Path:
    """Build the datasets, train the models, measure; writes optout.json (+ parquet, figures)."""
    from curation.world import art

    out = Path(cfg.out)
    if not cfg.art:
        if cfg.art_preset not in art.PRESETS:
            raise ValueError(f"OptoutConfig.art_preset={cfg.art_preset!r}: allowed values are {', '.join(art.PRESETS)}")
        cfg = dataclasses.replace(cfg, art=str(art.run(art.PRESETS[cfg.art_preset])))
    options.check_resumable(cfg, out, runtime_fields=("workers",))
    if not Path(cfg.art).is_dir():
        raise ValueError(f"OptoutConfig.art={cfg.art!r}: not an art corpus folder (`mithridate art build`)")
    check_inputs(cfg, sorted(art.load(cfg.art)["artist"].unique()))
    options.write_config(cfg, out)
    folders = _datasets(cfg)
    tables = {name: train_rows(f) for name, f in folders.items()}
    names = list(cfg.candidates) or sorted(set(art.load(cfg.art)["concept"]))
    cfg = dataclasses.replace(cfg, concepts=choose_concepts(cfg, tables, names))
    comp = {name: compliance(cfg, rows) for name, rows in tables.items()}
    models = _models(cfg, folders, comp)
    encoder = encoders.load_compact(cfg.clip)
    size = int(vae_mod.read_checkpoint(cfg.vae)["train_config"]["image_size"])
    concepts = list(Pipeline.load(models[GOLD, cfg.seeds[0]]).info["concepts"])
    probe, ref, background, copy_test = _reference(cfg, encoder, size, concepts)
    gens, images = _generations(cfg, models, probe, encoder, ref, concepts)
    with disk.atomic(out / "generations.parquet") as tmp:
        gens.to_parquet(tmp, index=False)
    public = {k: {x: v for x, v in c.items() if x != "uids"} for k, c in comp.items()}
    datasets = {k: v for k, v in public.items() if not k.endswith(MINUS)}
    result = {"artist": cfg.artist, "control_artist": cfg.control_artist, "concepts": concepts,
              "probe": probe.info(), "feature_space": encoder.name,
              "background_nn_similarity": {"median": float(np.median(background)),
                                           "p95": float(np.quantile(background, 0.95)), "works": len(background)},
              "memorisation_test": {"alpha": memorisation.ALPHA, "neighbours": memorisation.NEIGHBOURS,
                                    "reference": "the model's own training images in the trained concepts"},
              "copy_test": copy_test, "datasets": datasets,
              "datasets_minus_artist": {k: v for k, v in public.items() if k.endswith(MINUS)},
              "policy_gold": {p: minus_artist(p) for p in cfg.policies},
              "seeds": list(cfg.seeds), "models": {f"{k}-s{seed}": str(v) for (k, seed), v in models.items()},
              **evaluate(cfg, gens, datasets, concepts, encoder.name, background)}
    disk.write_text(out / "optout.json", json.dumps(result, indent=2) + "\n")
    from poisoning.audit import removal_figure

    removal_figure.rates(result, out / "optout.png")
    removal_figure.generations(images, prompts(cfg, concepts)[1], cfg.per_concept, out / "generations.png")
    logger.info("%s", headline(result))
    return out
