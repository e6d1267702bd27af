"""Image degradations of known severity, and the quality rating each one stands for.

The demo web has no human ratings, so the aesthetic/quality head learns from these instead: the aggregator
re-uploads some works blurred, heavily JPEG-compressed, noisy, upscaled from a thumbnail or watermarked, and
the manifest records kind and severity. `quality_rating` turns (kind, severity) into a 1–10 rating. This
is a proxy for technical quality only; it says nothing about what people find beautiful.

`degrade(img, kind, severity, rng)` is a pure function: the same image, kind, severity and rng state give the
same pixels. Severity 0 returns an unchanged copy; severity 1 is the heaviest damage of that kind:

    blur       Gaussian blur, radius = severity × 6% of the short side (3.8 px at 64 px)
    jpeg       re-encoded at quality round(90 − 85 × severity) (90 … 5), then decoded
    noise      additive Gaussian noise, σ = 60 × severity (pixel values 0–255), per channel
    lowres     downscaled by 1 + 7 × severity (area average), upscaled back with nearest neighbour
    watermark  outlined text in PIL's default font over the image: opacity 30% + 70% × severity,
               height 10% + 15% × severity of the short side, 1 + round(4 × severity) lines

Rating: clean (kind None or severity 0) = 10; a degraded image = 10 − PENALTY[kind] × severity, so
severity 1 rates 1 for every kind (the kinds share one scale; edit PENALTY to weigh them differently).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("blur", "jpeg", "noise", "lowres", "watermark")
CLEAN_RATING = 10.0
PENALTY = {k: 9.0 for k in KINDS}  # rating lost at severity 1
WATERMARK_TEXTS = ("© stockpix", "SAMPLE", "preview only", "© imgfarm.example", "DO NOT COPY")


def _check(kind: str, severity: float) -> float:
    if kind not in KINDS:
        raise ValueError(f"degradation kind {kind!r}: allowed values are {', '.join(KINDS)}")
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"degradation severity {severity!r}: must be within [0, 1]")
    return severity


def _np_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(64))


def _blur(im: Image.Image, s: float, rng: random.Random) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius=s * 0.06 * min(im.size)))


def _jpeg(im: Image.Image, s: float, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=round(90 - 85 * s))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _noise(im: Image.Image, s: float, rng: random.Random) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    a = a + _np_rng(rng).normal(0.0, 60.0 * s, size=a.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def _lowres(im: Image.Image, s: float, rng: random.Random) -> Image.Image:
    factor = 1 + 7 * s
    w, h = im.size
    small = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _watermark(im: Image.Image, s: float, rng: random.Random) -> Image.Image:
    w, h = im.size
    size = max(6, round((0.10 + 0.15 * s) * min(w, h)))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        font = ImageFont.load_default()
    text = rng.choice(WATERMARK_TEXTS)
    colour, outline = rng.choice([((255, 255, 255), (0, 0, 0)), ((0, 0, 0), (255, 255, 255)),
                                  ((200, 200, 200), (40, 40, 40))])
    alpha = round(255 * (0.30 + 0.70 * s))
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lines = 1 + round(4 * s)
    for i in range(lines):
        y = (i + 0.5) * h / lines - size / 2 + rng.uniform(-0.05, 0.05) * h
        x = rng.uniform(-0.3, 0.1) * w
        draw.text((x, y), text, font=font, fill=colour + (alpha,), stroke_width=1, stroke_fill=outline + (alpha,))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


_FUNCS = {"blur": _blur, "jpeg": _jpeg, "noise": _noise, "lowres": _lowres, "watermark": _watermark}


def degrade(img: Image.Image, kind: str, severity: float, rng: random.Random) -> Image.Image:
    """A degraded RGB copy of `img` (see the module docstring for each kind); deterministic under `rng`."""
    severity = _check(kind, severity)
    im = img.convert("RGB")
    if severity == 0.0:
        return im.copy()
    return _FUNCS[kind](im, severity, rng)


def quality_rating(kind: str | None, severity: float | None) -> float:
    """The 1–10 quality rating of an image with this degradation (None or severity 0: clean, 10)."""
    if kind is None:
        return CLEAN_RATING
    if severity is None:
        raise ValueError(f"degradation {kind!r} without a severity")
    severity = _check(kind, severity)
    return CLEAN_RATING - PENALTY[kind] * severity
