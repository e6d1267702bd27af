"""`mithridate optout evaluate`: does honouring opt-outs remove an opted-out artist from the *model*?

From the same downloaded shards (download policy `record`, so opted-out rows are there to be kept or not), the
filter stage builds one dataset per opt-out policy — **honor** (signals + registry + re-upload matching),
**url_only** (signals and URL/domain registry entries: re-uploads elsewhere slip through), **ignore** — plus the
gold standard, **without_artist**: the honoured dataset with every row of artist X removed (ground-truth
provenance). One model per dataset, same training budget and seed, on the same concepts. Each model generates
on the same noise for prompts naming X ("cow emoji by X"), naming a control artist who did not opt out, and
naming no artist. Measured per model and prompt kind:

- how often a generation is in X's style (`poisoning.style` probe, its held-out accuracy reported), with a
  bootstrap 95% interval and the paired difference to the gold model;
- nearest-neighbour similarity to X's works in the compact CLIP's feature space, against the train-to-train
  background, and the Carlini ℓ2-ratio memorisation test against the model's own training images;
- the compliance side: rows of X (and rows naming X) that each dataset kept.

Outputs: `datasets/<name>/{filter,train}`, `models/<name>/`, `generations.parquet`, `optout.json`, `optout.png`,
`generations.png`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from curation import encoders, export, options, schema, selection, subsets
from diffusion import data, samplers, training, vae as vae_mod
from diffusion.pipeline import Pipeline
from poisoning import memorisation, style, success

logger = logging.getLogger(__name__)

POLICIES = ("honor", "url_only", "ignore")
GOLD = "without_artist"
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
    model: Literal["tiny", "cpu", "gpu"] = options.opt("cpu", "UNet size preset")
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
    seed: int = options.opt(0, "seed of the probe split and the bootstrap")

    def __post_init__(self):
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


def base_filter(cfg: OptoutConfig) -> selection.FilterConfig:
    """The filter config every policy shares (from the given filter run's config.json)."""
    return options.from_dict(selection.FilterConfig, json.loads((Path(cfg.filter) / "config.json").read_text()))


def build_dataset(cfg: OptoutConfig, policy: str, base: selection.FilterConfig) -> Path:
    """filter (this policy) → export; returns the train folder (reused when finished)."""
    folder = Path(cfg.out) / "datasets" / policy
    if (folder / "train" / "_stats.json").is_file():
        return folder / "train"
    filt = selection.run(dataclasses.replace(base, optout=policy, out=str(folder / "filter")))
    return export.run(export.ExportConfig(shards=base.shards, filter=str(filt), provenance=cfg.provenance,
                                          out=str(folder / "train")))


def build_gold(cfg: OptoutConfig, honoured: Path, base: selection.FilterConfig) -> Path:
    """The honoured dataset without any row of the artist (provenance): retraining without X."""
    folder = Path(cfg.out) / "datasets" / GOLD
    if (folder / "train" / "_stats.json").is_file():
        return folder / "train"
    rows = train_rows(honoured)
    keep = rows.loc[rows["artist"] != cfg.artist, "uid"]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "keep.npy", subsets.from_uids(keep))
    return export.run(export.ExportConfig(shards=base.shards, filter=str(honoured.parent / "filter"),
                                          provenance=cfg.provenance, subset=str(folder / "keep.npy"),
                                          out=str(folder / "train")))


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


def measure(cfg: OptoutConfig, model_dir: Path, probe, encoder, works: dict, concepts: list[str],
            seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Generate on the seed's noise and judge each image: style, nearest-work similarity, ℓ2 ratio."""
    pipe = Pipeline.load(model_dir)
    texts, kinds, cons = prompts(cfg, concepts)
    images = pipe.generate(texts, cfg.sampler, cfg.sample_steps, cfg.guidance, seed=seed)
    feats = encoder.encode_images(list(images))
    train = data.load_images(pipe.info["train_config"]["data"], images.shape[1], cfg.concepts)
    ratio, nearest = memorisation.l2_ratio(images, data.to_uint8(train.images))
    pred = probe.predict(feats)
    return pd.DataFrame({
        "seed": seed, "index": np.arange(len(texts)), "prompt": texts, "kind": kinds, "concept": cons,
        "style": [probe.artists[i] for i in pred],
        "nn_similarity": memorisation.nearest_similarity(feats, works["feats"]), "l2_ratio": ratio,
        "nearest_train_artist": [train.artists[i] for i in nearest],
        "memorised": ratio < memorisation.ALPHA}), images


# --- summary -------------------------------------------------------------------------------------------------------


def paired_diff(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float, float]:
    """mean(a − b) and its bootstrap 95% interval over paired generations (same prompt and noise)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    means = d[idx].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _copies(cfg: OptoutConfig, g: pd.DataFrame) -> np.ndarray:
    """Generations the ℓ2-ratio test calls memorised whose nearest training image is one of the artist's works."""
    return g["memorised"].to_numpy() & (g["nearest_train_artist"] == cfg.artist).to_numpy()


def summarise(cfg: OptoutConfig, gens: pd.DataFrame, background: np.ndarray) -> list[dict]:
    """One row per (model, prompt kind): style rates with intervals, difference to gold, closeness, memorisation."""
    rows, cut = [], float(np.quantile(background, 0.95))
    for (name, kind), g in gens.groupby(["model", "kind"], sort=False):
        g = g.sort_values(["seed", "index"])
        gold = gens[(gens["model"] == GOLD) & (gens["kind"] == kind)].sort_values(["seed", "index"])
        hit = (g["style"] == cfg.artist).to_numpy()
        p, lo, hi = success.bootstrap_ci(hit, seed=cfg.seed)
        c, clo, chi = success.bootstrap_ci((g["style"] == cfg.control_artist).to_numpy(), seed=cfg.seed)
        d, dlo, dhi = paired_diff(hit, (gold["style"] == cfg.artist).to_numpy(), cfg.seed)
        mem = _copies(cfg, g)
        m, mlo, mhi = success.bootstrap_ci(mem, seed=cfg.seed)
        md, mdlo, mdhi = paired_diff(mem, _copies(cfg, gold), cfg.seed)
        rows.append({"model": name, "kind": kind, "generations": len(g), "seeds": int(g["seed"].nunique()),
                     "p_artist_style": p,
                     "p_artist_style_ci": [lo, hi], "p_control_style": c, "p_control_style_ci": [clo, chi],
                     "diff_vs_gold": d, "diff_vs_gold_ci": [dlo, dhi],
                     "nn_similarity_median": float(g["nn_similarity"].median()),
                     "above_background_p95": float((g["nn_similarity"] > cut).mean()),
                     "memorised": float(g["memorised"].mean()), "memorised_artist_works": m,
                     "memorised_artist_works_ci": [mlo, mhi], "memorised_artist_works_diff_vs_gold": md,
                     "memorised_artist_works_diff_vs_gold_ci": [mdlo, mdhi]})
    return rows


def headline(result: dict) -> str:
    """One line per model: P(X's style) for prompts naming X and for prompts naming no artist, vs gold."""
    x = result["artist"]
    lines = [f"opt-out of {x!r} (style probe: {100 * result['probe']['heldout_accuracy']:.0f}% on held-out "
             f"concepts, chance {100 * result['probe']['chance']:.0f}%):"]
    for r in result["summary"]:
        ds = result["datasets"][r["model"]]
        lines.append(f"  {r['model']:<15} {r['kind']:<14} P({x} style) {r['p_artist_style']:.2f} "
                     f"[{r['p_artist_style_ci'][0]:.2f}, {r['p_artist_style_ci'][1]:.2f}]  vs gold "
                     f"{r['diff_vs_gold']:+.2f} [{r['diff_vs_gold_ci'][0]:+.2f}, {r['diff_vs_gold_ci'][1]:+.2f}]  "
                     f"({ds['trained_artist_rows']} of its training rows are {x}'s); copies of {x}'s works "
                     f"{r['memorised_artist_works']:.2f} [{r['memorised_artist_works_ci'][0]:.2f}, "
                     f"{r['memorised_artist_works_ci'][1]:.2f}]")
    return "\n".join(lines)


# --- driver --------------------------------------------------------------------------------------------------------


def _probe(cfg: OptoutConfig, encoder, size: int):
    corpus = data.load_corpus(cfg.art, size)
    names = [c.rsplit(" emoji by ", 1)[0] for c in corpus.captions]
    ae = vae_mod.load_vae(cfg.vae)
    probe = style.train(corpus, names, encoder, ae, cfg.probe_held_out, cfg.seed)
    mine = np.array([a == cfg.artist for a in corpus.artists])
    works = encoder.encode_images(list(data.to_uint8(corpus.images[np.flatnonzero(mine)])))
    return probe, {"feats": works}, memorisation.background_similarity(works)


def _datasets(cfg: OptoutConfig) -> dict[str, Path]:
    base = base_filter(cfg)
    folders = {p: build_dataset(cfg, p, base) for p in cfg.policies}
    honoured = folders.get("honor") or build_dataset(cfg, "honor", base)
    folders[GOLD] = build_gold(cfg, honoured, base)
    for name, folder in folders.items():
        if json.loads((folder / "_stats.json").read_text())["rows"] == 0:
            raise ValueError(f"optout: the {name!r} dataset kept no rows ({folder}); nothing to train on — check the "
                             f"exclusion reasons of the filter run {cfg.filter} or loosen it")
    return folders


def _models(cfg: OptoutConfig, folders: dict[str, Path], comp: dict) -> dict[tuple[str, int], Path]:
    """Train one model per distinct training set and seed; identical sets share a model (same data, seed, budget)."""
    models, seen = {}, {}
    for seed in cfg.seeds:
        for name, folder in folders.items():
            key = (tuple(comp[name]["uids"]), seed)
            if key in seen:
                logger.info("optout: %s trains on exactly the rows of %s: same model", name, seen[key])
                models[name, seed] = models[seen[key], seed]
                continue
            logger.info("optout: training the %s model, seed %d (%d rows)", name, seed, comp[name]["trained_rows"])
            seen[key], models[name, seed] = name, train_model(cfg, name, folder, seed)
    return models


def run(cfg: OptoutConfig) -> Path:
    """Build the datasets, train the models, measure; writes optout.json (+ parquet, figures)."""
    from curation import art

    out = Path(cfg.out)
    if not cfg.art:
        if cfg.art_preset not in art.PRESETS:
            raise ValueError(f"OptoutConfig.art_preset={cfg.art_preset!r}: allowed values are {', '.join(art.PRESETS)}")
        cfg = dataclasses.replace(cfg, art=str(art.run(art.PRESETS[cfg.art_preset])))
    options.check_resumable(cfg, out)
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
    probe, works, background = _probe(cfg, encoder, size)
    concepts = list(Pipeline.load(models[GOLD, cfg.seeds[0]]).info["concepts"])
    gens, images = [], {}
    for (name, seed), model_dir in models.items():
        g, imgs = measure(cfg, model_dir, probe, encoder, works, concepts, seed)
        gens.append(g.assign(model=name))
        if seed == cfg.seeds[0]:
            images[name] = imgs
    gens = pd.concat(gens, ignore_index=True)
    gens.to_parquet(out / "generations.parquet", index=False)
    result = {"artist": cfg.artist, "control_artist": cfg.control_artist, "concepts": concepts,
              "probe": probe.info(), "feature_space": encoder.name,
              "background_nn_similarity": {"median": float(np.median(background)),
                                           "p95": float(np.quantile(background, 0.95)), "works": len(background)},
              "memorisation_test": {"alpha": memorisation.ALPHA, "neighbours": memorisation.NEIGHBOURS},
              "datasets": {k: {x: v for x, v in c.items() if x != "uids"} for k, c in comp.items()},
              "seeds": list(cfg.seeds), "models": {f"{k}-s{seed}": str(v) for (k, seed), v in models.items()},
              "summary": summarise(cfg, gens, background)}
    (out / "optout.json").write_text(json.dumps(result, indent=2) + "\n")
    from poisoning import optout_figure

    optout_figure.rates(result, out / "optout.png")
    optout_figure.generations(images, prompts(cfg, concepts)[1], cfg.per_concept, out / "generations.png")
    logger.info("%s", headline(result))
    return out
