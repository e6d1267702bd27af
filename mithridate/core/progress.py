"""Progress bars on long work: tqdm on stderr, cleared when done, off when stderr is not a terminal."""

from __future__ import annotations

from tqdm import tqdm


def bar(items, desc: str, unit: str):
    """A tqdm progress bar over `items` (off when stderr is not a terminal)."""
    return tqdm(items, desc=desc, unit=unit, leave=False, disable=None)  # None: off when not a terminal
