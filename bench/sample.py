"""Benchmark: time per image and quality of the samplers on one trained model (DDPM-1000 is the anchor).

Same checkpoint, same prompts (each evaluation concept `--n` times), the same initial noise for every sampler;
quality is measured by `mithridate evaluate`'s judge (a compact CLIP): zero-shot concept accuracy among the
model's concepts and KID against the real images of those concepts, in compact-CLIP feature space.

    python bench/sample.py --checkpoint mithridate-out/demo/diffusion
    python bench/sample.py --checkpoint … --runs ddpm:1000,ddim:50,euler:20,heun:10,dpmpp_2m:20 --repeats 3

Prints, per sampler: network evaluations, median seconds per image over `--repeats`, the speed-up against the
anchor (first run), top-1, KID; writes `<out>/results.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/sample.py` from anywhere
    sys.path.insert(0, str(REPO))

from diffusion import evaluation, metrics  # noqa: E402
from diffusion.pipeline import Pipeline  # noqa: E402

logger = logging.getLogger("bench.sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="diffusion checkpoint (`train` folder or model.pt)")
    p.add_argument("--runs", default="ddpm:1000,ddim:50,euler:20", help="sampler:steps[:guidance], anchor first")
    p.add_argument("--n", type=int, default=4, help="images per concept")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale of runs that do not give one")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions per sampler (median reported)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="", help="folder of results.json ('' = a temp dir)")
    return p.parse_args(argv)


def measure(pipe: Pipeline, judge: evaluation.Judge, prompts: list[str], labels: np.ndarray, real: np.ndarray,
            run: str, guidance: float, repeats: int) -> dict:
    sampler, steps, g = evaluation.parse_run(run, guidance)
    times = []
    for _ in range(repeats):
        if pipe.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images = pipe.generate(prompts, sampler, steps, g, seed=0)
        if pipe.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / len(prompts))
    feats = judge.features(images)
    acc = metrics.zero_shot_accuracy(feats, judge.text_emb, labels)
    kid, kid_std = metrics.kid(real, feats, subset_size=min(1000, len(real), len(feats)))
    return {"run": run, "nfe": evaluation.nfe(sampler, steps), "guidance": g, "seconds_per_image":
            statistics.median(times), "times": times, "top1": acc["top1"], "chance": acc["chance"], "kid": kid,
            "kid_std": kid_std}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pipe = Pipeline.load(args.checkpoint, args.device)
    concepts = list(pipe.info.get("concepts") or [])
    if len(concepts) < 2:
        raise SystemExit("the checkpoint names fewer than 2 concepts; train with --concepts")
    cfg = dataclasses.replace(evaluation.PRESETS["default"], checkpoint=args.checkpoint, n_per_concept=args.n)
    judge = evaluation.Judge(pipe.text.path, concepts, pipe.device)
    real, _ = evaluation._references(cfg, pipe, concepts)
    real_feats = judge.features(real)
    prompts = [c for c in concepts for _ in range(args.n)]
    labels = np.repeat(np.arange(len(concepts)), args.n)
    rows = [measure(pipe, judge, prompts, labels, real_feats, r, args.guidance, args.repeats)
            for r in args.runs.split(",")]
    anchor = rows[0]["seconds_per_image"]
    print(f"\n{len(prompts)} images ({len(concepts)} concepts × {args.n}), device {pipe.device}; "
          f"features: {judge.encoder.name} (not Inception)")
    print(f"{'run':<16}{'NFE':>6}{'s/image':>10}{'speed-up':>10}{'top-1':>8}{'KID×10³':>10}")
    for r in rows:
        print(f"{r['run']:<16}{r['nfe']:>6}{r['seconds_per_image']:>10.4f}{anchor / r['seconds_per_image']:>9.1f}×"
              f"{100 * r['top1']:>7.1f}%{1e3 * r['kid']:>10.3f}")
    print(f"chance {100 * rows[0]['chance']:.1f}%")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-sample-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    logger.info("results: %s", out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
