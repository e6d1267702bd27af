"""Benchmark: poisons crafted per second — Nightshade-style (L∞ ε = 0.04, 500 steps by default), or the
training-signal attacks (gradient matching, latent target) on a diffusion checkpoint.

The cost depends on the autoencoder's architecture, not its weights, so without `--checkpoint` a freshly
initialised autoencoder of the demo's `vae` preset is attacked; with one, the checkpoint's own autoencoder.

    python bench/poison.py                                   # cpu preset autoencoder, 32 px
    python bench/poison.py --checkpoint mithridate-out/demo/diffusion --device cuda
    python bench/poison.py --checkpoint mithridate-out/demo/diffusion --attack gradient_matching --steps 100 --n 16

Prints the median poisons/s over `--repeats` and the mean latent gap closed; `<out>/results.json` keeps it all.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/poison.py` from anywhere
    sys.path.insert(0, str(REPO))

from diffusion import (
    pipeline,  # noqa: E402
    vae_train as vae,
)
from diffusion.autoencoder import Autoencoder  # noqa: E402
from mithridate.core import compute
from poisoning import nightshade  # noqa: E402
from poisoning.budget import Budget  # noqa: E402

logger = logging.getLogger("bench.poison")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="", help="diffusion checkpoint whose autoencoder to attack ('' = fresh)")
    p.add_argument("--attack", default="nightshade", choices=("nightshade", "gradient_matching", "latent_target"),
                   help="what to craft (the training-signal attacks need --checkpoint: they use its UNet)")
    p.add_argument("--draws", type=int, default=4, help="gradient_matching, latent_target: draws per poison")
    p.add_argument("--n", type=int, default=64, help="poisons per run (one batch)")
    p.add_argument("--eps", type=float, default=0.04, help="L∞ budget, [0, 1] pixel units")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default="", help="folder of results.json ('' = a temp dir)")
    return p.parse_args(argv)


def autoencoder(checkpoint: str) -> tuple[Autoencoder, int]:
    if checkpoint:
        ckpt = pipeline.read_checkpoint(checkpoint)
        return pipeline.build_vae(ckpt["vae"]), int(ckpt["image_size"])
    cfg = vae.PRESETS["cpu"]
    return vae.build_model(cfg).eval().requires_grad_(False), cfg.image_size


def crafter(args: argparse.Namespace, ae: Autoencoder, device: str):
    """`craft(images, anchor) -> CraftResult` of the chosen attack."""
    if args.attack == "nightshade":
        return lambda images, anchor: nightshade.craft(ae.encode_latents, images, anchor, eps=args.eps,
                                                       steps=args.steps)
    if not args.checkpoint:
        raise SystemExit(f"--attack={args.attack} needs --checkpoint (a diffusion model: its UNet is attacked)")
    from poisoning import denoising, gradient_matching, latent_target

    model = denoising.CleanModel(pipeline.Pipeline.load(args.checkpoint, device))
    concept = (model.pipe.info.get("concepts") or ["cat"])[0]
    kw = {"budget": Budget(eps=args.eps), "steps": args.steps, "draws": args.draws}
    if args.attack == "latent_target":
        return lambda images, anchor: latent_target.craft(model, images, concept, **kw)
    return lambda images, anchor: gradient_matching.craft(model, images, [concept] * len(images), anchor, **kw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = compute.resolve_device(args.device)
    ae, size = autoencoder(args.checkpoint)
    ae = ae.to(device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.n, 3, size // 4, size // 4, generator=g) * 2 - 1)
    images = torch.nn.functional.interpolate(images, size=size, mode="bilinear").to(device)
    anchor = images[0].flip(-1)
    craft = crafter(args, ae, device)
    times, gaps = [], []
    for _ in range(args.repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = craft(images, anchor)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        gaps.append(statistics.mean(s.get("gap_closed", float("nan")) for s in result.stats[1:]))
    rate = args.n / statistics.median(times)
    print(f"\n{args.attack}: {args.n} poisons × {args.steps} steps at ε={args.eps} on {device}, {size} px, "
          f"autoencoder {sum(p.numel() for p in ae.parameters()) / 1e6:.2f}M params")
    print(f"median {statistics.median(times):.2f} s per batch → {rate:.1f} poisons/s "
          f"({rate * args.steps:.0f} image-steps/s); mean gap closed {statistics.mean(gaps):.3f}")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-poison-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "device": device, "seconds": times,
                                                  "poisons_per_s": rate, "gap_closed": gaps}, indent=2) + "\n")
    logger.info("results: %s", out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
