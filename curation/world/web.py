"""The demo web: one site per artist, an aggregator of re-uploads and a link farm, served on loopback.

Built from the art corpus, deterministic under a seed. Opt-out signals of every kind are planted on
some artists (see `PROFILES`), failure modes on the link farm, and a ground-truth manifest records, for
every `<img>` placed, what it shows, which signals apply and whether its alt text is right. Some of the
aggregator's re-uploads are degraded copies (blur, heavy JPEG, noise, low-res upscale, watermark; see
`curation.score.degrade`) whose kind and severity the manifest records: the quality labels of the demo.
`DemoWeb.expire` changes what a running site's image URLs serve (a domain bought after it expired, or a benign
re-encode) and records each changed URL: the ground truth of split-view poisoning (see `curation.select.release`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from curation.score import degrade
from curation.world import art, webcontent as wc
from curation.world.webserver import Route, SiteServer
from mithridate.core import options, schema

logger = logging.getLogger(__name__)

# opt-out profile of each artist site, assigned in artist order (cycled)
PROFILES = ("open", "noai", "reserved")
AI_ROBOTS = "User-agent: GPTBot\nDisallow: /\n\nUser-agent: CCBot\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
TDMREP = [{"location": "/gallery/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/tdm-policy.json"}]
FAILURES = ("404", "truncated", "wrong-content-type", "slow", "redirect-loop", "oversized", "bomb", "tiny")


@dataclass(frozen=True)
class WebConfig:
    art_dir: str = options.opt("", "art corpus folder from `mithridate art build` ('' = build it with art_preset)")
    art_preset: str = options.opt("default", "art preset used when art_dir is ''")
    out: str = options.opt("mithridate-out/web", "folder for config.json and web_manifest.parquet")
    first_host: str = options.opt("127.0.0.10", "loopback address of the first site; sites take the next ones")
    port_base: int = options.opt(0, "port of the first site, +1 per site (0 = ephemeral ports)")
    ports: tuple[int, ...] = options.opt((), "one port per site, in site order (artists, aggregator, link farm): "
                                         "serve a web again at the URLs of an earlier run (overrides port_base)")
    images_per_page: int = options.opt(12, "images per gallery page")
    rehost_fraction: float = options.opt(0.15, "fraction of each artist's works re-uploaded on the aggregator")
    degraded_fraction: float = options.opt(
        0.5, "fraction of the aggregator's re-uploads served degraded (kinds cycle; at least one of each kind "
        "when there are enough uploads)")
    failures_each: int = options.opt(4, "how many images of each failure mode the link farm plants")
    slow_delay_s: float = options.opt(3.0, "delay of the slow responses (set above the downloader's timeout)")
    oversized_px: int = options.opt(1900, "side of the oversized noise PNG (about 3·side² bytes)")
    bomb_px: int = options.opt(9000, "side of the 1-bit decompression-bomb PNG")
    seed: int = options.opt(0, "seed of every random choice")
    serve_s: float = options.opt(0.0, "CLI only: seconds to serve before exiting (0 = until Ctrl-C)")

    def __post_init__(self):
        if isinstance(self.ports, list):
            object.__setattr__(self, "ports", tuple(self.ports))
        if any(not 0 < p < 65536 for p in self.ports):
            raise ValueError(f"WebConfig.ports={list(self.ports)}: each port must be within 1..65535")
        options.check_positive(self, "images_per_page", "oversized_px", "bomb_px")
        if not 0 <= self.rehost_fraction <= 1:
            raise ValueError(f"WebConfig.rehost_fraction={self.rehost_fraction!r}: must be within [0, 1]")
        if not 0 <= self.degraded_fraction <= 1:
            raise ValueError(f"WebConfig.degraded_fraction={self.degraded_fraction!r}: must be within [0, 1]")
        try:
            ok = ipaddress.ip_address(self.first_host).is_loopback
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"WebConfig.first_host={self.first_host!r}: must be a loopback address in 127.0.0.0/8")


PRESETS = {
    "default": WebConfig(),
    "tiny": WebConfig(art_preset="tiny", images_per_page=6, failures_each=1, slow_delay_s=1.5, bomb_px=9000),
}


class _Placer:
    """Accumulates one site's routes and manifest rows."""

    def __init__(self, server: SiteServer, name: str, rng: random.Random):
        self.server, self.name, self.rng, self.rows = server, name, rng, []

    def route(self, path: str, route: Route) -> str:
        """Serve `route` at `path`; returns the path."""
        self.server.routes[path] = route
        return path

    def place(self, page_url: str, path: str, markup: str, alt, kind, correct, item=None, **extra) -> str:
        url = self.server.origin + path
        self.rows.append(
            {"url": url, "page_url": page_url, "site": self.name, "alt": alt, "alt_kind": kind,
             "alt_correct": correct, "markup": markup, "signals": extra.pop("signals", []),
             "item_id": item and item["item_id"], "concept": item and item["concept"],
             "artist": item and item["artist"], "licence": item and item["licence"], **extra}
        )
        return wc.img_tag(markup, path, self.server.origin, alt)


def _image_route(item: dict, corpus: Path, headers=()) -> Route:
    return Route((corpus / item["path64"]).read_bytes(), "image/png", headers=tuple(headers))


def _artist_signals(profile: str, page_no: int, host: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(page signals, image response headers, <head> lines) of one gallery page under an opt-out profile.

    `host` is the site's netloc: signals from its files name it (`robots:GPTBot@<host>`)."""
    if profile == "noai":
        sig = [f"robots:CCBot@{host}", f"robots:GPTBot@{host}", "meta:noai", "meta:noimageai", "x-robots-tag:noai",
               "x-robots-tag:noimageai"]
        return sig, [("X-Robots-Tag", "noai, noimageai")], ['<meta name="robots" content="noai, noimageai">']
    if profile == "reserved":
        return ["tdmrep:header", f"tdmrep:well-known@{host}", f"ai.txt@{host}"], [], []
    if page_no == 2:  # an open artist who opted out a single page of works
        return ["meta:noai"], [], ['<meta name="robots" content="noai">']
    return [], [], []


def _image_headers(profile: str, index: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Per-image opt-outs of an open artist: (signals, headers) of the image with this running index."""
    if profile != "open" or index % 7 not in (3, 5):
        return [], []
    if index % 7 == 3:  # image-only opt-out, seen only when the image is fetched
        return ["x-robots-tag:noai"], [("X-Robots-Tag", "noai")]
    return [], [("X-Robots-Tag", "otherbot: noai, noimageai")]  # scoped to another crawler: must not count


def _site_files(p: _Placer, profile: str) -> None:
    robots = {"open": "User-agent: *\nAllow: /\n", "noai": AI_ROBOTS,
              "reserved": "User-agent: mithridate\nDisallow: /private/\n\nUser-agent: *\nAllow: /\n"}[profile]
    p.route("/robots.txt", Route(robots.encode(), "text/plain"))
    if profile == "reserved":
        p.route("/ai.txt", Route(b"# Spawning ai.txt\nUser-Agent: *\nDisallow: *.png\nDisallow: *.jpg\n", "text/plain"))
        p.route("/.well-known/tdmrep.json", Route(json.dumps(TDMREP).encode(), "application/json"))


def _gallery_page(p: _Placer, items, page_no, profile, names, corpus, prefix="/gallery") -> str:
    page_path = f"{prefix}/{page_no}.html"
    page_url = p.server.origin + page_path
    host = p.server.origin.split("://", 1)[1]
    signals, img_headers, head = _artist_signals(profile, page_no, host)
    if prefix == "/private":  # the page is disallowed to our crawler: its images are never found by a crawl
        signals = signals + [f"robots:mithridate@{host}"]
    use_base = page_no % 5 == 1
    body = []
    for item in items:
        path = f"/img/{item['concept_key'].lower()}.png"
        failure = "404" if p.rng.random() < 0.02 else None
        extra_sig, extra_headers = _image_headers(profile, len(p.rows))
        if failure:
            path = f"/img/missing-{item['concept_key'].lower()}.png"
        else:
            p.route(path, _image_route(item, corpus, img_headers + extra_headers))
        alt, kind, correct = wc.choose_alt(p.rng, item, names)
        markup = "base-href" if use_base else p.rng.choice(wc.MARKUPS)
        sig = signals + (extra_sig if not failure else [])
        body.append(p.place(page_url, path, markup, alt, kind, correct, item, failure=failure, signals=sig))
    if use_base:
        head = head + [f'<base href="{p.server.origin}/img/">']
    links = [f'<a href="{p.server.origin}/">home</a>', f'<a href="{prefix}/{page_no + 1}.html">next</a>']
    extra = (("tdm-reservation", "1"),) if profile == "reserved" else ()
    p.route(page_path, Route(wc.page(f"{p.name} — page {page_no}", body + links, head).encode(), headers=extra))
    return page_path


def _artist_site(p: _Placer, items: list[dict], profile: str, names, corpus, per_page: int) -> None:
    _site_files(p, profile)
    chunks = [items[i : i + per_page] for i in range(0, len(items), per_page)]
    n_private = min(2, len(chunks) // 2) if profile == "reserved" else 0
    pages = []
    for k, chunk in enumerate(chunks):
        private = k >= len(chunks) - n_private
        prefix, no = ("/private", k - (len(chunks) - n_private) + 1) if private else ("/gallery", k + 1)
        pages.append(_gallery_page(p, chunk, no, profile, names, corpus, prefix))
    links = [f'<a href="{path}">{path}</a>' for path in pages]
    extra = (("tdm-reservation", "1"),) if profile == "reserved" else ()
    p.route("/", Route(wc.page(f"{p.name} — artwork", links).encode(), headers=extra))


def _degradation_plan(items: list[dict], fraction: float, rng: random.Random) -> dict[str, tuple[str, float]]:
    """item_id → (kind, severity) of the re-uploads served degraded: round(fraction·n) of them (at least one
    per kind when fraction > 0 and there are enough items), kinds cycling, severity uniform in [0.1, 1]."""
    n = round(fraction * len(items))
    if fraction > 0:
        n = max(n, min(len(items), len(degrade.KINDS)))
    chosen = sorted(rng.sample(range(len(items)), n))
    return {items[i]["item_id"]: (degrade.KINDS[j % len(degrade.KINDS)], round(rng.uniform(0.1, 1.0), 2))
            for j, i in enumerate(chosen)}


def _aggregator(p: _Placer, items: list[dict], originals: dict, names, corpus, per_page: int,
                degraded_fraction: float = 0.0, seed: int = 0) -> None:
    p.route("/robots.txt", Route(b"User-agent: *\nAllow: /\n", "text/plain"))
    drng = random.Random(f"{seed}/aggregator/degrade")  # apart from p.rng: alt texts stay as they were
    plan = _degradation_plan(items, degraded_fraction, drng)
    pages = []
    for k in range(0, len(items), per_page):
        page_path = f"/feed/{k // per_page + 1}.html"
        body = []
        for item in items[k : k + per_page]:
            h = hashlib.sha1(f"{item['item_id']}".encode()).hexdigest()[:12]
            path = f"/uploads/{h}.jpg"
            im = wc.Image.open(corpus / item["path64"])
            dkind, severity = plan.get(item["item_id"], (None, None))
            if dkind:
                im = degrade.degrade(im, dkind, severity, drng)
            p.route(path, Route(wc.jpeg_bytes(im), "image/jpeg"))
            alt, kind, correct = wc.choose_alt(p.rng, item, names)
            body.append(p.place(p.server.origin + page_path, path, p.rng.choice(wc.MARKUPS), alt, kind, correct,
                                item, rehost_of=originals[item["item_id"]], degradation=dkind, severity=severity))
        p.route(page_path, Route(wc.page(f"aggregator — feed {k // per_page + 1}", body).encode()))
        pages.append(page_path)
    p.route("/", Route(wc.page("aggregator — fresh emoji every day", [f'<a href="{x}">{x}</a>' for x in pages]).encode()))


def _failure_route(p: _Placer, mode: str, item: dict, corpus: Path, cfg: WebConfig, big: dict) -> str:
    """Plant one image of failure `mode`; returns its path."""
    n = len(p.rows)
    good = _image_route(item, corpus)
    if mode == "404":
        return f"/media/gone-{n}.png"
    if mode == "truncated":
        return p.route(f"/media/{n}.png", Route(wc.truncated(good.body), "image/png"))
    if mode == "wrong-content-type":
        return p.route(f"/media/{n}.png", Route(wc.page("soft 404", ["not here"]).encode()))
    if mode == "slow":
        return p.route(f"/media/{n}.png", Route(good.body, "image/png", delay_s=cfg.slow_delay_s))
    if mode == "redirect-loop":
        a, b = f"/media/{n}-a.png", f"/media/{n}-b.png"
        p.route(a, Route(b"", status=302, headers=(("Location", b),)))
        p.route(b, Route(b"", status=302, headers=(("Location", a),)))
        return a
    body = {"oversized": big["oversized"], "bomb": big["bomb"], "tiny": wc.tiny_png()}[mode]
    return p.route(f"/media/{n}.png", Route(body, "image/png"))


def _redirect_chain(p: _Placer, item: dict, corpus: Path, hops: int = 3) -> str:
    n = len(p.rows)
    target = p.server.origin + p.route(f"/media/{n}-final.png", _image_route(item, corpus))
    for h in range(hops, 0, -1):  # absolute Location headers, hop by hop back to the first
        path = p.route(f"/media/{n}-hop{h}.png", Route(b"", status=301, headers=(("Location", target),)))
        target = p.server.origin + path
    return path


def _linkfarm(p: _Placer, items: list[dict], names, corpus, cfg: WebConfig, other_origins: list[str]) -> None:
    p.route("/robots.txt", Route(b"User-agent: *\nAllow: /\n", "text/plain"))
    big = {"oversized": wc.oversized_png(p.rng, cfg.oversized_px), "bomb": wc.bomb_png(cfg.bomb_px)}
    plan = [(m, i) for m in FAILURES for i in range(cfg.failures_each)] + [("redirect-chain", 0)] * cfg.failures_each
    plan += [("spam", 0)] * (2 * cfg.images_per_page)
    p.rng.shuffle(plan)
    pages, it = [], iter(p.rng.sample(items, len(items)))
    for k in range(0, len(plan), cfg.images_per_page):
        page_path, body = f"/deals/{k // cfg.images_per_page + 1}.html", []
        for mode, _ in plan[k : k + cfg.images_per_page]:
            item = next(it)
            if mode == "spam":
                kind = p.rng.choice(["spam", "mismatched", "long"])
                alt = {"spam": wc.spam_alt(p.rng), "long": wc.long_alt(p.rng, item),
                       "mismatched": p.rng.choice([x for x in names if x != item["concept"]])}[kind]
                path = p.route(f"/media/{len(p.rows)}.png", _image_route(item, corpus))
                body.append(p.place(p.server.origin + page_path, path, "img", alt, kind, kind == "long", item))
                continue
            path = _redirect_chain(p, item, corpus) if mode == "redirect-chain" else _failure_route(
                p, mode, item, corpus, cfg, big)
            failure = None if mode == "redirect-chain" else mode
            shown = None if mode in ("oversized", "bomb", "tiny", "wrong-content-type") else item
            body.append(p.place(p.server.origin + page_path, path, "img", wc.good_alt(p.rng, item), "good",
                                shown is not None, shown, failure=failure))
        body += [f'<a href="{o}/">partner</a>' for o in other_origins] + ['<a href="/gone.html">old deals</a>']
        p.route(page_path, Route(wc.page("BEST FREE EMOJI DOWNLOAD", body).encode()))
        pages.append(page_path)
    _odd_pages(p, items, corpus, pages)


def _odd_pages(p: _Placer, items: list[dict], corpus: Path, pages: list[str]) -> None:
    """A windows-1252 page, a malformed page and a redirecting page, linked from the link farm's index."""
    item = items[0]
    p.route("/img/cafe.png", _image_route(item, corpus))
    alt = f"café crème — {item['concept']}"
    body = wc.page("Café", [p.place(p.server.origin + "/latin1.html", "/img/cafe.png", "img", alt, "good", True, item)],
                   charset="windows-1252")
    p.route("/latin1.html", Route(body.encode("cp1252", "replace"), "text/html; charset=windows-1252"))
    item2 = items[1 % len(items)]
    p.route("/img/broken-markup.png", _image_route(item2, corpus))
    p.place(p.server.origin + "/malformed.html", "/img/broken-markup.png", "img", item2["concept"], "good", True, item2)
    bad = f'<html><body><div><p><img src="/img/broken-markup.png" alt="{item2["concept"]}"<a href="/deals/1.html">x</div'
    p.route("/malformed.html", Route(bad.encode()))
    p.route("/moved.html", Route(b"", status=301, headers=(("Location", "/latin1.html"),)))
    links = [f'<a href="{x}">{x}</a>' for x in pages + ["/moved.html", "/malformed.html"]]
    p.route("/", Route(wc.page("link farm", links).encode()))


EXPIRY_KINDS = ("expired", "reencoded")
MAX_REENCODE_PIXELS = 4_000_000  # larger images (the link farm's oversized and bomb PNGs) are not re-encoded


def reencode(body: bytes, quality: int = 80, scale: float = 0.9) -> bytes | None:
    """The same picture as other bytes: resized by `scale` and saved as JPEG at `quality` (a change sha256 sees and
    pHash mostly tolerates); None when `body` does not decode or exceeds MAX_REENCODE_PIXELS."""
    try:
        with wc.Image.open(io.BytesIO(body)) as im:
            if im.width * im.height > MAX_REENCODE_PIXELS:
                return None
            im = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, wc.Image.DecompressionBombError):
        return None
    if scale != 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), wc.Image.BICUBIC)
    return wc.jpeg_bytes(im, quality)


def _image_type(body: bytes, default: str) -> str:
    """Content type of PNG or JPEG bytes; `default` for anything else."""
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return "image/jpeg" if body.startswith(b"\xff\xd8\xff") else default


Content = Callable[[str, bytes], bytes | None] | dict[str, bytes]  # (url, bytes served) → new bytes (None: keep)


class DemoWeb:
    """The running demo web. Use as a context manager; `seeds` are the sites' home pages."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        corpus = Path(cfg.art_dir) if cfg.art_dir else art.run(art.PRESETS[cfg.art_preset])
        self.corpus = corpus
        table = art.load(corpus)
        self.items = table.sort_values(["artist", "concept_key"]).to_dict("records")
        for item in self.items:  # parquet lists arrive as numpy arrays
            item["aliases"], item["keywords"] = list(item["aliases"]), list(item["keywords"])
        self.artists = sorted(table["artist"].unique())
        self.servers: dict[str, SiteServer] = {}
        self.manifest_path = Path(cfg.out) / "web_manifest.parquet"
        self.expiry_path = Path(cfg.out) / "web_expiry.parquet"
        self.expired = schema.WEB_EXPIRY_SCHEMA.empty_table()  # every URL `expire` changed, in order

    def _bind(self) -> None:
        base = ipaddress.ip_address(self.cfg.first_host)
        names = [f"artist-{a}" for a in self.artists] + ["aggregator", "linkfarm"]
        if self.cfg.ports and len(self.cfg.ports) != len(names):
            raise ValueError(f"WebConfig.ports={list(self.cfg.ports)}: this web has {len(names)} sites "
                             f"({', '.join(names)}); give one port each")
        for i, name in enumerate(names):
            port = self.cfg.ports[i] if self.cfg.ports else (self.cfg.port_base + i if self.cfg.port_base else 0)
            try:
                self.servers[name] = SiteServer(str(base + i), port)
            except OSError as e:
                raise ValueError(f"WebConfig: cannot serve {name} on {base + i}:{port} ({e.strerror}); "
                                 "another program holds it — stop it or let the web start afresh") from None

    def build(self) -> None:
        """Bind the servers and generate every route and the manifest (deterministic under cfg.seed)."""
        t0 = time.time()
        self._bind()
        cfg, names = self.cfg, sorted({i["concept"] for i in self.items})
        rows, originals = [], {}
        for i, a in enumerate(self.artists):
            p = _Placer(self.servers[f"artist-{a}"], f"artist-{a}", random.Random(f"{cfg.seed}/{a}"))
            mine = [x for x in self.items if x["artist"] == a]
            _artist_site(p, mine, PROFILES[i % len(PROFILES)], names, self.corpus, cfg.images_per_page)
            rows += p.rows
            originals.update({r["item_id"]: r["url"] for r in p.rows if r["failure"] is None})
        rng = random.Random(f"{cfg.seed}/aggregator")
        chosen = [x for x in self.items if x["item_id"] in originals and rng.random() < cfg.rehost_fraction]
        p = _Placer(self.servers["aggregator"], "aggregator", rng)
        _aggregator(p, chosen, originals, names, self.corpus, cfg.images_per_page, cfg.degraded_fraction, cfg.seed)
        rows += p.rows
        p = _Placer(self.servers["linkfarm"], "linkfarm", random.Random(f"{cfg.seed}/linkfarm"))
        _linkfarm(p, self.items, names, self.corpus, cfg, [s.origin for s in self.servers.values()])
        rows += p.rows
        self.manifest = schema.to_table(rows, "web_manifest")
        self.expiry_path.unlink(missing_ok=True)  # a web built afresh has changed nothing yet
        schema.write(self.manifest, self.manifest_path, "web_manifest", {"seeds": self.seeds, "seed": cfg.seed})
        logger.info("demo web: %d sites, %d images placed, built in %.1f s", len(self.servers), len(rows),
                    time.time() - t0)

    @property
    def seeds(self) -> list[str]:
        return [s.origin + "/" for s in self.servers.values()]

    @property
    def ports(self) -> tuple[int, ...]:
        """The sites' ports in site order (pass as `WebConfig.ports` to serve the same URLs again)."""
        return tuple(s.port for s in self.servers.values())

    @property
    def networks(self) -> tuple[str, ...]:
        """The /32 networks of the sites, for the crawler's and downloader's allow lists."""
        return tuple(sorted({f"{s.host}/32" for s in self.servers.values()}))

    def expire(self, sites: list[str], kind: str = "expired", content: Content | None = None) -> pa.Table:
        """From now on, the image routes of `sites` serve other bytes (live: servers read routes per request).

        kind "expired" (the domain changed hands): by default each image becomes another concept's image from the
        corpus (seeded); kind "reencoded": by default `reencode` of the bytes served. `content` overrides either:
        `content(url, bytes served)` or `content[url]` gives the new bytes (None or missing: unchanged). Returns one
        row per changed URL (schema web_expiry), also kept in `self.expired` and written to `self.expiry_path`.
        """
        if kind not in EXPIRY_KINDS:
            raise ValueError(f"expire kind={kind!r}: allowed values are {', '.join(EXPIRY_KINDS)}")
        unknown = sorted(set(sites) - set(self.servers))
        if unknown:
            raise ValueError(f"expire sites={unknown}: not sites of this web (built: {', '.join(self.servers)})")
        shown = dict(zip(self.manifest["url"].to_pylist(), self.manifest["item_id"].to_pylist()))
        rows = [row for site in sites for row in self._expire_site(site, kind, content, shown)]
        table = schema.to_table(rows, "web_expiry")
        self.expired = pa.concat_tables([self.expired, table])
        schema.write(self.expired, self.expiry_path, "web_expiry")
        logger.info("demo web: %d image URLs of %s now serve %s content", table.num_rows, ", ".join(sites), kind)
        return table

    def _expire_site(self, site: str, kind: str, content: Content | None, shown: dict) -> list[dict]:
        server, rng = self.servers[site], random.Random(f"{self.cfg.seed}/expire/{site}")
        rows = []
        for path, route in sorted(server.routes.items()):
            if route.status != 200 or not route.content_type.startswith("image/"):
                continue
            url = server.origin + path
            body, replacement = self._new_body(kind, content, url, route.body, shown.get(url), rng)
            if body is None or body == route.body:
                continue
            new_type = _image_type(body, route.content_type)
            server.routes[path] = dataclasses.replace(route, body=body, content_type=new_type)
            rows.append({"url": url, "site": site, "kind": kind, "item_id": shown.get(url), "replacement": replacement,
                         "sha256_before": hashlib.sha256(route.body).hexdigest(),
                         "sha256_after": hashlib.sha256(body).hexdigest()})
        return rows

    def _new_body(self, kind: str, content: Content | None, url: str, body: bytes, item_id: str | None,
                  rng: random.Random) -> tuple[bytes | None, str | None]:
        """(new bytes or None, item_id of the corpus image now served)."""
        if content is not None:
            return (content.get(url) if isinstance(content, dict) else content(url, body)), None
        if kind == "reencoded":
            return reencode(body), None
        concept = next((i["concept"] for i in self.items if i["item_id"] == item_id), None)
        other = rng.choice([i for i in self.items if i["concept"] != concept])
        return (self.corpus / other["path64"]).read_bytes(), other["item_id"]

    def __enter__(self) -> "DemoWeb":
        options.write_config(self.cfg, self.cfg.out)
        self.build()
        for s in self.servers.values():
            s.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in self.servers.values():
            s.stop()


def run(cfg: WebConfig) -> Path:
    """Serve the demo web until interrupted (or for cfg.serve_s seconds); returns the output folder."""
    with DemoWeb(cfg) as web:
        logger.info("serving %d sites; seeds: %s", len(web.seeds), " ".join(web.seeds))
        logger.info("ground truth: %s", web.manifest_path)
        try:
            deadline = time.time() + cfg.serve_s if cfg.serve_s else float("inf")
            while time.time() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.time())))
        except KeyboardInterrupt:
            logger.info("stopped")
    return Path(cfg.out)
