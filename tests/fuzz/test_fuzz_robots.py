"""Fuzz of the robots.txt / ai.txt engine (`curation.acquire.robots`) and its per-host cache.

Properties: any text parses and answers every URL and agent; a robots.txt that answered 5xx or nothing disallows
everything, a 4xx (or an unfollowed redirect) allows everything (RFC 9309 §2.3.1); a 2xx file answers as a small
reference matcher of RFC 9309 does (longest match wins, Allow wins a tie, `*` and `$`); every signal names the host
whose file decided; the cache fetches each host's three files once, whatever they hold.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

from _fuzz import fuzz
from hypothesis import given, strategies as st

from curation.acquire.alttext import http_url
from curation.acquire.robots import FILES, Fetched, HostCache, HostFile, HostRules, origin, parse
from curation.acquire.signals import AI_AGENTS

AGENTS = (*AI_AGENTS, "mithridate", "Mithridate/1.0 (+https://x)", "*", "", "bot", "Googlebot")
KEYS = ("User-agent", "user-agent", "USER-AGENT", "Useragent", "Allow", "allow", "Disallow", "DISALLOW", "Crawl-delay",
        "Request-rate", "Visit-time", "Sitemap", "Host", "Clean-param", "Noindex", "", "#", "Disallow ")
PATH_PIECES = ("/", "*", "$", "?", "=", "&", "a", "img", ".png", "%2F", "%2f", "%zz", "%", "%E9", "\u00e9", "%00",
               "\x00", "..", "//", "#frag", " ", "\t", "index.html", "\ufeff", "%24", "\U0001f600", "x" * 3000)
values = st.one_of(st.sampled_from(AGENTS), st.lists(st.sampled_from(PATH_PIECES), max_size=8).map("".join),
                   st.sampled_from(("1", "-1", "nan", "1e999", "1/0", "0/0s", "1/10s 0100-2500", "2500-0000",
                                    "http://h.example/sitemap.xml")), st.text(max_size=30))
lines = st.builds(lambda k, sep, v, c: f"{k}{sep}{v}{c}", st.sampled_from(KEYS),
                  st.sampled_from((":", ": ", " : ", "")), values,
                  st.sampled_from(("", " # comment", "#", " #: Disallow: /")))
robots_texts = st.one_of(
    st.builds(lambda bom, ls, eol: bom + eol.join(ls), st.sampled_from(("", "\ufeff", "\x00")),
              st.lists(st.one_of(lines, st.text(max_size=40)), max_size=25), st.sampled_from(("\n", "\r\n", "\r"))),
    st.text(max_size=300),
    st.just("User-agent: *\n" + "Disallow: /" + "a*" * 5000 + "\n"),
    st.just("User-agent: *\nDisallow: " + "/x" * 100_000 + "\n"))
ORIGINS = ("http://h.example", "https://h.example:8443", "http://[::1]:8080", "http://127.0.0.1",
           "http://xn--d1a.example")
urls = st.builds(lambda o, ps: http_url(o + "/" + "".join(ps), o + "/"), st.sampled_from(ORIGINS),
                 st.lists(st.sampled_from(PATH_PIECES), max_size=8)).filter(lambda u: u is not None)


@fuzz(examples=120, deadline_ms=500)
@given(robots_texts, st.lists(urls, min_size=1, max_size=4), st.lists(st.sampled_from(AGENTS), min_size=1, max_size=3))
def test_robots_any_text_answers_every_url(text, url_list, agents):
    rules = parse(text)
    for url in url_list:
        for agent in agents:
            assert isinstance(rules.can_fetch(url, agent), bool)
    for agent in agents:
        rules.crawl_delay(agent), rules.request_rate(agent), rules.visit_time(agent)  # noqa: B018 - must not raise


statuses = st.one_of(st.integers(0, 999), st.sampled_from((0, 200, 204, 301, 308, 401, 403, 404, 429, 500, 503, 599)))


@fuzz(examples=120, deadline_ms=500)
@given(statuses, robots_texts, st.sampled_from(("", "timeout", "connection_error", "redirect_loop")),
       st.lists(urls, min_size=1, max_size=4), st.sampled_from(("robots", "ai.txt")))
def test_host_file_states(status, text, error, url_list, name):
    f = HostFile.from_fetched("h.example", name, Fetched(status, text, error))
    assert f.state in ("rules", "unavailable", "unreachable")
    for url in url_list:
        for agent in AGENTS:
            allowed = f.allows(url, agent)
            if status == 0 or 500 <= status < 600:  # unreachable: complete disallow (§2.3.1.4)
                assert allowed is False
            elif 400 <= status < 500:  # unavailable: no rules (§2.3.1.3)
                assert allowed is True
            elif 200 <= status < 300:
                assert allowed == parse(text).can_fetch(url, agent)


@fuzz(examples=60, deadline_ms=500)
@given(st.lists(lines, max_size=12), st.lists(urls, min_size=1, max_size=3),
       st.sampled_from(("\ufeff", "\ufeff\ufeff")))
def test_robots_bom_changes_nothing(file_lines, url_list, bom):
    text = "\n".join(file_lines)
    plain, with_bom = parse(text), parse(bom + text)
    for url in url_list:
        for agent in AGENTS:
            assert plain.can_fetch(url, agent) == with_bom.can_fetch(url, agent)


# --- a reference matcher of RFC 9309 on simple files ----------------------------------------------------------------

simple_patterns = st.builds(lambda p, anchor: "/" + p + anchor, st.text("ab*", max_size=5), st.sampled_from(("", "$")))
simple_rules = st.lists(st.tuples(st.booleans(), simple_patterns), max_size=6)


def _reference_allows(rules: list[tuple[bool, str]], path: str) -> bool:
    """RFC 9309 §2.2.2: the longest matching pattern wins, Allow wins a tie; no match allows."""
    best = None
    for allow, pattern in rules:
        body, anchor = (pattern[:-1], r"\Z") if pattern.endswith("$") else (pattern, "")
        if re.match(".*".join(re.escape(p) for p in body.split("*")) + anchor, path):
            if best is None or len(pattern) > best[0] or (len(pattern) == best[0] and allow):
                best = (len(pattern), allow)
    return best is None or best[1]


@fuzz(examples=120, deadline_ms=500)
@given(simple_rules, simple_rules.filter(bool),
       st.lists(st.text("ab", max_size=6).map(lambda p: "/" + p), min_size=1, max_size=5), st.booleans())
def test_robots_matches_reference(star_rules, other_rules, paths, split_group):
    """`*` rules (split into two groups of the same agent or not) against a reference; another agent's group is
    ignored by ours, and followed by that agent only (it has rules: a start line alone would join the next group)."""
    lines = ["User-agent: otherbot"] + [f"{'Allow' if a else 'Disallow'}: {p}" for a, p in other_rules]
    star = [f"{'Allow' if a else 'Disallow'}: {p}" for a, p in star_rules]
    half = len(star) // 2 if split_group else len(star)
    lines += ["", "User-agent: *"] + star[:half] + ["", "User-agent: *"] + star[half:]
    rules = parse("\n".join(lines) + "\n")
    for path in paths:
        url = "http://h.example" + path
        assert rules.can_fetch(url, "mithridate") == _reference_allows(star_rules, path), (lines, path)
        assert rules.can_fetch(url, "otherbot") == _reference_allows(other_rules, path), (lines, path)


# --- signals and the per-host cache ---------------------------------------------------------------------------------

tdm_texts = st.one_of(st.just('[{"location": "/*", "tdm-reservation": 1}]'), st.just("[" * 5000),
                      st.lists(st.fixed_dictionaries({"location": st.sampled_from(("/*", "/a*", "[", "*")),
                                                      "tdm-reservation": st.sampled_from((0, 1, "1"))}),
                               max_size=3).map(json.dumps), st.text(max_size=40))
fetched = st.builds(Fetched, statuses, robots_texts, st.sampled_from(("", "timeout", "connection_error")))
tdm_fetched = st.builds(Fetched, statuses, tdm_texts)


@fuzz(examples=120, deadline_ms=1000)
@given(st.dictionaries(st.sampled_from(ORIGINS), st.tuples(fetched, fetched, tdm_fetched), min_size=1),
       st.lists(st.tuples(st.integers(0, 10), urls), min_size=1, max_size=12))
def test_host_cache_any_files(files, visits):
    """A fake in-process fetch serving random statuses and texts per host; every URL gets its signals."""
    calls: list[str] = []

    def fetch(url: str) -> Fetched:
        calls.append(url)
        key = origin(url)
        robots_got, ai_got, tdm_got = files.get(key, (Fetched(404), Fetched(404), Fetched(404)))
        path = url[len(key):]
        return {FILES["robots"]: robots_got, FILES["ai.txt"]: ai_got, FILES["tdmrep"]: tdm_got}[path]

    cache = HostCache(fetch)
    for _, url in visits:
        site = cache.get(url)
        host = urlsplit(url).netloc.lower()
        assert site.host == host
        sig = site.signals(url)
        assert sig == sorted(set(sig)) and all(s.endswith(f"@{host}") for s in sig), sig
        robots_got = files.get(origin(url), (Fetched(404),))[0]
        if robots_got.status == 0 or 500 <= robots_got.status < 600:
            assert "robots:unreachable@" + host in sig and not site.may_crawl(url)
        if 400 <= robots_got.status < 500:
            assert site.may_crawl(url) and not any(s.startswith("robots:") for s in sig)
    hosts = {origin(u) for _, u in visits}
    assert len(calls) == 3 * len(hosts)  # each host's three files, fetched once
    assert [r["host"] for r in cache.records()] == [cache.hosts[k].host for k in sorted(hosts)]  # by origin


@fuzz(examples=60, deadline_ms=1000)
@given(fetched, fetched, st.lists(st.text(max_size=12), max_size=3), urls)
def test_host_rules_signals_name_the_host(robots_got, ai_got, tdm_rules, url):
    host = urlsplit(url).netloc
    rules = HostRules(host, HostFile.from_fetched(host, "robots", robots_got),
                      HostFile.from_fetched(host, "ai.txt", ai_got), [{"location": t, "tdm-reservation": 1}
                                                                     for t in tdm_rules])
    sig = rules.signals(url)
    assert all(s.endswith("@" + host) for s in sig)
    assert rules.record()["host"] == host
