"""curation.optout: X-Robots-Tag, robots.txt, TDMRep and ai.txt signals."""

import pytest

from curation.optout import (
    AI_AGENTS,
    ai_txt_disallows,
    directive_signals,
    parse_ai_txt,
    parse_robots,
    parse_tdmrep,
    robots_ai_signals,
    tdmrep_reserved,
    x_robots_directives,
)

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


# --- robots.txt ---------------------------------------------------------------------------------------------------------

URL = "http://site.test/img/cat.png"


@pytest.mark.parametrize(
    ("robots", "expected"),
    [
        ("User-agent: GPTBot\nDisallow: /\n", ["robots:GPTBot"]),
        ("User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /img/\n", ["robots:GPTBot", "robots:CCBot"]),
        ("User-agent: CCBot\nDisallow: /private/\n", []),  # another path
        ("User-agent: *\nDisallow: /\n", [f"robots:{a}" for a in AI_AGENTS]),
        ("User-agent: *\nDisallow: /img/\n", [f"robots:{a}" for a in AI_AGENTS]),
        ("User-agent: *\nAllow: /\n", []),
        ("User-agent: GPTBot\nAllow: /\n\nUser-agent: *\nDisallow: /\n",
         [f"robots:{a}" for a in AI_AGENTS if a != "GPTBot"]),
        ("User-agent: gptbot\nDisallow: /\n", ["robots:GPTBot"]),  # agent names are case-insensitive
        ("", []),
        ("this is not\na robots file\n::::\n", []),
    ],
)
def test_robots_ai_signals(robots, expected):
    assert robots_ai_signals(parse_robots(robots), URL) == expected


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://site.test/private/a.png", False),
        ("http://site.test/private/", False),
        ("http://site.test/public/a.png", True),
        ("http://site.test/privateer.png", True),
        ("http://site.test/", True),
    ],
)
def test_can_fetch_for_our_agent(url, allowed):
    rp = parse_robots("User-agent: otherbot\nDisallow: /\n\nUser-agent: mithridate\nDisallow: /private/\n")
    assert rp.can_fetch(UA, url) is allowed
    assert rp.can_fetch("otherbot", url) is False


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


# --- ai.txt -------------------------------------------------------------------------------------------------------------


def test_parse_ai_txt_keeps_rules_for_star_only():
    text = """# ai.txt
User-Agent: otherbot
Disallow: /

User-Agent: *
Disallow: *.png   # no PNGs
Allow: /public/
Disallow:
Sitemap: /sitemap.xml

User-agent: anotherbot
Allow: /
"""
    assert parse_ai_txt(text) == [(False, "*.png"), (True, "/public/")]


def test_parse_ai_txt_group_of_several_agents_including_star():
    text = "User-agent: otherbot\nUser-agent: *\nDisallow: /a/\n\nUser-agent: *\nUser-agent: thirdbot\nDisallow: /b/\n"
    assert parse_ai_txt(text) == [(False, "/a/"), (False, "/b/")]


@pytest.mark.parametrize(
    ("text", "url", "disallowed"),
    [
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.png", True),
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.jpg", False),
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.png?v=2", True),  # the query is ignored
        ("User-agent: *\nDisallow: /\n", "http://site.test/anything/at/all.jpg", True),
        ("User-agent: *\nDisallow: /\n", "http://site.test", True),
        ("User-agent: *\nDisallow: /\nAllow: /public/*\n", "http://site.test/public/a.png", False),
        ("User-agent: *\nDisallow: /\nAllow: /public/*\n", "http://site.test/private/a.png", True),
        ("User-agent: *\nDisallow: /\nAllow: /public/\n", "http://site.test/public/sub/a.png", False),  # prefix
        ("User-agent: *\nAllow: /art/*\nDisallow: /art/private/*\n", "http://site.test/art/private/a.png", True),
        ("User-agent: *\nAllow: /art/*\nDisallow: /art/private/*\n", "http://site.test/art/a.png", False),
        ("User-agent: *\nDisallow: images/*\n", "http://site.test/images/a.png", True),  # no leading slash
        ("User-agent: otherbot\nDisallow: /\n", "http://site.test/a.png", False),  # other agents ignored
        ("User-agent: otherbot\nDisallow: /\nUser-agent: *\nAllow: /\n", "http://site.test/a.png", False),
        ("", "http://site.test/a.png", False),
    ],
)
def test_ai_txt_disallows(text, url, disallowed):
    assert ai_txt_disallows(parse_ai_txt(text), url) is disallowed


def test_valued_directives_are_not_mistaken_for_a_user_agent():
    from curation.optout import x_robots_directives

    got = x_robots_directives(["unavailable_after: 25 Jun 2030 15:00:00 PST", "max-image-preview: none, noai"], "x")
    assert "noai" in got


def test_ai_txt_allow_wins_a_tie():
    from curation.optout import ai_txt_disallows, parse_ai_txt

    rules = parse_ai_txt("User-Agent: *\nDisallow: /a/*.png\nAllow: /a/*.png\n")
    assert ai_txt_disallows(rules, "http://h/a/x.png") is False
