"""`mithridate poison pair`: a concept pair with many clean images, as a training set for dose experiments.

Nightshade's claim is about concepts with hundreds of clean images poisoned at a few percent of them; a concept
with one clean image (a single emoji) cannot test it. A pair builds such concepts from the art corpus:

- **groups** ("vehicle-animal"): super-concepts made of corpus subcategories — "vehicle" = transport-ground
  (~150 images), "animal" = animal-mammal (~189) — plus distractor groups, each image captioned the way alt text
  names it ("racing car, a vehicle", "vehicle icon: taxi", …). Prompts name the group ("a vehicle").
- **style** ("style"): the artists themselves — every image captioned "{concept} emoji by {artist}", the
  source and target are two artists (~1,381 works each in the full corpus; `max_concepts` caps the concepts);
  prompts name the artist ("an emoji by twemoji").

Outputs: `train/*.parquet` (TRAIN schema; `artist`, `licence` from the corpus), `rows.parquet` (uid, corpus
concept, label, subcategory, artist), `pair.json` (source, target, concepts = the labels, prompt template, counts)
and `judge/` — the independent judge: a pixel classifier over the labels trained on the corpus images with whole
corpus concepts held out (`poisoning.judge`), never the victim's text encoder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from curation.world import art
from diffusion import data
from mithridate.core import disk, options, schema

logger = logging.getLogger(__name__)

GROUP_TEMPLATES = ("{concept}, a {group}", "{group} icon: {concept}", "{concept} ({group})", "a {group}",
                   "{group} emoji, {concept}")

# name → (kind, {label: subcategories} for groups, source, target, prompt)
PAIRS = {
    "vehicle-animal": ("groups", {"vehicle": ("transport-ground",), "animal": ("animal-mammal",),
                                  "clothing": ("clothing",), "weather": ("sky & weather",)},
                       "vehicle", "animal", "a {}"),
    "style": ("style", {}, "twemoji", "notomono", "an emoji by {}"),
}
SHARD_ROWS = 256


@dataclass(frozen=True)
class PairConfig:
    pair: Literal["vehicle-animal", "style"] = options.opt("vehicle-animal", "which concept pair to build")
    art: str = options.opt("", "art corpus folder ('' = the corpus of art_preset, built or reused from the cache)")
    art_preset: str = options.opt("default", "art preset used when art is ''")
    out: str = options.opt("mithridate-out/pair", "output folder: train/, rows.parquet, pair.json, judge/")
    max_concepts: int = options.opt(0, "style pair: corpus concepts kept (seeded sample; 0 = all)")
    max_per_label: int = options.opt(0, "groups pair: at most this many images per label (seeded; 0 = all)")
    judge_steps: int = options.opt(600, "training steps of the independent judge")
    judge_held_out: float = options.opt(0.2, "fraction of the corpus concepts held out to test the judge")
    seed: int = options.opt(0, "seed of the samples, captions and the judge")

    def __post_init__(self):
        options.check_choice(self, "pair", tuple(PAIRS))
        options.check_positive(self, "judge_steps")
        for name in ("max_concepts", "max_per_label"):
            if getattr(self, name) < 0:
                raise ValueError(f"PairConfig.{name}={getattr(self, name)!r}: must be >= 0 (0 = all)")
        if not 0 < self.judge_held_out < 1:
            raise ValueError(f"PairConfig.judge_held_out={self.judge_held_out!r}: must be within (0, 1)")


PRESETS = {
    "default": PairConfig(),
    "style": PairConfig(pair="style", max_concepts=150),
    # seconds, for tests (the tiny corpus has no subcategory with many members: style only)
    "tiny": PairConfig(pair="style", judge_steps=60),
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def group_caption(concept: str, group: str, k: int) -> str:
    """Alt-text-like caption naming the group (template `k` of `GROUP_TEMPLATES`, a/an fixed)."""
    text = GROUP_TEMPLATES[k % len(GROUP_TEMPLATES)].format(concept=concept, group=group)
    return text.replace(f"a {group}", f"{_article(group)} {group}")


def rows(cfg: PairConfig, corpus: pd.DataFrame) -> pd.DataFrame:
    """The pair's corpus rows with `label` (a group or an artist) and `caption`."""
    kind, groups, source, target, _ = PAIRS[cfg.pair]
    rng = np.random.default_rng(cfg.seed)
    if kind == "style":
        names = sorted(corpus["concept"].unique())
        if cfg.max_concepts and cfg.max_concepts < len(names):
            names = sorted(rng.choice(names, cfg.max_concepts, replace=False).tolist())
        df = corpus[corpus["concept"].isin(names)].copy()
        df["label"] = df["artist"]
        df["caption"] = [data.CORPUS_CAPTION.format(concept=c, artist=a) for c, a in zip(df.concept, df.artist)]
    else:
        of = {sub: label for label, subs in groups.items() for sub in subs}
        df = corpus[corpus["subcategory"].isin(of)].copy()
        df["label"] = df["subcategory"].map(of)
        if cfg.max_per_label:
            df = df.groupby("label", group_keys=False).apply(
                lambda g: g.sample(min(len(g), cfg.max_per_label), random_state=cfg.seed))
        ks = rng.integers(0, len(GROUP_TEMPLATES), len(df))
        df["caption"] = [group_caption(c, g, int(k)) for c, g, k in zip(df.concept, df.label, ks)]
    missing = [c for c in (source, target) if c not in set(df["label"])]
    if missing:
        raise ValueError(f"PairConfig.art={cfg.art!r}: no corpus image for {', '.join(missing)} of pair "
                         f"{cfg.pair!r} (its artists: {', '.join(sorted(corpus.artist.unique()))})")
    return df.sort_values(["label", "concept", "artist"]).reset_index(drop=True)


def write_shards(df: pd.DataFrame, corpus_dir: Path, out: Path) -> list[bytes]:
    """TRAIN-schema shards of the pair's rows; returns each row's image bytes (64 px PNG from the corpus)."""
    out.mkdir(parents=True, exist_ok=True)
    table = [{"uid": schema.make_uid(f"art://{r.item_id}", r.caption), "jpg": (corpus_dir / r.path64).read_bytes(),
              "caption": r.caption, "url": f"art://{r.item_id}", "domain": "art-corpus", "artist": r.artist,
              "licence": r.licence, "clip_score": None, "aesthetic_score": None} for r in df.itertuples()]
    for i in range(0, len(table), SHARD_ROWS):
        schema.write(pa.Table.from_pylist(table[i:i + SHARD_ROWS], schema=schema.TRAIN_SCHEMA),
                     out / f"{i // SHARD_ROWS:05d}.parquet", "train")
    return [r["jpg"] for r in table]


def train_judge(cfg: PairConfig, df: pd.DataFrame, pngs: list[bytes], out: Path) -> dict:
    """The independent judge: a pixel classifier over the pair's labels, whole corpus concepts held out."""
    from mithridate.core.compute import torch_threads
    from poisoning import judge

    labels = sorted(df["label"].unique())
    images = np.stack([data.decode(b, 32) for b in pngs])
    with torch_threads(1):
        j = judge.train(images, np.array([labels.index(x) for x in df["label"]]), labels, df["concept"].tolist(),
                        held_out=cfg.judge_held_out, steps=cfg.judge_steps, seed=cfg.seed)
    judge.save(j, out)
    return j.info()


def resolve_art(cfg: PairConfig) -> Path:
    if cfg.art:
        if not Path(cfg.art, "art.parquet").is_file():
            raise ValueError(f"PairConfig.art={cfg.art!r}: not an art corpus folder (`mithridate art build`)")
        return Path(cfg.art)
    if cfg.art_preset not in art.PRESETS:
        raise ValueError(f"PairConfig.art_preset={cfg.art_preset!r}: allowed values are {', '.join(art.PRESETS)}")
    return Path(art.run(art.PRESETS[cfg.art_preset]))


def run(cfg: PairConfig) -> Path:
    """Build the pair's training shards and judge; returns the output folder (reused when finished)."""
    out = Path(cfg.out)
    options.check_resumable(cfg, out)
    if (out / "pair.json").is_file():
        logger.info("pair %s: finished earlier in %s", cfg.pair, out)
        return out
    options.write_config(cfg, out)
    corpus_dir = resolve_art(cfg)
    df = rows(cfg, art.load(corpus_dir))
    pngs = write_shards(df, corpus_dir, out / "train")
    n = len(pngs)
    with disk.atomic(out / "rows.parquet") as tmp:
        df[["item_id", "concept", "label", "subcategory", "artist", "caption"]].to_parquet(tmp)
    judge_info = train_judge(cfg, df, pngs, out / "judge")
    kind, _, source, target, prompt = PAIRS[cfg.pair]
    counts = df["label"].value_counts().to_dict()
    info = {"pair": cfg.pair, "kind": kind, "source": source, "target": target, "prompt": prompt,
            "concepts": sorted(counts), "counts": {k: int(v) for k, v in sorted(counts.items())}, "rows": n,
            "art": str(corpus_dir), "judge": judge_info}
    disk.write_text(out / "pair.json", json.dumps(info, indent=2) + "\n")
    logger.info("pair %s: %d rows (%s), %s → %s; judge held-out accuracy %.2f (chance %.2f)", cfg.pair, n,
                ", ".join(f"{k} {v}" for k, v in info["counts"].items()), source, target,
                judge_info["heldout_accuracy"], judge_info["chance"])
    return out
