"""Image grids: size arithmetic, nearest-neighbour tiles at their offsets, labels, tensor → uint8."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.grid import save_grid, to_uint8


def _images(n: int, h: int = 5, w: int = 7) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("n,nrow,scale,pad", [(10, 4, 2, 2), (3, 8, 3, 0), (8, 8, 1, 1)])
def test_size_arithmetic(tmp_path, n, nrow, scale, pad):
    out = save_grid(_images(n), tmp_path / "g.png", nrow=nrow, scale=scale, pad=pad)
    cols, rows = min(nrow, n), -(-n // nrow)
    with Image.open(out) as im:
        assert im.size == (cols * 7 * scale + (cols + 1) * pad, rows * 5 * scale + (rows + 1) * pad)


def test_tile_pixels_are_the_upscaled_image(tmp_path):
    images, nrow, scale, pad = _images(10), 4, 3, 2
    grid = np.asarray(Image.open(save_grid(list(images), tmp_path / "sub" / "g.png", nrow, scale=scale, pad=pad)))
    for k in (0, 5, 9):
        x0, y0 = pad + (k % nrow) * (7 * scale + pad), pad + (k // nrow) * (5 * scale + pad)
        tile = grid[y0:y0 + 5 * scale, x0:x0 + 7 * scale]
        assert np.array_equal(tile, np.kron(images[k], np.ones((scale, scale, 1), np.uint8)))
        assert np.array_equal(grid[y0 + 4, x0 + 5], images[k][4 // scale, 5 // scale])
    assert (grid[0] == 255).all()  # padding is background


def test_labels_add_space_and_ink(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8) + 128
    plain = Image.open(save_grid(images, tmp_path / "a.png", nrow=2))
    labelled = Image.open(save_grid(images, tmp_path / "b.png", nrow=2, labels=["cat", "dog", "a very long label", "x"],
                                    row_labels=["seed 0", "seed 1"]))
    assert labelled.width > plain.width and labelled.height > plain.height
    arr = np.asarray(labelled)
    assert (arr.min(-1) < 100).any()  # some dark text pixels on the white background
    with pytest.raises(ValueError, match="row_labels"):
        save_grid(images, tmp_path / "c.png", nrow=2, row_labels=["one"])
    with pytest.raises(ValueError, match="labels"):
        save_grid(images, tmp_path / "c.png", labels=["one"])


def test_to_uint8_maps_range_and_clamps():
    x = torch.tensor([-1.0, 1.0, -3.0, 5.0, 0.0, 0.5]).reshape(1, 3, 1, 2)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 2, 3)
    assert out[0, 0, :, 0].tolist() == [0, 255]  # channel 0: −1 → 0, 1 → 255
    assert out[0, 0, :, 1].tolist() == [0, 255]  # channel 1: clamped
    assert out[0, 0, :, 2].tolist() == [128, 191]  # 127.5 rounds to even, 191.25 → 191


def test_bad_input_raises(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        save_grid([], tmp_path / "g.png")
    with pytest.raises(ValueError, match="images"):
        save_grid(np.zeros((0, 4, 4, 3), np.uint8), tmp_path / "g.png")
    with pytest.raises(ValueError, match="uint8"):
        save_grid(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "g.png")
