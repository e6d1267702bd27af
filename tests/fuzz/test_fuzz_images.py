"""Fuzz of the image decode paths: the download stage's header check and pixel cap around img2dataset's `Resizer`
(`curation.acquire.downloader._header_size`, `_PixelCap`), and `dedup.phash` on stored image bytes.

Inputs: small valid PNG/JPEG/GIF/WebP/BMP/TIFF files, bombs and headers that announce huge sizes, then mutated
(truncated, flipped bytes, broken chunks). Contract: an error string per image, never an exception, never a hang;
a header that announces more than `max_pixels` is refused before anything is decoded.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from _fuzz import fuzz, mutated_bytes
from hypothesis import given, strategies as st
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "50000000")  # a guard for this machine, if cv2 loads here first

from img2dataset.resizer import Resizer  # noqa: E402

from curation.acquire.downloader import _header_size, _PixelCap  # noqa: E402
from curation.select.dedup import phash  # noqa: E402
from curation.world import webcontent  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")  # PIL warns on every corrupt EXIF, bomb-sized header, …
MAX_PIXELS = 1_000_000
SIZE = 32


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_header(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose IHDR announces `width`×`height` (valid CRC), then `body` (IDAT chunks or nothing)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + body + _chunk(b"IEND", b"")


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its SOF0 frame header announcing `width`×`height` (the scan data is unchanged)."""
    i = jpeg.find(b"\xff\xc0")
    return jpeg[:i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[i + 9:]


def gif_with_size(gif: bytes, width: int, height: int) -> bytes:
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def _seeds() -> list[bytes]:
    rgb = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    rgb.paste((10, 200, 10), (4, 4, 20, 20))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    jpeg = _encode(rgb, "JPEG", quality=80)
    gif = _encode(rgb.convert("P"), "GIF")
    frames = [rgb.convert("P"), Image.new("P", (SIZE, SIZE), 3)]
    return [
        webcontent.png_bytes(rgb), webcontent.png_bytes(rgba), _encode(rgb.convert("P"), "PNG"),
        _encode(rgb.convert("1"), "PNG"), _encode(rgb.convert("I;16"), "PNG"), jpeg,
        _encode(rgb, "JPEG", progressive=True), _encode(rgb.convert("L"), "JPEG"), gif,
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), _encode(rgb, "WEBP", quality=50),
        _encode(rgba, "WEBP", lossless=True), _encode(rgb, "BMP"), _encode(rgb, "TIFF"), _encode(rgb, "ICO"),
        webcontent.tiny_png(), webcontent.truncated(webcontent.png_bytes(rgb)), webcontent.bomb_png(3000),
        png_header(100_000, 100_000), png_header(2**31 - 1, 2**31 - 1), png_header(0, 0), png_header(SIZE, SIZE),
        jpeg_with_size(jpeg, 20_000, 20_000), jpeg_with_size(jpeg, 65_535, 65_535), jpeg_with_size(jpeg, 0, 0),
        gif_with_size(gif, 65_535, 65_535), b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBP",
    ]


SEEDS = _seeds()
_resizer = Resizer(SIZE, "border", False, encode_quality=90, min_image_size=8, max_image_area=MAX_PIXELS)
cap = _PixelCap(_resizer, MAX_PIXELS)


def check_cap(data: bytes) -> tuple:
    """`_PixelCap` on one image: a 6-tuple, an error string xor an encoded image."""
    out = cap(io.BytesIO(data))
    assert isinstance(out, tuple) and len(out) == 6
    img, width, height, _, _, err = out
    if img is None:
        assert isinstance(err, str) and err
    else:
        assert err is None and isinstance(img, bytes) and (width, height) == (SIZE, SIZE)
    return out


@fuzz(examples=120, deadline_ms=2000)
@given(mutated_bytes(SEEDS, max_ops=4))
def test_header_size_any_bytes(data):
    w, h = _header_size(io.BytesIO(data))
    assert isinstance(w, int) and isinstance(h, int) and w >= 0 and h >= 0


@fuzz(examples=80, deadline_ms=2000)
@given(mutated_bytes(SEEDS, max_ops=4))
def test_pixel_cap_any_bytes(data):
    check_cap(data)


@fuzz(examples=60, deadline_ms=2000)
@given(st.sampled_from(("png", "jpeg", "gif")), st.integers(1, 65_535), st.integers(1, 65_535))
def test_pixel_cap_refuses_announced_size(fmt, width, height):
    """A header announcing more than `max_pixels` is refused by the cap, whatever the data behind it."""
    data = {"png": lambda: png_header(width, height), "jpeg": lambda: jpeg_with_size(SEEDS[5], width, height),
            "gif": lambda: gif_with_size(SEEDS[8], width, height)}[fmt]()
    img, *_, err = check_cap(data)
    if width * height > MAX_PIXELS:
        assert img is None and "exceeds max_pixels" in err, err


@fuzz(examples=80, deadline_ms=2000)
@given(mutated_bytes(SEEDS, max_ops=4))
def test_phash_any_bytes(data):
    h = phash(data)
    assert h is None or (len(h) == 16 and int(h, 16) >= 0)
