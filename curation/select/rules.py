"""Basic filters: pure functions over columns that give each row an exclusion reason, or None to keep it.

Every function takes plain sequences (lists, numpy arrays, pandas Series) and returns a numpy object array
of the same length holding a reason code or None. Nothing here reads files or changes its input; the
`filter` stage combines the arrays (`combine_reasons`) into DECISIONS_SCHEMA's `exclusion_reason` (first
reason in filter order) and `reasons` (every reason that applies).

Reason codes:

    caption_empty       no alt text, or one with no letter or digit
    caption_filename    a file name (`IMG_0042.PNG`, `1f404.png`, `image.png`, `DSC01234`), a URL, a bare
                        hash or number, or a CMS placeholder (`image`, `untitled`) instead of a description
    caption_spam        SEO spam: 3+ distinct commercial keywords (`COMMERCIAL_WORDS`, years) making up half
                        the words of a 4+ word caption; or a quarter of a 6+ word caption, one of them
                        repeated 3+ times; one word repeated 4+ times and making up 40% of a 5+ word
                        caption; all-caps shouting (3+ words with a commercial keyword, or 6+ words)
    caption_too_short   fewer than `min_words` words or `min_chars` characters
    caption_too_long    more than `max_words` words or `max_chars` characters
    image_too_small     original min(width, height) < `min_side`
    bad_aspect_ratio    original max(w, h) / min(w, h) > `max_aspect`
    low_clip_score      CLIP image-text similarity under the threshold or outside the top fraction
    no_clip_score       no CLIP score (NaN): never silently kept, never silently dropped

`BasicRules()` are mithridate's defaults (lenient on length: the demo web's good captions are often one or two
words, like "cow" or "cow icon"); `DATACOMP_BASIC` is DataComp's basic filter (caption > 2 words and > 5
characters, min side ≥ 200, aspect ≤ 3), less its fastText English check.
"""

from __future__ import annotations

import numbers
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

CAPTION_EMPTY = "caption_empty"
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"
CAPTION_FILENAME = "caption_filename"
CAPTION_SPAM = "caption_spam"
IMAGE_TOO_SMALL = "image_too_small"
BAD_ASPECT_RATIO = "bad_aspect_ratio"
LOW_CLIP_SCORE = "low_clip_score"
NO_CLIP_SCORE = "no_clip_score"
REASONS = (CAPTION_EMPTY, CAPTION_FILENAME, CAPTION_SPAM, CAPTION_TOO_SHORT, CAPTION_TOO_LONG, IMAGE_TOO_SMALL,
           BAD_ASPECT_RATIO, LOW_CLIP_SCORE, NO_CLIP_SCORE)


@dataclass(frozen=True)
class BasicRules:
    """Thresholds of the basic filters (None: no limit). A `filter` stage config can copy these fields."""

    min_words: int = 1
    min_chars: int = 2  # "ox" is a fine caption
    max_words: int | None = None
    max_chars: int | None = None
    junk: bool = True  # flag file names, URLs, placeholders and SEO spam
    min_side: int = 32
    max_aspect: float = 3.0

    def __post_init__(self):
        for name in ("min_words", "min_chars", "min_side"):
            if getattr(self, name) < 0:
                raise ValueError(f"BasicRules.{name}={getattr(self, name)!r}: must be >= 0")
        for name in ("max_words", "max_chars"):
            v = getattr(self, name)
            if v is not None and v < max(1, getattr(self, name.replace("max", "min"))):
                raise ValueError(f"BasicRules.{name}={v!r}: must be >= 1 and >= {name.replace('max', 'min')}")
        if not self.max_aspect >= 1:
            raise ValueError(f"BasicRules.max_aspect={self.max_aspect!r}: must be >= 1")


DATACOMP_BASIC = BasicRules(min_words=3, min_chars=6, junk=False, min_side=200, max_aspect=3.0)

# --- junk captions -------------------------------------------------------------------------------------------

_EXT = r"(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|svg|heic|heif|avif|ico)"
_FILE = re.compile(rf"^\S*\.{_EXT}(?:\?\S*)?$", re.IGNORECASE)  # one token ending in an image extension
_FILE_WORDS = re.compile(rf"\.{_EXT}$", re.IGNORECASE)  # "IMG 0042.jpg", "my photo.png": a short name
_SEP = r"[\d_\-. :()]"
# camera and app names: IMG_0042, DSC01234, PXL_20230101_123456, Screenshot 2023-01-01 at 10.00.00
_CAMERA = re.compile(
    rf"^(?:img|dsc[nf]?|dcim|pxl|mvimg|vid|gopr|sam|wp|p|pic|photo|image|scan|screen ?shot|untitled|"
    rf"whatsapp image|fb_img|dji)[\s_\-]*\d{_SEP}*(?:\s*(?:at|[ap]m)\b{_SEP}*)*(?:\.{_EXT})?$", re.IGNORECASE)
_URL = re.compile(r"^(?:(?:https?|ftp)://|www\.)\S+$", re.IGNORECASE)
_HEXLIKE = re.compile(r"^(?=\S*\d)[0-9a-f_\-]{5,}$", re.IGNORECASE)  # 1f404, 12345, uuid, hash
_PLACEHOLDERS = frozenset(
    "image img photo picture pic untitled placeholder thumbnail thumb default null undefined none alt "
    "no image no-image image not found spacer blank".split() + ["no image", "image not found"])

COMMERCIAL_WORDS = frozenset(
    """best cheap cheapest free download downloads hd uhd fullhd 4k 8k 1080p wallpaper wallpapers top rated buy
    now discount discounts casino bonus crypto bitcoin nft click here viral trending sale sales deal deals coupon
    coupons promo promotion official store shop shopping amazing offer offers price prices order online win
    winner limited exclusive shipping cashback loan loans bet betting jackpot earn subscribe""".split())
_YEAR = re.compile(r"^(?:19|20)\d\d$")
_WORD = re.compile(r"[\w']+", re.UNICODE)
_STOP = frozenset("a an the of and or in on at to for with by is are this that it as from".split())


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_empty(text: str | None) -> bool:
    """No text, or text without a single letter or digit."""
    return text is None or not any(ch.isalnum() for ch in str(text))


def is_filename(text: str | None) -> bool:
    """A file name, camera name, URL, bare hash/number or CMS placeholder used as a caption."""
    if is_empty(text):
        return False
    t = " ".join(str(text).split())
    low = t.lower().strip(" .")
    if _FILE.match(t) or _URL.match(t) or _CAMERA.match(t) or low in _PLACEHOLDERS:
        return True
    if " " not in t and _HEXLIKE.match(t):
        return True
    return bool(_FILE_WORDS.search(t)) and len(t.split()) <= 3


def is_spam(text: str | None) -> bool:
    """SEO spam by keyword density, repetition or all-caps shouting (see the module docstring)."""
    if is_empty(text):
        return False
    words = _words(str(text))
    if not words:
        return False
    commercial = [w for w in words if w in COMMERCIAL_WORDS or _YEAR.match(w)]
    n = len(words)
    if n >= 4 and len(commercial) >= 0.5 * n and len(set(commercial)) >= 3:
        return True
    if n >= 6 and len(commercial) >= 0.25 * n and Counter(commercial).most_common(1)[0][1] >= 3:
        return True
    top = Counter(w for w in words if w not in _STOP).most_common(1)
    if n >= 5 and top and top[0][1] >= 4 and top[0][1] >= 0.4 * n:
        return True
    cased = [w for w in str(text).split() if sum(ch.isalpha() for ch in w) >= 2]
    shouting = len(cased) >= 3 and all(w.upper() == w for w in cased)
    return shouting and (bool(commercial) or len(cased) >= 6)


def _missing(v) -> bool:
    """None, NaN, pandas NA/NaT."""
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")


def _texts(texts: Sequence) -> list:
    return [None if _missing(t) else str(t) for t in texts]


def _floats(values: Sequence) -> np.ndarray:
    """float64 array; None, NaN and pandas NA become NaN."""
    return np.array([np.nan if _missing(v) else float(v) for v in values], dtype=np.float64)


def caption_junk_reasons(texts: Sequence) -> np.ndarray:
    """Per row: caption_empty, caption_filename, caption_spam (first that applies) or None."""
    out = np.full(len(texts), None, dtype=object)
    for i, t in enumerate(_texts(texts)):
        if is_empty(t):
            out[i] = CAPTION_EMPTY
        elif is_filename(t):
            out[i] = CAPTION_FILENAME
        elif is_spam(t):
            out[i] = CAPTION_SPAM
    return out


def caption_length_reasons(texts: Sequence, min_words: int = 1, min_chars: int = 2, max_words: int | None = None,
                           max_chars: int | None = None) -> np.ndarray:
    """Per row: caption_empty, caption_too_short or caption_too_long, or None.

    Words are whitespace-separated tokens (DataComp's `len(text.split())`), characters are those of the
    whitespace-normalised text. Limits are inclusive: a caption of exactly `min_words` words passes.
    """
    out = np.full(len(texts), None, dtype=object)
    for i, t in enumerate(_texts(texts)):
        if is_empty(t):
            out[i] = CAPTION_EMPTY
            continue
        t = " ".join(t.split())
        n_words, n_chars = len(t.split()), len(t)
        if n_words < min_words or n_chars < min_chars:
            out[i] = CAPTION_TOO_SHORT
        elif (max_words is not None and n_words > max_words) or (max_chars is not None and n_chars > max_chars):
            out[i] = CAPTION_TOO_LONG
    return out


# --- image size ---------------------------------------------------------------------------------------------

def _sizes(widths: Sequence, heights: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(widths) != len(heights):
        raise ValueError(f"widths ({len(widths)}) and heights ({len(heights)}) differ in length")
    w, h = _floats(widths), _floats(heights)
    known = ~(np.isnan(w) | np.isnan(h))
    return w, h, known


def image_size_reasons(widths: Sequence, heights: Sequence, min_side: int = 32) -> np.ndarray:
    """Per row: image_too_small when min(original width, height) < min_side, else None.

    Rows with an unknown size (null: a failed download) get None: pass only rows with an image.
    """
    w, h, known = _sizes(widths, heights)
    small = known & (np.fmin(w, h) < min_side)
    return np.where(small, IMAGE_TOO_SMALL, None).astype(object)


def aspect_ratio_reasons(widths: Sequence, heights: Sequence, max_aspect: float = 3.0) -> np.ndarray:
    """Per row: bad_aspect_ratio when max(w, h) / min(w, h) > max_aspect (a zero side counts as bad), else None."""
    w, h, known = _sizes(widths, heights)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.fmax(w, h) / np.fmin(w, h)
    bad = known & ((np.fmin(w, h) <= 0) | (ratio > max_aspect))
    return np.where(bad, BAD_ASPECT_RATIO, None).astype(object)


def basic_reasons(table, rules: BasicRules = BasicRules()) -> dict[str, np.ndarray]:
    """Every basic filter over a table with `text`, `original_width`, `original_height` (DataFrame or
    pyarrow Table); returns {filter name: reasons}, in filter order, ready for `combine_reasons`."""
    cols = _columns(table, ("caption", "original_width", "original_height"))
    out = {}
    if rules.junk:
        out["caption_junk"] = caption_junk_reasons(cols["caption"])
    out["caption_length"] = caption_length_reasons(cols["caption"], rules.min_words, rules.min_chars, rules.max_words,
                                                   rules.max_chars)
    out["image_size"] = image_size_reasons(cols["original_width"], cols["original_height"], rules.min_side)
    out["aspect_ratio"] = aspect_ratio_reasons(cols["original_width"], cols["original_height"], rules.max_aspect)
    return out


def _columns(table, names: Sequence[str]) -> dict[str, list]:
    have = list(table.column_names) if hasattr(table, "column_names") else list(table.columns)
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"table lacks columns {missing} (has {have})")
    if hasattr(table, "column_names"):  # pyarrow
        return {n: table[n].to_pylist() for n in names}
    return {n: table[n].tolist() for n in names}


# --- CLIP score ---------------------------------------------------------------------------------------------

class ScoreFilter(NamedTuple):
    keep: np.ndarray  # bool per row
    reasons: np.ndarray  # object per row: low_clip_score, no_clip_score or None
    threshold: float  # the cut applied (scores >= threshold pass); NaN when no row has a score


def clip_score_filter(scores: Sequence, threshold: float | None = None,
                      top_fraction: float | None = None) -> ScoreFilter:
    """Keep rows whose CLIP score is >= `threshold`, or in the top `top_fraction` of the scored rows.

    Give exactly one of the two. With `top_fraction` the cut is the ⌈fraction·n⌉-th highest of the n non-NaN
    scores passed in (pass the whole pool, as DataComp does); rows tied with the cut pass too. A NaN or null
    score gets `no_clip_score` and is not kept.
    """
    if (threshold is None) == (top_fraction is None):
        got = "both" if threshold is not None else "neither"
        raise ValueError(f"clip_score_filter: give exactly one of threshold or top_fraction (got {got})")
    s = _floats(scores)
    scored = ~np.isnan(s)
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not np.isfinite(threshold):
            raise ValueError(f"clip_score_filter: threshold={threshold!r} must be a finite number")
        cut = float(threshold)
    else:
        if isinstance(top_fraction, bool) or not (isinstance(top_fraction, numbers.Real) and 0 < top_fraction <= 1):
            raise ValueError(f"clip_score_filter: top_fraction={top_fraction!r} must be within (0, 1]")
        valid = np.sort(s[scored])[::-1]
        if len(valid) == 0:
            cut = float("nan")
        else:
            n_keep = max(1, int(np.ceil(top_fraction * len(valid) - 1e-9)))
            cut = float(valid[n_keep - 1])
    keep = scored & (s >= cut) if not np.isnan(cut) else np.zeros(len(s), dtype=bool)
    reasons = np.where(~scored, NO_CLIP_SCORE, np.where(keep, None, LOW_CLIP_SCORE)).astype(object)
    return ScoreFilter(keep, reasons, cut)


# --- combining ----------------------------------------------------------------------------------------------

def combine_reasons(*reason_arrays: Sequence) -> tuple[np.ndarray, list[list[str]]]:
    """(first reason per row or None, every distinct reason per row in order) from arrays given in filter order.

    The two outputs are DECISIONS_SCHEMA's `exclusion_reason` and `reasons`; `keep` is `first is None`.
    """
    if not reason_arrays:
        raise ValueError("combine_reasons: no reason arrays given")
    n = len(reason_arrays[0])
    if any(len(a) != n for a in reason_arrays):
        raise ValueError(f"combine_reasons: arrays differ in length ({[len(a) for a in reason_arrays]})")
    every: list[list[str]] = [[] for _ in range(n)]
    for arr in reason_arrays:
        for i, r in enumerate(arr):
            if r is not None and r not in every[i]:
                every[i].append(r)
    first = np.array([r[0] if r else None for r in every], dtype=object)
    return first, every
