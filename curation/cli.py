"""The curation command table and its CLI (`python -m curation …`, also under `mithridate …`)."""

from __future__ import annotations

from mithridate.core.commands import Command, main as _main

COMMANDS = {
    ("art", "build"): Command(
        "curation.world.art", "ArtConfig",
        "rasterize the embedded emoji artwork (one artist per style) into the cache",
        examples=(
            "mithridate art build --preset=tiny",
            "mithridate art build --styles=twemoji,openmoji --cache_dir=runs/cache",
        )),
    ("web", "serve"): Command(
        "curation.world.web", "WebConfig",
        "serve the demo web (artist sites, an aggregator, a link farm) on loopback",
        examples=(
            "mithridate web serve --preset=tiny --port_base=8600 --serve_s=60 --out=runs/web",
        )),
    ("crawl",): Command(
        "curation.acquire.crawler", "CrawlConfig",
        "crawl sites for (image url, alt text) pairs, recording opt-out signals",
        examples=(
            "mithridate crawl --seeds=http://127.0.0.10:8600/ --allow_networks=127.0.0.0/24 --out=runs/crawl",
            "mithridate crawl --seeds=https://example.org/ --deadline_s=20 --warc=true --out=runs/crawl",
        )),
    ("pairs",): Command(
        "curation.acquire.pairs", "PairsConfig",
        "read a WARC, WAT or URL list (csv/tsv/jsonl/parquet/txt) into pairs shards",
        examples=(
            "mithridate pairs --input=runs/crawl/crawl.warc.gz --out=runs/from-warc",
            "mithridate pairs --input=urls.csv --url_col=url --caption_col= --out=runs/pairs",
        )),
    ("download",): Command(
        "curation.acquire.downloader", "DownloadConfig",
        "download pairs with img2dataset into parquet image shards, under an opt-out policy",
        examples=(
            "mithridate download --pairs=runs/crawl/pairs --out=runs/shards --allow_networks=127.0.0.0/24",
            "mithridate download --pairs=runs/pairs/pairs --policy=record --deadline_s=10 --out=runs/shards",
        )),
    ("clip", "train"): Command(
        "curation.score.clip_train", "ClipTrainConfig",
        "train the compact CLIP (open_clip ResNet + text tower) on the art corpus and evaluate it",
        examples=(
            "mithridate clip train --preset=tiny --out=runs/clip",
        )),
    ("embed",): Command(
        "curation.score.embed", "EmbedConfig",
        "embed downloaded shards: L2-normalised fp16 image and text embeddings per shard (npz)",
        examples=(
            "mithridate embed --shards=runs/shards --pretrained=runs/clip --out=runs/embeddings",
        )),
    ("aesthetic", "train"): Command(
        "curation.score.aesthetic", "AestheticTrainConfig",
        "train the aesthetic/quality head (improved-aesthetic-predictor MLP) on image embeddings from a ratings "
        "table, or from the demo web's planted degradations",
        examples=(
            "mithridate aesthetic train --preset=tiny --shards=runs/shards --embeddings=runs/embeddings "
            "--out=runs/aesthetic_head",
        ), run="train", presets="TRAIN_PRESETS"),
    ("aesthetic", "score"): Command(
        "curation.score.aesthetic", "AestheticScoreConfig",
        "score image embeddings with an aesthetic head (ours, LAION's ViT-L/14 linear head, or an "
        "improved-aesthetic-predictor state dict)",
        examples=(
            "mithridate aesthetic score --embeddings=runs/embeddings --head_path=runs/aesthetic_head/head.pt "
            "--out=runs/aesthetic",
        ), run="score", presets="SCORE_PRESETS"),
    ("filter",): Command(
        "curation.select.filtering", "FilterConfig",
        "decide keep/exclude for every downloaded row, with a reason: opt-outs, registry, re-uploads, caption and "
        "image rules, CLIP and aesthetic scores, dedup",
        examples=(
            "mithridate filter --shards=runs/shards --embeddings=runs/embeddings --clip_top_fraction=0.8 "
            "--out=runs/filter",
        )),
    ("subset",): Command(
        "curation.select.subsets", "SubsetConfig",
        "combine uid subsets (.npy, DataComp format) by intersect, union or minus",
        examples=(
            "mithridate subset --inputs=runs/filter/subsets/keep.npy,runs/other.npy --op=intersect --out=runs/both.npy",
        )),
    ("export",): Command(
        "curation.select.export", "ExportConfig",
        "write the kept rows as train-ready shards (image, caption, uid, artist, licence, scores)",
        examples=(
            "mithridate export --shards=runs/shards --filter=runs/filter --out=runs/train",
        )),
    ("release",): Command(
        "curation.select.release", "ReleaseConfig",
        "publish exported rows as a URL list with the sha256 of the original bytes and a pHash",
        examples=(
            "mithridate release --export=runs/train --shards=runs/shards --out=runs/release",
        ), run="release", presets="RELEASE_PRESETS"),
    ("rebuild",): Command(
        "curation.select.release", "RebuildConfig",
        "download a release again per verification mode (sha256, none, phash) and count what changed, was caught or "
        "admitted (split-view poisoning): integrity.json",
        examples=(
            "mithridate rebuild --release=runs/release/release.parquet --allow_networks=127.0.0.0/24 "
            "--out=runs/rebuild",
        ), run="rebuild", presets="REBUILD_PRESETS"),
}


def main(argv: list[str] | None = None) -> int:
    return _main(COMMANDS, "curation", argv, "Crawl, download and curate image–alt-text data.")
