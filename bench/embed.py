"""Benchmark: `mithridate embed` against a plain open_clip batch loop, same shards, same model, same device.

The anchor is what clip-retrieval's inference does, written out with open_clip alone: read a shard, decode
each image, apply open_clip's preprocess, stack, `encode_image`; tokenize, `encode_text`; normalise; save.
Ours is `curation.score.embed.run`. Both load the model from the same compact checkpoint inside their timed region,
write fp16 `.npz` files, and run in this process, alternating which goes first.

    python bench/embed.py                         # shards of the default demo, random-init default compact CLIP
    python bench/embed.py --checkpoint mithridate-out/clip/clip.pt --repeats 5

Shards come from running the demo (art → web → crawl → download, default art preset) once into
`<out>/demo` (reused when present); `--copies` repeats them so each run embeds a few thousand images.
Prints median images/s of each and the ratio ours/anchor (target ≥ 1.0); `<out>/results.json` keeps it all.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/embed.py` from anywhere
    sys.path.insert(0, str(REPO))

from curation.score import clip_train, embed, encoders  # noqa: E402
from mithridate.core import compute, schema, stats_files
from reports import demo  # noqa: E402

logger = logging.getLogger("bench.embed")
OURS, ANCHOR = "mithridate embed", "open_clip loop"
TARGET = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="compact clip.pt ('' = random-init default architecture)")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per contender (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per contender first")
    p.add_argument("--batch_size", type=int, default=256, help="images per forward pass, both contenders")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda, both contenders")
    p.add_argument("--copies", type=int, default=4, help="how many times the demo's shards are repeated")
    p.add_argument("--art_preset", default="default", choices=["default", "tiny"], help="demo art preset")
    p.add_argument("--cache_dir", default="", help="art cache root ('' = $MITHRIDATE_CACHE, else the user cache)")
    p.add_argument("--out", default="", help="folder of results.json, the demo and scratch runs ('' = temp dir)")
    args = p.parse_args(argv)
    for name in ("repeats", "batch_size", "copies"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0")
    return args


def make_shards(out: Path, art_preset: str, cache_dir: str, copies: int) -> Path:
    """The demo's download shards (demo run once, reused), repeated `copies` times as 00000…, 00001…, …"""
    demo_out = out / "demo"
    if not stats_files.done(demo_out / "shards"):
        demo.run(demo.DemoConfig(out=str(demo_out), art_preset=art_preset, cache_dir=cache_dir, stop_after="download"))
    originals = embed.shard_files(demo_out / "shards")
    folder = out / "shards"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for k in range(copies):
        for j, f in enumerate(originals):
            shutil.copyfile(f, folder / f"{k * len(originals) + j:05d}.parquet")
    return folder


def make_checkpoint(out: Path, path: str) -> Path:
    """`path`, or a randomly initialised compact CLIP of the default preset's architecture (same speed)."""
    if path:
        return encoders.checkpoint_path(path)
    target = out / "clip-random.pt"
    cfg = clip_train.PRESETS["default"]
    clip_train.save_checkpoint(clip_train.build_model(cfg), cfg, target)
    return target


# --------------------------------------------------------------------------------------------- contenders


def anchor(shards: Path, ckpt: Path, out: Path, batch_size: int, device: str) -> int:
    """A plain open_clip loop: decode → preprocess → encode_image / tokenize → encode_text, per batch."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = open_clip.CLIP(**state["model_cfg"])
    model.load_state_dict(state["state_dict"])
    model = model.to(device).eval()
    preprocess = image_transform_v2(PreprocessCfg(**state["preprocess"]), is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=state["model_cfg"]["text_cfg"]["context_length"])
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(shards.glob("[0-9]*.parquet")):
        t = schema.read(f, "shard", ["uid", "status", "caption", "jpg"])
        t = t.filter(pc.equal(t["status"], "success")).to_pylist()
        img, txt = [], []
        for i in range(0, len(t), batch_size):
            rows = t[i : i + batch_size]
            x = torch.stack([preprocess(Image.open(io.BytesIO(r["jpg"])).convert("RGB")) for r in rows]).to(device)
            tok = tokenizer([r["caption"] for r in rows]).to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                fi, ft = model.encode_image(x), model.encode_text(tok)
            img.append(torch.nn.functional.normalize(fi.float(), dim=-1).cpu().numpy())
            txt.append(torch.nn.functional.normalize(ft.float(), dim=-1).cpu().numpy())
        np.savez(out / f"{f.stem}.npz", uid=np.array([r["uid"] for r in t]),
                 img_emb=np.concatenate(img).astype(np.float16), txt_emb=np.concatenate(txt).astype(np.float16))
        n += len(t)
    return n


def ours(shards: Path, ckpt: Path, out: Path, batch_size: int, device: str) -> int:
    cfg = embed.EmbedConfig(shards=str(shards), out=str(out), model="compact", pretrained=str(ckpt),
                            batch_size=batch_size, device=device)
    embed.run(cfg)
    return stats_files.read(out)["embedded"]


def timed(name: str, fn, shards: Path, ckpt: Path, out: Path, args) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    n = fn(shards, ckpt, out, args.batch_size, args.device)
    wall = time.perf_counter() - t0
    logger.info("%-18s %6d images in %6.2f s = %7.1f img/s", name, n, wall, n / wall)
    return {"images": n, "wall_s": round(wall, 3), "images_per_s": round(n / wall, 1)}


def same_embeddings(a: Path, b: Path) -> float:
    """Largest absolute difference between the two contenders' embeddings (uids must match)."""
    worst = 0.0
    for f in sorted(a.glob("[0-9]*.npz")):
        with np.load(f) as x, np.load(b / f.name) as y:
            if x["uid"].tolist() != y["uid"].tolist():
                raise RuntimeError(f"{f.name}: the contenders embedded different rows")
            for k in ("img_emb", "txt_emb"):
                worst = max(worst, float(np.abs(x[k].astype(np.float32) - y[k].astype(np.float32)).max()))
    return worst


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.device = compute.resolve_device(args.device)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-embed-"))
    shards = make_shards(out, args.art_preset, args.cache_dir, args.copies)
    ckpt = make_checkpoint(out, args.checkpoint)
    contenders = {ANCHOR: anchor, OURS: ours}
    runs: dict[str, list[dict]] = {ANCHOR: [], OURS: []}
    for r in range(args.warmup + args.repeats):
        order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
        for name in order:
            res = timed(name, contenders[name], shards, ckpt, out / f"run-{name.split()[0]}", args)
            if r >= args.warmup:
                runs[name].append(res)
    diff = same_embeddings(out / "run-open_clip", out / "run-mithridate")
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
    ratio = med[OURS] / med[ANCHOR]
    results = {"params": vars(args), "checkpoint": str(ckpt), "images": runs[OURS][0]["images"], "runs": runs,
               "median_images_per_s": med, "ratio": round(ratio, 3), "max_abs_diff": diff,
               "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                           "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nembed benchmark: {results['images']} images ({args.copies}× the demo's shards), batch "
          f"{args.batch_size}, device {args.device}, {args.repeats} repeats (order alternated)")
    print(f"{'contender':<20}{'median img/s':>14}{'min':>10}{'max':>10}")
    for name in (ANCHOR, OURS):
        xs = [x["images_per_s"] for x in runs[name]]
        print(f"{name:<20}{med[name]:>14.1f}{min(xs):>10.1f}{max(xs):>10.1f}")
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(f"\nratio ours/anchor = {ratio:.2f} (target ≥ {TARGET:.2f})  {verdict}; "
          f"embeddings agree to {diff:.1e}\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
