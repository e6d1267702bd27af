"""The curation command table and its CLI (`python -m curation …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import (aesthetic, art, clip_train, commands, crawler, downloader, embed, export, pairs, release,
                      selection, subsets, web)

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
    ("clip", "train"): (clip_train.ClipTrainConfig, clip_train.PRESETS, clip_train.run,
                        "train the compact CLIP (open_clip ResNet + text tower) on the art corpus and evaluate it"),
    ("embed",): (embed.EmbedConfig, embed.PRESETS, embed.run,
                 "embed downloaded shards: L2-normalised fp16 image and text embeddings per shard (npz)"),
    ("aesthetic", "train"): (aesthetic.AestheticTrainConfig, aesthetic.TRAIN_PRESETS, aesthetic.train,
                             "train the aesthetic/quality head (improved-aesthetic-predictor MLP) on image "
                             "embeddings from a ratings table, or from the demo web's planted degradations"),
    ("aesthetic", "score"): (aesthetic.AestheticScoreConfig, aesthetic.SCORE_PRESETS, aesthetic.score,
                             "score image embeddings with an aesthetic head (ours, LAION's ViT-L/14 linear head, "
                             "or an improved-aesthetic-predictor state dict)"),
    ("filter",): (selection.FilterConfig, selection.PRESETS, selection.run,
                  "decide keep/exclude for every downloaded row, with a reason: opt-outs, registry, re-uploads, "
                  "caption and image rules, CLIP and aesthetic scores, dedup"),
    ("subset",): (subsets.SubsetConfig, subsets.PRESETS, subsets.run,
                  "combine uid subsets (.npy, DataComp format) by intersect, union or minus"),
    ("export",): (export.ExportConfig, export.PRESETS, export.run,
                  "write the kept rows as train-ready shards (image, caption, uid, artist, licence, scores)"),
    ("release",): (release.ReleaseConfig, release.RELEASE_PRESETS, release.release,
                   "publish exported rows as a URL list with the sha256 of the original bytes and a pHash"),
    ("rebuild",): (release.RebuildConfig, release.REBUILD_PRESETS, release.rebuild,
                   "download a release again per verification mode (sha256, none, phash) and count what changed, "
                   "was caught or admitted (split-view poisoning): integrity.json"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "curation", argv, "Crawl, download and curate image–alt-text data.")
