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

from diffusion import data

logger = logging.getLogger(__name__)

def is_corpus(path: str | Path) -> bool:
    return data.is_corpus(path)


@functools.lru_cache(maxsize=2)
def _load(path: str, image_size: int, stamp: float, background: str) -> data.ImageSet:
    folder = Path(path)
    pool = data.load_images(folder, image_size, background=background)
    logger.info("pool: %d images from %s%s", len(pool), folder, " (art corpus)" if is_corpus(folder) else "")
    return pool


def load(path: str | Path, image_size: int, background: str = "white") -> data.ImageSet:
    """The pool's images at `image_size` with captions (cached while the folder is unchanged: a sweep crafts
    from the same pool many times). Treat the result as read-only.

    Raises:
        FileNotFoundError: neither an art corpus nor a folder of training shards.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"pool folder not found: {path}")
    stamp = max([path.stat().st_mtime] + [f.stat().st_mtime for f in path.iterdir()])
    return _load(str(path), int(image_size), stamp, background)
