"""Tests of the embedded art corpus (curation.world.art, curation.world.art_styles) on the tiny preset."""

import dataclasses
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from curation.world import art, art_styles
from curation.world.art_styles import STYLES, auto_styles, available_styles, fit_rgb, is_single, key_of, norm_key
from mithridate.core import schema


@pytest.fixture(scope="module")
def tiny_cfg(cache_dir):
    return dataclasses.replace(art.PRESETS["tiny"], cache_dir=str(cache_dir))


@pytest.fixture(scope="module")
def corpus(tiny_cfg):
    folder = art.run(tiny_cfg)
    return folder, art.load(folder)


def test_table_validates_against_art_schema(corpus):
    folder, df = corpus
    table = schema.read(folder / "art.parquet", "art")
    schema.validate(table, "art")
    assert table.schema.equals(schema.ART_SCHEMA, check_metadata=False)
    assert len(df) == 24 * len(auto_styles())
    assert (df["item_id"] == df["artist"] + "/" + df["concept_key"]).all()


def test_every_artist_has_the_same_unique_concepts(corpus):
    _, df = corpus
    assert set(df["artist"]) == set(auto_styles())
    sets = {a: frozenset(g["concept"]) for a, g in df.groupby("artist")}
    assert len(set(sets.values())) == 1
    for _, g in df.groupby("artist"):
        assert g["concept"].is_unique and g["concept_key"].is_unique and len(g) == 24
    assert set(art.DEFAULT_INCLUDE) <= set(df["concept"])
    assert {"cow", "automobile"} <= set(df["concept"])
    cow = df[(df["concept"] == "cow")].iloc[0]
    assert cow["concept_key"] == "1F404" and cow["category"] == "Animals & Nature"
    assert all(is_single(k) for k in df["concept_key"])


def test_images_have_the_right_size_and_are_not_blank(corpus):
    folder, df = corpus
    for _, row in df.iterrows():
        for size in (64, 32):
            path = art.image_path(folder, row, size)
            assert path.is_file() and path.is_relative_to(folder)
            with Image.open(path) as im:
                assert im.mode == "RGB" and im.size == (size, size)
                px = np.asarray(im, dtype=np.float32)
            assert px.std() > 15, f"{path} looks blank"
            assert (px.min(axis=2) < 250).mean() > 0.05, f"{path} is (almost) all white"


def test_licences_match_the_style_registry(corpus):
    folder, df = corpus
    for artist, g in df.groupby("artist"):
        assert set(g["licence"]) == {STYLES[artist].licence}
        assert set(g["attribution"]) == {STYLES[artist].attribution}
    text = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for artist in auto_styles():
        assert f"## {artist}" in text and STYLES[artist].licence in text
    if "openmoji" in auto_styles():
        assert "Share-alike" in text and "CC-BY-SA-4.0" in text
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["max_concepts"] == 24 and cfg["styles"] == auto_styles()


def test_second_run_reuses_the_cache(corpus, tiny_cfg):
    folder, df = corpus
    marker = (folder / art.MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    again = art.run(tiny_cfg)
    assert time.perf_counter() - t0 < 1.0
    assert again == folder and (folder / art.MARKER).stat().st_mtime_ns == marker
    assert art.load(again).equals(df)


def test_force_rebuilds_and_seed_changes_the_sample(corpus, tiny_cfg):
    folder, df = corpus
    other = art.run(dataclasses.replace(tiny_cfg, seed=1))
    assert other != folder
    df1 = art.load(other)
    assert set(art.DEFAULT_INCLUDE) <= set(df1["concept"]) and set(df1["concept"]) != set(df["concept"])
    marker = (other / art.MARKER).stat().st_mtime_ns
    assert art.run(dataclasses.replace(tiny_cfg, seed=1, force=True)) == other
    assert (other / art.MARKER).stat().st_mtime_ns != marker
    assert not list(other.parent.glob(".*tmp*"))


def test_unknown_style_names_the_value_and_the_choices():
    with pytest.raises(ValueError) as err:
        art.ArtConfig(styles=("twemoji", "nosuchstyle"))
    msg = str(err.value)
    assert "styles" in msg and "nosuchstyle" in msg
    for name in STYLES:
        assert name in msg


def test_unavailable_style_names_the_available_ones(monkeypatch):
    monkeypatch.setitem(STYLES, "twemoji", dataclasses.replace(STYLES["twemoji"], available=lambda: False))
    with pytest.raises(ValueError, match="not available") as err:
        art.ArtConfig(styles=("twemoji",))
    for name in available_styles():
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_concepts": -1}, "max_concepts"),
        ({"max_concepts": 3}, "max_concepts"),  # fewer than the include names
        ({"styles": ("auto", "twemoji")}, "styles"),
        ({"styles": ()}, "styles"),
        ({"include": ("cow", "cow")}, "include"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_bad_config_values_raise(kwargs, field):
    with pytest.raises(ValueError, match=f"ArtConfig.{field}="):
        art.ArtConfig(**kwargs)


def test_unknown_include_name_raises_at_run(cache_dir):
    cfg = art.ArtConfig(cache_dir=str(cache_dir), max_concepts=4, include=("cow", "unicorn-ish thing"))
    with pytest.raises(ValueError, match="unicorn-ish thing"):
        art.run(cfg)


def test_cache_root_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MITHRIDATE_CACHE", str(tmp_path))
    assert art.cache_root(art.ArtConfig()) == tmp_path
    assert art.corpus_folder(art.ArtConfig()).parent == tmp_path / "art"
    assert art.cache_root(art.ArtConfig(cache_dir="/x")) == art.Path("/x")


def test_concept_keys_and_blank_renders():
    assert norm_key("1f404") == "1F404" and norm_key("2764-fe0f") == "2764" and norm_key("a9") == "00A9"
    assert key_of("\u2764\ufe0f") == "2764" and key_of("🐄") == "1F404"
    assert not is_single("1F3FB") and not is_single("0023-20E3")
    with pytest.raises(ValueError, match="blank"):
        fit_rgb(Image.new("RGBA", (8, 8)), 4)


def test_a_concept_failing_in_one_style_is_dropped(tmp_path):
    ok = lambda size: Image.new("RGB", (size, size), "red")  # noqa: E731

    def bad(size):
        raise ValueError("boom")

    renders = {"twemoji": {"1F404": ok, "1F697": ok}, "notomono": {"1F404": ok, "1F697": bad}}
    rows = art.render_concepts(tmp_path, renders, ["1F404", "1F697"])
    assert [(r["artist"], r["concept"]) for r in rows] == [("twemoji", "cow"), ("notomono", "cow")]
    assert (tmp_path / "notomono" / "32" / "1F404.png").is_file()
    with pytest.raises(ValueError, match="size"):
        art.image_path(tmp_path, rows[0], 48)


# --- optional npm styles (iconify sets), with real minimal packages written into tmp_path --------------

RED_CIRCLE = '<circle cx="16" cy="16" r="12" fill="#e00000"/>'
BLUE_SQUARE = '<rect x="4" y="4" width="24" height="24" fill="#0000e0"/>'


def _iconify_files(licence: str, version: str) -> dict[str, dict]:
    return {
        "icons.json": {"prefix": "test", "width": 32, "height": 32,
                       "icons": {"red-circle": {"body": RED_CIRCLE}, "blue-square": {"body": BLUE_SQUARE}}},
        "chars.json": {"1f404": "red-circle", "1f697": "blue-square", "1f469-200d-1f692": "red-circle"},
        "info.json": {"name": "test", "license": {"title": licence, "spdx": licence}},
        "package.json": {"name": "@iconify-json/test", "version": version},
    }


def write_iconify_tarball(folder, stem: str, version: str, licence: str):
    """A `npm pack`-style tarball: package/<file> members, gzip-compressed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{version}.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in _iconify_files(licence, version).items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_iconify_tree(folder, licence: str, version: str):
    folder.mkdir(parents=True)
    for name, data in _iconify_files(licence, version).items():
        (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture
def no_npm(monkeypatch, tmp_path):
    """No npm package anywhere: empty cache root, no system node_modules, MITHRIDATE_NPM_DIR unset."""
    monkeypatch.setenv("MITHRIDATE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(art_styles.NPM_DIR_ENV, raising=False)
    monkeypatch.setattr(art_styles, "NPM_SYSTEM_DIRS", (tmp_path / "no-such-node-modules",))


def _colour(path):
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
        px = np.asarray(im, dtype=np.float32).reshape(-1, 3)
    ink = px[px.min(axis=1) < 200]  # drop the white background and anti-aliased edges
    assert len(ink) > 0.3 * len(px), f"{path} looks blank"
    return ink.mean(axis=0)


def test_npm_styles_are_unavailable_without_packages(no_npm, monkeypatch):
    for value in (None, ""):
        if value is not None:
            monkeypatch.setenv(art_styles.NPM_DIR_ENV, value)
        assert not STYLES["fluent"].available() and not STYLES["noto"].available()
        assert not {"noto", "fluent"} & set(available_styles())
    with pytest.raises(ValueError, match="not available"):
        art.ArtConfig(styles=("fluent",))


def test_npm_tarball_style_is_found_rendered_and_attributed(no_npm, monkeypatch, tmp_path):
    npm = tmp_path / "npm"
    write_iconify_tarball(npm, "iconify-json-fluent-emoji-flat", "9.9.9", "MIT")
    write_iconify_tarball(npm, "iconify-json-fluent-emoji-flat", "10.0.0", "MIT")  # the newest one wins
    monkeypatch.setenv(art_styles.NPM_DIR_ENV, os.pathsep.join([str(tmp_path / "missing"), str(npm)]))
    assert STYLES["fluent"].available() and "fluent" in auto_styles() and not STYLES["noto"].available()
    assert art_styles.npm_versions(["fluent", "twemoji"]) == {"fluent": "10.0.0"}
    assert set(STYLES["fluent"].load()) == {"1F404", "1F697"}  # the ZWJ sequence is dropped

    cfg = art.ArtConfig(cache_dir=str(tmp_path / "cache"), styles=("fluent",), include=("cow", "automobile"))
    folder = art.run(cfg)
    df = art.load(folder)
    assert sorted(df["concept"]) == ["automobile", "cow"]
    assert set(df["licence"]) == {"MIT"} and set(df["attribution"]) == {STYLES["fluent"].attribution}
    text = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "## fluent" in text and "Microsoft" in text and "@iconify-json/fluent-emoji-flat@10.0.0" in text
    rows = df.set_index("concept")
    r, g, b = _colour(art.image_path(folder, rows.loc["cow"], 64))
    assert r > 180 and g < 60 and b < 60, "the cow icon is a red circle"
    r, g, b = _colour(art.image_path(folder, rows.loc["automobile"], 64))
    assert b > 180 and r < 60 and g < 60, "the automobile icon is a blue square"

    (npm / "iconify-json-fluent-emoji-flat-10.0.0.tgz").unlink()  # another package version: another corpus
    assert art.corpus_folder(cfg) != folder


def test_npm_installed_tree_and_auto_prefers_noto_over_notocolor(no_npm, monkeypatch, tmp_path):
    root = tmp_path / "project"
    write_iconify_tarball(root, "iconify-json-noto-v1", "1.2.5", "Apache-2.0")  # another set: not "noto"
    monkeypatch.setenv(art_styles.NPM_DIR_ENV, str(root))
    assert not STYLES["noto"].available()
    tree = write_iconify_tree(root / "node_modules" / "@iconify-json" / "noto", "Apache-2.0", "1.2.9")
    assert art_styles.find_npm("@iconify-json/noto") == art_styles.NpmSource(tree, "1.2.9")
    assert STYLES["noto"].available() and set(STYLES["noto"].load()) == {"1F404", "1F697"}

    monkeypatch.setitem(STYLES, "notocolor", dataclasses.replace(STYLES["notocolor"], available=lambda: True))
    assert "notocolor" in available_styles() and "noto" in auto_styles()
    assert "notocolor" not in auto_styles()  # the same Noto artwork twice is not two artists
    assert art.resolve_styles(art.ArtConfig(styles=("noto", "notocolor"))) == ["noto", "notocolor"]

    write_iconify_tree(tmp_path / "other" / "@iconify-json" / "noto", "CC0-1.0", "2.0.0")
    monkeypatch.setenv(art_styles.NPM_DIR_ENV, str(tmp_path / "other"))
    with pytest.raises(ValueError, match="licence"):
        STYLES["noto"].load()
