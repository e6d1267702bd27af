"""`mithridate clip train`: a compact open_clip CLIP trained from scratch on the art corpus, and its evaluation.

The model is open_clip's `CLIP` with a small ModifiedResNet image tower (32 or 64 px) and a small text
transformer (open_clip's bundled BPE tokenizer), trained with open_clip's `ClipLoss`. Each batch holds
distinct concepts, each with one of its artists' images and a caption drawn from its name, aliases and
keywords in simple templates. Whole concepts and some (concept, artist) images are held out; the
evaluation reports zero-shot accuracy, retrieval recall and caption-matching ROC-AUC on them.

    <out>/config.json   the resolved config (written first)
    <out>/clip.pt       the checkpoint: model_cfg, state_dict, preprocess, name, train_config, split
    <out>/eval.json     flat metrics, slash-namespaced (`heldout_style/zeroshot_top1`, …)
    <out>/curve.png     training loss and learning rate; `curve.csv` holds the numbers
    <out>/open_clip/    the same model as an open_clip "local-dir" folder: open_clip_config.json (model_cfg,
                        preprocess_cfg) and open_clip_model.safetensors (open_clip_pytorch_model.bin without
                        safetensors); `open_clip.create_model_and_transforms("local-dir:<out>/open_clip")` and
                        `open_clip.get_tokenizer(...)` load it offline (see `export_open_clip`)

A folder that already holds `clip.pt` and `eval.json` from the same config is reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from curation.score import encoders
from curation.world import art, webcontent as wc
from mithridate.core import checkpoints, compute, curves, disk, options, progress, schema
from mithridate.core.lr import warmup_cosine

logger = logging.getLogger(__name__)

TEMPLATES = ("{}", "a {}", "the {}", "{} emoji", "{} icon", "a picture of a {}", "an illustration of a {}",
             "a drawing of a {}")
STYLE_TEMPLATES = ("{} by {artist}", "{} in the style of {artist}", "{artist} {}", "a {} drawn by {artist}")
VOCAB_SIZE = 49408  # open_clip's bundled BPE (SimpleTokenizer)


@dataclass(frozen=True)
class ClipTrainConfig:
    art_dir: str = options.opt("", "art corpus folder from `mithridate art build` ('' = build it with art_preset)")
    art_preset: Literal["default", "tiny"] = options.opt("default", "art preset used when art_dir is ''")
    cache_dir: str = options.opt("", "art cache root when art_dir is '' ('' = $MITHRIDATE_CACHE or the user cache)")
    out: str = options.opt("mithridate-out/clip",
                           "output folder: clip.pt, open_clip/, eval.json, config.json, curve.png")
    image_size: int = options.opt(32, "image side seen by the model: 32 or 64 px")
    embed_dim: int = options.opt(256, "joint embedding size")
    vision_layers: tuple[int, ...] = options.opt((1, 1, 1, 1), "ResNet bottleneck blocks in each of the 4 stages")
    vision_width: int = options.opt(32, "ResNet base width (stage k has width·2^k channels ×4)")
    vision_head_width: int = options.opt(32, "channels per head of the ResNet's attention pool")
    text_width: int = options.opt(128, "text transformer width")
    text_layers: int = options.opt(4, "text transformer layers")
    text_heads: int = options.opt(4, "text transformer heads")
    context_length: int = options.opt(32, "text tokens (longer captions are truncated)")
    batch_size: int = options.opt(256, "concepts per batch (all distinct; capped at the number of train concepts)")
    lr: float = options.opt(1e-3, "peak AdamW learning rate (cosine decay after warmup)")
    weight_decay: float = options.opt(0.1, "AdamW weight decay (not on gains, biases, logit scale)")
    warmup_steps: int = options.opt(50, "linear warmup steps")
    steps: int = options.opt(800, "training steps (0 = as many as fit in `minutes`)")
    minutes: float = options.opt(0.0, "optional time cap; the schedule compresses to fit it (0 = none: results then "
                                 "depend on steps alone, not on how busy the machine is)")
    precision: Literal["auto", "fp32", "bf16"] = options.opt(
        "auto", "autocast precision (auto = bf16 on GPUs and on CPUs with bf16 support, else fp32)")
    augment_shift: int = options.opt(2, "random translation of training images, in pixels (0 = off)")
    heldout_concepts: int = options.opt(100, "concepts held out entirely (never seen in training)")
    heldout_style_frac: float = options.opt(0.15, "fraction of the other concepts with one artist's image held out")
    style_caption_frac: float = options.opt(0.3, "fraction of training captions that also name the artist")
    templates: tuple[str, ...] = options.opt(TEMPLATES, "caption templates; {} is the concept name or an alias")
    style_templates: tuple[str, ...] = options.opt(STYLE_TEMPLATES, "caption templates naming the artist {artist}")
    seed: int = options.opt(0, "seed of the split, initialisation, batches and augmentation")
    device: str = options.opt("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self):
        for name in ("vision_layers", "templates", "style_templates"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        options.check_positive(self, "embed_dim", "vision_width", "vision_head_width", "text_width", "text_layers",
                               "text_heads", "context_length", "batch_size", "lr")
        options.check_choice(self, "image_size", (32, 64))
        options.check_choice(self, "art_preset", options.literal_values(ClipTrainConfig, "art_preset"))
        options.check_choice(self, "precision", options.literal_values(ClipTrainConfig, "precision"))
        _check_ranges(self)


def _check_ranges(cfg: ClipTrainConfig) -> None:
    def fail(name: str, why: str) -> ValueError:
        return ValueError(f"ClipTrainConfig.{name}={getattr(cfg, name)!r}: {why}")

    if len(cfg.vision_layers) != 4 or min(cfg.vision_layers) < 1:
        raise fail("vision_layers", "expected 4 stage depths >= 1, e.g. 1,1,1,1")
    if cfg.text_width % cfg.text_heads:
        raise fail("text_heads", f"must divide text_width={cfg.text_width}")
    if (cfg.vision_width * 32) % cfg.vision_head_width:
        raise fail("vision_head_width", f"must divide 32·vision_width={cfg.vision_width * 32}")
    if cfg.steps < 0 or cfg.minutes < 0 or cfg.warmup_steps < 0 or cfg.heldout_concepts < 0 or cfg.augment_shift < 0:
        raise fail("steps" if cfg.steps < 0 else "minutes", "steps, minutes, warmup_steps, heldout_concepts and "
                   "augment_shift must be >= 0")
    if cfg.steps == 0 and cfg.minutes == 0:
        raise fail("steps", "give steps > 0 or minutes > 0 (both 0 would never stop)")
    for name in ("heldout_style_frac", "style_caption_frac"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise fail(name, "must be within [0, 1]")
    if not cfg.templates or any("{}" not in t for t in cfg.templates):
        raise fail("templates", "each template needs a {} for the concept name")
    if any("{}" not in t or "{artist}" not in t for t in cfg.style_templates):
        raise fail("style_templates", "each template needs {} and {artist}")
    if cfg.style_caption_frac > 0 and not cfg.style_templates:
        raise fail("style_templates", "empty while style_caption_frac > 0")
    compute.resolve_device(cfg.device)


PRESETS = {
    # the feasibility study's recipe; 800 steps take about 3.5 minutes on 2 idle CPU cores; bounded by steps only
    # (an opt-in `minutes` cap would make the model depend on how busy the machine is)
    "default": ClipTrainConfig(),
    # `mithridate demo`'s: 600 steps (~2.8 minutes; held-out top-1 25.5% vs 29.7% at 800, matched-vs-mismatched
    # caption AUC 0.920 vs 0.925), so the whole demo fits 15 minutes on 2 cores
    "demo": ClipTrainConfig(steps=600),
    # seconds, for tests: a narrower model on the tiny corpus
    "tiny": ClipTrainConfig(art_preset="tiny", embed_dim=64, vision_width=16, vision_head_width=16, text_width=64,
                            text_layers=2, text_heads=2, batch_size=64, lr=2e-3, warmup_steps=5, steps=40,
                            heldout_concepts=2, heldout_style_frac=0.25),
}


# --- data ----------------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The art corpus as tensors: one row per (artist, concept) image."""

    table: pd.DataFrame  # art rows (concept, artist, aliases, keywords, …), index 0..N-1
    pixels: torch.Tensor  # (N, 3, S, S) float32 in [0, 1], before normalisation
    concepts: list[str]  # distinct concept names, sorted
    concept_of: np.ndarray  # (N,) index into `concepts`


def corpus_folder(cfg: ClipTrainConfig) -> Path:
    """The art corpus of `cfg`: `art_dir`, or the `art_preset` corpus built (or reused) in the cache."""
    if cfg.art_dir:
        folder = Path(cfg.art_dir)
        if not (folder / "art.parquet").is_file():
            raise FileNotFoundError(f"ClipTrainConfig.art_dir={cfg.art_dir!r}: no art.parquet there")
        return folder
    return art.run(dataclasses.replace(art.PRESETS[cfg.art_preset], cache_dir=cfg.cache_dir))


def preprocess_info(image_size: int) -> dict:
    """The checkpoint's `preprocess` dict: open_clip's PreprocessCfg fields (OpenAI mean/std, bicubic)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return {"size": image_size, "mean": tuple(OPENAI_DATASET_MEAN), "std": tuple(OPENAI_DATASET_STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def load_corpus(folder: Path, image_size: int) -> Corpus:
    """Read the corpus and pass every 64 px image through open_clip's inference resize (as `Encoder` will).

    The images are resized exactly as the encoder later resizes downloaded images, so training and use see the
    same pixels; normalisation is applied per batch, after augmentation.
    """
    table = art.load(folder).sort_values(["concept_key", "artist"]).reset_index(drop=True)
    for col in ("aliases", "keywords"):  # parquet lists arrive as numpy arrays
        table[col] = table[col].apply(list)
    tf = encoders.compact_transform({**preprocess_info(image_size), "mean": (0.0,) * 3, "std": (1.0,) * 3})
    rows = progress.bar(list(table.itertuples()), "loading art", "image")
    pixels = torch.stack([tf(Image.open(art.image_path(folder, r._asdict(), 64)).convert("RGB")) for r in rows])
    concepts = sorted(table["concept"].unique())
    index = {c: i for i, c in enumerate(concepts)}
    return Corpus(table, pixels, concepts, table["concept"].map(index).to_numpy())


def names_of(row) -> list[str]:
    """A concept's names: CLDR name first, then aliases and keywords (distinct)."""
    return list(dict.fromkeys([row["concept"], *row["aliases"], *row["keywords"]]))


@dataclass
class Split:
    """Item indices of the training set and the two held-out sets."""

    train: np.ndarray  # items seen in training
    heldout_style: np.ndarray  # one artist's image of a seen concept, never seen itself
    unseen: np.ndarray  # every image of the held-out concepts


def make_split(corpus: Corpus, cfg: ClipTrainConfig, rng: np.random.Generator) -> Split:
    """Hold out `heldout_concepts` whole concepts and, for a fraction of the rest, one artist's image.

    The concepts the demo web and poisoning name (`art.DEFAULT_INCLUDE`) always stay in training, and a concept
    drawn by a single artist never loses its only image.
    """
    n_c = len(corpus.concepts)
    protected = {i for i, c in enumerate(corpus.concepts) if c in art.DEFAULT_INCLUDE}
    candidates = np.array([i for i in range(n_c) if i not in protected])
    k = min(cfg.heldout_concepts, max(len(candidates) - 1, 0))
    unseen_c = set(rng.choice(candidates, size=k, replace=False).tolist()) if k else set()
    by_concept = pd.Series(np.arange(len(corpus.table))).groupby(corpus.concept_of).apply(list)
    multi = [c for c in range(n_c) if c not in unseen_c and len(by_concept[c]) > 1]
    n_style = round(cfg.heldout_style_frac * len(multi))
    style_c = rng.choice(np.array(multi, dtype=int), size=n_style, replace=False) if n_style else []
    heldout_style = sorted(int(rng.choice(by_concept[c])) for c in style_c)
    unseen = sorted(i for c in unseen_c for i in by_concept[c])
    taken = set(heldout_style) | set(unseen)
    train = [i for i in range(len(corpus.table)) if i not in taken]
    return Split(np.array(train, dtype=int), np.array(heldout_style, dtype=int), np.array(unseen, dtype=int))


@dataclass
class Captions:
    """Every training caption tokenized once; per item, the token rows it may draw from."""

    tokens: torch.Tensor  # (M, context_length)
    plain: list[np.ndarray]  # per item: rows of the concept's templated names
    styled: list[np.ndarray]  # per item: rows that also name the item's artist


def build_captions(corpus: Corpus, cfg: ClipTrainConfig, tokenizer) -> Captions:
    """Tokenize every (name × template) caption of each concept and (name × style template) of each item."""
    texts: dict[str, int] = {}

    def ids(strings) -> np.ndarray:
        return np.array([texts.setdefault(s, len(texts)) for s in strings], dtype=int)

    plain, styled = [], []
    for row in corpus.table.to_dict("records"):
        names = names_of(row)
        extra = [f"{names[0]}, {', '.join(names[1:3])}"] if len(names) > 1 else []  # "cow, cow face, moo"
        plain.append(ids([t.format(n) for n in names for t in cfg.templates] + extra))
        styled.append(ids([t.format(n, artist=row["artist"]) for n in names[:2] for t in cfg.style_templates]))
    return Captions(tokenizer(list(texts)), plain, styled)


# --- training ------------------------------------------------------------------------------------------------------


def model_config(cfg: ClipTrainConfig) -> dict:
    """The open_clip `CLIP(**model_cfg)` arguments of a compact model (ModifiedResNet image tower)."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"layers": list(cfg.vision_layers), "width": cfg.vision_width,
                       "head_width": cfg.vision_head_width, "image_size": cfg.image_size},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": VOCAB_SIZE, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def build_model(cfg: ClipTrainConfig) -> torch.nn.Module:
    """A freshly initialised compact CLIP, seeded by `cfg.seed` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return encoders.build_compact_model(model_config(cfg))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as open_clip trains: no decay on gains, biases, norms and the logit scale."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (rest if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class Batcher:
    """Batches of distinct concepts: each concept once per pass, one random image and caption of it each time."""

    def __init__(self, corpus: Corpus, captions: Captions, train: np.ndarray, cfg: ClipTrainConfig,
                 generator: torch.Generator):
        self.captions, self.cfg, self.g = captions, cfg, generator
        items = pd.Series(train).groupby(corpus.concept_of[train]).apply(list)
        self.items = [np.array(v) for v in items]  # per train concept: its train items
        self.size = min(cfg.batch_size, len(self.items))
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def _concepts(self) -> torch.Tensor:
        if self.pos + self.size > len(self.order):
            self.order, self.pos = torch.randperm(len(self.items), generator=self.g), 0
        self.pos += self.size
        return self.order[self.pos - self.size : self.pos]

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """(item indices `(B,)`, caption token rows `(B,)`) of the next batch."""
        concepts = self._concepts().tolist()
        u = torch.rand(3, len(concepts), generator=self.g).numpy()
        items = np.array([self.items[c][int(u[0, j] * len(self.items[c]))] for j, c in enumerate(concepts)])
        rows = []
        for j, i in enumerate(items):
            pool = self.captions.styled[i] if u[1, j] < self.cfg.style_caption_frac else self.captions.plain[i]
            rows.append(pool[int(u[2, j] * len(pool))])
        return items, np.array(rows)


def attention_backend(device: str):
    """On CPUs, plain-math attention: for the text tower's short sequences (32 tokens, 4 heads) PyTorch's CPU
    flash-attention backward is slower than two matmuls (measured 0.36 → 0.26 s per default-preset step)."""
    return contextlib.nullcontext() if device.startswith("cuda") else compute.math_attention()


def augment(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image `(B, 3, S, S)` by up to `shift` px, filling with white (the corpus background)."""
    if shift == 0:
        return x
    b, _, s, _ = x.shape
    padded = torch.nn.functional.pad(x, (shift,) * 4, value=1.0)  # (B, 3, S+2k, S+2k)
    off = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).tolist()
    return torch.stack([padded[j, :, off[0][j] : off[0][j] + s, off[1][j] : off[1][j] + s] for j in range(b)])


@dataclass
class TrainResult:
    steps: int
    seconds: float
    stopped_by: str  # "steps" or "time"
    curve: list[tuple[int, float, float, float]]  # (step, loss, lr, seconds)


def train(model: torch.nn.Module, corpus: Corpus, captions: Captions, split: Split, cfg: ClipTrainConfig,
          device: str) -> TrainResult:
    """Train `model` in place with open_clip's ClipLoss, AdamW and a warmup + cosine schedule.

    The schedule's progress is max(step / steps, elapsed / budget), so a slow machine finishes the whole cosine
    decay within `minutes` instead of being cut off at a high learning rate.
    """
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(cfg.seed)
    batcher, loss_fn = Batcher(corpus, captions, split.train, cfg, g), ClipLoss()
    mean = torch.tensor(preprocess_info(cfg.image_size)["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_info(cfg.image_size)["std"], device=device).view(1, 3, 1, 1)
    pixels, tokens = corpus.pixels.to(device), captions.tokens.to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                            fused=True)  # one kernel per step instead of one per tensor (CPU and CUDA)
    bf16, budget = compute.use_bf16(cfg.precision, device, on_cpu=True), cfg.minutes * 60
    model.to(device).train()
    curve, t0 = [], time.perf_counter()
    bar = progress.bar(range(cfg.steps or 10**9), "clip train", "step")
    for step in bar:
        elapsed = time.perf_counter() - t0
        done = max(step / cfg.steps if cfg.steps else 0.0, elapsed / budget if budget else 0.0)
        if done >= 1.0:
            break
        lr = warmup_cosine(cfg.lr, step, cfg.warmup_steps, done)
        for group in opt.param_groups:
            group["lr"] = lr
        items, rows = batcher.next()
        x = augment(pixels[torch.from_numpy(items).to(device)], cfg.augment_shift, g)
        with attention_backend(device), compute.autocast(device, bf16):
            img, txt, scale = model((x - mean) / std, tokens[torch.from_numpy(rows).to(device)])
        loss = loss_fn(img.float(), txt.float(), scale.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # the backward of the math attention chosen in the forward
        opt.step()
        with torch.no_grad():  # as CLIP: the temperature stays within [1, 100]
            model.logit_scale.clamp_(0, math.log(100))
        curve.append((step, loss.item(), lr, round(time.perf_counter() - t0, 3)))
        bar.set_postfix(loss=f"{curve[-1][1]:.3f}", refresh=False)
        if step % 100 == 0:
            logger.info("step %d  loss %.4f  lr %.2e  %.0f s", step, curve[-1][1], lr, curve[-1][3])
    model.eval()
    done = len(curve)
    return TrainResult(done, round(time.perf_counter() - t0, 2), "time" if cfg.steps == 0 or done < cfg.steps
                       else "steps", curve)


# --- evaluation ----------------------------------------------------------------------------------------------------


def topk_accuracy(sims: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows of `sims` `(N, C)` whose true column `labels` `(N,)` is among the k highest (ties count
    against it)."""
    true = sims[np.arange(len(labels)), labels][:, None]
    rank = (sims >= true).sum(axis=1) - 1  # columns scoring at least as high, besides the true one
    return {k: float((rank < k).mean()) for k in ks}


def recall_at_k(img: np.ndarray, txt: np.ndarray, groups: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Image→text and text→image recall@k of paired rows; a hit is any item of the same group (concept)."""
    sims = img @ txt.T  # (N, N)
    out = {}
    for direction, s in (("i2t", sims), ("t2i", sims.T)):
        top = np.argsort(-s, axis=1, kind="stable")[:, : max(ks)]
        hit = groups[top] == groups[:, None]
        out.update({f"{direction}_r{k}": float(hit[:, :k].any(axis=1).mean()) for k in ks})
    return out


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores `pos` (should be high) against `neg` (should be low); NaN if either is empty."""
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def class_embeddings(encoder: encoders.Encoder, names: list[str], templates: tuple[str, ...]) -> np.ndarray:
    """Zero-shot classifier `(C, D)`: the normalised mean of each name's embeddings over the templates."""
    emb = encoder.encode_texts([t.format(n) for n in names for t in templates]).reshape(len(names), len(templates), -1)
    mean = emb.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _zeroshot_among(img: np.ndarray, labels: np.ndarray, classes: np.ndarray, n: int, rng) -> dict[int, float]:
    """Top-1/5 among the true class and n-1 random others, per image."""
    n = min(n, len(classes))
    cols = np.stack([np.r_[c, rng.choice(np.delete(np.arange(len(classes)), c), n - 1, replace=False)]
                     for c in labels])  # (N, n): true class first
    sims = np.einsum("nd,nkd->nk", img, classes[cols])
    return topk_accuracy(sims, np.zeros(len(labels), dtype=int))


def _caption_pairs(corpus: Corpus, idx: np.ndarray, cfg: ClipTrainConfig, rng) -> tuple[list, list, list]:
    """(matched, mismatched, spam) captions of items `idx`: the same random template around the item's own name
    or another concept's name, and an SEO-spam run of the demo web's kind."""
    rows = corpus.table.to_dict("records")
    py_rng = random.Random(int(rng.integers(2**31)))
    matched, mismatched, spam = [], [], []
    for i in idx:
        t = cfg.templates[rng.integers(len(cfg.templates))]
        names = names_of(rows[i])
        other = corpus.concepts[(corpus.concept_of[i] + 1 + rng.integers(len(corpus.concepts) - 1))
                                % len(corpus.concepts)]
        matched.append(t.format(names[rng.integers(len(names))]))
        mismatched.append(t.format(other))
        spam.append(wc.spam_alt(py_rng))
    return matched, mismatched, spam


def evaluate_items(encoder: encoders.Encoder, corpus: Corpus, idx: np.ndarray, classes: np.ndarray,
                   cfg: ClipTrainConfig, rng: np.random.Generator, prefix: str) -> dict:
    """Zero-shot, retrieval and caption-matching metrics of corpus items `idx`, keys prefixed `<prefix>/`."""
    if len(idx) == 0:
        return {f"{prefix}/items": 0}
    mean, std = preprocess_info(cfg.image_size)["mean"], preprocess_info(cfg.image_size)["std"]
    img = encoder.encode_pixels((corpus.pixels[idx] - torch.tensor(mean).view(1, 3, 1, 1))
                                / torch.tensor(std).view(1, 3, 1, 1))
    labels = corpus.concept_of[idx]
    own = np.unique(labels)
    m = {"items": len(idx), "concepts": len(own)}
    local = np.searchsorted(own, labels)
    for name, acc in (("zeroshot", topk_accuracy(img @ classes[own].T, local)),
                      ("zeroshot50", _zeroshot_among(img, labels, classes, 50, rng)),
                      ("zeroshot_all", topk_accuracy(img @ classes.T, labels))):
        m.update({f"{name}_top1": acc[1], f"{name}_top5": acc[5]})
    m["zeroshot50_classes"] = min(50, len(classes))
    txt = encoder.encode_texts([cfg.templates[0].format(corpus.concepts[c]) for c in labels])
    m.update(recall_at_k(img, txt, labels))
    matched, mismatched, spam = (encoder.encode_texts(c) for c in _caption_pairs(corpus, idx, cfg, rng))
    pos = (img * matched).sum(1)
    m["auc_mismatched"] = roc_auc(pos, (img * mismatched).sum(1))
    m["auc_spam"] = roc_auc(pos, (img * spam).sum(1))
    return {f"{prefix}/{k}": round(v, 4) if isinstance(v, float) else v for k, v in m.items()}


def evaluate(encoder: encoders.Encoder, corpus: Corpus, split: Split, cfg: ClipTrainConfig) -> dict:
    """Metrics on the held-out-artist images, the unseen concepts and (for memorisation) up to 500 train items."""
    rng = np.random.default_rng(cfg.seed + 1)
    classes = class_embeddings(encoder, corpus.concepts, cfg.templates)
    train_sample = np.sort(rng.choice(split.train, size=min(500, len(split.train)), replace=False))
    out = {}
    for prefix, idx in (("heldout_style", split.heldout_style), ("unseen", split.unseen), ("train", train_sample)):
        out.update(evaluate_items(encoder, corpus, idx, classes, cfg, rng, prefix))
    return out


def evaluate_on_web(encoder: encoders.Encoder, shards_folder: str | Path, manifest, embeddings=None) -> dict:
    """How well the CLIP score separates correct alt texts from mismatched and spam ones on the demo web.

    Args:
        encoder: the encoder to score with.
        shards_folder: a download folder (`NNNNN.parquet` shards); its success rows are scored.
        manifest: the demo web's ground truth (`web_manifest.parquet` path, pyarrow Table or DataFrame).
        embeddings: optional `mithridate embed` output folder of the same shards and encoder (skips encoding).

    Returns:
        `{"auc", "positives", "negatives", "mean_score/<alt_kind>", "rows/<alt_kind>"}`: positives are rows whose
        alt text describes the image (`alt_correct`), negatives those of kind "mismatched" or "spam"; rows are
        joined to the manifest on (url, alt text), else on url when the url is unique there. For a compact
        checkpoint, `auc_heldout_style` / `auc_unseen` (with their `positives_…`, `negatives_…`) repeat it on the
        images its training held out: one artist's image of a seen concept, and every image of an unseen concept
        (the demo web shows every corpus image, most of them seen in training).
    """
    rows = _web_rows(shards_folder, manifest)
    if embeddings is not None:
        from curation.score import embed

        uid, img_all, txt_all = embed.load_all(embeddings, shards_folder)
        pos_of = {u: i for i, u in enumerate(uid.tolist())}
        rows = rows[rows["uid"].isin(pos_of)]
        at = rows["uid"].map(pos_of).to_numpy()
        img, txt = img_all[at], txt_all[at]
    else:
        img = encoder.encode_images([Image.open(io.BytesIO(b)).convert("RGB") for b in rows["jpg"]])
        txt = encoder.encode_texts(list(rows["caption"]))
    rows = rows.assign(score=(img.astype(np.float32) * txt.astype(np.float32)).sum(1))
    out = {"encoder": encoder.name, **_web_auc(rows, "")}
    heldout = _heldout_images(encoder)
    if heldout is not None:  # images the compact model never saw: the web numbers that measure generalisation
        items, concepts = heldout
        out.update(_web_auc(rows[rows["item_id"].isin(items)], "_heldout_style"))
        out.update(_web_auc(rows[rows["concept"].isin(concepts)], "_unseen"))
    for kind, g in rows.groupby("alt_kind"):
        out[f"rows/{kind}"], out[f"mean_score/{kind}"] = len(g), round(float(g["score"].mean()), 4)
    return out


def _web_auc(rows: pd.DataFrame, suffix: str) -> dict:
    pos = rows.loc[rows["alt_correct"], "score"].to_numpy()
    neg = rows.loc[rows["alt_kind"].isin(["mismatched", "spam"]), "score"].to_numpy()
    return {f"auc{suffix}": round(roc_auc(pos, neg), 4), f"positives{suffix}": len(pos),
            f"negatives{suffix}": len(neg)}


def _heldout_images(encoder: encoders.Encoder) -> tuple[set, set] | None:
    """(held-out item ids, unseen concept names) of a compact checkpoint's split; None for other encoders."""
    if encoder.model_name != encoders.COMPACT:
        return None
    split = encoders.read_checkpoint(encoder.pretrained).get("split")
    return (set(split["heldout_items"]), set(split["unseen_concepts"])) if split else None


def _web_rows(shards_folder: str | Path, manifest) -> pd.DataFrame:
    """Success rows of the shards with the manifest's `alt_kind` and `alt_correct` (unmatched rows dropped)."""
    if isinstance(manifest, (str, Path)):
        manifest = schema.read(manifest, "web_manifest")
    m = manifest.to_pandas() if hasattr(manifest, "to_pandas") else manifest
    m = m[["url", "alt", "alt_kind", "alt_correct", "item_id", "concept"]].assign(
        caption=m["alt"].map(schema.normalize_text))
    shards = schema.read_folder(shards_folder, "shard", ["uid", "url", "caption", "status", "jpg"]).to_pandas()
    shards = shards[shards["status"] == schema.STATUS_SUCCESS]
    exact = shards.merge(m.drop_duplicates(["url", "caption"]).drop(columns="alt"), on=["url", "caption"], how="inner")
    unique = m[~m["url"].duplicated(keep=False)].drop(columns=["alt", "caption"])
    rest = shards[~shards["uid"].isin(exact["uid"])].merge(unique, on="url", how="inner")
    rows = pd.concat([exact, rest], ignore_index=True)
    if len(rows) < len(shards):
        logger.info("web eval: %d of %d success rows have no manifest entry (not from the demo web?)",
                    len(shards) - len(rows), len(shards))
    return rows


# --- checkpoint, report, driver ----------------------------------------------------------------------------------


def save_checkpoint(model: torch.nn.Module, cfg: ClipTrainConfig, path: Path, extra: dict | None = None) -> str:
    """Write `clip.pt` atomically; returns the checkpoint's name "compact-clip-<first 8 hex of the weights' sha256>".

    The dict holds what `encoders.load_compact` needs (format, name, model_cfg, state_dict, preprocess) plus the
    train config and `extra` (split, training summary).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    name = f"compact-clip-{checkpoints.digest(state)[:8]}"
    ckpt = {"format": encoders.CHECKPOINT_FORMAT, "version": 1, "name": name, "model_cfg": model_config(cfg),
            "state_dict": state, "preprocess": preprocess_info(cfg.image_size),
            "train_config": json.loads(json.dumps(options.to_dict(cfg))), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(ckpt, path)
    return name


OPEN_CLIP_DIR = "open_clip"  # the local-dir export inside a `clip train` output folder
OPEN_CLIP_CONFIG = "open_clip_config.json"  # the names open_clip's hub/local-dir loader looks for
OPEN_CLIP_SAFETENSORS = "open_clip_model.safetensors"
OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"


def export_open_clip(checkpoint: str | Path, folder: str | Path) -> Path:
    """Write a compact CLIP checkpoint as an open_clip "local-dir" folder, loadable without our code or a network:

        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:<folder>")
        tokenizer = open_clip.get_tokenizer("local-dir:<folder>")

    The folder holds `open_clip_config.json` (`{"model_cfg", "preprocess_cfg", "mithridate"}`; open_clip reads the
    first two) and the weights, `open_clip_model.safetensors` (or `open_clip_pytorch_model.bin` when safetensors
    is not installed). The text tower uses open_clip's default tokenizer (bundled BPE `SimpleTokenizer`), which
    `get_tokenizer` picks for a config without `hf_tokenizer_name`, at the config's `context_length`.

    The folder is built beside `folder` and renamed into place, replacing an earlier export, so `folder` is
    never seen half-written (between removing an old export and renaming the new one in, it briefly does not exist).

    Args:
        checkpoint: a `clip.pt` from `mithridate clip train`, or the folder holding it.
        folder: the folder to write (created; its parent must be writable).

    Returns:
        `folder`.
    """
    ckpt = encoders.read_checkpoint(checkpoint)
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    config = {"model_cfg": ckpt["model_cfg"], "preprocess_cfg": ckpt["preprocess"],
              "mithridate": {"format": encoders.CHECKPOINT_FORMAT, "name": ckpt["name"],
                             "tokenizer": "open_clip SimpleTokenizer (bundled BPE)",
                             "context_length": ckpt["model_cfg"]["text_cfg"]["context_length"]}}
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        try:
            from safetensors.torch import save_file
        except ImportError:
            save_file = None
        if save_file is not None:
            with disk.atomic(tmp / OPEN_CLIP_SAFETENSORS) as part:
                save_file(state, str(part), metadata={"format": "pt"})
        else:
            checkpoints.save(state, tmp / OPEN_CLIP_BIN)
        disk.write_text(tmp / OPEN_CLIP_CONFIG, json.dumps(config, indent=2) + "\n")
        old = folder.with_name(folder.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # make the renames durable (best effort, as `disk.atomic` does for files)
        fd = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return folder


def _summary(m: dict) -> str:
    def pct(key: str) -> str:
        return f"{100 * m[key]:.1f}%" if key in m else "n/a"

    lines = [(f"trained {m['train/steps']} steps in {m['train/seconds']:.0f} s on {m['train/device']} "
              f"(loss {m['train/loss_first']:.3f} → {m['train/loss_last']:.3f}, stopped by {m['train/stopped_by']})")]
    for p, what in (("heldout_style", "held-out artist images"), ("unseen", "unseen concepts")):
        if m.get(f"{p}/items"):
            lines.append(
                f"{what} ({m[f'{p}/items']}): zero-shot top-1/5 among their {m[f'{p}/concepts']} concepts "
                f"{pct(f'{p}/zeroshot_top1')}/{pct(f'{p}/zeroshot_top5')}, among 50 {pct(f'{p}/zeroshot50_top1')}/"
                f"{pct(f'{p}/zeroshot50_top5')}, among all {pct(f'{p}/zeroshot_all_top1')}/"
                f"{pct(f'{p}/zeroshot_all_top5')}; i2t R@1/5 {pct(f'{p}/i2t_r1')}/{pct(f'{p}/i2t_r5')}, "
                f"t2i R@1/5 {pct(f'{p}/t2i_r1')}/{pct(f'{p}/t2i_r5')}; AUC matched vs mismatched "
                f"{m[f'{p}/auc_mismatched']:.3f}, vs spam {m[f'{p}/auc_spam']:.3f}")
    return "\n".join(lines)


def _train_or_reuse(cfg: ClipTrainConfig, out: Path, corpus: Corpus, split: Split, device: str):
    """(model, checkpoint name, training metrics): trained now, or read back from an existing `clip.pt`."""
    ckpt_path = out / encoders.CHECKPOINT_FILE
    if ckpt_path.is_file():
        ckpt = encoders.read_checkpoint(ckpt_path)
        model = encoders.build_compact_model(ckpt["model_cfg"])
        model.load_state_dict(ckpt["state_dict"])
        logger.info("reusing %s (%s); evaluating it", ckpt_path, ckpt["name"])
        return model.eval(), ckpt["name"], ckpt.get("train_metrics", {})
    captions = build_captions(corpus, cfg, encoders.compact_tokenizer(cfg.context_length))
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("clip train: %d train images of %d concepts, %d held-out artist images, %d unseen-concept images; "
                "%.1fM parameters; %s", len(split.train), len(np.unique(corpus.concept_of[split.train])),
                len(split.heldout_style), len(split.unseen), n_params / 1e6, device)
    result = train(model, corpus, captions, split, cfg, device)
    losses = [c[1] for c in result.curve]
    metrics = {"train/steps": result.steps, "train/seconds": result.seconds, "train/stopped_by": result.stopped_by,
               "train/device": device, "train/images": len(split.train), "train/parameters": n_params,
               "train/loss_first": round(float(np.mean(losses[:10])), 4),
               "train/loss_last": round(float(np.mean(losses[-10:])), 4)}
    curves.write_curve(result.curve, ["step", "loss", "lr", "seconds"], out, "ClipLoss")
    split_info = {"unseen_concepts": sorted({corpus.concepts[c] for c in corpus.concept_of[split.unseen]}),
                  "heldout_items": corpus.table.loc[split.heldout_style, "item_id"].tolist()}
    name = save_checkpoint(model.cpu(), cfg, ckpt_path, {"split": split_info, "train_metrics": metrics})
    return model, name, metrics


def _export_if_stale(out: Path, name: str | None = None) -> None:
    """Write `<out>/open_clip/` from `<out>/clip.pt` unless an export of that checkpoint (`name`; read from clip.pt
    when None) with its weights is already there."""
    folder = out / OPEN_CLIP_DIR
    if name is None:
        name = encoders.read_checkpoint(out / encoders.CHECKPOINT_FILE)["name"]
    try:
        current = json.loads((folder / OPEN_CLIP_CONFIG).read_text()).get("mithridate", {}).get("name")
    except (OSError, ValueError, AttributeError):
        current = None
    if current == name and any((folder / f).is_file() for f in (OPEN_CLIP_SAFETENSORS, OPEN_CLIP_BIN)):
        return
    export_open_clip(out / encoders.CHECKPOINT_FILE, folder)
    logger.info("clip train: open_clip local-dir export → %s", folder)


def run(cfg: ClipTrainConfig) -> Path:
    """Train (or reuse) the compact CLIP of `cfg`, evaluate it, write the output folder.

    Returns:
        `cfg.out`, holding config.json, clip.pt, open_clip/ (the local-dir export), eval.json, curve.png and
        curve.csv.
    """
    out = Path(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=("device",))
    if (out / encoders.CHECKPOINT_FILE).is_file() and (out / "eval.json").is_file():
        logger.info("clip train: %s already holds a trained and evaluated model; reusing it", out)
        _export_if_stale(out)
        return out
    options.write_config(cfg, out)
    device = compute.resolve_device(cfg.device)
    t0 = time.perf_counter()
    corpus = load_corpus(corpus_folder(cfg), cfg.image_size)
    split = make_split(corpus, cfg, np.random.default_rng(cfg.seed))
    model, name, metrics = _train_or_reuse(cfg, out, corpus, split, device)
    _export_if_stale(out, name)
    encoder = encoders.Encoder(model, encoders.compact_transform(preprocess_info(cfg.image_size)),
                               encoders.compact_tokenizer(cfg.context_length), name, device, encoders.COMPACT,
                               str(out / encoders.CHECKPOINT_FILE))
    metrics = {"name": name, **metrics, **evaluate(encoder, corpus, split, cfg),
               "total_seconds": round(time.perf_counter() - t0, 1)}
    disk.write_text(out / "eval.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logger.info("clip train: %s\n%s\n→ %s", name, _summary(metrics) if "train/steps" in metrics else "", out)
    return out
