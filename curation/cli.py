"""The curation command table and its CLI (`python -m curation …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import art, commands, crawler, downloader, pairs, web

COMMANDS = {
    ("art", "build"): (art.ArtConfig, art.PRESETS, art.run,
                       "rasterize the embedded emoji artwork (one artist per style) into the cache"),
    ("web", "serve"): (web.WebConfig, web.PRESETS, web.run,
                       "serve the demo web (artist sites, an aggregator, a link farm) on loopback"),
    ("crawl",): (crawler.CrawlConfig, crawler.PRESETS, crawler.run,
                 "crawl sites for (image url, alt text) pairs, recording opt-out signals"),
    ("pairs",): (pairs.PairsConfig, pairs.PRESETS, pairs.run,
                 "read a WARC, WAT or URL list (csv/tsv/jsonl/parquet/txt) into pairs shards"),
    ("download",): (downloader.DownloadConfig, downloader.PRESETS, downloader.run,
                    "download pairs with img2dataset into parquet image shards, under an opt-out policy"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "curation", argv, "Crawl, download and curate image–alt-text data.")
