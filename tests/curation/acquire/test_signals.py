"""curation.acquire.signals: X-Robots-Tag, meta and TDMRep signals (robots.txt and ai.txt: test_robots.py)."""

import pytest

from curation.acquire.signals import directive_signals, parse_tdmrep, tdmrep_reserved, x_robots_directives

UA = "mithridate"

# --- X-Robots-Tag ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], {"noai"}),
        (["noai, noimageai"], {"noai", "noimageai"}),
        (["NoAI , NOIMAGEAI"], {"noai", "noimageai"}),
        (["noindex", "nofollow"], {"noindex", "nofollow"}),  # several headers add up
        (["mithridate: noai"], {"noai"}),
        (["MITHRIDATE: NoImageAI, noindex"], {"noimageai", "noindex"}),
        (["Mithridate:noai"], {"noai"}),
        (["otherbot: noai"], set()),
        (["googlebot: noindex", "mithridate: noimageai"], {"noimageai"}),
        (["otherbot: noai", "noimageindex"], {"noimageindex"}),
        ([], set()),
        ([""], set()),
        ([" , ,"], set()),
    ],
)
def test_x_robots_directives(values, expected):
    assert x_robots_directives(values, UA) == expected


def test_x_robots_scope_follows_the_token():
    assert x_robots_directives(["otherbot: noai"], "OtherBot") == {"noai"}
    assert x_robots_directives(["mithridate: noai"], "OtherBot") == set()


@pytest.mark.parametrize(
    ("directives", "prefix", "expected"),
    [
        ({"noai", "noimageai", "nofollow"}, "x-robots-tag", ["x-robots-tag:noai", "x-robots-tag:noimageai"]),
        ({"noindex", "noimageindex", "noarchive"}, "meta", ["meta:noimageindex", "meta:noindex"]),
        ({"nofollow", "noarchive", "none"}, "meta", []),
        (set(), "meta", []),
    ],
)
def test_directive_signals(directives, prefix, expected):
    assert directive_signals(directives, prefix) == expected


def test_header_to_signals_end_to_end():
    values = ["otherbot: noai", "mithridate: noimageai", "nofollow"]
    assert directive_signals(x_robots_directives(values, UA), "x-robots-tag") == ["x-robots-tag:noimageai"]


# --- TDMRep -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"location": "/img/*", "tdm-reservation": 1}]', [{"location": "/img/*", "tdm-reservation": 1}]),
        ('[{"location": "/", "tdm-reservation": 0}, "junk", 3, null, {"location": "/a"}]',
         [{"location": "/", "tdm-reservation": 0}, {"location": "/a"}]),
        ("[]", []),
        ("{not json", []),
        ("", []),
        ('{"location": "/", "tdm-reservation": 1}', []),  # an object, not a list
        ('"just a string"', []),
        ("42", []),
    ],
)
def test_parse_tdmrep(text, expected):
    assert parse_tdmrep(text) == expected


TDM = [
    {"location": "/public/*", "tdm-reservation": 0},
    {"location": "/art/*", "tdm-reservation": 1, "tdm-policy": "https://site.test/policy.json"},
    {"location": "photos/*.jpg", "tdm-reservation": "1"},
    {"location": "/exact.png", "tdm-reservation": 1},
]


@pytest.mark.parametrize(
    ("url", "reserved"),
    [
        ("http://site.test/art/cow.png", True),
        ("http://site.test/art/sub/cow.png?x=1", True),
        ("http://site.test/photos/a.jpg", True),  # location without a leading slash
        ("http://site.test/photos/a.png", False),
        ("http://site.test/public/cow.png", False),  # matched, but reservation 0
        ("http://site.test/exact.png", True),
        ("http://site.test/exact.png.bak", False),
        ("http://site.test/other/cow.png", False),  # no rule matches
        ("http://site.test", False),
    ],
)
def test_tdmrep_reserved(url, reserved):
    assert tdmrep_reserved(TDM, url) is reserved


def test_tdmrep_first_matching_rule_wins():
    rules = [{"location": "/*", "tdm-reservation": 0}, {"location": "/art/*", "tdm-reservation": 1}]
    assert tdmrep_reserved(rules, "http://site.test/art/a.png") is False
    assert tdmrep_reserved(list(reversed(rules)), "http://site.test/art/a.png") is True
    assert tdmrep_reserved([{"tdm-reservation": 1}], "http://site.test/art/a.png") is False  # no location


def test_valued_directives_are_not_mistaken_for_a_user_agent():
    from curation.acquire.signals import x_robots_directives

    got = x_robots_directives(["unavailable_after: 25 Jun 2030 15:00:00 PST", "max-image-preview: none, noai"], "x")
    assert "noai" in got
