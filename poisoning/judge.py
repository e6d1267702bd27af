"""Judges of generated images: who labels a generation "is a C" (or "in X's style") when attack success is measured.

Two judges with one interface (`concepts`, `name`, `kind`, `predict(uint8 images) → class index`,
`features(images) → L2-normalised (N, D)`, `info()`):

- `ClassifierJudge` (`train`): a small CNN trained with labels on *real images only*, on pixels — no CLIP, no text
  encoder — so it shares nothing with the victim, whose text tower is a compact CLIP. It is trained on a split by
  **group** (e.g. the corpus concept: a style judge is then tested on concepts it never saw) and the model trained
  on that split is the judge that is used: its reported held-out accuracy is the accuracy of the judge itself
  (no refit on all images afterwards). `info()` carries that accuracy, overall and per class, beside chance.
- `ClipJudge`: a compact CLIP's zero-shot head (`diffusion.evaluation.Judge`) behind the same interface. When it
  is the victim's own CLIP its name says so (`VICTIM_LABEL`): it shares the victim's bias and is not independent.
  `calibrate(images, labels)` records its accuracy on real images.

`save(judge, folder)` / `load(folder)` keep a classifier judge as `judge.pt` (+ `judge.json`, its `info()`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffusion import data
from mithridate.core import checkpoints, compute, disk
from mithridate.core.lr import warmup_cosine

logger = logging.getLogger(__name__)

FORMAT = "mithridate-classifier-judge"
CHECKPOINT_FILE = "judge.pt"
INFO_FILE = "judge.json"
CLASSIFIER_NAME = "classifier (pixels, independent of the victim)"
VICTIM_LABEL = "the victim's own CLIP (not independent)"
WIDTHS = (16, 32, 64, 128)  # channels of the conv blocks (a 2× average pool between blocks)
SHIFT = 3  # random translation, pixels each way (replicate padding)
JITTER = 0.1  # random brightness offset and contrast factor, ± this much (on [−1, 1] images)
WEIGHT_DECAY = 0.05
WARMUP = 0.05  # fraction of the steps with a linear learning-rate warm-up (cosine decay after)
BATCH = 256  # inference batch


class Net(nn.Module):
    """Conv blocks (3×3 conv, GroupNorm, SiLU; 2× average pool between blocks), global average pool, linear head."""

    def __init__(self, classes: int, widths: Sequence[int] = WIDTHS):
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.AvgPool2d(2))
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.GroupNorm(min(8, w), w), nn.SiLU()]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `(N, widths[-1])`: the last block's channels averaged over space."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"{name}: expected uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
    return images


def _check_labels(labels, n: int, classes: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name}: {labels.shape} labels for {n} images; give one label per image")
    if n and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name}: labels must be integers in [0, {classes}) (indices into concepts)")
    return labels.astype(np.int64)


def heldout_accuracy(judge, images: np.ndarray, labels) -> dict:
    """The judge's accuracy on labelled (real) images: overall, balanced (mean over classes with images), per class.

    Returns:
        {"accuracy", "balanced_accuracy", "per_class": {concept: {"accuracy" (None without images), "images"}},
        "images", "chance" (1/K)}.
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images), len(judge.concepts))
    pred = judge.predict(images) if len(images) else np.zeros(0, np.int64)
    per_class = {}
    for k, c in enumerate(judge.concepts):
        sel = labels == k
        per_class[c] = {"accuracy": float((pred[sel] == k).mean()) if sel.any() else None, "images": int(sel.sum())}
    accs = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    return {"accuracy": float((pred == labels).mean()) if len(labels) else None,
            "balanced_accuracy": float(np.mean(accs)) if accs else None, "per_class": per_class,
            "images": int(len(labels)), "chance": 1 / len(judge.concepts)}


def _info(kind: str, name: str, concepts: list[str], acc: dict | None, split, steps: int, seed) -> dict:
    acc = acc or {"accuracy": None, "balanced_accuracy": None, "images": 0,
                  "per_class": {c: {"accuracy": None, "images": 0} for c in concepts}}
    return {"kind": kind, "name": name, "concepts": list(concepts), "heldout_accuracy": acc["accuracy"],
            "heldout_balanced_accuracy": acc["balanced_accuracy"], "heldout_per_class": acc["per_class"],
            "heldout_images": acc["images"], "chance": 1 / len(concepts), "split": split, "steps": steps,
            "seed": seed}


class ClassifierJudge:
    """A trained pixel classifier over `concepts` (see `train`); `info()` holds its held-out accuracy."""

    kind = "classifier"

    def __init__(self, model: Net, concepts: list[str], info: dict, name: str = CLASSIFIER_NAME):
        self.model = model.eval()
        self.concepts, self.name, self._info = list(concepts), name, dict(info)

    def __repr__(self) -> str:
        return f"ClassifierJudge(concepts={self.concepts!r}, heldout_accuracy={self._info.get('heldout_accuracy')})"

    @torch.no_grad()
    def _run(self, images: np.ndarray, features: bool) -> np.ndarray:
        images = _check_images(images)
        self.model.eval()
        out = []
        for i in range(0, len(images), BATCH):
            x = data.from_uint8(images[i : i + BATCH])
            out.append(F.normalize(self.model.pooled(x), dim=-1) if features else self.model(x).argmax(dim=1))
        if not out:
            return np.zeros((0, self.model.head.in_features), np.float32) if features else np.zeros(0, np.int64)
        return torch.cat(out).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 `(N, S, S, 3)` → `(N,)` int64 indices into `concepts`."""
        return self._run(images, features=False)

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 `(N, S, S, 3)` → `(N, D)` float32 L2-normalised penultimate features (for KID)."""
        return self._run(images, features=True).astype(np.float32)

    def info(self) -> dict:
        """kind, name, concepts, heldout_accuracy (+ balanced, per class, images), chance, split, steps, seed."""
        return json.loads(json.dumps(self._info))


class ClipJudge:
    """A compact CLIP's zero-shot head as a judge (`diffusion.evaluation.Judge`); `label` names whose CLIP it is
    (`VICTIM_LABEL` for the victim's own: then it is not an independent judge)."""

    kind = "clip"

    def __init__(self, path: str | Path, concepts: Sequence[str], device: str = "auto", label: str = ""):
        from diffusion.evaluation import Judge

        if len(concepts) < 2:
            raise ValueError(f"concepts={list(concepts)!r}: a judge needs at least 2 classes")
        self.clip = Judge(str(path), list(concepts), compute.resolve_device(device))
        self.concepts = list(concepts)
        self.name = f"{label} ({self.clip.encoder.name})" if label else f"compact CLIP {self.clip.encoder.name}"
        self._acc: dict | None = None

    def __repr__(self) -> str:
        return f"ClipJudge(name={self.name!r}, concepts={self.concepts!r})"

    def features(self, images: np.ndarray) -> np.ndarray:
        """The CLIP's L2-normalised image embeddings `(N, D)` float32."""
        images = _check_images(images)
        return self.clip.features(images) if len(images) else np.zeros((0, self.clip.encoder.dim), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Zero-shot class: argmax of image features · prompt-ensemble text embeddings."""
        return np.asarray(self.features(images) @ self.clip.text_emb.T).argmax(axis=1).astype(np.int64)

    def calibrate(self, images: np.ndarray, labels) -> dict:
        """Record (and return) the accuracy on real labelled images; it appears in `info()` as held out."""
        self._acc = heldout_accuracy(self, images, labels)
        logger.info("%s: accuracy on %d real images %.1f%% (chance %.1f%%)", self.name, self._acc["images"],
                    100 * (self._acc["accuracy"] or 0), 100 / len(self.concepts))
        return self._acc

    def info(self) -> dict:
        """The same keys as `ClassifierJudge.info`; accuracies are None until `calibrate`."""
        split = "zero-shot (no training); accuracy on the real images given to calibrate" if self._acc else None
        return _info(self.kind, self.name, self.concepts, self._acc, split, 0, None)


def group_split(groups: Sequence[str], labels: np.ndarray, held_out: float, seed: int) -> np.ndarray:
    """True for the rows of held-out groups: per class, a seeded `held_out` fraction of the groups with images of
    that class (at least one when the class has ≥ 2 groups), never a class's last training group.

    Raises:
        ValueError: no class has two groups (nothing can be held out).
    """
    groups = np.asarray([str(g) for g in groups])
    names = sorted(set(groups.tolist()))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    of_class = {k: set(groups[labels == k].tolist()) for k in np.unique(labels)}
    quota = {k: min(len(g) - 1, max(1, round(held_out * len(g)))) for k, g in of_class.items()}
    held: set[str] = set()
    for g in order:
        mine = [k for k, gs in of_class.items() if g in gs]
        wanted = any(len(of_class[k] & held) < quota[k] for k in mine)
        if wanted and all(len(of_class[k] - held - {g}) >= 1 for k in mine):
            held.add(g)
    if not held:
        raise ValueError(f"groups: every class has a single group ({len(names)} distinct); a held-out split "
                         "needs a class with at least 2 groups")
    return np.isin(groups, sorted(held))


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random horizontal flip, translation by up to `SHIFT` px (replicate padding), brightness/contrast jitter."""
    n, _, s, _ = x.shape
    flip = torch.from_numpy(rng.random(n) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = F.pad(x, (SHIFT,) * 4, mode="replicate")
    dy, dx = rng.integers(0, 2 * SHIFT + 1, (2, n))
    x = torch.stack([pad[i, :, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(n)])
    gain = torch.from_numpy(rng.uniform(1 - JITTER, 1 + JITTER, (n, 1, 1, 1))).float()
    shift = torch.from_numpy(rng.uniform(-JITTER, JITTER, (n, 1, 1, 1))).float()
    return (x * gain + shift).clamp(-1, 1)


def _check_train_args(images, labels, concepts, groups, held_out, steps, batch_size, lr) -> tuple:
    images = _check_images(images)
    concepts = [str(c) for c in concepts]
    if len(concepts) < 2 or len(set(concepts)) != len(concepts) or not all(c.strip() for c in concepts):
        raise ValueError(f"concepts={concepts!r}: give at least 2 distinct non-empty class names")
    labels = _check_labels(labels, len(images), len(concepts))
    if len(groups) != len(images):
        raise ValueError(f"groups: {len(groups)} groups for {len(images)} images; give one group per image")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out!r}: must be in (0, 1) (fraction of groups held out)")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if not lr > 0:
        raise ValueError(f"lr={lr!r}: must be > 0")
    empty = [c for k, c in enumerate(concepts) if not (labels == k).any()]
    if empty:
        raise ValueError(f"labels: class(es) {empty} have no images; drop them from concepts")
    return images, labels, concepts


def _fit(model: Net, x: torch.Tensor, y: np.ndarray, classes: int, steps: int, batch_size: int, lr: float,
         rng: np.random.Generator) -> float:
    """AdamW on class-balanced batches (each class drawn equally often) of augmented images; the last loss."""
    counts = np.bincount(y, minlength=classes)
    p = 1.0 / (counts[y] * np.count_nonzero(counts))
    target = torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    model.train()
    loss = torch.tensor(float("nan"))
    warm = max(1, round(WARMUP * steps))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(lr, step, warm, (step - warm) / max(1, steps - warm), warmup_first=True)
        idx = torch.from_numpy(rng.choice(len(y), size=batch_size, p=p / p.sum()))
        loss = F.cross_entropy(model(_augment(x[idx], rng)), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def train(images: np.ndarray, labels, concepts: Sequence[str], groups: Sequence[str], held_out: float = 0.2,
          steps: int = 600, batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> ClassifierJudge:
    """Train a pixel classifier judge on real images; held-out accuracy on unseen groups goes in its `info()`.

    Args:
        images: uint8 `(N, S, S, 3)` real images.
        labels: `(N,)` class index of each image (into `concepts`); every class needs images.
        concepts: class names (e.g. artists, or concepts).
        groups: `(N,)` group of each image (e.g. its corpus concept); whole groups are held out (`group_split`).
        held_out: fraction of each class's groups held out for the accuracy, in (0, 1).
        steps, batch_size, lr: AdamW steps (cosine schedule), class-balanced batch size, peak learning rate.
        seed: weights, split, batches and augmentation.

    The model trained on the training split is the judge returned (no refit on the held-out groups): the reported
    held-out accuracy is that of the judge used.
    """
    images, labels, concepts = _check_train_args(images, labels, concepts, groups, held_out, steps, batch_size, lr)
    test = group_split(groups, labels, held_out, seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global torch RNG
        torch.manual_seed(seed)
        model = Net(len(concepts), WIDTHS)
    rng = np.random.default_rng(seed)  # batches and augmentation
    t0 = time.perf_counter()
    loss = _fit(model, data.from_uint8(images[~test]), labels[~test], len(concepts), steps, batch_size, lr, rng)
    held = sorted(set(np.asarray([str(g) for g in groups])[test].tolist()))
    split = {"by": "group", "held_out": float(held_out), "heldout_groups": held,
             "train_groups": len(set(map(str, groups))) - len(held), "train_images": int((~test).sum()),
             "final_model": "trained on the training split only (held-out groups never seen)"}
    judge = ClassifierJudge(model, concepts, {})
    acc = heldout_accuracy(judge, images[test], labels[test])
    judge._info = _info(ClassifierJudge.kind, judge.name, concepts, acc, split, int(steps), int(seed))
    judge._info.update(train_accuracy=heldout_accuracy(judge, images[~test], labels[~test])["accuracy"],
                       final_loss=loss, parameters=sum(p.numel() for p in model.parameters()),
                       widths=list(WIDTHS), image_size=int(images.shape[1]))
    logger.info("judge %s: %d classes, %d training images, %.1f s; held-out groups %d (%d images): accuracy %.1f%% "
                "(balanced %.1f%%, chance %.1f%%)", judge.name, len(concepts), int((~test).sum()),
                time.perf_counter() - t0, len(held), acc["images"], 100 * acc["accuracy"],
                100 * acc["balanced_accuracy"], 100 / len(concepts))
    return judge


def save(judge: ClassifierJudge, folder: str | Path) -> Path:
    """Write `folder/judge.pt` (weights, architecture, concepts, info) and `folder/judge.json` (info), atomically."""
    if not isinstance(judge, ClassifierJudge):
        raise ValueError(f"judge: only a ClassifierJudge can be saved, not {type(judge).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = judge.info()
    widths = [m.out_channels for m in judge.model.body if isinstance(m, nn.Conv2d)]
    ckpt = {"format": FORMAT, "classes": len(judge.concepts), "widths": widths, "concepts": judge.concepts,
            "name": judge.name, "info_json": json.dumps(info),
            "state_dict": {k: v.detach().cpu().clone() for k, v in judge.model.state_dict().items()}}
    checkpoints.save(ckpt, folder / CHECKPOINT_FILE)
    disk.write_text(folder / INFO_FILE, json.dumps(info, indent=2) + "\n")
    return folder


def load(folder: str | Path) -> ClassifierJudge:
    """The classifier judge `save` wrote to `folder` (or the `judge.pt` file itself).

    Raises:
        FileNotFoundError: no `judge.pt` there. ValueError: a corrupt or foreign file.
    """
    path = Path(folder)
    path = path / CHECKPOINT_FILE if path.is_dir() or path.suffix != ".pt" else path
    if not path.is_file():
        raise FileNotFoundError(f"classifier judge not found: {path} (train one and `save` it there)")
    ckpt = checkpoints.load(path, "train the judge again", "not a readable classifier judge")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a classifier judge (format {found!r}, expected {FORMAT!r})")
    try:
        model = Net(int(ckpt["classes"]), [int(w) for w in ckpt["widths"]])
        model.load_state_dict(ckpt["state_dict"], strict=True)
        info = json.loads(ckpt["info_json"])
        return ClassifierJudge(model, list(ckpt["concepts"]), info, str(ckpt["name"]))
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: classifier judge is damaged ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
