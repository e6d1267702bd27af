"""Aesthetic / quality head: a small MLP on L2-normalised image embeddings (the improved-aesthetic-predictor recipe).

`train(cfg)` fits a head from a ratings table (uid → rating) and the embeddings folder
(`<shard>.npz` with `uid`, `img_emb`; `encoder.json`); `score(cfg)` applies a head to every embeddings file
and writes `<out>/<shard>.parquet` (AESTHETIC_SCHEMA), then `<out>/__stats__/<shard>.json` (done: a rerun with the
same head skips the file while its npz is unchanged). With `engine=ray` a pool of Ray actors (GPU actors when the
cluster has GPUs: `num_gpus` each), each loading the head once, is fed the files; both engines write the same files.

The recipe (christophschuhmann/improved-aesthetic-predictor, train_predictor.py): input = the L2-normalised
image embedding; Linear(D,1024) → Dropout(0.2) → Linear(1024,128) → Dropout(0.2) → Linear(128,64) →
Dropout(0.1) → Linear(64,16) → Linear(16,1), with the ReLUs commented out (the released "linearMSE" heads are
deep *linear* models); MSE loss, Adam (lr 1e-3), batch 256, 50 epochs, 5% validation, the weights of the best
validation epoch kept. The `default` preset is that recipe (it was fitted to 176k ratings). The `tiny` preset
scales it down for hundreds to a few thousand ratings: hidden 64-16, dropout 0.1, batch 32 (more steps per
epoch), 150 epochs, 20% validation. Without ReLUs both are linear functions of the embedding; the smaller one
simply converges better on little data (on the tests' 594 ratings: held-out Spearman 0.78 vs 0.72 for the
full-width recipe).

Heads `score` can apply (`head_path`):
- `head.pt` from `train` — it records the encoder of the embeddings it was trained on; scoring embeddings of
  another encoder or dimension is refused.
- LAION's V1 linear head (LAION-AI/aesthetic-predictor `sa_0_4_vit_l_14_linear.pth`): a state dict with
  `weight` [1, 768] and `bias` [1], for OpenAI CLIP ViT-L/14 image embeddings.
- The improved predictor's MLP state dict (`sac+logos+ava1-l14-linearMSE.pth`, …): keys `layers.<i>.weight`/
  `.bias`; `head_activation=auto` puts ReLUs between layers only when the layout has room for them
  (the `reluMSE` files).
Foreign heads carry no encoder name, so only the dimension is checked: it is up to you to give them
ViT-L/14 embeddings. Their scores are on their own scale (LAION V1 and V2 are not interchangeable); each
output file records the head's file name and sha256.

The demo web has no human ratings: `ratings_from_manifest` rates its downloaded images from the manifest's
planted degradations (`curation.score.degrade.quality_rating`: clean 10, severity-1 damage 1), so a head trained on
them learns technical quality (blur, JPEG, noise, low resolution, watermarks), not taste.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from curation.score import degrade
from mithridate.core import checkpoints, compute, disk, engine, options, progress, schema, stats_files, storage

logger = logging.getLogger(__name__)

HEAD_FORMAT = "mithridate-aesthetic-head"
HEAD_VERSION = 1


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class AestheticTrainConfig:
    embeddings: str = options.opt("mithridate-out/embeddings", "`embed` output folder, or one holding a single one")
    ratings: str = options.opt(
        "mithridate-out/ratings.parquet", "ratings table (.parquet or .csv, columns uid, rating), or the demo web's "
        "web_manifest.parquet: ratings from its planted degradations (needs shards)")
    shards: str = options.opt("", "downloaded shards folder, when ratings is a web manifest")
    out: str = options.opt("mithridate-out/aesthetic", "output folder: head.pt, eval.json, config.json")
    epochs: int = options.opt(50, "training epochs (the weights of the best validation epoch are kept)")
    lr: float = options.opt(1e-3, "Adam learning rate")
    batch_size: int = options.opt(256, "batch size")
    hidden: tuple[int, ...] = options.opt((1024, 128, 64, 16), "hidden layer widths ('' = one linear layer)")
    dropout: tuple[float, ...] = options.opt((0.2, 0.2, 0.1, 0.0), "dropout after each hidden layer (missing = 0)")
    activation: Literal["none", "relu"] = options.opt(
        "none", "between layers: none (the released linearMSE heads: ReLUs commented out) or relu")
    val_fraction: float = options.opt(0.05, "fraction of the rated rows held out for validation")
    seed: int = options.opt(0, "seed of the split, the initial weights, the batches and dropout")
    device: str = options.opt("auto", "torch device: auto (cuda when available), cpu, cuda, cuda:1, …")
    threads: int = options.opt(0, "CPU threads (0 = torch's default; 1 is fastest for small heads on a busy machine)")

    def __post_init__(self):
        options.check_positive(self, "epochs", "lr", "batch_size")
        if self.threads < 0:
            raise ValueError(f"AestheticTrainConfig.threads={self.threads!r}: must be >= 0")
        options.check_choice(self, "activation", options.literal_values(type(self), "activation"))
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"AestheticTrainConfig.hidden={self.hidden!r}: widths must be > 0")
        if len(self.dropout) > len(self.hidden) or any(not 0 <= d < 1 for d in self.dropout):
            raise ValueError(f"AestheticTrainConfig.dropout={self.dropout!r}: at most one value per hidden layer "
                             f"({len(self.hidden)}), each within [0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"AestheticTrainConfig.val_fraction={self.val_fraction!r}: must be within [0, 1)")


@dataclass(frozen=True)
class AestheticScoreConfig:
    embeddings: str = options.opt("mithridate-out/embeddings", "`embed` output folder, or one holding a single one")
    head_path: str = options.opt(
        "mithridate-out/aesthetic/head.pt",
        "head: head.pt from `aesthetic train`, LAION's linear head (sa_0_4_vit_l_14_linear.pth) or an "
        "improved-aesthetic-predictor state dict (sac+logos+ava1-l14-linearMSE.pth)")
    head_activation: Literal["auto", "none", "relu"] = options.opt(
        "auto", "foreign MLP state dicts only: ReLUs between layers (auto: when the layer indices leave room)")
    out: str = options.opt("mithridate-out/aesthetic_scores", "output folder: <shard>.parquet, __stats__/run.json")
    batch_size: int = options.opt(8192, "embeddings per forward pass")
    device: str = options.opt("auto", "torch device: auto (cuda when available), cpu, cuda, …")
    engine: engine.Engine = options.opt("local", "where files are scored: local (this process) or ray (a pool of "
                                        "actors on the cluster RAY_ADDRESS names, else a local one, each loading the "
                                        "head once); switching resumes the same folder")
    num_gpus: float = options.opt(1.0, "engine ray: GPUs per actor when the cluster has GPUs (0.5: two actors share "
                                  "one); a cluster without GPUs runs CPU actors")
    actors: int = options.opt(0, "engine ray: actors in the pool (0: as many as the GPUs hold, else one per 2 CPUs)")
    shard_retries: int = options.opt(2, "engine ray: more tries of a file that fails (an error, a dead actor) "
                                     "before the run fails naming it")

    def __post_init__(self):
        options.check_positive(self, "batch_size")
        options.check_choice(self, "head_activation", options.literal_values(type(self), "head_activation"))
        for name in ("num_gpus", "actors", "shard_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"AestheticScoreConfig.{name}={getattr(self, name)!r}: must be >= 0")
        engine.check(self.engine)
        storage.check_fields(self, "embeddings", "out")


TRAIN_PRESETS = {
    "default": AestheticTrainConfig(),
    "tiny": AestheticTrainConfig(epochs=150, batch_size=32, hidden=(64, 16), dropout=(0.1, 0.0), val_fraction=0.2,
                                 threads=1),
}
SCORE_PRESETS = {"default": AestheticScoreConfig(), "tiny": AestheticScoreConfig(batch_size=1024)}


# ------------------------------------------------------------------------------------------- embeddings


def _normalised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return x / norm  # a zero vector becomes NaN: no score rather than a made-up one


def embeddings_folder(folder: str | Path) -> Path | str:
    """An `embed` output folder: `folder` itself when it holds npz files, else its only sub-folder with an
    `encoder.json` (so `mithridate-out/embeddings` finds `mithridate-out/embeddings/<encoder name>`); a local path or
    an fsspec URL."""
    folder = storage.location(folder)
    if not storage.isdir(folder):
        raise FileNotFoundError(f"embeddings folder not found: {folder}")
    if storage.glob(folder, "*.npz"):
        return folder
    subs = sorted(storage.parent(p) for p in storage.glob(folder, "*/encoder.json"))
    if len(subs) > 1:
        raise ValueError(f"{folder} holds embeddings of several encoders ({', '.join(storage.name(p) for p in subs)}); "
                         "choose one of its sub-folders")
    if not subs or not storage.glob(subs[0], "*.npz"):
        raise FileNotFoundError(f"no <shard>.npz embeddings files in {folder}")
    return subs[0]


def embedding_files(folder: str | Path) -> list[Path | str]:
    """The `*.npz` embeddings files of an embeddings folder, in name order (a clear error when there are none)."""
    return storage.glob(embeddings_folder(folder), "*.npz")


def _read_npz(path: Path | str) -> tuple[np.ndarray, np.ndarray, str | None]:
    try:
        with storage.load_npz(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"uid", "img_emb"} <= keys:
                uid, emb = z["uid"].astype(str), z["img_emb"]
                enc = str(z["encoder"]) if "encoder" in keys else None
    except (OSError, EOFError, ValueError) as err:  # ValueError: object (pickled) arrays, refused
        raise ValueError(f"{path}: not a readable embeddings npz ({err}); uid must be a str array") from None
    if not {"uid", "img_emb"} <= keys:
        raise ValueError(f"{path}: embeddings file without {sorted({'uid', 'img_emb'} - keys)} (keys: {sorted(keys)})")
    if emb.ndim != 2 or len(emb) != len(uid):
        raise ValueError(f"{path}: img_emb has shape {emb.shape} for {len(uid)} uids; expected (N, D)")
    return uid, emb, enc


def _npz_meta(path: Path | str) -> tuple[int, str | None]:
    """(embedding dim, encoder name) of an embeddings npz, reading only the array header and the name."""
    try:
        with storage.open_input(path) as raw:
            with zipfile.ZipFile(raw) as zf, zf.open("img_emb.npy") as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape = read(fh)[0]
            raw.seek(0)
            with np.load(raw, allow_pickle=False) as z:
                name = str(z["encoder"]) if "encoder" in z.files else None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable embeddings npz with img_emb ({err})") from None
    if len(shape) != 2:
        raise ValueError(f"{path}: img_emb has shape {shape}; expected (N, D)")
    return int(shape[1]), name


def encoder_info(folder: str | Path) -> dict:
    """The encoder of an embeddings folder: `encoder.json` (name, model, pretrained, dim) when present, else the
    npz files' `encoder` name; `dim` from the arrays. Mixed encoders or dimensions are an error."""
    folder = embeddings_folder(folder)
    info: dict = {}
    if storage.isfile(storage.join(folder, "encoder.json")):
        try:
            info = json.loads(storage.read_text(storage.join(folder, "encoder.json")))
        except json.JSONDecodeError as err:
            raise ValueError(f"{storage.join(folder, 'encoder.json')}: not valid JSON ({err})") from None
    names, dims = set(), set()
    for f in embedding_files(folder):
        dim, name = _npz_meta(f)
        dims.add(dim)
        if name is not None:
            names.add(name)
    if len(dims) > 1 or len(names) > 1:
        raise ValueError(f"{folder}: embeddings of mixed encoders {sorted(names)} / dimensions {sorted(dims)}")
    dim = dims.pop()
    if info.get("dim") not in (None, dim):
        raise ValueError(f"{folder}: encoder.json says dim {info['dim']} but the embeddings are {dim}-d")
    if "name" not in info and names:
        info["name"] = next(iter(names))
    return {**info, "dim": dim}


def load_embeddings(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(uids, L2-normalised float32 image embeddings, encoder info) of every file in an embeddings folder."""
    enc = encoder_info(folder)
    parts = [_read_npz(f) for f in embedding_files(folder)]
    uids = np.concatenate([p[0] for p in parts])
    emb = _normalised(np.concatenate([p[1] for p in parts]))
    return uids, emb, enc


# ------------------------------------------------------------------------------------------------ heads


class Head(nn.Module):
    """`layers` (an nn.Sequential, as in the improved predictor, so state dict keys match) → one score per row."""

    def __init__(self, layers: nn.Sequential):
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


def build_mlp(input_dim: int, hidden=(1024, 128, 64, 16), dropout=(0.2, 0.2, 0.1, 0.0), activation="none") -> Head:
    """The recipe's MLP: Linear → [ReLU] → [Dropout] per hidden width, then Linear(·, 1). With the defaults the
    layer indices (0, 2, 4, 6, 7) are those of the improved predictor's released state dicts."""
    dims, layers = [input_dim, *hidden], []
    dropout = tuple(dropout) + (0.0,) * (len(hidden) - len(dropout))
    for i, width in enumerate(hidden):
        layers.append(nn.Linear(dims[i], width))
        if activation == "relu":
            layers.append(nn.ReLU())
        if dropout[i] > 0:
            layers.append(nn.Dropout(dropout[i]))
    layers.append(nn.Linear(dims[-1], 1))
    return Head(nn.Sequential(*layers))


@dataclass
class LoadedHead:
    module: Head
    input_dim: int
    kind: str  # "mithridate-mlp", "linear" (LAION V1) or "mlp-state-dict" (improved predictor)
    encoder: dict | None  # the encoder a mithridate head was trained on; None for foreign heads
    sha256: str


def _foreign_layers(sd: dict, activation: str, path: Path) -> Head:
    """An nn.Sequential rebuilt from `layers.<i>.weight/bias` keys: Linear at those indices, dropout (identity at
    inference) or ReLU between them."""
    idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.(weight|bias)", k))})
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    relu = activation == "relu" or (activation == "auto" and any(g >= 3 for g in gaps))
    mods: list[nn.Module] = [nn.Identity() for _ in range(idx[-1] + 1)]
    for n, i in enumerate(idx):
        w = sd[f"layers.{i}.weight"]
        if w.ndim != 2 or (n and w.shape[1] != sd[f"layers.{idx[n - 1]}.weight"].shape[0]):
            raise ValueError(f"{path}: layer {i} weight {tuple(w.shape)} does not follow the previous layer")
        mods[i] = nn.Linear(w.shape[1], w.shape[0], bias=f"layers.{i}.bias" in sd)
    if relu:  # the slot after each Linear but the last holds the ReLU in the reluMSE layout
        if any(g < 2 for g in gaps):
            raise ValueError(f"{path}: layers {idx} leave no room for ReLUs between them; use head_activation=none")
        for i in idx[:-1]:
            mods[i + 1] = nn.ReLU()
    if sd[f"layers.{idx[-1]}.weight"].shape[0] != 1:
        raise ValueError(f"{path}: the last layer has {sd[f'layers.{idx[-1]}.weight'].shape[0]} outputs; expected 1")
    head = Head(nn.Sequential(*mods))
    head.load_state_dict(sd)
    return head


def load_head(path: str | Path, activation: str = "auto") -> LoadedHead:
    """Load a head file: ours (`head.pt`), LAION's linear head, or an improved-predictor MLP state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"head file not found: {path}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    obj = checkpoints.load(path, "give head.pt from `mithridate aesthetic train`, a linear state dict (weight, bias) "
                                 "or an improved-predictor MLP state dict", "not a loadable torch state dict")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    if obj.get("format") == HEAD_FORMAT:
        if obj.get("version") != HEAD_VERSION:
            raise ValueError(f"{path}: head format version {obj.get('version')}, expected {HEAD_VERSION}")
        head = build_mlp(obj["input_dim"], obj["hidden"], obj["dropout"], obj["activation"])
        head.load_state_dict(obj["state_dict"])
        return LoadedHead(head.eval(), obj["input_dim"], "mithridate-mlp", obj["encoder"], sha)
    sd = obj.get("state_dict", obj)
    sd = {re.sub(r"^(module|model)\.", "", k): v for k, v in sd.items()}
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors (keys: {sorted(sd)[:6]})")
    if set(sd) == {"weight", "bias"}:
        w, b = sd["weight"], sd["bias"]
        if w.ndim != 2 or w.shape[0] != 1 or b.shape != (1,):
            raise ValueError(f"{path}: linear head weight {tuple(w.shape)}, bias {tuple(b.shape)}; "
                             "expected [1, D] and [1]")
        head = Head(nn.Sequential(nn.Linear(w.shape[1], 1)))
        head.layers[0].load_state_dict(sd)
        return LoadedHead(head.eval(), int(w.shape[1]), "linear", None, sha)
    if sd and all(re.fullmatch(r"layers\.\d+\.(weight|bias)", k) for k in sd):
        head = _foreign_layers(sd, activation, path)
        return LoadedHead(head.eval(), int(sd[f"layers.{min(int(k.split('.')[1]) for k in sd)}.weight"].shape[1]),
                          "mlp-state-dict", None, sha)
    raise ValueError(f"{path}: unrecognised head (keys {sorted(sd)[:6]}); expected head.pt from `aesthetic train`, "
                     "a linear state dict (weight, bias) or layers.<i>.weight/bias")


def check_compatible(head: LoadedHead, enc: dict, head_path, folder) -> None:
    """Refuse embeddings the head was not made for: another dimension, or (for our heads) another encoder."""
    name = enc.get("name") or enc.get("model") or "unknown encoder"
    if head.input_dim != enc["dim"]:
        hint = " (LAION's heads take OpenAI CLIP ViT-L/14 image embeddings, 768-d)" if head.encoder is None else ""
        raise ValueError(f"{head_path}: the head takes {head.input_dim}-d embeddings but {folder} holds "
                         f"{enc['dim']}-d embeddings of {name!r}{hint}")
    if head.encoder is None:
        model = str(enc.get("model", enc.get("name", "")))
        if head.input_dim == 768 and not re.search(r"L[-/]?14", model, re.I):
            logger.warning("%s: a foreign 768-d head on embeddings of %r; LAION's heads expect OpenAI CLIP "
                           "ViT-L/14 image embeddings", head_path, model)
        return
    key = "name" if head.encoder.get("name") and enc.get("name") else "model"  # the name identifies the weights
    a, b = head.encoder.get(key), enc.get(key)
    if a != b:
        raise ValueError(f"{head_path}: the head was trained on embeddings of encoder {key}={a!r}, but {folder} "
                         f"holds {key}={b!r}; train a head on these embeddings")


def _predict(head: nn.Module, x: np.ndarray, dev: torch.device, batch: int = 8192) -> np.ndarray:
    head = head.to(dev).eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(x), batch):
            out.append(head(torch.from_numpy(np.ascontiguousarray(x[k : k + batch])).to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ---------------------------------------------------------------------------------------------- ratings


def read_ratings(path: str | Path) -> pd.DataFrame:
    """A ratings table (.parquet or .csv) as a DataFrame with `uid` (str) and `rating` (float)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ratings file not found: {path}")
    if path.suffix.lower() == ".parquet":
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype={"uid": str})
    else:
        raise ValueError(f"ratings file {path}: expected .parquet or .csv")
    missing = {"uid", "rating"} - set(df.columns)
    if missing:
        raise ValueError(f"ratings file {path}: missing columns {sorted(missing)} (has {list(df.columns)})")
    rating = pd.to_numeric(df["rating"], errors="coerce")
    bad = int((rating.isna() & df["rating"].notna()).sum())
    if bad:
        example = df["rating"][rating.isna() & df["rating"].notna()].iloc[0]
        raise ValueError(f"ratings file {path}: {bad} ratings are not numbers (e.g. {example!r})")
    return pd.DataFrame({"uid": df["uid"].astype("string"), "rating": rating.astype(float)})


def match_ratings(ratings: pd.DataFrame, uids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embedding row indices, ratings, counts) of the rated uids found among the embeddings.

    Nothing is dropped silently: null uids or ratings, duplicate uids (averaged) and uids without an
    embedding are counted; no match at all is an error."""
    counts = {"ratings_rows": len(ratings)}
    null = ratings["uid"].isna() | ratings["rating"].isna()
    counts["ratings_null"] = int(null.sum())
    r = ratings[~null].groupby("uid", sort=False)["rating"].mean()
    counts["ratings_duplicate_uid_rows"] = int((~null).sum() - len(r))
    index = pd.Series(np.arange(len(uids)), index=pd.Index(uids)).groupby(level=0, sort=False).first()
    counts["embedded_duplicate_uid_rows"] = int(len(uids) - len(index))  # the first embedding of a uid is used
    found = r.index.isin(index.index)
    unknown = r.index[~found]
    counts.update(ratings_matched=int(found.sum()), ratings_unknown_uid=int(len(unknown)),
                  ratings_unknown_uid_examples=[str(u) for u in unknown[:5]],
                  embedded_unrated=int(len(index) - found.sum()))
    if not found.any():
        raise ValueError(f"none of the {len(r)} rated uids has an embedding (e.g. {str(r.index[0])!r}); are the "
                         "ratings and embeddings of the same shards?" if len(r) else "the ratings table is empty")
    if len(unknown):
        logger.warning("aesthetic: %d of %d rated uids have no embedding and are not used (e.g. %s)",
                       len(unknown), len(r), ", ".join(map(str, unknown[:3])))
    if counts["ratings_null"]:
        logger.warning("aesthetic: %d ratings rows with a null uid or rating are not used", counts["ratings_null"])
    rows = index.loc[r.index[found]].to_numpy()
    return rows, r[found].to_numpy(dtype=np.float32), counts


def ratings_from_manifest(manifest_table, shards_folder: str | Path) -> pa.Table:
    """Quality ratings of the demo web's downloaded images: table(uid, rating).

    Joins the manifest (by `url`) to the successful rows of the downloaded shards; clean images rate
    `quality_rating(None, None)` = 10, degraded re-uploads `quality_rating(kind, severity)`. Shard rows whose URL is
    not in the manifest (or shows no art item) get no rating; they are counted in the log.
    """
    m = manifest_table if isinstance(manifest_table, pd.DataFrame) else manifest_table.to_pandas()
    missing = {"url", "item_id", "degradation", "severity"} - set(m.columns)
    if missing:
        raise ValueError(f"web manifest without columns {sorted(missing)}; rebuild it with this version of the web")
    m = m[m["item_id"].notna()].drop_duplicates(["url", "degradation", "severity"])
    if m["url"].duplicated().any():
        raise ValueError(f"web manifest: URL {m.loc[m['url'].duplicated(), 'url'].iloc[0]} has two degradations")
    rating = {}
    for url, kind, sev in zip(m["url"], m["degradation"], m["severity"]):
        kind = None if pd.isna(kind) else kind
        rating[url] = degrade.quality_rating(kind, None if kind is None else round(float(sev), 4))
    files = sorted(Path(shards_folder).glob("[0-9]*.parquet"))
    if not files:
        raise FileNotFoundError(f"no downloaded shards (<id>.parquet) in {shards_folder}")
    shards = pa.concat_tables([schema.read(f, "shard", ["uid", "url", "status"]) for f in files]).to_pandas()
    ok = shards[shards["status"] == schema.STATUS_SUCCESS]
    known = ok["url"].isin(rating.keys())
    if (~known).any():
        logger.warning("ratings from manifest: %d downloaded images are not art items of the manifest; not rated",
                       int((~known).sum()))
    ok = ok[known]
    table = pa.table({"uid": pa.array(ok["uid"], pa.string()),
                      "rating": pa.array([rating[u] for u in ok["url"]], pa.float32())})
    logger.info("ratings from manifest: %d images, %d degraded", table.num_rows,
                int((np.asarray(table["rating"]) < degrade.CLEAN_RATING).sum()))
    return table


# ---------------------------------------------------------------------------------------------- metrics


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(pred: np.ndarray, y: np.ndarray, baseline: float) -> dict:
    """MSE, MAE, Pearson and Spearman (average ranks) of predictions, and the MSE of predicting `baseline`."""
    if not len(y):
        return {"n": 0}
    ranks = lambda v: pd.Series(v).rank(method="average").to_numpy()  # noqa: E731
    return {"n": int(len(y)), "mse": float(np.mean((pred - y) ** 2)), "mae": float(np.mean(np.abs(pred - y))),
            "pearson": _corr(pred, y), "spearman": _corr(ranks(pred), ranks(y)),
            "baseline_mse": float(np.mean((baseline - y) ** 2))}


# ----------------------------------------------------------------------------------------------- stages


def train(cfg: AestheticTrainConfig) -> Path:
    """Fit a head on rated embeddings; writes `<out>/head.pt` and then `<out>/eval.json`. Returns `<out>`."""
    with compute.torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: AestheticTrainConfig) -> Path:
    t0 = time.time()
    out = Path(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=("device", "threads"))
    uids, emb, enc = load_embeddings(cfg.embeddings)
    ratings, source = _ratings_for(cfg)
    rows, y, counts = match_ratings(ratings, uids)
    x = emb[rows]
    finite = np.isfinite(x).all(axis=1)
    counts["rated_without_usable_embedding"] = int((~finite).sum())  # zero or non-finite vectors
    x, y = x[finite], y[finite]
    if len(y) < 2:
        raise ValueError(f"only {len(y)} rated embedding(s); a head needs at least 2")
    options.write_config(cfg, out)
    dev = torch.device(compute.resolve_device(cfg.device))

    perm = np.random.default_rng(cfg.seed).permutation(len(y))
    n_val = min(int(round(cfg.val_fraction * len(y))), len(y) - 1)
    val, tr = perm[:n_val], perm[n_val:]
    torch.manual_seed(cfg.seed)
    head = build_mlp(x.shape[1], cfg.hidden, cfg.dropout, cfg.activation).to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (float("inf"), 0, None)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for k in range(0, len(order), cfg.batch_size):
            idx = order[k : k + cfg.batch_size].to(dev)
            loss = nn.functional.mse_loss(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        train_mse = total / len(tr)
        head.eval()
        with torch.no_grad():
            val_mse = nn.functional.mse_loss(head(xt[val]), yt[val]).item() if n_val else train_mse
        history.append({"epoch": epoch, "train_mse": train_mse, "val_mse": val_mse})
        if val_mse < best[0]:
            best = (val_mse, epoch, copy.deepcopy(head.state_dict()))
        if epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs:
            logger.info("aesthetic train: epoch %d/%d  train MSE %.4f  %s MSE %.4f", epoch, cfg.epochs, train_mse,
                        "val" if n_val else "train", val_mse)
    head.load_state_dict(best[2])
    head = head.cpu().eval()

    pred = _predict(head, x, torch.device("cpu"))
    mean = float(y[tr].mean())
    result = {
        "encoder": enc, "input_dim": int(x.shape[1]), "n_train": int(len(tr)), "n_val": int(n_val),
        "best_epoch": best[1], "selected_by": "val_mse" if n_val else "train_mse",
        "val": regression_metrics(pred[val], y[val], mean), "train": regression_metrics(pred[tr], y[tr], mean),
        "rating": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean())},
        "ratings_source": source, "counts": counts, "history": history, "seconds": round(time.time() - t0, 2),
    }
    blob = {
        "format": HEAD_FORMAT, "version": HEAD_VERSION, "state_dict": head.state_dict(),
        "input_dim": int(x.shape[1]), "hidden": list(cfg.hidden), "dropout": list(cfg.dropout),
        "activation": cfg.activation, "encoder": enc, "rating": result["rating"],
        "config": json.loads(json.dumps(options.to_dict(cfg), default=str)),
    }
    checkpoints.save(blob, out / "head.pt")
    disk.write_text(out / "eval.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    v = result["val"]
    logger.info("aesthetic train: %d rated embeddings (%d ratings without an embedding); val MSE %s, Spearman %s "
                "→ %s", len(y), counts["ratings_unknown_uid"], _fmt(v.get("mse")), _fmt(v.get("spearman")), out)
    return out


def _ratings_for(cfg: AestheticTrainConfig) -> tuple[pd.DataFrame, str]:
    """The ratings table of a training run and where it came from ("table" or "web_manifest degradations")."""
    path = Path(cfg.ratings)
    if path.suffix.lower() == ".parquet" and path.is_file():
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"schema_name") == b"web_manifest":
            if not cfg.shards:
                raise ValueError(f"AestheticTrainConfig.ratings={cfg.ratings!r} is a web manifest: set shards to the "
                                 "downloaded shards folder to rate its images")
            logger.warning("aesthetic train: ratings from the demo web's planted degradations (clean 10, damaged "
                           "down to 1), not human ratings: the head learns technical quality, not taste")
            table = ratings_from_manifest(schema.read(path, "web_manifest"), cfg.shards)
            return pd.DataFrame({"uid": table["uid"].to_pandas().astype("string"),
                                 "rating": table["rating"].to_numpy().astype(float)}), "web_manifest degradations"
    return read_ratings(path), "table"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


SCORE_RUNTIME_FIELDS = ("device", "batch_size", "engine", "num_gpus", "actors", "shard_retries")


def _npz_stamp(path: Path | str) -> list:
    """(size, mtime) of an embeddings file (on object storage: size, ETag): a scored file is stale when its npz was
    written again."""
    return storage.stamp(path)


def _scored(out: Path | str, npz: Path | str, head_sha256: str) -> bool:
    """Whether `<out>/<stem>.parquet` holds this head's scores of this npz (its marker says so)."""
    marker = stats_files.read_or_empty(out, storage.stem(npz))
    return (bool(marker) and storage.isfile(storage.join(out, f"{storage.stem(npz)}.parquet"))
            and marker.get("head_sha256") == head_sha256 and marker.get("npz") == _npz_stamp(npz))


def score_file(head: LoadedHead, npz: Path | str, out: Path | str, dev: torch.device, batch_size: int,
               meta: dict) -> dict:
    """Score one embeddings file: `<out>/<stem>.parquet`, then its marker `__stats__/<stem>.json` (rows, null)."""
    uid, emb, _ = _read_npz(npz)
    x = _normalised(emb)
    ok = np.isfinite(x).all(axis=1)
    s = np.full(len(uid), np.nan, np.float32)
    s[ok] = _predict(head.module, x[ok], dev, batch_size)
    table = pa.table({"uid": pa.array(uid, pa.string()),
                      "aesthetic_score": pa.array(s, pa.float32(), mask=~np.isfinite(s))})
    schema.write(table, storage.join(out, f"{storage.stem(npz)}.parquet"), "aesthetic", meta)
    stats = {"rows": int(len(uid)), "null": int((~np.isfinite(s)).sum()), "head_sha256": head.sha256,
             "npz": _npz_stamp(npz)}
    stats_files.write(out, stats, storage.stem(npz))
    return stats


class Scorer:
    """The unit of work of `engine=ray`: a Ray actor holding the head, loaded once, fed embeddings files."""

    def __init__(self, cfg: AestheticScoreConfig, meta: dict, cwd: str):
        engine.enter(cwd)
        self.cfg, self.meta = cfg, meta
        self.head = load_head(cfg.head_path, cfg.head_activation)
        self.dev = torch.device(compute.resolve_device(cfg.device))

    def score(self, npz: str, out: str) -> dict | None:
        """`score_file`, unless the file is already scored (then None)."""
        out, npz = storage.location(out), storage.location(npz)
        if _scored(out, npz, self.head.sha256):
            return None
        return score_file(self.head, npz, out, self.dev, self.cfg.batch_size, self.meta)


def _score_all(cfg: AestheticScoreConfig, head: LoadedHead, files: list, out: Path | str, meta: dict) -> None:
    """Score every file not already scored, here or on Ray actors."""
    if cfg.engine == "local":
        dev = torch.device(compute.resolve_device(cfg.device))
        todo = [f for f in files if not _scored(out, f, head.sha256)]
        logger.info("aesthetic score: %d of %d files already scored", len(files) - len(todo), len(files))
        for f in progress.bar(todo, "aesthetic score", "file"):
            score_file(head, f, out, dev, cfg.batch_size, meta)
        return
    n, gpus, cpus = engine.pool_size(cfg.actors, cfg.num_gpus)
    actors = engine.start_actors(Scorer, (cfg, meta, os.getcwd()), n, cfg.shard_retries, num_cpus=cpus,
                                 num_gpus=gpus)
    calls = {storage.stem(f): (storage.resolve(f), storage.resolve(out)) for f in files}
    engine.run_on_actors(actors, "score", calls, cfg.shard_retries, "aesthetic score", "file")


def _run_stats(out: Path | str, files: list, meta: dict) -> dict:
    """The run's stats, from every file's marker and scores (whichever engine and run wrote them)."""
    stats = {**meta, "files": {}, "rows": 0, "null": 0}
    all_scores = []
    for f in files:
        stem = storage.stem(f)
        marker = stats_files.read(out, stem)
        stats["files"][stem] = marker["rows"]
        stats["rows"] += marker["rows"]
        stats["null"] += marker["null"]
        s = schema.read(storage.join(out, f"{stem}.parquet"), "aesthetic", ["aesthetic_score"])["aesthetic_score"]
        all_scores.append(s.drop_null().to_numpy().astype(np.float32))
    s = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
    if len(s):
        stats.update(mean=float(s.mean()), min=float(s.min()), max=float(s.max()),
                     quantiles={str(q): float(np.quantile(s, q)) for q in (0.1, 0.5, 0.9)})
    return stats


def score(cfg: AestheticScoreConfig) -> Path | str:
    """Score every embeddings file with a head: `<out>/<shard>.parquet` (AESTHETIC_SCHEMA) and its marker, skipping
    files already scored, then the run's stats (`__stats__/run.json`)."""
    out = storage.location(cfg.out)
    options.check_resumable(cfg, out, runtime_fields=SCORE_RUNTIME_FIELDS)
    enc = encoder_info(cfg.embeddings)
    head = load_head(cfg.head_path, cfg.head_activation)
    check_compatible(head, enc, cfg.head_path, cfg.embeddings)
    options.write_config(cfg, out)
    meta = {"head": Path(cfg.head_path).name, "head_kind": head.kind, "head_sha256": head.sha256,
            "encoder": enc.get("name") or enc.get("model") or "unknown"}
    files = embedding_files(cfg.embeddings)
    _score_all(cfg, head, files, out, meta)
    stats = _run_stats(out, files, meta)
    stats_files.write(out, stats)
    logger.info("aesthetic score: %d embeddings scored with %s (%s) → %s", stats["rows"], meta["head"], head.kind,
                out)
    return out
