"""Basic filters (curation.select.rules): captions, image size, aspect ratio, CLIP score, combining reasons."""

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from curation.select import rules as filters
from curation.select.rules import BasicRules
from curation.world import art, webcontent as wc


@pytest.mark.parametrize("text", ["IMG_0042.PNG", "1f404.png", "image.png", "DSC01234", "DSCN0001.JPG",
                                  "PXL_20230101_123456789", "Screenshot 2023-01-01 at 10.00.00", "IMG 0042.jpg",
                                  "https://example.com/a.jpg", "www.example.com/cat", "deadbeef0042", "12345",
                                  "untitled", "image", "my cat.webp", "photo.JPEG?w=300"])
def test_file_names_urls_and_placeholders_are_caption_filename(text):
    assert filters.caption_junk_reasons([text])[0] == "caption_filename"


@pytest.mark.parametrize("text", ["best free download hd wallpaper", "BEST FREE EMOJI DOWNLOAD",
                                  "cute cat wallpaper hd wallpaper download free wallpaper",
                                  "click here now casino bonus crypto", "cat cat cat cat kitten",
                                  "buy cheap emoji 2026 official store"])
def test_seo_spam_is_caption_spam(text):
    assert filters.caption_junk_reasons([text])[0] == "caption_spam"


@pytest.mark.parametrize("text", ["cow", "ox", "a cow", "red apple by openmoji", "cow2", "top hat", "FREE button",
                                  "shopping cart, shopping trolley", "FREE button, free, squared free",
                                  "yo-yo, yo yo", "NASA LOGO", "smiling face with smiling eyes", "photo 2 cats",
                                  "b-52", "illustration of a cat"])
def test_ordinary_captions_are_not_junk(text):
    assert filters.caption_junk_reasons([text])[0] is None


@pytest.mark.parametrize("text", ["", "   ", None, float("nan"), "—", "..."])
def test_empty_captions(text):
    assert filters.caption_junk_reasons([text])[0] == "caption_empty"
    assert filters.caption_length_reasons([text])[0] == "caption_empty"


def test_demo_web_alt_kinds_get_the_right_junk_reason(tiny_corpus, tiny_web):
    # every generator of the demo web's alt texts, many times over the tiny corpus, then the placed alts
    items = art.load(tiny_corpus).to_dict("records")
    names = sorted({i["concept"] for i in items})
    expected = {"good": None, "long": None, "mismatched": None, "filename": "caption_filename",
                "spam": "caption_spam", "empty": "caption_empty", "missing": "caption_empty"}
    gens = {"good": lambda r, i: wc.good_alt(r, i), "long": lambda r, i: wc.long_alt(r, i),
            "filename": lambda r, i: wc.filename_alt(r, i), "spam": lambda r, i: wc.spam_alt(r),
            "mismatched": lambda r, i: r.choice(names)}
    wrong = []
    for seed in range(20):
        rng = random.Random(seed)
        for item in items:
            item = {**item, "aliases": list(item["aliases"]), "keywords": list(item["keywords"])}
            for kind, gen in gens.items():
                alt = gen(rng, item)
                got = filters.caption_junk_reasons([alt])[0]
                if got != expected[kind]:
                    wrong.append((kind, alt, got))
    assert not wrong, wrong[:10]
    m = tiny_web.manifest.to_pandas()
    got = filters.caption_junk_reasons(m["alt"])
    for kind, reason in expected.items():
        assert (got[(m["alt_kind"] == kind).to_numpy()] == reason).all(), kind


def test_length_limits_are_inclusive_and_datacomp_needs_three_words():
    texts = ["cow", "ox", "a cow", "the red cow", "x", "one two three four five six"]
    got = filters.caption_length_reasons(texts, min_words=1, min_chars=2, max_words=5)
    assert list(got) == [None, None, None, None, "caption_too_short", "caption_too_long"]
    got = filters.caption_length_reasons(texts, min_words=3, min_chars=6)  # DataComp: > 2 words and > 5 chars
    assert list(got) == ["caption_too_short"] * 3 + [None, "caption_too_short", None]
    assert filters.caption_length_reasons(["a" * 301], max_chars=300)[0] == "caption_too_long"
    assert filters.caption_length_reasons(["a" * 300], max_chars=300)[0] is None


def test_image_size_and_aspect_ratio():
    w = [64, 16, 200, 600, 100, None, np.nan, 0]
    h = [64, 64, 200, 100, 300, 64, 64, 50]
    assert list(filters.image_size_reasons(w, h, min_side=32)) == [None, "image_too_small", None, None, None, None,
                                                                   None, "image_too_small"]
    assert list(filters.aspect_ratio_reasons(w, h, max_aspect=3.0)) == [None, "bad_aspect_ratio", None,
                                                                        "bad_aspect_ratio", None, None, None,
                                                                        "bad_aspect_ratio"]
    with pytest.raises(ValueError, match="length"):
        filters.image_size_reasons([1, 2], [1])


def test_basic_reasons_on_dataframe_and_arrow_and_combined():
    df = pd.DataFrame({"caption": ["a red cow", "IMG_0042.PNG", "", "cat", "free download hd wallpaper best"],
                       "original_width": [256, 256, 256, 20, 1000], "original_height": [256, 256, 256, 20, 200]})
    for table in (df, pa.Table.from_pandas(df)):
        got = filters.basic_reasons(table)
        assert list(got) == ["caption_junk", "caption_length", "image_size", "aspect_ratio"]
        first, every = filters.combine_reasons(*got.values())
        assert list(first) == [None, "caption_filename", "caption_empty", "image_too_small", "caption_spam"]
        assert every == [[], ["caption_filename"], ["caption_empty"], ["image_too_small"],
                         ["caption_spam", "bad_aspect_ratio"]]
    datacomp = filters.basic_reasons(df, filters.DATACOMP_BASIC)
    assert "caption_junk" not in datacomp
    first, _ = filters.combine_reasons(*datacomp.values())
    assert list(first) == [None, "caption_too_short", "caption_empty", "caption_too_short", "bad_aspect_ratio"]
    with pytest.raises(ValueError, match="original_height"):
        filters.basic_reasons(df.drop(columns="original_height"))


@pytest.mark.parametrize("kw,field", [({"min_words": -1}, "min_words"), ({"max_chars": 0}, "max_chars"),
                                      ({"min_words": 3, "max_words": 2}, "max_words"),
                                      ({"max_aspect": 0.5}, "max_aspect")])
def test_bad_rules_are_clear_errors(kw, field):
    with pytest.raises(ValueError, match=field):
        BasicRules(**kw)


def test_clip_score_threshold_and_nan():
    keep, reasons, cut = filters.clip_score_filter([0.31, 0.2, np.nan, None, 0.28], threshold=0.28)
    assert list(keep) == [True, False, False, False, True] and cut == 0.28
    assert list(reasons) == [None, "low_clip_score", "no_clip_score", "no_clip_score", None]


def test_clip_score_top_fraction_counts_scored_rows_and_keeps_ties():
    scores = np.array([0.1, 0.5, 0.3, np.nan, 0.4, 0.2, 0.9, 0.8, 0.7, 0.6, 0.0])  # 10 scored
    keep, reasons, cut = filters.clip_score_filter(scores, top_fraction=0.3)
    assert cut == 0.7 and keep.sum() == 3 and set(scores[keep]) == {0.9, 0.8, 0.7}
    assert reasons[3] == "no_clip_score" and (reasons[~keep & ~np.isnan(scores)] == "low_clip_score").all()
    keep, _, _ = filters.clip_score_filter([0.5, 0.5, 0.5, 0.1], top_fraction=0.25)
    assert list(keep) == [True, True, True, False]  # ties with the cut pass
    keep, _, _ = filters.clip_score_filter([0.5, 0.1, 0.3], top_fraction=1.0)
    assert keep.all()
    keep, reasons, cut = filters.clip_score_filter([np.nan, np.nan], top_fraction=0.5)
    assert not keep.any() and list(reasons) == ["no_clip_score"] * 2 and np.isnan(cut)


@pytest.mark.parametrize("kw,msg", [({}, "neither"), ({"threshold": 0.3, "top_fraction": 0.3}, "both"),
                                    ({"top_fraction": 0}, "top_fraction"), ({"top_fraction": 1.5}, "top_fraction"),
                                    ({"threshold": float("nan")}, "threshold"), ({"threshold": "0.3"}, "threshold")])
def test_clip_score_filter_arguments_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        filters.clip_score_filter([0.1, 0.2], **kw)


def test_pandas_nullable_columns():
    texts = pd.Series(["a cow", pd.NA, None], dtype="string")
    assert list(filters.caption_junk_reasons(texts)) == [None, "caption_empty", "caption_empty"]
    w, h = pd.array([64, pd.NA, 8], dtype="Int32"), pd.array([64, 64, pd.NA], dtype="Int32")
    assert list(filters.image_size_reasons(w, h)) == [None, None, None]
    keep, reasons, _ = filters.clip_score_filter(pd.array([0.3, pd.NA], dtype="Float64"), threshold=0.2)
    assert list(keep) == [True, False] and list(reasons) == [None, "no_clip_score"]


def test_combine_reasons_checks_lengths():
    with pytest.raises(ValueError, match="length"):
        filters.combine_reasons([None], [None, None])
    with pytest.raises(ValueError):
        filters.combine_reasons()
