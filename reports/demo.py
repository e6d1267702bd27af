"""`mithridate demo`: the whole story on the embedded default, under one run folder.

Art corpus → demo web (in-process) → crawl → download → funnel (part 1); then compact CLIP → embed →
aesthetic head from the web's degraded copies → do-not-train registry of the opted-out artists → filter →
export → dataset report (part 2); then autoencoder → latent diffusion model on a concept subset of the
curated shards → evaluation per sampler → generation report (part 3); then a poisoning sweep on one concept
pair of that model (Nightshade-style vs dirty-label poisons from the art corpus, at a CPU-sized N range,
continued-training victims beside a control, defences) → poisoning report (part 4); then the opt-out evaluation
(datasets under each opt-out policy + retraining without the artist, one small model each) and the integrity check
(release with hashes → some domains change hands → verified and unverified rebuilds) (part 5) → one report,
`report/index.html`, and `metrics.json`.

The download records opt-outs (policy `record`) so that every opt-out policy can be built from the same crawl;
the filter honours them. A rerun into the same folder with the same config resumes after the last finished part
(`_parts/<part>.done`); an interrupted part is redone from its start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from curation.acquire import crawler, downloader, funnel
from curation.score import aesthetic, clip_train, embed
from curation.select import dedup, export, filtering, release
from curation.world import art, web
from diffusion import data as diffusion_data, evaluation, training, vae_train as vae
from mithridate.core import disk, options, schema, stats_files
from poisoning import attackability, candidates, concept_pair as pairs, sweep
from poisoning.audit import artist_removal as optout
from reports import dataset, generation, poisoning, story

logger = logging.getLogger(__name__)


# evaluate's runs less DDIM and DDPM (as accurate as Euler/DPM-Solver++ at 2.4× and 5× their cost; see
# bench/sample.py): keeps the whole demo under 15 minutes on 2 cores. `mithridate evaluate` runs all of them.
DEMO_RUNS = ("euler:20", "dpmpp_2m:20", "euler:20:1")


@dataclass(frozen=True)
class DemoConfig:
    out: str = options.opt("mithridate-out/demo", "run folder; one sub-folder per stage")
    art_preset: Literal["default", "tiny"] = options.opt("default", "art corpus preset (tiny: 24 concepts)")
    cache_dir: str = options.opt("", "cache folder of the art corpus ('' = the user cache dir)")
    policy: Literal["honor", "record", "ignore"] = options.opt(
        "record", "opt-out policy of the download (record: fetch and record, the filter honours; the opt-out "
        "evaluation needs the opted-out rows)")
    seed: int = options.opt(0, "seed of the demo web")
    threads: int = options.opt(64, "download threads")
    workers: int = options.opt(0, "small models trained side by side (poisoning victims, opt-out models), each in "
                               "its own process on one torch thread (0 = one per core; results do not depend on it)")
    timeout_s: float = options.opt(2.0, "crawl and download socket timeout (the web's slow images take longer)")
    clip_preset: Literal["demo", "default", "tiny"] = options.opt(
        "demo", "compact CLIP preset (demo: 600 steps, ~3 CPU minutes; default: 800 steps)")
    clip_dir: str = options.opt("", "an existing `clip train` folder to reuse ('' = train one)")
    clip_top_fraction: float = options.opt(0.8, "filter: keep this top fraction by CLIP score")
    reupload_cos_eps: float = options.opt(0.06, "filter: an embedding match of a re-upload of an opted-out work is "
                                          "cosine >= 1 - eps (a barely trained CLIP needs a small eps)")
    stop_after: Literal["download", "report", "generation", "poisoning", "optout", "integrity"] = options.opt(
        "integrity", "last part: download (1), report (2), generation (3), poisoning (4), optout or integrity (5)")
    diffusion_preset: Literal["cpu", "tiny", "gpu"] = options.opt("cpu", "autoencoder and diffusion presets")
    concepts: tuple[str, ...] = options.opt(
        (), "concepts the diffusion model learns ('' = up to max_concepts of DEMO_CONCEPTS found in the export)")
    max_concepts: int = options.opt(40, "concepts in the diffusion subset when concepts is ''")
    eval_runs: tuple[str, ...] = options.opt(DEMO_RUNS, "evaluate: sampler:steps[:guidance] settings")
    poison_source: str = options.opt("automobile", "attackability: source concept of the autoencoder's "
                                     "attackability curve (else the model's first concept)")
    poison_target: str = options.opt("elephant", "attackability: target concept (else the model's last concept)")
    poison_pairs: tuple[str, ...] = options.opt(("vehicle-animal",), "poisoning: `poison pair` concept pairs with "
                                                "many clean images, each swept at realistic doses (vehicle-animal, "
                                                "style)")
    poison_preset: Literal["demo", "tiny", "default", "doses"] = options.opt("demo", "`poison sweep` preset (demo: "
                                                                             "one seed, a short dose list)")
    pair_steps: int = options.opt(1500, "training steps of each pair's clean model (tiny UNet)")
    sweeps: tuple[str, ...] = options.opt((), "finished multi-seed `poison sweep` folders to report instead of the "
                                          "demo's own one-seed sweeps (the README's dose commands)")
    optout_preset: Literal["demo", "tiny", "default"] = options.opt("demo", "`optout evaluate` preset")
    study: str = options.opt("", "a `poison study` folder to show in the poisoning report (autoencoder design "
                             "frontier, robust autoencoder; '' = none: the study takes ~45 CPU minutes)")
    expire: tuple[str, ...] = options.opt(("aggregator",), "integrity: sites whose domain changes hands after the "
                                          "release (they serve other pictures)")
    reencode: tuple[str, ...] = options.opt(("linkfarm",), "integrity: sites that re-encode their images after the "
                                            "release (a benign change)")

    def __post_init__(self):
        for name in ("concepts", "eval_runs", "expire", "reencode", "poison_pairs", "sweeps"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "threads", "timeout_s", "max_concepts", "reupload_cos_eps")
        if self.workers < 0:
            raise ValueError(f"DemoConfig.workers={self.workers}: must be >= 0 (0 = one per core)")
        for name in ("expire", "reencode"):
            bad = [s for s in getattr(self, name) if s not in ("aggregator", "linkfarm") and not s.startswith("artist-")]
            if bad:
                raise ValueError(f"DemoConfig.{name}={bad}: sites are aggregator, linkfarm or artist-<artist>")
        for r in self.eval_runs:  # checked now, not after the minutes of parts 1–2
            evaluation.parse_run(r, 3.0)
        for p in self.poison_pairs:
            if p not in pairs.PAIRS:
                raise ValueError(f"DemoConfig.poison_pairs={list(self.poison_pairs)}: allowed pairs are "
                                 f"{', '.join(pairs.PAIRS)}")
        for f in self.sweeps:
            if not (Path(f) / "sweep.json").is_file():
                raise ValueError(f"DemoConfig.sweeps: {f!r} has no sweep.json (run `mithridate poison sweep`)")
        options.check_positive(self, "pair_steps")
        if self.study and not (Path(self.study) / "study.json").is_file():
            raise ValueError(f"DemoConfig.study={self.study!r}: no study.json there (run `mithridate poison study`)")
        if not 0 < self.clip_top_fraction <= 1:
            raise ValueError(f"DemoConfig.clip_top_fraction={self.clip_top_fraction}: must be within (0, 1]")
        for name in ("art_preset", "policy", "clip_preset", "stop_after", "diffusion_preset", "poison_preset",
                     "optout_preset"):
            options.check_choice(self, name, options.literal_values(DemoConfig, name))


PRESETS = {"default": DemoConfig(),
           # scaled up for a GPU (bigger CLIP run, 64 px autoencoder and UNet, longer opt-out models); written for
           # CUDA with bf16 autocast, not yet run on one
           "gpu": DemoConfig(clip_preset="default", diffusion_preset="gpu", optout_preset="default",
                             eval_runs=("ddim:50", "euler:20", "dpmpp_2m:20", "ddpm:100", "euler:20:1")),
           "tiny": DemoConfig(art_preset="tiny", threads=16, timeout_s=1.0, clip_preset="tiny", diffusion_preset="tiny",
                              max_concepts=8, eval_runs=("ddim:5", "euler:4"), poison_preset="tiny",
                              poison_pairs=("style",), pair_steps=20,
                              optout_preset="tiny", reupload_cos_eps=0.002, workers=1)}

# familiar concepts, in order of preference, for the diffusion subset (those present in the export are used)
DEMO_CONCEPTS = (
    "cow", "automobile", "dog", "cat", "horse", "pig", "elephant", "rabbit", "mouse", "fish", "bird", "penguin",
    "frog", "snake", "turtle", "octopus", "bicycle", "bus", "airplane", "rocket", "ship", "sailboat",
    "train", "tractor", "ambulance", "fire engine", "taxi", "police car", "sport utility vehicle", "delivery truck",
    "articulated lorry", "water buffalo", "ox", "bison", "cow face", "dog face", "cat face", "horse face",
    "apple", "banana", "cherries", "grapes", "lemon", "pineapple", "strawberry", "watermelon", "carrot", "pizza",
    "hamburger", "bread", "cake", "ice cream", "doughnut", "sun", "cloud", "rainbow", "snowflake", "fire",
    "house", "tree", "sunflower", "rose", "cactus", "mushroom", "guitar", "trumpet", "soccer ball", "basketball",
    "umbrella", "key", "light bulb", "books", "hammer", "anchor", "crown", "gem stone", "bell", "balloon",
    "red heart", "star", "moon", "globe showing europe-africa", "alarm clock", "camera", "telephone", "laptop",
)


def _stage_configs(cfg: DemoConfig, w: web.DemoWeb) -> tuple:
    out = Path(cfg.out)
    crawl = crawler.CrawlConfig(seeds=tuple(w.seeds), out=str(out / "crawl"), allow_networks=w.networks,
                                timeout_s=cfg.timeout_s, retries=0)
    down = downloader.DownloadConfig(pairs=str(out / "crawl" / "pairs"), out=str(out / "shards"), policy=cfg.policy,
                                     threads=cfg.threads, timeout_s=cfg.timeout_s, allow_networks=w.networks)
    return crawl, down


def _optout_registry(w: web.DemoWeb, path: Path) -> Path:
    """What opted-out artists would file with a do-not-train service: artists who opted out everything give
    their name and site; every opted-out work (whole sites, single pages, single images) its pHash."""
    m = w.manifest.to_pandas()
    own = m[m["site"].str.startswith("artist-")]
    opted = own[own["signals"].apply(len) > 0]
    entries = []
    for i, a in enumerate(w.artists):
        if web.PROFILES[i % len(web.PROFILES)] != "open":
            entries += [{"artist": a}, {"domain": w.servers[f"artist-{a}"].origin.split("//", 1)[1]}]
    items = {x["item_id"]: x for x in w.items}
    for item_id in sorted(set(opted["item_id"].dropna())):
        item = items[item_id]
        entries.append({"phash": dedup.phash((w.corpus / item["path64"]).read_bytes()),
                        "note": f"{item['artist']}: {item['concept']}"})  # an `artist` field would opt out the artist
    disk.write_text(path, json.dumps({"entries": entries}, indent=1) + "\n")
    return path


def _part1(cfg: DemoConfig, out: Path, corpus: Path) -> tuple[Path, Path]:
    """Web → crawl → download; returns (manifest path, registry path)."""
    web_cfg = web.WebConfig(art_dir=str(corpus), out=str(out / "web"), seed=cfg.seed, slow_delay_s=cfg.timeout_s + 1)
    with web.DemoWeb(web_cfg) as w:
        crawl_cfg, down_cfg = _stage_configs(cfg, w)
        crawler.run(crawl_cfg)
        downloader.run(down_cfg)
        registry = _optout_registry(w, out / "registry.json")
        disk.write_text(out / "web" / "ports.json", json.dumps(list(w.ports)) + "\n")  # part 5 serves the same URLs
    crawl_stats = stats_files.read(out / "crawl")
    down_stats = stats_files.read(out / "shards")
    text = funnel.format_funnel(crawl_stats, down_stats)
    disk.write_text(out / "funnel.json", json.dumps({"crawl": crawl_stats, "download": down_stats}, indent=2) + "\n")
    disk.write_text(out / "funnel.txt", text + "\n")
    logger.info("\nfunnel (policy=%s)\n%s\n", cfg.policy, text)
    return w.manifest_path, registry


def _part2(cfg: DemoConfig, out: Path, corpus: Path, manifest: Path, registry: Path) -> Path:
    """Compact CLIP → embed → aesthetic → filter → export → dataset report; returns the report path."""
    clip_dir = Path(cfg.clip_dir) if cfg.clip_dir else clip_train.run(dataclasses.replace(
        clip_train.PRESETS[cfg.clip_preset], art_dir=str(corpus), out=str(out / "clip")))
    emb = embed.run(embed.EmbedConfig(shards=str(out / "shards"), out=str(out / "embeddings"), model="compact",
                                      pretrained=str(clip_dir)))
    head = aesthetic.train(dataclasses.replace(aesthetic.TRAIN_PRESETS["tiny"], embeddings=str(emb),
                                               ratings=str(manifest), shards=str(out / "shards"),
                                               out=str(out / "aesthetic_head")))
    scores = aesthetic.score(aesthetic.AestheticScoreConfig(embeddings=str(emb), head_path=str(head / "head.pt"),
                                                            out=str(out / "aesthetic")))
    filt = filtering.run(filtering.FilterConfig(shards=str(out / "shards"), embeddings=str(emb),
                                                aesthetic=str(scores), registry=str(registry), out=str(out / "filter"),
                                                clip_top_fraction=cfg.clip_top_fraction,
                                                reupload_cos_eps=cfg.reupload_cos_eps))
    train = export.run(export.ExportConfig(shards=str(out / "shards"), filter=str(filt), provenance=str(manifest),
                                           out=str(out / "train")))
    return dataset.build(dataset.DatasetReportConfig(
        crawl=str(out / "crawl"), shards=str(out / "shards"), filter=str(filt), export=str(train),
        manifest=str(manifest), out=str(out / "report"), clip=str(clip_dir)))


def choose_concepts(cfg: DemoConfig, corpus: Path, train_dir: Path) -> list[str]:
    """The diffusion subset: the configured concepts, else up to `max_concepts` of DEMO_CONCEPTS that name at least
    one exported row, topped up with the corpus concepts that name the most rows."""
    if cfg.concepts:
        return list(cfg.concepts)
    captions = [c or "" for f in diffusion_data.shard_files(train_dir)
                for c in schema.read(f, "train", columns=["caption"]).column("caption").to_pylist()]
    names = sorted(set(art.load(corpus)["concept"]))
    favourites = [c for c in DEMO_CONCEPTS if c in names]
    others = [c for c in names if c not in DEMO_CONCEPTS]
    counts = np.bincount(diffusion_data.match_concepts(captions, favourites + others) + 1,
                         minlength=len(names) + 1)[1:]
    found = [c for c, n in zip(favourites, counts) if n > 0]
    by_rows = sorted((-n, c) for c, n in zip(others, counts[len(favourites):]) if n > 0)  # most rows first
    return (found + [c for _, c in by_rows])[: cfg.max_concepts]


def _part3(cfg: DemoConfig, out: Path, corpus: Path, clip_dir: Path) -> Path:
    """Autoencoder → diffusion model on a concept subset → evaluation → generation report; returns the report."""
    concepts = choose_concepts(cfg, corpus, out / "train")
    logger.info("diffusion subset: %d concepts (%s)", len(concepts), ", ".join(concepts))
    vae_dir = vae.run(dataclasses.replace(vae.PRESETS[cfg.diffusion_preset], data=str(out / "train"),
                                          out=str(out / "vae")))
    dif = training.run(dataclasses.replace(training.PRESETS[cfg.diffusion_preset], data=str(out / "train"),
                                           vae=str(vae_dir), clip=str(clip_dir), out=str(out / "diffusion"),
                                           concepts=tuple(concepts)))
    ev = evaluation.run(dataclasses.replace(evaluation.PRESETS["default"], checkpoint=str(dif),
                                            runs=tuple(cfg.eval_runs), out=str(out / "evaluate")))
    generation.write_showcase(dif, concepts, ev / "showcase.png")
    _classifier_guidance(cfg, out, dif, ev)
    page = generation.build(generation.GenerationReportConfig(vae=str(vae_dir), diffusion=str(dif), evaluate=str(ev),
                                                              out=str(out / "report")))
    logger.info("%s", generation.headline(json.loads((ev / "evaluation.json").read_text())))
    return page


def _classifier_guidance(cfg: DemoConfig, out: Path, dif: Path, ev: Path) -> None:
    """Train the latent classifier on the model's concepts and measure how far it steers unconditional sampling."""
    from diffusion import classifier as clf, classifier_train
    from diffusion.pipeline import Pipeline

    clf_dir = classifier_train.run(dataclasses.replace(
        classifier_train.PRESETS["tiny" if cfg.diffusion_preset == "tiny" else "default"], checkpoint=str(dif),
        out=str(out / "classifier")))
    model, info = clf.load_classifier(clf_dir / "classifier.pt")
    pipe = Pipeline.load(dif)
    judge = evaluation.Judge(pipe.text.path, info["concepts"], pipe.device)
    steps = 5 if cfg.diffusion_preset == "tiny" else 30
    rows = evaluation.classifier_guidance_sweep(pipe, judge, model, steps=steps)
    disk.write_text(ev / "classifier_guidance.json", json.dumps(rows, indent=2) + "\n")


def poison_pair(cfg: DemoConfig, concepts: list[str]) -> tuple[str, str]:
    """The demo's (source, target): the configured pair when the model knows both; the default pair falls back to
    the model's first and last concept (the tiny corpus has no automobile); a pair the user chose must exist."""
    defaults = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    for field in ("poison_source", "poison_target"):
        if getattr(cfg, field) != defaults[field]:
            candidates.check_concept(getattr(cfg, field), concepts, field)
    source = cfg.poison_source if cfg.poison_source in concepts else concepts[0]
    target = cfg.poison_target if cfg.poison_target in concepts and cfg.poison_target != source else \
        next(c for c in reversed(concepts) if c != source)
    if (source, target) != (cfg.poison_source, cfg.poison_target):
        logger.info("poisoning: %s → %s (the configured %s → %s is not in the model's concepts)", source, target,
                    cfg.poison_source, cfg.poison_target)
    return source, target


def pair_sweep(cfg: DemoConfig, out: Path, corpus: Path, name: str) -> Path:
    """One concept pair at realistic doses: `poison pair` → its clean model (tiny UNet, `pair_steps`) → `poison sweep`
    (the `poison_preset`, poisons from the pair's own images, its independent judge)."""
    from diffusion import training

    folder = out / f"pair-{name}"
    tiny = cfg.poison_preset == "tiny"
    p = pairs.run(dataclasses.replace(pairs.PRESETS["tiny" if tiny else "default"], pair=name, art=str(corpus),
                                      out=str(folder), max_concepts=40 if tiny else pairs.PRESETS["style"].max_concepts
                                      if name == "style" else 0))
    info = json.loads((p / "pair.json").read_text())
    clean = training.run(dataclasses.replace(
        training.PRESETS["tiny"], data=str(p / "train"), vae=str(out / "vae"), clip=str(_clip_dir(cfg, out)),
        concepts=tuple(info["concepts"]), steps=cfg.pair_steps, batch_size=32, lr=2e-3, minutes=0.0,
        warmup_steps=min(50, cfg.pair_steps // 5), sample_every=0, checkpoint_every=max(cfg.pair_steps // 2, 1),
        out=str(folder / "clean")))
    return sweep.run(dataclasses.replace(
        sweep.PRESETS[cfg.poison_preset], data=str(p / "train"), checkpoint=str(clean), pool=str(p / "train"),
        judge=str(p / "judge"), prompt=info["prompt"], filter=str(out / "filter"), out=str(folder / "sweep"),
        source=info["source"], target=info["target"], workers=cfg.workers, threads=1))


def _part4(cfg: DemoConfig, out: Path, corpus: Path) -> Path:
    """Each concept pair swept at realistic doses (or the given multi-seed sweeps), the attackability of the
    demo's autoencoder → poisoning report."""
    from diffusion import pipeline

    sweeps = [Path(f) for f in cfg.sweeps] or [pair_sweep(cfg, out, corpus, name) for name in cfg.poison_pairs]
    concepts = list(pipeline.read_checkpoint(out / "diffusion")["concepts"])
    source, target = poison_pair(cfg, concepts)
    att = attackability.run(dataclasses.replace(
        attackability.PRESETS["tiny" if cfg.poison_preset == "tiny" else "demo"], vae=str(out / "vae"),
        data=str(corpus), pairs=(f"{source}:{target}",)))
    disk.write_text(out / "poison-sweeps.json", json.dumps([str(s) for s in sweeps]) + "\n")
    page = poisoning.build(poisoning.PoisoningReportConfig(
        sweep=str(sweeps[0]), more=tuple(str(s) for s in sweeps[1:]), out=str(out / "report"), study=cfg.study,
        attackability=str(att)))
    logger.info("%s", poisoning.headline_all(sweeps))
    if not cfg.sweeps:
        logger.info("poisoning: one seed and a short dose list (the demo's time budget); the README's multi-seed "
                    "commands give the seed-level numbers (`--sweeps=` shows them here)")
    return page


def optout_artists(artists: list[str]) -> tuple[str, str]:
    """(X, control): the first artist whose site opts out with noai signals, the first open artist (`web.PROFILES`)."""
    profile = {a: web.PROFILES[i % len(web.PROFILES)] for i, a in enumerate(artists)}
    opted = [a for a in artists if profile[a] == "noai"] or [a for a in artists if profile[a] != "open"]
    open_ = [a for a in artists if profile[a] == "open"]
    if not opted or not open_:
        raise ValueError(f"the art corpus's artists {artists}: the opt-out evaluation needs an opted-out and an open "
                         "artist (at least 2 artists)")
    return opted[0], open_[0]


def _part5_optout(cfg: DemoConfig, out: Path, corpus: Path) -> Path:
    """Datasets under each opt-out policy + retraining without the artist, one model each → optout.json."""
    from diffusion import pipeline

    artist, control = optout_artists(sorted(art.load(corpus)["artist"].unique()))
    concepts = tuple(pipeline.read_checkpoint(out / "diffusion")["concepts"])  # familiar concepts, rows known
    return optout.run(dataclasses.replace(
        optout.PRESETS[cfg.optout_preset], filter=str(out / "filter"), provenance=str(out / "web" /
        "web_manifest.parquet"), art=str(corpus), vae=str(out / "vae"), clip=str(_clip_dir(cfg, out)),
        out=str(out / "optout"), artist=artist, control_artist=control, candidates=concepts, workers=cfg.workers,
        threads=1))


def _part5_integrity(cfg: DemoConfig, out: Path, corpus: Path) -> Path:
    """Release the curated set (URLs + sha256 + pHash); serve the same web again, some domains changed; rebuild."""
    rel = release.release(release.ReleaseConfig(export=str(out / "train"), shards=str(out / "shards"),
                                                out=str(out / "release")))
    ports = tuple(json.loads((out / "web" / "ports.json").read_text()))
    web_cfg = web.WebConfig(art_dir=str(corpus), out=str(out / "web-after"), seed=cfg.seed, ports=ports,
                            slow_delay_s=cfg.timeout_s + 1)
    with web.DemoWeb(web_cfg) as w:
        if cfg.expire:
            w.expire(list(cfg.expire), "expired")
        if cfg.reencode:
            w.expire(list(cfg.reencode), "reencoded")
        return release.rebuild(dataclasses.replace(
            release.REBUILD_PRESETS["default"], release=str(rel / "release.parquet"), out=str(out / "rebuild"),
            threads=cfg.threads, timeout_s=cfg.timeout_s, allow_networks=w.networks))


def _clip_dir(cfg: DemoConfig, out: Path) -> Path:
    return Path(cfg.clip_dir) if cfg.clip_dir else out / "clip"


PARTS = ("download", "report", "generation", "poisoning", "optout", "integrity")
FOLDERS = {"download": ("web", "crawl", "shards"),
           "report": ("clip", "embeddings", "aesthetic_head", "aesthetic", "filter", "train", "report"),
           "generation": ("vae", "diffusion", "evaluate", "classifier"),
           "poisoning": ("poison-sweep", "pair-vehicle-animal", "pair-style"),
           "optout": ("optout",), "integrity": ("release", "web-after", "rebuild")}
# seconds each part of the default demo took on 2 idle CPU cores (2026-12-03, README "Run the demo"): the ETA's yardstick
REFERENCE_S = {"download": 16, "report": 260, "generation": 365, "poisoning": 306, "optout": 275, "integrity": 8}


def _start(cfg: DemoConfig, out: Path) -> set[str]:
    """Lock the run folder; the finished parts of an earlier run of this config (a new config: start afresh)."""
    out.mkdir(parents=True, exist_ok=True)
    disk.lock_folder(out)
    done_dir = out / "_parts"
    try:
        options.check_resumable(cfg, out, runtime_fields=("stop_after", "threads", "workers"))  # a later stop_after extends a run
    except ValueError:
        logger.info("demo: %s holds a run of another config; starting afresh", out)
        shutil.rmtree(done_dir, ignore_errors=True)
    done = {p for p in PARTS if (done_dir / f"{p}.done").is_file()}
    first = next((p for p in PARTS if p not in done), None)
    redo = PARTS[PARTS.index(first):] if first else ()
    for part in redo:  # an interrupted part restarts from scratch (the web's ports change from run to run)
        for stage in FOLDERS[part]:
            if not (part == "report" and stage == "clip" and cfg.clip_dir):
                shutil.rmtree(out / stage, ignore_errors=True)
    kept = [p for p in PARTS if p in done and p not in redo]
    if kept:
        logger.info("demo: resuming %s; finished parts kept: %s", out, ", ".join(kept))
    options.write_config(cfg, out)
    done_dir.mkdir(parents=True, exist_ok=True)
    return set(kept)


class Clock:
    """Per-part seconds of this run, and an ETA for the parts left: their reference seconds (`REFERENCE_S`) scaled by
    how this machine compared with the reference on the parts run so far."""

    def __init__(self, parts: tuple[str, ...]):
        self.parts, self.took = parts, {}

    def eta(self) -> float:
        ran = [p for p in self.took if REFERENCE_S.get(p)]
        pace = sum(self.took[p] for p in ran) / sum(REFERENCE_S[p] for p in ran) if ran else 1.0
        return pace * sum(REFERENCE_S.get(p, 0) for p in self.parts if p not in self.took)

    def finished(self, name: str, seconds: float) -> None:
        self.took[name] = seconds
        left = [p for p in self.parts if p not in self.took]
        tail = f"; about {self.eta() / 60:.1f} min left ({', '.join(left)})" if left else ""
        logger.info("demo: part %r finished in %.1f s%s", name, seconds, tail)


def _part(out: Path, done: set[str], clock: Clock, name: str, fn, *args):
    """Run one part unless finished; mark it finished."""
    if name in done:
        logger.info("demo: part %r finished earlier, skipped", name)
        return None
    t0 = time.time()
    result = fn(*args)
    disk.write_text(out / "_parts" / f"{name}.done", f"{time.time() - t0:.1f} s\n")
    clock.finished(name, time.time() - t0)
    return result


def run(cfg: DemoConfig) -> Path:
    """Run the demo (resuming a finished part of an earlier run); returns the run folder: report/index.html (every
    part on one page), metrics.json, funnel.txt and one folder per stage."""
    out = Path(cfg.out)
    t0 = time.time()
    done = _start(cfg, out)
    art_cfg = art.PRESETS[cfg.art_preset]
    if cfg.cache_dir:
        art_cfg = dataclasses.replace(art_cfg, cache_dir=cfg.cache_dir)
    corpus = art.run(art_cfg)
    manifest, registry = out / "web" / "web_manifest.parquet", out / "registry.json"
    last = PARTS.index(cfg.stop_after)
    clock = Clock(tuple(p for p in PARTS[: last + 1] if p not in done))
    logger.info("demo: parts %s, about %.1f min on 2 idle CPU cores", ", ".join(clock.parts), clock.eta() / 60)
    _part(out, done, clock, "download", _part1, cfg, out, corpus)
    steps = {"report": (_part2, cfg, out, corpus, manifest, registry),
             "generation": (_part3, cfg, out, corpus, _clip_dir(cfg, out)), "poisoning": (_part4, cfg, out, corpus),
             "optout": (_part5_optout, cfg, out, corpus), "integrity": (_part5_integrity, cfg, out, corpus)}
    for name in PARTS[1 : last + 1]:
        _part(out, done, clock, name, *steps[name])
    page = story.build(story.StoryConfig(run=str(out))) if last >= 1 else None
    logger.info("art corpus:   %s", corpus)
    logger.info("web manifest: %s", manifest)
    logger.info("shards:       %s", out / "shards")
    if page is not None:
        logger.info("training set: %s", out / "train")
        logger.info("report:       %s  (every part, one table of contents)", page.resolve())
        logger.info("metrics:      %s", (out / "metrics.json").resolve())
    logger.info("demo finished in %.1f s (%s); outputs under %s", time.time() - t0,
                ", ".join(f"{p} {s:.0f} s" for p, s in clock.took.items()), out.resolve())
    return out
