"""Checkpoints: written atomically, read (weights only, to the CPU) with a one-line error for a broken file, and
digested."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from mithridate.core import disk


def save(obj, path: str | Path) -> Path:
    """`torch.save` to a temporary file, fsynced and renamed over `path` (`disk.atomic`), so a reader never sees
    half a checkpoint, even after a kill -9; a full disk is a one-line `disk.DiskFull` naming `path` (through a
    Python file, torch reports it as ENOSPC)."""
    path = Path(path)
    with disk.atomic(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return path


def load(path: Path, remedy: str, unreadable: str = "not a readable torch checkpoint"):
    """`torch.load` (weights only, to the CPU) of a checkpoint we wrote; a truncated or foreign file is a one-line
    ValueError "<path>: <unreadable> (truncated or not a mithridate checkpoint; …); <remedy>"."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for junk, empty and truncated files
        lines = str(err).strip().splitlines()
        detail = type(err).__name__ if isinstance(err, pickle.UnpicklingError) or not lines else (
            f"{type(err).__name__}: {lines[0].split('. ')[0][:120]}")
        raise ValueError(f"{path}: {unreadable} (truncated or not a mithridate checkpoint; {detail}); {remedy}") \
            from None


def digest(state_dict: dict) -> str:
    """sha256 of a state dict's tensors (names, shapes, dtypes and bytes, in key order), 64 hex chars."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
