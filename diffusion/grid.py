"""Image grids: tiles upscaled by nearest neighbour (32 px samples are hard to see), optional text labels.

Layout of `save_grid`: tile k sits in row k // nrow, column k % nrow, at
x = left + pad + col·(W·scale + pad), y = pad + row·(H·scale + label_h + pad), where `left` is the width of
the row-label column (0 without row labels) and `label_h` the height of a per-tile label line (0 without).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images (N, 3, H, W) in [−1, 1] → uint8 numpy (N, H, W, 3): clamped, scaled to [0, 255], rounded."""
    if x.dim() != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {tuple(x.shape)}")
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def _stack(images) -> np.ndarray:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: empty")
        images = np.stack([np.asarray(im) for im in images])
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"images: expected a non-empty (N, H, W, 3) array, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images: expected dtype uint8, got {images.dtype} (convert with to_uint8)")
    return images


def _text_size(draw: ImageDraw.ImageDraw, font, text: str) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _check_texts(texts, count: int, name: str) -> list[str] | None:
    if texts is None:
        return None
    if len(texts) != count:
        raise ValueError(f"{name}: expected {count} strings, got {len(texts)}")
    return [str(s) for s in texts]


def save_grid(images, path: str | Path, nrow: int = 8, labels=None, scale: int = 2, pad: int = 2,
              row_labels=None) -> Path:
    """Tile images into one PNG, `nrow` per row, each upscaled `scale`× by nearest neighbour.

    Args:
        images: uint8 (N, H, W, 3) array or a list of (H, W, 3) arrays.
        path: output PNG (parent folders are created).
        nrow: tiles per row.
        labels: N strings, each drawn under its tile (shortened with "…" to the tile width).
        scale: integer upscaling factor (>= 1).
        pad: background pixels around and between tiles.
        row_labels: one string per row, drawn in a column at the left.

    Returns:
        The path written.

    Raises:
        ValueError: empty input, wrong shape or dtype, bad nrow/scale/pad, or label counts that do not match.
    """
    images = _stack(images)
    if nrow < 1 or scale < 1 or pad < 0:
        raise ValueError(f"nrow={nrow!r}, scale={scale!r}, pad={pad!r}: need nrow >= 1, scale >= 1, pad >= 0")
    n, h, w = images.shape[:3]
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    labels, row_labels = _check_texts(labels, n, "labels"), _check_texts(row_labels, rows, "row_labels")
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_h = _text_size(measure, font, "Ag")[1] + pad + 2 if labels else 0
    left = max(_text_size(measure, font, s)[0] for s in row_labels) + 2 * pad if row_labels else 0
    th, tw = h * scale, w * scale
    canvas = np.empty((pad + rows * (th + label_h + pad), left + pad + cols * (tw + pad), 3), np.uint8)
    canvas[:] = BACKGROUND
    tiles = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for k, tile in enumerate(tiles):
        x, y = left + pad + (k % nrow) * (tw + pad), pad + (k // nrow) * (th + label_h + pad)
        canvas[y:y + th, x:x + tw] = tile
    image = Image.fromarray(canvas)
    _draw_labels(ImageDraw.Draw(image), font, labels, row_labels, nrow, (th, tw, label_h, left, pad))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    log.debug("grid: %d images, %d×%d tiles → %s", n, rows, cols, path)
    return path


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """`text` shortened (with "…") until it is at most `width` pixels wide."""
    if _text_size(draw, font, text)[0] <= width:
        return text
    while len(text) > 1 and _text_size(draw, font, text + "…")[0] > width:
        text = text[:-1]
    return text + "…"


def _draw_labels(draw: ImageDraw.ImageDraw, font, labels, row_labels, nrow: int, geometry: tuple) -> None:
    th, tw, label_h, left, pad = geometry
    for k, text in enumerate(labels or []):
        x, y = left + pad + (k % nrow) * (tw + pad), pad + (k // nrow) * (th + label_h + pad) + th + 1
        draw.text((x, y), _fit(draw, font, text, tw), fill=TEXT, font=font)
    for r, text in enumerate(row_labels or []):
        y = pad + r * (th + label_h + pad) + max(0, (th - _text_size(draw, font, text)[1]) // 2)
        draw.text((pad, y), text, fill=TEXT, font=font)
