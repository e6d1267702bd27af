"""Fuzz of the page-level opt-out parsers (`curation.acquire.signals`): X-Robots-Tag, meta directives, TDMRep.

Properties: no exception on any text; signals are sorted, unique and drawn from the AI directives; a header or
meta directive written in plain form always gives its signal; tdmrep.json of any shape gives a list of rules and
every URL path a yes/no answer within the deadline (a hostile `location` must not hang the crawler).
"""

from __future__ import annotations

import json

from _fuzz import fuzz, mutated_text
from hypothesis import given, strategies as st

from curation.acquire.signals import (
    AI_DIRECTIVES,
    directive_signals,
    page_signals,
    parse_tdmrep,
    tdmrep_reserved,
    x_robots_directives,
)

UA = "mithridate"
DIRECTIVES = AI_DIRECTIVES + ("nofollow", "none", "all", "noarchive", "max-image-preview:large",
                              "unavailable_after: 25 Jun 2010 15:00:00 PST", "NOAI", " noimageai ", "")
scopes = st.sampled_from(("", "mithridate: ", "MITHRIDATE:", "otherbot: ", "googlebot:", "max-snippet:", ":", "a b:",
                          "unavailable_after:"))
header_values = st.one_of(
    st.builds(lambda s, ds, sep: s + sep.join(ds), scopes, st.lists(st.sampled_from(DIRECTIVES), max_size=5),
              st.sampled_from((", ", ",", " ,", ",,", ";"))),
    st.text(max_size=80))


@fuzz(examples=120, deadline_ms=500)
@given(st.lists(header_values, max_size=6), st.sampled_from((UA, "MITHRIDATE", "", "otherbot")))
def test_x_robots_tag_any_values(values, ua):
    got = x_robots_directives(values, ua)
    assert all(isinstance(d, str) and d and d == d.strip() and d == d.lower() for d in got)
    sig = directive_signals(got, "x-robots-tag")
    assert sig == sorted(set(sig)) and all(s.split(":", 1)[1] in AI_DIRECTIVES for s in sig)


@fuzz(examples=60, deadline_ms=500)
@given(st.lists(st.sampled_from(AI_DIRECTIVES), min_size=1, max_size=4), st.sampled_from(("", "mithridate: ")))
def test_x_robots_tag_plain_directives_are_found(directives, scope):
    got = x_robots_directives([scope + ", ".join(directives)], UA)
    assert set(directives) <= got


headers = st.lists(st.tuples(st.sampled_from(("X-Robots-Tag", "x-robots-tag", "TDM-Reservation", "tdm-reservation",
                                              "Content-Type", "")), st.one_of(header_values, st.sampled_from(
                                                  ("1", " 1 ", "0", "true", "")))), max_size=6)


@fuzz(examples=120, deadline_ms=500)
@given(st.sets(st.one_of(st.sampled_from(DIRECTIVES), st.text(max_size=12))), st.booleans(), headers)
def test_page_signals_any_input(robots, tdm_meta, hdrs):
    sig = page_signals(robots, tdm_meta, hdrs, UA)
    assert sig == sorted(set(sig))
    assert ("tdmrep:meta" in sig) == tdm_meta
    assert ("tdmrep:header" in sig) == any(k.lower() == "tdm-reservation" and v.strip() == "1" for k, v in hdrs)
    assert {f"meta:{d}" for d in robots if d in AI_DIRECTIVES} <= set(sig)


# --- TDMRep ---------------------------------------------------------------------------------------------------------

LOCATIONS = ("/", "/*", "*", "/art/*", "art/*.png", "/a?c", "/[abc]*", "/[!a]*", "[", "[" * 3000, "]" * 50,
             "*a" * 2000 + "b", "/\u00e9t\u00e9/*", "/%2F*", "", "/exact.png", "\x00", "/" * 5000)
rule = st.fixed_dictionaries({}, optional={
    "location": st.one_of(st.sampled_from(LOCATIONS), st.text(max_size=30), st.integers(), st.none(), st.floats()),
    "tdm-reservation": st.one_of(st.sampled_from((0, 1, "1", "0", 1.0, True, None)), st.text(max_size=3)),
    "tdm-policy": st.text(max_size=20)})
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
tdm_texts = st.one_of(
    st.lists(st.one_of(rule, json_values), max_size=8).map(json.dumps),
    mutated_text(['[{"location": "/img/*", "tdm-reservation": 1}]', '{"location": "/"}', "[]"],
                 st.sampled_from(("[" * 3000, "]", "{", "}", ",", '"', "\\u", "\\ud800", "1" * 5000, "NaN", "-Infinity",
                                  "\x00", "\ufeff", "null")), max_ops=4),
    st.text(max_size=100))
paths = st.one_of(st.sampled_from(("/", "/art/a.png", "/photos/x.jpg", "/exact.png", "/[abc]x", "/" + "a" * 4000)),
                  st.text("/abc[]*?.%\u00e9", max_size=30).map(lambda p: "/" + p))


@fuzz(examples=120, deadline_ms=500)
@given(tdm_texts, st.lists(paths, min_size=1, max_size=4))
def test_tdmrep_any_text(text, url_paths):
    rules = parse_tdmrep(text)
    assert isinstance(rules, list) and all(isinstance(r, dict) for r in rules)
    for path in url_paths:
        assert isinstance(tdmrep_reserved(rules, "http://site.test" + path), bool)


@fuzz(examples=60, deadline_ms=500)
@given(st.text("abc.", min_size=1, max_size=20), st.sampled_from((0, 1, "1")))
def test_tdmrep_star_location_covers_its_folder(folder, reservation):
    rules = [{"location": f"/{folder}/*", "tdm-reservation": reservation}]
    assert tdmrep_reserved(rules, f"http://site.test/{folder}/x.png") is (str(reservation) == "1")
    assert tdmrep_reserved(rules, f"http://site.test/{folder}x/y.png") is False
