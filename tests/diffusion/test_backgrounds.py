"""Textured backgrounds: transparent pixels drawn on a seeded texture; opaque images and JPEG rows unchanged."""

import io

import numpy as np
import pytest
from PIL import Image

from diffusion import data


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _disc(alpha_outside: int = 0) -> bytes:
    yy, xx = np.mgrid[:32, :32]
    inside = (yy - 16) ** 2 + (xx - 16) ** 2 < 64
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[inside] = (200, 30, 30, 255)
    rgba[~inside, 3] = alpha_outside
    return _png(rgba)


def test_texture_replaces_white_only_where_transparent():
    white, tex = data.decode(_disc(), 32), data.decode(_disc(), 32, "texture")
    corner, centre = (slice(0, 4), slice(0, 4)), (slice(14, 18), slice(14, 18))
    assert (white[corner] == 255).all() and not (tex[corner] == 255).all()
    assert tex[corner].std() > 0 or tex[corner].mean() < 250  # a colour, not the white page
    assert np.array_equal(white[centre], tex[centre])  # the opaque drawing is untouched


def test_texture_is_seeded_by_the_image_and_varies_between_images():
    a1, a2 = data.decode(_disc(), 32, "texture"), data.decode(_disc(), 32, "texture")
    assert np.array_equal(a1, a2)
    other = _png(np.dstack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32), 0, np.uint8)]))
    assert not np.array_equal(data.decode(other, 32, "texture"), a1)


def test_opaque_images_ignore_the_background():
    jpeg = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(jpeg, format="JPEG")
    assert np.array_equal(data.decode(jpeg.getvalue(), 32), data.decode(jpeg.getvalue(), 32, "texture"))


def test_corpus_folder_loads_like_shards(tiny_corpus):
    white = data.load_images(tiny_corpus, 32)
    tex = data.load_images(tiny_corpus, 32, background="texture")
    assert len(white) == len(tex) > 0 and white.captions == tex.captions
    assert white.captions[0].endswith(f"emoji by {white.artists[0]}")
    assert (white.images != tex.images).any()
    with pytest.raises(ValueError, match="background='grey'"):
        data.load_images(tiny_corpus, 32, background="grey")


def test_images_flattened_on_white_get_the_texture_outside_only():
    yy, xx = np.mgrid[:32, :32]
    rgb = np.full((32, 32, 3), 255, np.uint8)
    rgb[(yy - 16) ** 2 + (xx - 16) ** 2 < 100] = (30, 120, 30)
    rgb[15:17, 15:17] = 255  # a white eye inside the drawing: not connected to the border
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    tex = data.decode(buf.getvalue(), 32, "texture")
    assert not (tex[:3, :3] == 255).all()  # the page became texture
    assert (tex[15:17, 15:17] == 255).all() and (tex[16, 10] == (30, 120, 30)).all()  # the drawing is untouched
