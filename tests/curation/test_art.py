"""Tests of the embedded art corpus (curation.art, curation.art_styles) on the tiny preset."""

import dataclasses
import json
import time

import numpy as np
import pytest
from PIL import Image

from curation import art, schema
from curation.art_styles import STYLES, available_styles, fit_rgb, is_single, key_of, norm_key


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
    assert len(df) == 24 * len(available_styles())
    assert (df["item_id"] == df["artist"] + "/" + df["concept_key"]).all()


def test_every_artist_has_the_same_unique_concepts(corpus):
    _, df = corpus
    assert set(df["artist"]) == set(available_styles())
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
    for artist in available_styles():
        assert f"## {artist}" in text and STYLES[artist].licence in text
    if "openmoji" in available_styles():
        assert "Share-alike" in text and "CC-BY-SA-4.0" in text
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["max_concepts"] == 24 and cfg["styles"] == available_styles()


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
