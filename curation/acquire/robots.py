"""One robots engine for robots.txt and ai.txt (RFC 9309, through protego), and a per-host cache of both.

RFC 9309 as applied here, to pages (our own agent) and to every image URL (our agent and the AI crawlers of
`AI_AGENTS`), always with the files of the host that serves the URL:
- the longest matching rule wins, `Allow` wins a tie, `*` matches any characters and `$` ends a pattern;
  groups of the same user agent are merged; an agent with no group of its own follows `*` (protego);
- 2xx: the rules apply (the first `MAX_BYTES` of the file are parsed, §2.5); "unavailable" (4xx, or more
  redirects than the opener follows): no rules, everything is allowed (§2.3.1.2, §2.3.1.3); "unreachable"
  (5xx, a timeout, a refused or unreachable host): complete disallow (§2.3.1.4);
- a host's files are fetched once and kept for `ttl_s` (24 h by default, §2.4).
ai.txt (Spawning) has no spec of its own for these cases: it is read by the same engine with the same
semantics, for our agent (a group for `mithridate`, else `*`).

Signals name the file's host: `robots:<agent>@<host>` (that agent is disallowed), `robots:unreachable@<host>`
(the file answered 5xx or could not be fetched), `ai.txt@<host>`, `ai.txt:unreachable@<host>`,
`tdmrep:well-known@<host>`.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from protego import Protego

from curation.acquire import netguard, signals

MAX_BYTES = 512 * 1024  # RFC 9309 §2.5: parse at least 500 KiB
TTL_S = 24 * 3600.0  # RFC 9309 §2.4: a cached file is used for at most 24 hours
FILES = {"robots": "/robots.txt", "ai.txt": "/ai.txt", "tdmrep": "/.well-known/tdmrep.json"}


def parse(text: str) -> Protego:
    """Rules of a robots.txt or ai.txt text; lines that are not rules are ignored, as RFC 9309 says."""
    return Protego.parse(text.lstrip("\ufeff"))  # a BOM left on "User-agent" would drop its group: allow-all


@dataclass(frozen=True)
class Fetched:
    """One file as fetched: its HTTP status (0 when no response came) and its text, or why it failed."""

    status: int
    text: str = ""
    error: str = ""


Fetcher = Callable[[str], Fetched]


@dataclass(frozen=True)
class HostFile:
    """What one host's robots.txt or ai.txt says: `rules` (2xx), `unavailable` (4xx, too many redirects: allow
    all) or `unreachable` (5xx or no response: disallow all), in RFC 9309's words."""

    host: str
    name: str  # robots or ai.txt
    state: str  # rules | unavailable | unreachable | refused (our address policy forbids the host)
    detail: str = ""  # http_200, http_404, http_503, redirect_loop, timeout, connection_error, …
    rules: Protego | None = None

    @classmethod
    def from_fetched(cls, host: str, name: str, got: Fetched) -> "HostFile":
        if 200 <= got.status < 300:
            return cls(host, name, "rules", f"http_{got.status}", parse(got.text))
        if 300 <= got.status < 500:  # a 3xx here is a redirect the opener did not follow (a loop, too many hops)
            return cls(host, name, "unavailable", got.error or f"http_{got.status}")
        if got.error == "refused_address":  # not contacted: nothing else of this host will be either
            return cls(host, name, "refused", got.error)
        return cls(host, name, "unreachable", f"http_{got.status}" if got.status else (got.error or "unreachable"))

    def allows(self, url: str, agent: str) -> bool:
        """Whether `agent` may fetch `url` under this file."""
        if self.state in ("unreachable", "refused"):
            return False
        return self.state == "unavailable" or self.rules.can_fetch(url, agent)


@dataclass(frozen=True)
class HostRules:
    """Everything one host says about crawling and AI training, fetched once per host."""

    host: str
    robots: HostFile
    ai_txt: HostFile
    tdm_rules: list = field(default_factory=list)
    fetched_at: float = 0.0

    def may_crawl(self, url: str, agent: str = netguard.USER_AGENT_TOKEN) -> bool:
        """Whether our crawler may fetch `url` (robots.txt only: ai.txt speaks about training, not crawling)."""
        return self.robots.allows(url, agent)

    def signals(self, url: str, agent: str = netguard.USER_AGENT_TOKEN) -> list[str]:
        """Opt-out signals of `url` from this host's files, each naming the host whose file decided."""
        at = f"@{self.host}"
        if self.robots.state == "refused":  # the image will not be fetched either: its row fails as refused
            return []
        if self.robots.state == "unreachable":
            out = [f"robots:unreachable{at}"]
        else:
            out = [f"robots:{a}{at}" for a in (*signals.AI_AGENTS, agent) if not self.robots.allows(url, a)]
        if self.ai_txt.state == "unreachable":
            out.append(f"ai.txt:unreachable{at}")
        elif not self.ai_txt.allows(url, agent):
            out.append(f"ai.txt{at}")
        if signals.tdmrep_reserved(self.tdm_rules, url):
            out.append(f"tdmrep:well-known{at}")
        return sorted(set(out))

    def record(self) -> dict:
        """A row for the crawl's audit of hosts: which file said what."""
        return {"host": self.host, "robots": self.robots.state, "robots_detail": self.robots.detail,
                "ai_txt": self.ai_txt.state, "ai_txt_detail": self.ai_txt.detail, "tdm_rules": len(self.tdm_rules)}


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-cased: the key of its host's files."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class HostCache:
    """Each host's files, fetched once (thread-safe, one fetch per host at a time) and kept for `ttl_s`."""

    def __init__(self, fetch: Fetcher, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic):
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self.hosts: dict[str, HostRules] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, url: str) -> HostRules:
        """The files of the host serving `url` (fetched now if not cached, or cached longer than `ttl_s`)."""
        key = origin(url)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            cached = self.hosts.get(key)
            if cached is None or self.clock() - cached.fetched_at > self.ttl_s:
                cached = self.hosts[key] = self._load(key)
            return cached

    def _load(self, key: str) -> HostRules:
        host = urlsplit(key).netloc
        robots = HostFile.from_fetched(host, "robots", self.fetch(key + FILES["robots"]))
        ai = HostFile.from_fetched(host, "ai.txt", self.fetch(key + FILES["ai.txt"]))
        tdm = self.fetch(key + FILES["tdmrep"])
        rules = signals.parse_tdmrep(tdm.text) if 200 <= tdm.status < 300 else []
        return HostRules(host, robots, ai, rules, self.clock())

    def records(self) -> list[dict]:
        """One audit row per host, sorted by origin (scheme://host:port)."""
        return [self.hosts[k].record() for k in sorted(self.hosts)]


def fetcher(opener: urllib.request.OpenerDirector, timeout_s: float, max_bytes: int = MAX_BYTES) -> Fetcher:
    """A `Fetcher` through `opener` (address guard, deadline): reads at most `max_bytes` of each file."""

    def fetch(url: str) -> Fetched:
        try:
            with opener.open(urllib.request.Request(url), timeout=timeout_s) as r:
                return Fetched(r.status, r.read(max_bytes).decode("utf-8-sig", "replace"))
        except urllib.error.HTTPError as err:
            loop = 300 <= err.code < 400
            return Fetched(err.code, error="redirect_loop" if loop else f"http_{err.code}")
        except netguard.BlockedAddress:
            return Fetched(0, error="refused_address")
        except (urllib.error.URLError, OSError, ValueError) as err:
            text = str(getattr(err, "reason", err)).lower()
            return Fetched(0, error="timeout" if "timed out" in text else "connection_error")

    return fetch
