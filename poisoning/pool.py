"""The attacker's image pool: where poison source images (and dirty-label / anchor target images) come from.

Nightshade's attacker brings their own natural images of the source concept C; they need not be in the clean
training set. A pool is either a folder of training shards (TRAIN schema, e.g. the clean export itself) or an
art corpus folder (`art.parquet`, from `mithridate art build`), whose images get alt-text-like captions
"{concept} emoji by {artist}". Images are decoded like training rows (alpha on white, centre crop, box resize).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from curation import art
from diffusion import data

logger = logging.getLogger(__name__)

CORPUS_CAPTION = "{concept} emoji by {artist}"


def is_corpus(path: str | Path) -> bool:
    return (Path(path) / "art.parquet").is_file()


def _from_corpus(folder: Path, image_size: int) -> data.ImageSet:
    table = art.load(folder)
    column = "path64" if image_size > 32 else "path32"
    images, captions, uids, artists = [], [], [], []
    for row in table.itertuples():
        arr = data.decode((folder / getattr(row, column)).read_bytes(), image_size)
        if arr is None:
            continue
        images.append(arr)
        captions.append(CORPUS_CAPTION.format(concept=row.concept, artist=row.artist))
        uids.append(f"art-{row.item_id}")
        artists.append(row.artist)
    if not images:
        raise ValueError(f"pool={str(folder)!r}: no decodable image in the art corpus")
    return data.ImageSet(data.from_uint8(np.stack(images)), captions, uids, artists)


@functools.lru_cache(maxsize=2)
def _load(path: str, image_size: int, stamp: float) -> data.ImageSet:
    folder = Path(path)
    pool = _from_corpus(folder, image_size) if is_corpus(folder) else data.load_images(folder, image_size)
    logger.info("pool: %d images from %s%s", len(pool), folder, " (art corpus)" if is_corpus(folder) else "")
    return pool


def load(path: str | Path, image_size: int) -> data.ImageSet:
    """The pool's images at `image_size` with captions (cached while the folder is unchanged: a sweep crafts
    from the same pool many times). Treat the result as read-only.

    Raises:
        FileNotFoundError: neither an art corpus nor a folder of training shards.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"pool folder not found: {path}")
    stamp = max([path.stat().st_mtime] + [f.stat().st_mtime for f in path.iterdir()])
    return _load(str(path), int(image_size), stamp)
