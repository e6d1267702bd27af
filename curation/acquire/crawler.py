"""A polite, concurrent, same-site crawler that turns pages into (image url, alt text, page url) pairs.

It obeys robots.txt for its own user agent (RFC 9309, see `curation.acquire.robots`), spaces requests per host, refuses
non-public addresses unless allowed, caps page sizes and the total time of each request, and records every
opt-out signal it sees as a column of the pair (it does not decide policy: the downloader does). Each image is
judged by the robots.txt, ai.txt and tdmrep.json of the host that serves it; `hosts.json` says what each
host's files said.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from curation.acquire import alttext, netguard, robots, signals
from curation.acquire.pairs import write_pairs
from mithridate.core import disk, options, schema, stats_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrawlConfig:
    seeds: tuple[str, ...] = options.opt((), "start URLs, comma separated; each one's site is crawled")
    out: str = options.opt("mithridate-out/crawl",
                           "output folder: config.json, pairs/, hosts.json, __stats__/run.json, crawl.warc.gz")
    max_pages: int = options.opt(5000, "stop after fetching this many pages in all")
    max_depth: int = options.opt(20, "link depth from a seed")
    concurrency: int = options.opt(16, "pages fetched at once, over all hosts")
    per_host: int = options.opt(4, "pages fetched at once from one host")
    delay_s: float = options.opt(0.0, "pause between two requests to the same host")
    timeout_s: float = options.opt(10.0, "socket timeout of one read")
    deadline_s: float = options.opt(30.0, "total time of one request: connect, headers and body (a server that "
                                    "drips bytes fails with 'timeout')")
    robots_deadline_s: float = options.opt(10.0, "total time of fetching one robots.txt, ai.txt or tdmrep.json")
    robots_max_bytes: int = options.opt(robots.MAX_BYTES, "bytes of a robots.txt or ai.txt that are parsed "
                                        "(RFC 9309: at least 500 KiB)")
    robots_ttl_s: float = options.opt(robots.TTL_S, "seconds a host's robots.txt and ai.txt are cached")
    retries: int = options.opt(1, "retries of a page that failed with a timeout or a 5xx status")
    max_redirects: int = options.opt(5, "redirects followed per request")
    max_page_bytes: int = options.opt(5_000_000, "cap on a page body; larger pages fail with 'too large'")
    max_images_per_page: int = options.opt(2000, "images kept per page")
    allow_networks: tuple[str, ...] = options.opt((), "private/loopback networks the crawler may contact (CIDR)")
    contact_url: str = options.opt("https://github.com/mithridate/mithridate", "contact URL in the user agent")
    warc: bool = options.opt(False, "also write every response to <out>/crawl.warc.gz")
    shard_size: int = options.opt(10000, "pairs per output parquet shard")
    checkpoint_pages: int = options.opt(200, "save progress every this many pages (a rerun resumes from it)")

    def __post_init__(self):
        options.check_positive(self, "max_pages", "concurrency", "per_host", "timeout_s", "deadline_s",
                               "robots_deadline_s", "robots_max_bytes", "robots_ttl_s", "max_page_bytes",
                               "shard_size", "max_images_per_page", "checkpoint_pages")
        if self.retries < 0 or self.max_depth < 0 or self.delay_s < 0 or self.max_redirects < 0:
            raise ValueError("CrawlConfig: retries, max_depth, delay_s and max_redirects must be >= 0")
        netguard.parse_networks(self.allow_networks)
        for s in self.seeds:
            if alttext.http_url(s, s) is None:
                raise ValueError(f"CrawlConfig.seeds: {s!r} is not an absolute http(s) URL")


PRESETS = {"default": CrawlConfig(), "tiny": CrawlConfig(max_pages=200, concurrency=8, timeout_s=2.0)}


@dataclass
class PageResult:
    url: str
    outcome: str  # fetched, disallowed, failed, not_html
    reason: str = ""
    pairs: list = field(default_factory=list)
    links: list = field(default_factory=list)


def _reason(err: Exception) -> str:
    """A short failure reason for the stats: http_404, timeout, too_large, refused_address, …"""
    if isinstance(err, urllib.error.HTTPError):
        return "redirect_loop" if err.code in (301, 302, 303, 307, 308) else f"http_{err.code}"
    inner = getattr(err, "reason", None)  # urllib wraps errors raised while connecting
    if isinstance(err, netguard.BlockedAddress) or isinstance(inner, netguard.BlockedAddress):
        return "refused_address"
    if isinstance(err, netguard.BodyTooLarge) or isinstance(inner, netguard.BodyTooLarge):
        return "too_large"
    if isinstance(err, netguard.HeadersTooLarge) or isinstance(inner, netguard.HeadersTooLarge):
        return "headers_too_large"
    text = str(getattr(err, "reason", err)).lower()
    return "timeout" if "timed out" in text else "connection_error"


class Crawler:
    """One crawl: call `run()` once."""

    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self.agent = netguard.user_agent(cfg.contact_url)
        policy = netguard.AddressPolicy(netguard.parse_networks(cfg.allow_networks))
        self.opener = netguard.build_opener(policy, self.agent, cfg.max_page_bytes, cfg.max_redirects,
                                            deadline_s=cfg.deadline_s)
        files = netguard.build_opener(policy, self.agent, cfg.max_page_bytes, cfg.max_redirects,
                                      deadline_s=cfg.robots_deadline_s)
        self.hosts = robots.HostCache(robots.fetcher(files, cfg.timeout_s, cfg.robots_max_bytes), cfg.robots_ttl_s)
        self.warc = None
        self.stats = collections.Counter()

    def fetch(self, url: str) -> tuple[int, list[tuple[str, str]], bytes, str]:
        """GET `url` → (status, headers, body, final url); raises urllib errors."""
        req = urllib.request.Request(url)
        with self.opener.open(req, timeout=self.cfg.timeout_s) as r:
            body = r.read()
            headers = list(r.headers.items())
            if self.warc is not None:
                self.warc.write_response(r.url, r.status, headers, body)
            return r.status, headers, body, r.url

    def _page_signals(self, page: alttext.Page, headers, url: str, site: robots.HostRules) -> list[str]:
        sig = signals.page_signals(page.robots, page.tdm_reservation, headers, netguard.USER_AGENT_TOKEN)
        reserved = signals.tdmrep_reserved(site.tdm_rules, url)
        return sig + [f"tdmrep:well-known@{site.host}"] if reserved else sig

    def crawl_page(self, url: str) -> PageResult:
        """Fetch and parse one page (with retries); never raises."""
        site = self.hosts.get(url)
        if site.robots.state == "refused":
            return PageResult(url, "failed", "refused_address")
        if not site.may_crawl(url):
            return PageResult(url, "disallowed", f"robots.txt ({site.robots.state})")
        for attempt in range(self.cfg.retries + 1):
            try:
                status, headers, body, final = self.fetch(url)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = _reason(err)
                if attempt == self.cfg.retries or not (reason == "timeout" or reason.startswith("http_5")):
                    return PageResult(url, "failed", reason)
        ctype = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if "html" not in ctype.lower():
            return PageResult(url, "not_html", ctype)
        page = alttext.parse_page(alttext.decode_html(body, ctype), final, (netguard.USER_AGENT_TOKEN,),
                                  self.cfg.max_images_per_page)
        page_sig = self._page_signals(page, headers, final, site)
        pairs = []
        for ref in page.images:
            found = sorted(set(page_sig + self.hosts.get(ref.url).signals(ref.url)))
            pairs.append({"url": ref.url, "caption": schema.normalize_text(ref.alt), "page_url": final,
                          "domain": urlsplit(ref.url).netloc.lower(), "source": "crawl", "signals": found})
        same = [link for link in page.links if robots.origin(link) == robots.origin(final)]
        return PageResult(url, "fetched", pairs=pairs, links=same)

    def _schedule(self, state: "CrawlState", pool, futures: dict, in_flight, next_time) -> None:
        """Submit queued pages while the global, per-host and max_pages limits and per-host delays allow."""
        cfg = self.cfg
        for origin, queue in state.queues.items():
            while queue and len(futures) < cfg.concurrency and state.scheduled < cfg.max_pages and (
                in_flight[origin] < cfg.per_host and time.time() >= next_time[origin]
            ):
                url, depth = queue.popleft()
                futures[pool.submit(self.crawl_page, url)] = (origin, url, depth)
                in_flight[origin] += 1
                next_time[origin] = time.time() + cfg.delay_s
                state.scheduled += 1

    def run(self, state: "CrawlState", checkpoint=None) -> tuple[list[dict], dict]:
        """Crawl from `state`; returns (pairs sorted by page URL, in document order within a page, stats).

        `checkpoint(state, in_flight_urls)` is called every `cfg.checkpoint_pages` pages.
        """
        in_flight, next_time, futures = collections.Counter(), collections.defaultdict(float), {}
        self.stats = state.stats
        t0, since = time.time(), 0
        bar = tqdm(total=None, unit="page", desc="crawl", leave=False, disable=None)
        with cf.ThreadPoolExecutor(self.cfg.concurrency) as pool:
            try:
                while True:
                    self._schedule(state, pool, futures, in_flight, next_time)  # 1) as the limits allow
                    if not futures:
                        if state.scheduled >= self.cfg.max_pages or not any(state.queues.values()):
                            break
                        time.sleep(0.01)
                        continue
                    done, _ = cf.wait(futures, timeout=0.05, return_when=cf.FIRST_COMPLETED)
                    for fut in done:  # 2) collect pages, queue new same-site links
                        origin, _, depth = futures[fut]
                        res = fut.result()  # a page that raised stays in `futures`, so a checkpoint keeps it
                        del futures[fut]
                        in_flight[origin] -= 1
                        self._count(res)
                        bar.update(1)
                        state.pairs += res.pairs
                        for link in res.links if depth < self.cfg.max_depth else []:
                            state.push(link, depth + 1)
                    since += len(done)
                    if checkpoint is not None and since >= self.cfg.checkpoint_pages:  # 3) save progress
                        checkpoint(state, [(u, d) for _, u, d in futures.values()])
                        since = 0
            except KeyboardInterrupt:  # save what is done, so that a rerun resumes here
                if checkpoint is not None:
                    checkpoint(state, [(u, d) for _, u, d in futures.values()])
                raise
        bar.close()
        elapsed = time.time() - t0
        stats = dict(self.stats, seconds=round(elapsed, 3), hosts=len(self.hosts.hosts),
                     pages_per_s=round(self.stats["pages_fetched"] / max(elapsed, 1e-9), 1),
                     images_found=len(state.pairs), frontier_left=sum(len(q) for q in state.queues.values()))
        pairs = sorted(state.pairs, key=lambda p: p["page_url"])  # stable: keeps document order within a page
        return pairs, stats

    def _count(self, res: PageResult) -> None:
        key = {"fetched": "pages_fetched", "disallowed": "pages_disallowed_by_robots", "not_html": "pages_not_html",
               "failed": f"pages_failed:{res.reason}"}[res.outcome]
        self.stats[key] += 1


class CrawlState:
    """What a crawl has done and has left: per-host queues, seen URLs, pairs found, counters."""

    def __init__(self):
        self.queues = collections.defaultdict(collections.deque)  # origin -> deque[(url, depth)]
        self.seen: set[str] = set()
        self.pairs: list[dict] = []
        self.stats = collections.Counter()
        self.scheduled = 0
        self.saved_pairs = 0  # pairs already written to _partial/

    @classmethod
    def start(cls, seeds) -> "CrawlState":
        state = cls()
        for s in seeds:
            state.push(s, 0)
        return state

    def push(self, url: str, depth: int) -> None:
        if url not in self.seen:
            self.seen.add(url)
            self.queues[robots.origin(url)].append((url, depth))

    def save(self, out: Path, in_flight: list[tuple[str, int]]) -> None:
        """Write new pairs to `<out>/_partial/` and the frontier (in-flight pages included) to `_state.json`."""
        new = self.pairs[self.saved_pairs :]
        if new:
            rows = [dict(p, uid=schema.make_uid(p["url"], p["caption"])) for p in new]
            schema.write(schema.to_table(rows, "pairs"), out / "_partial" / f"{self.saved_pairs:09d}.parquet", "pairs")
            self.saved_pairs = len(self.pairs)
        frontier = in_flight + [item for q in self.queues.values() for item in q]
        state = {"seen": sorted(self.seen), "frontier": frontier, "stats": dict(self.stats),
                 "scheduled": self.scheduled - len(in_flight), "saved_pairs": self.saved_pairs}
        disk.write_text(out / "_state.json", json.dumps(state))  # after _partial/: it names the pairs saved

    @classmethod
    def load(cls, out: Path) -> "CrawlState | None":
        """The state saved by an interrupted crawl in `out`, or None."""
        if not (out / "_state.json").exists():
            return None
        saved = json.loads((out / "_state.json").read_text())
        state = cls()
        state.seen, state.stats = set(saved["seen"]), collections.Counter(saved["stats"])
        state.scheduled = saved["scheduled"]
        for url, depth in saved["frontier"]:
            state.queues[robots.origin(url)].append((url, depth))
        parts = sorted((out / "_partial").glob("*.parquet"))
        state.pairs = [p for f in parts for p in schema.read(f, "pairs").to_pylist()][: saved["saved_pairs"]]
        state.saved_pairs = len(state.pairs)
        logger.info("crawl: resuming from %s (%d pages done, %d queued, %d pairs)", out,
                    sum(state.stats.values()), len(saved["frontier"]), len(state.pairs))
        return state

    @staticmethod
    def clear(out: Path) -> None:
        shutil.rmtree(out / "_partial", ignore_errors=True)
        (out / "_state.json").unlink(missing_ok=True)


def run(cfg: CrawlConfig) -> Path:
    """Crawl `cfg.seeds`; writes `<out>/config.json`, `<out>/pairs/*.parquet` and `<out>/__stats__/run.json`.

    Progress is saved every `cfg.checkpoint_pages` pages; a rerun with the same config resumes from it, and a
    rerun of a finished crawl does nothing.
    """
    if not cfg.seeds:
        raise ValueError("CrawlConfig.seeds is empty: give at least one start URL (--seeds=http://…)")
    out = Path(cfg.out)
    options.check_resumable(cfg, out)
    if stats_files.done(out):
        CrawlState.clear(out)  # a crawl killed between writing its stats and clearing its state
        logger.info("crawl: %s already holds this finished crawl; nothing to do", out)
        return out
    options.write_config(cfg, out)
    state = CrawlState.load(out) or CrawlState.start(cfg.seeds)
    crawler = Crawler(cfg)
    if cfg.warc:
        from curation.acquire.warc import WarcSink

        crawler.warc = WarcSink(_free_name(out, "crawl", ".warc.gz"))
    try:
        pairs, stats = crawler.run(state, checkpoint=lambda st, flying: st.save(out, flying))
    finally:
        if crawler.warc is not None:
            crawler.warc.close()
    stats.update(write_pairs(pairs, out / "pairs", cfg.shard_size))
    disk.write_text(out / "hosts.json", json.dumps(crawler.hosts.records(), indent=2) + "\n")
    stats_files.write(out, stats)
    CrawlState.clear(out)
    logger.info("crawl: %d pages in %.1f s (%.1f pages/s), %d pairs → %s", stats.get("pages_fetched", 0),
                stats["seconds"], stats["pages_per_s"], stats.get("pairs", 0), out / "pairs")
    return out


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """`<stem><suffix>`, or `<stem>-1<suffix>`, … when a resumed crawl must not overwrite an earlier file."""
    path, n = folder / f"{stem}{suffix}", 0
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path
