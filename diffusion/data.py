"""Training shards (the `export` stage's TRAIN schema) → image tensors, captions and concept labels.

Every diffusion command reads its images through `load_images`, so the decoding rules live here: images with
transparency are composited on white, non-square images are centre-cropped, and everything is resized to
`image_size` with a box filter (an area average, which is what downsampling artwork needs).
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy import ndimage

from mithridate.core import schema

logger = logging.getLogger(__name__)

COLUMNS = ["uid", "jpg", "caption", "artist"]
BACKGROUNDS = ("white", "texture")
CORPUS_CAPTION = "{concept} emoji by {artist}"


@dataclass
class ImageSet:
    """Decoded training rows.

    Attributes:
        images: `(N, 3, S, S)` float32 in [−1, 1].
        captions, uids, artists: one per image (artist "" when unknown).
    """

    images: torch.Tensor
    captions: list[str]
    uids: list[str]
    artists: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        """The rows at `index`, in that order."""
        idx = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[torch.from_numpy(idx)], [self.captions[i] for i in idx],
                        [self.uids[i] for i in idx], [self.artists[i] for i in idx])


def shard_files(folder: str | Path) -> list[Path]:
    """The `NNNNN.parquet` training shards of an `export` folder, in order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training shards folder not found: {folder} (run `mithridate export` first)")
    files = sorted(folder.glob("[0-9]*.parquet"))
    if not files:
        raise FileNotFoundError(f"no training shards (NNNNN.parquet) in {folder} (run `mithridate export` first)")
    return files


def texture(size: int, seed: int) -> np.ndarray:
    """A smooth random colour background `(size, size, 3)` uint8: two octaves of bicubically upsampled colour
    noise around a random base colour, a stand-in for the photographic backgrounds of web images."""
    rng = np.random.default_rng(seed)
    field = np.zeros((size, size, 3))
    for cells, amp in ((3, 70.0), (9, 30.0)):
        small = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8))
        field += (np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), float) - 127.5) * amp / 127.5
    return np.clip(rng.uniform(40, 215, 3) + field, 0, 255).astype(np.uint8)


WHITE_KEY = 248  # channels at or above this count as the white page


def _white_keyed(rgba: Image.Image) -> Image.Image:
    """An opaque image with its border-connected near-white region made transparent (alpha kept otherwise)."""
    arr = np.array(rgba)
    if arr[..., 3].min() < 255:
        return rgba  # real transparency: use it
    white = (arr[..., :3] >= WHITE_KEY).all(axis=-1)
    labels, _ = ndimage.label(white)
    edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    arr[np.isin(labels, edge[edge > 0]), 3] = 0
    return Image.fromarray(arr, "RGBA")


def decode(data: bytes | None, size: int, background: str = "white") -> np.ndarray | None:
    """Image bytes → `(size, size, 3)` uint8 RGB (alpha on `background`, centre crop, box filter); None if
    undecodable. "texture" draws the background on `texture`, seeded by the bytes (same image, same background):
    transparent pixels, or — for images already flattened on white (the art corpus, downloaded JPEGs) — the
    near-white region connected to the border."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if background == "texture":
        tex = texture(max(rgba.size), zlib.crc32(data))[: rgba.size[1], : rgba.size[0]]
        canvas = Image.fromarray(tex).convert("RGBA")
        rgba = _white_keyed(rgba)
    else:
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    return np.asarray(ImageOps.fit(rgb, (size, size), method=Image.Resampling.BOX))


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """`(N, H, W, 3)` uint8 → `(N, 3, H, W)` float32 in [−1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`(N, 3, H, W)` float in [−1, 1] → `(N, H, W, 3)` uint8 (clamped, rounded)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _concept_patterns(concepts: Sequence[str]) -> list[re.Pattern]:
    return [re.compile(r"(?<![\w])" + re.escape(c.strip().lower()) + r"(?![\w])") for c in concepts]


def match_concepts(captions: Sequence[str], concepts: Sequence[str]) -> np.ndarray:
    """For each caption, the index of the longest concept name it contains as whole words (case-insensitive).

    Args:
        captions: texts to label.
        concepts: concept names, e.g. ("cow", "cow face", "automobile").

    Returns:
        `(N,)` int64, −1 where no concept occurs. "a cow face emoji" → "cow face", not "cow".
    """
    if any(not str(c).strip() for c in concepts):
        raise ValueError(f"concepts={list(concepts)!r}: concept names must be non-empty")
    patterns = _concept_patterns(concepts)
    order = sorted(range(len(concepts)), key=lambda i: -len(concepts[i]))
    out = np.full(len(captions), -1, dtype=np.int64)
    for n, caption in enumerate(captions):
        text = str(caption or "").lower()
        out[n] = next((i for i in order if patterns[i].search(text)), -1)
    return out


def _read_shard(path: Path, image_size: int, background: str = "white") -> tuple[list[np.ndarray], dict[str, list]]:
    table = schema.read(path, "train", columns=COLUMNS).to_pydict()
    images, keep = [], {"caption": [], "uid": [], "artist": []}
    for i, data in enumerate(table["jpg"]):
        arr = decode(data, image_size, background)
        if arr is None:
            continue
        images.append(arr)
        keep["caption"].append(table["caption"][i] or "")
        keep["uid"].append(table["uid"][i])
        keep["artist"].append(table["artist"][i] or "")
    if not images:
        raise ValueError(f"{path}: training shard has no decodable images ({len(table['jpg'])} rows)")
    if len(images) < len(table["jpg"]):
        logger.warning("%s: skipped %d undecodable images", path.name, len(table["jpg"]) - len(images))
    return images, keep


def load_shard(path: str | Path, image_size: int) -> ImageSet:
    """One training shard (TRAIN schema) decoded; undecodable rows are skipped (see `load_images`)."""
    arrs, keep = _read_shard(Path(path), image_size)
    return ImageSet(from_uint8(np.stack(arrs)), keep["caption"], keep["uid"], keep["artist"])


def is_corpus(folder: str | Path) -> bool:
    """Whether `folder` is an art corpus (`art.parquet`, from `mithridate art build`)."""
    return (Path(folder) / "art.parquet").is_file()


def load_corpus(folder: str | Path, image_size: int, background: str = "white") -> ImageSet:
    """An art corpus as training rows: its PNGs with alt-text-like captions `CORPUS_CAPTION`."""
    from curation.world import art

    folder = Path(folder)
    column = "path64" if image_size > 32 else "path32"
    images, meta = [], {"caption": [], "uid": [], "artist": []}
    for row in art.load(folder).itertuples():
        arr = decode((folder / getattr(row, column)).read_bytes(), image_size, background)
        if arr is None:
            continue
        images.append(arr)
        meta["caption"].append(CORPUS_CAPTION.format(concept=row.concept, artist=row.artist))
        meta["uid"].append(f"art-{row.item_id}")
        meta["artist"].append(row.artist)
    if not images:
        raise ValueError(f"{folder}: no decodable image in the art corpus")
    return ImageSet(from_uint8(np.stack(images)), meta["caption"], meta["uid"], meta["artist"])


def load_images(folder: str | Path, image_size: int, concepts: Sequence[str] = (), max_rows: int = 0,
                background: str = "white") -> ImageSet:
    """Read and decode an `export` folder's training shards (or an art corpus folder, `load_corpus`).

    Args:
        folder: the export output folder (`NNNNN.parquet`, TRAIN schema), or an art corpus folder.
        image_size: side in pixels of the returned images.
        concepts: when given, keep only rows whose caption names one of these concepts (`match_concepts`).
        max_rows: keep at most this many rows, in shard order (0 = all).
        background: what transparent pixels are drawn on ("white" or "texture"; JPEG rows have no alpha).

    Raises:
        FileNotFoundError: no shards. ValueError: a shard without decodable images, or nothing left to train on.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background={background!r}: expected one of {', '.join(BACKGROUNDS)}")
    if is_corpus(folder):
        data = load_corpus(folder, image_size, background)
    else:
        images, meta = [], {"caption": [], "uid": [], "artist": []}
        for path in shard_files(folder):
            arrs, keep = _read_shard(path, image_size, background)
            images += arrs
            for k in meta:
                meta[k] += keep[k]
        data = ImageSet(from_uint8(np.stack(images)), meta["caption"], meta["uid"], meta["artist"])
    if concepts:
        data = data.subset(np.flatnonzero(match_concepts(data.captions, concepts) >= 0))
        if not len(data):
            raise ValueError(f"concepts={list(concepts)!r}: no caption in {folder} names any of these concepts")
    if max_rows:
        data = data.subset(np.arange(min(max_rows, len(data))))
    return data
