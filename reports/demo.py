"""`mithridate demo`: the whole story on the embedded default, under one run folder.

First cut (part 1): build the art corpus → serve the demo web in-process → crawl → download → funnel.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from curation import art, crawler, downloader, funnel, options, web

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out: str = options.opt("mithridate-out/demo", "run folder; one sub-folder per stage")
    art_preset: Literal["default", "tiny"] = options.opt("default", "art corpus preset (tiny: 24 concepts)")
    cache_dir: str = options.opt("", "cache folder of the art corpus ('' = the user cache dir)")
    policy: Literal["honor", "record", "ignore"] = options.opt("honor", "opt-out policy of the download")
    seed: int = options.opt(0, "seed of the demo web")
    threads: int = options.opt(64, "download threads")
    timeout_s: float = options.opt(2.0, "crawl and download socket timeout (the web's slow images take longer)")

    def __post_init__(self):
        options.check_positive(self, "threads", "timeout_s")
        for name in ("art_preset", "policy"):
            options.check_choice(self, name, options.literal_values(DemoConfig, name))


PRESETS = {"default": DemoConfig(), "tiny": DemoConfig(art_preset="tiny", threads=16, timeout_s=1.0)}


def _stage_configs(cfg: DemoConfig, w: web.DemoWeb) -> tuple:
    out = Path(cfg.out)
    crawl = crawler.CrawlConfig(seeds=tuple(w.seeds), out=str(out / "crawl"), allow_networks=w.networks,
                                timeout_s=cfg.timeout_s, retries=0)
    down = downloader.DownloadConfig(pairs=str(out / "crawl" / "pairs"), out=str(out / "shards"), policy=cfg.policy,
                                     threads=cfg.threads, timeout_s=cfg.timeout_s, allow_networks=w.networks)
    return crawl, down


def run(cfg: DemoConfig) -> Path:
    """Run the demo; returns the run folder (it holds funnel.json and funnel.txt)."""
    out = Path(cfg.out)
    for stage in ("web", "crawl", "shards"):  # the web's ports change from run to run: start the story afresh
        shutil.rmtree(out / stage, ignore_errors=True)
    options.write_config(cfg, out)
    t0 = time.time()
    art_cfg = art.PRESETS[cfg.art_preset]
    if cfg.cache_dir:
        import dataclasses

        art_cfg = dataclasses.replace(art_cfg, cache_dir=cfg.cache_dir)
    corpus = art.run(art_cfg)
    slow = cfg.timeout_s + 1.0
    web_cfg = web.WebConfig(art_dir=str(corpus), out=str(out / "web"), seed=cfg.seed, slow_delay_s=slow)
    with web.DemoWeb(web_cfg) as w:
        crawl_cfg, down_cfg = _stage_configs(cfg, w)
        crawler.run(crawl_cfg)
        downloader.run(down_cfg)
    crawl_stats = json.loads((out / "crawl" / "_stats.json").read_text())
    down_stats = json.loads((out / "shards" / "_stats.json").read_text())
    text = funnel.format_funnel(crawl_stats, down_stats)
    (out / "funnel.json").write_text(json.dumps({"crawl": crawl_stats, "download": down_stats}, indent=2) + "\n")
    (out / "funnel.txt").write_text(text + "\n")
    logger.info("\nfunnel (policy=%s)\n%s\n", cfg.policy, text)
    logger.info("art corpus:   %s", corpus)
    logger.info("web manifest: %s", w.manifest_path)
    logger.info("pairs:        %s", out / "crawl" / "pairs")
    logger.info("shards:       %s", out / "shards")
    logger.info("demo finished in %.1f s; outputs under %s", time.time() - t0, out.resolve())
    return out
