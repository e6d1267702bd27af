"""uid subsets (DataComp's format: a sorted `.npy` of dtype "u8,u8") and their set operations.

`mithridate subset --inputs=a.npy,b.npy --op=intersect --out=c.npy` combines the keep-sets of several filter
runs (or any uid lists) without touching the shards; `export` and later stages take the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Literal

import numpy as np

from mithridate.core import disk, options, storage

logger = logging.getLogger(__name__)
DTYPE = np.dtype("u8,u8")


def from_uids(uids) -> np.ndarray:
    """A sorted, duplicate-free subset from 32-hex uids."""
    try:
        arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], dtype=DTYPE)
    except (ValueError, TypeError):
        raise ValueError("uids must be 32 hexadecimal characters (see mithridate.core.schema.make_uid)") from None
    return np.unique(arr)


def to_uids(subset: np.ndarray) -> list[str]:
    """The 32-hex uids of a subset."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in subset.tolist()]


def load(path: str | Path) -> np.ndarray:
    """Read a subset file (a local path or an fsspec URL), checking its dtype."""
    path = storage.location(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"subset file not found: {path}")
    try:
        arr = storage.load_npz(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: not a subset .npy file ({err})") from None
    if arr.dtype != DTYPE:
        raise ValueError(f"{path}: dtype {arr.dtype}, expected {DTYPE} (a sorted array of 128-bit uids)")
    return np.unique(arr)


OPS = {"intersect": np.intersect1d, "union": np.union1d, "minus": np.setdiff1d}


@dataclass(frozen=True)
class SubsetConfig:
    inputs: tuple[str, ...] = options.opt((), "subset .npy files, comma separated (e.g. filter/subsets/keep.npy)")
    op: Literal["intersect", "union", "minus"] = options.opt("intersect", "set operation, applied left to right")
    out: str = options.opt("mithridate-out/subsets/combined.npy", "output subset file")

    def __post_init__(self):
        options.check_choice(self, "op", OPS)
        if len(self.inputs) < 2:
            raise ValueError(f"SubsetConfig.inputs: give at least two subset files, got {list(self.inputs)}")


PRESETS = {"default": SubsetConfig(inputs=("a.npy", "b.npy")), "tiny": SubsetConfig(inputs=("a.npy", "b.npy"))}


def run(cfg: SubsetConfig) -> Path:
    """Combine `cfg.inputs` with `cfg.op` and write the result; returns its path."""
    sets = [load(p) for p in cfg.inputs]
    result = reduce(lambda a, b: OPS[cfg.op](a, b), sets)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with disk.atomic(out if out.suffix == ".npy" else out.with_name(out.name + ".npy")) as tmp, \
            open(tmp, "wb") as fh:  # np.save appends ".npy" to a name without it
        np.save(fh, result)
    logger.info("subset: %s of %s → %d uids → %s", cfg.op, [len(s) for s in sets], len(result), out)
    return out
