"""curation.acquire.robots: RFC 9309 matching of robots.txt and ai.txt, status handling, the per-host cache, signals."""

import pytest

from curation.acquire import netguard, robots
from curation.acquire.robots import Fetched, HostCache, HostFile, HostRules
from curation.acquire.signals import AI_AGENTS
from curation.world.webserver import Route, SiteServer

UA = "mithridate"


def _rules(text: str, name: str = "robots") -> HostFile:
    return HostFile.from_fetched("site.test", name, Fetched(200, text))


# --- matching as RFC 9309 says ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "url", "allowed"),
    [
        ("User-agent: *\nDisallow: /*.png$\n", "http://site.test/img/a.png", False),  # * inside a path, $ anchor
        ("User-agent: *\nDisallow: /*.png$\n", "http://site.test/img/a.png.html", True),
        ("User-agent: *\nDisallow: /*.png$\n", "http://site.test/img/a.jpg", True),
        ("User-agent: *\nDisallow: /\nAllow: /img/\n", "http://site.test/img/a.png", True),  # longest match wins
        ("User-agent: *\nDisallow: /\nAllow: /img/\n", "http://site.test/page.html", False),
        ("User-agent: *\nAllow: /img/\nDisallow: /img/private/\n", "http://site.test/img/private/a.png", False),
        ("User-agent: *\nDisallow: /img/\nAllow: /img/\n", "http://site.test/img/a.png", True),  # Allow wins a tie
        ("User-agent: *\nDisallow: /images\n", "http://site.test/images/a.png", False),  # a prefix
        ("User-agent: *\nDisallow: /images\n", "http://site.test/imagesque.png", False),
        ("User-agent: *\nDisallow: /private/\n", "http://site.test/privateer.png", True),
        ("User-agent: *\nDisallow:\n", "http://site.test/a.png", True),  # an empty rule disallows nothing
        ("", "http://site.test/a.png", True),
        ("this is not\na robots file\n::::\n", "http://site.test/a.png", True),
        ("User-agent: otherbot\nDisallow: /\n", "http://site.test/a.png", True),  # no group of ours, no *
        ("User-agent: otherbot\nDisallow: /\n\nUser-agent: MITHRIDATE\nDisallow: /x/\n", "http://site.test/a", True),
        ("User-agent: otherbot\nDisallow: /\n\nUser-agent: mithridate\nDisallow: /x/\n", "http://site.test/x/a", False),
        # two groups of our agent are merged (RFC 9309 §2.2.1)
        ("User-agent: mithridate\nDisallow: /a/\n\nUser-agent: *\nDisallow: /\n\nUser-agent: mithridate\n"
         "Disallow: /b/\n", "http://site.test/b/x.png", False),
        ("User-agent: mithridate\nDisallow: /a/\n\nUser-agent: *\nDisallow: /\n\nUser-agent: mithridate\n"
         "Disallow: /b/\n", "http://site.test/c/x.png", True),  # our group, not *, applies
    ],
)
def test_rfc9309_matching_for_our_agent(text, url, allowed):
    assert _rules(text).allows(url, UA) is allowed


def test_the_cases_urllib_robotparser_gets_wrong():
    """First-match and no wildcards (urllib) would leak the PNGs and block the allowed /img/ folder."""
    f = _rules("User-agent: *\nDisallow: /*.png$\nDisallow: /\nAllow: /img/\n")
    assert not f.allows("http://h/img/a.png", UA)  # /*.png$ (7) is longer than /img/ (5)
    assert f.allows("http://h/img/a.jpg", UA)
    assert not f.allows("http://h/other.jpg", UA)


@pytest.mark.parametrize(
    ("text", "url", "disallowed"),
    [
        ("User-agent: *\nDisallow: /images\n", "http://site.test/images/a.png", True),  # a prefix, not a whole path
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.png", True),
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.jpg", False),
        ("User-agent: *\nDisallow: *.png\n", "http://site.test/img/cat.png?v=2", True),
        ("User-agent: *\nDisallow: /\nAllow: /public/\n", "http://site.test/public/sub/a.png", False),
        ("User-agent: *\nAllow: /art/*\nDisallow: /art/private/*\n", "http://site.test/art/private/a.png", True),
        ("User-agent: *\nDisallow: /a/*.png\nAllow: /a/*.png\n", "http://site.test/a/x.png", False),  # tie: Allow
        ("User-agent: otherbot\nDisallow: /\n", "http://site.test/a.png", False),
        ("", "http://site.test/a.png", False),
    ],
)
def test_ai_txt_through_the_same_engine(text, url, disallowed):
    rules = HostRules("site.test", HostFile("site.test", "robots", "unavailable"), _rules(text, "ai.txt"))
    assert ("ai.txt@site.test" in rules.signals(url)) is disallowed


# --- status codes --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fetched", "state", "allowed"),
    [
        (Fetched(200, "User-agent: *\nDisallow: /\n"), "rules", False),
        (Fetched(404), "unavailable", True),  # 4xx: everything is allowed (RFC 9309 §2.3.1.3)
        (Fetched(403), "unavailable", True),
        (Fetched(302, error="redirect_loop"), "unavailable", True),  # more redirects than followed (§2.3.1.2)
        (Fetched(503), "unreachable", False),  # 5xx: complete disallow (§2.3.1.4)
        (Fetched(500), "unreachable", False),
        (Fetched(0, error="timeout"), "unreachable", False),
        (Fetched(0, error="connection_error"), "unreachable", False),
        (Fetched(0, error="refused_address"), "refused", False),
    ],
)
def test_status_codes(fetched, state, allowed):
    f = HostFile.from_fetched("h", "robots", fetched)
    assert f.state == state
    assert f.allows("http://h/a.png", UA) is allowed and f.allows("http://h/", "GPTBot") is allowed


def _host(robots_text=None, robots_status=200, ai_text=None, tdm=()):
    r = Fetched(robots_status, robots_text or "") if robots_text is not None or robots_status != 200 else Fetched(404)
    ai = Fetched(200, ai_text) if ai_text is not None else Fetched(404)
    return HostRules("cdn.test:81", HostFile.from_fetched("cdn.test:81", "robots", r),
                     HostFile.from_fetched("cdn.test:81", "ai.txt", ai), list(tdm))


def test_signals_name_the_agent_and_the_host_whose_file_decided():
    h = _host("User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /*.png$\n")
    assert h.signals("http://cdn.test:81/a.png") == ["robots:CCBot@cdn.test:81", "robots:GPTBot@cdn.test:81"]
    assert h.signals("http://cdn.test:81/a.jpg") == ["robots:GPTBot@cdn.test:81"]
    everyone = _host("User-agent: *\nDisallow: /\n").signals("http://cdn.test:81/a.png")
    assert everyone == sorted(f"robots:{a}@cdn.test:81" for a in (*AI_AGENTS, UA))
    assert _host().signals("http://cdn.test:81/a.png") == []


def test_an_unreachable_file_is_one_signal_and_a_refused_host_none():
    assert _host(robots_status=503).signals("http://cdn.test:81/a.png") == ["robots:unreachable@cdn.test:81"]
    both = _host(robots_status=503, ai_text=None)
    assert both.may_crawl("http://cdn.test:81/") is False
    refused = HostRules("h", HostFile.from_fetched("h", "robots", Fetched(0, error="refused_address")),
                        HostFile("h", "ai.txt", "unavailable"))
    assert refused.signals("http://h/a.png") == [] and refused.may_crawl("http://h/") is False


def test_tdmrep_of_the_host():
    h = _host(tdm=[{"location": "/img/*", "tdm-reservation": 1}])
    assert h.signals("http://cdn.test:81/img/a.png") == ["tdmrep:well-known@cdn.test:81"]
    assert h.signals("http://cdn.test:81/a.png") == []


# --- the cache -----------------------------------------------------------------------------------------------------------


class _Counting:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, url):
        self.calls.append(url)
        return self.answers.get(url.split("/", 3)[3], Fetched(404))


def test_cache_fetches_each_host_once_and_again_after_the_ttl():
    now = [0.0]
    fetch = _Counting({"robots.txt": Fetched(200, "User-agent: *\nDisallow: /x/\n")})
    cache = HostCache(fetch, ttl_s=100, clock=lambda: now[0])
    for path in ("a", "b", "x/c"):
        cache.get(f"http://A.test/{path}")
    cache.get("http://b.test/a")
    assert len(fetch.calls) == 6  # robots.txt, ai.txt, tdmrep.json of two hosts (host names are case-insensitive)
    now[0] = 99
    cache.get("http://a.test/")
    assert len(fetch.calls) == 6
    now[0] = 101
    cache.get("http://a.test/")
    assert len(fetch.calls) == 9
    assert [r["host"] for r in cache.records()] == ["a.test", "b.test"]
    assert cache.records()[0]["robots"] == "rules"


def test_fetcher_over_loopback_reads_status_and_caps_the_parsed_bytes():
    big = b"User-agent: *\nDisallow: /a/\n" + b"# padding\n" * 100_000 + b"User-agent: *\nDisallow: /\n"
    srv = SiteServer("127.0.0.1")
    srv.routes.update({"/robots.txt": Route(big, "text/plain"), "/ai.txt": Route(b"oops", status=503)})
    srv.start()
    try:
        policy = netguard.AddressPolicy(netguard.parse_networks(("127.0.0.0/8",)))
        opener = netguard.build_opener(policy, netguard.user_agent("http://x"), 10_000_000)
        host = HostCache(robots.fetcher(opener, 2.0, max_bytes=64 * 1024)).get(srv.origin + "/")
        assert host.robots.state == "rules" and host.ai_txt.state == "unreachable"
        assert host.may_crawl(srv.origin + "/b.png")  # the final Disallow: / lies past the parsed bytes
        assert not host.may_crawl(srv.origin + "/a/b.png")
        assert host.signals(srv.origin + "/b.png") == [f"ai.txt:unreachable@{host.host}"]
        refused = HostCache(robots.fetcher(netguard.build_opener(netguard.AddressPolicy(), "x", 1000), 2.0))
        assert refused.get(srv.origin + "/").robots.state == "refused"
    finally:
        srv.stop()
