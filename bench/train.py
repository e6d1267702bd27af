"""Benchmark: training throughput of our latent UNet against diffusers' `UNet2DConditionModel`, same task.

Both contenders train on the same random batches: 4×S×S latents noised with the linear DDPM schedule at
random timesteps, text tokens (B, 32, 128) with a padding mask, a pooled text embedding (B, 256); AdamW and
an MSE loss on ε, same batch size, same device (bf16 autocast on CUDA). diffusers is configured like ours:
cross-attention at the same levels (`CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`, cross-attention mid block),
the same `layers_per_block`, `cross_attention_dim=128`, the pooled text through
`class_embed_type="projection"`, "scale_shift" ResBlocks, and the `block_out_channels` (multiples of 32) whose
parameter count is closest to ours.

    python bench/train.py                           # cpu preset, 4×8×8 latents, batch 128
    python bench/train.py --preset gpu --device cuda --batch 256
    python bench/train.py --diffusers_channels 64,128 --windows 7

After `--warmup` steps each, the contenders alternate timed windows of `--steps` steps. Prints the median
images/s of each and the ratio ours/diffusers (target ≥ 1.0). Needs `pip install diffusers`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python bench/train.py` from anywhere

from diffusion.nn import count_parameters
from diffusion.schedule import NoiseSchedule
from diffusion.unet import PRESETS, create

logger = logging.getLogger("bench.train")
OURS, ANCHOR = "mithridate UNet", "diffusers UNet2DCond"
TARGET = 1.0
PARAM_TOLERANCE = 1.15  # diffusers' parameter count within this factor of ours
TOKENS = 32  # context length of our compact CLIP text tower
NATURAL_LATENT = {"tiny": 8, "cpu": 8, "gpu": 16}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="our UNet preset (diffusers is matched)")
    p.add_argument("--latent", type=int, default=0, help="latent side S of 4×S×S (0 = 8 for cpu, 16 for gpu)")
    p.add_argument("--batch", type=int, default=128, help="latents per training step, both contenders")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows per contender (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured training steps per contender first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available; cuda trains under bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--diffusers_channels", default="",
                   help="diffusers block_out_channels, e.g. 64,128 ('' = closest parameter count to ours)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, both contenders")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    p.add_argument("--out", default="", help="write <out>/results.json ('' = print only)")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "windows"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    return args


def require_diffusers():
    """The diffusers module, or exit with an install hint."""
    try:
        import diffusers
    except ImportError:
        raise SystemExit("bench/train.py compares against diffusers, which is not installed: "
                         "run `.venv/bin/pip install diffusers`") from None
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return diffusers


# --------------------------------------------------------------------------------------------- models


def diffusers_kwargs(cfg: dict, channels: tuple[int, ...], latent: int) -> dict:
    """UNet2DConditionModel kwargs mirroring our config `cfg`, with `channels` as block_out_channels."""
    n, cross = len(channels), set(cfg["cross_attention_levels"])
    return {
        "sample_size": latent, "in_channels": cfg["in_channels"], "out_channels": cfg["in_channels"],
        "down_block_types": tuple("CrossAttnDownBlock2D" if i in cross else "DownBlock2D" for i in range(n)),
        "up_block_types": tuple("CrossAttnUpBlock2D" if i in cross else "UpBlock2D" for i in reversed(range(n))),
        "block_out_channels": tuple(channels), "layers_per_block": cfg["layers_per_level"],
        "cross_attention_dim": cfg["token_dim"], "attention_head_dim": cfg["heads"],  # diffusers: = heads here
        "norm_num_groups": 32, "resnet_time_scale_shift": "scale_shift",
        "class_embed_type": "projection", "projection_class_embeddings_input_dim": cfg["cond_dim"],
    }


def match_channels(diffusers, cfg: dict, target: int, latent: int) -> tuple[int, ...]:
    """diffusers block_out_channels for a fair match of our config with `target` parameters.

    Candidates: per level ½×…2× our channels, multiples of 32, non-decreasing. Among those within 15% of our
    parameter count, the one closest to our channels (Σ |log ratio| per level), then closest in parameters;
    when none is within 15%, the one closest in parameters.
    """
    options = [sorted({max(32, round(c * f / 32) * 32) for f in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)})
               for c in cfg["channels"]]
    scored = []
    for ch in itertools.product(*options):
        if list(ch) != sorted(ch):
            continue
        with torch.device("meta"):
            model = diffusers.UNet2DConditionModel(**diffusers_kwargs(cfg, ch, latent))
        gap = abs(math.log(count_parameters(model, trainable_only=True) / target))
        shape = sum(abs(math.log(c / o)) for c, o in zip(ch, cfg["channels"], strict=True))
        scored.append((gap > math.log(PARAM_TOLERANCE), round(shape, 6), gap, ch))
    near = [s for s in scored if not s[0]]
    return min(near, key=lambda s: s[1:3])[3] if near else min(scored, key=lambda s: s[2])[3]


def build_models(args: argparse.Namespace, diffusers) -> dict[str, torch.nn.Module]:
    cfg = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    ours = create(args.preset)
    channels = (tuple(int(c) for c in args.diffusers_channels.split(",")) if args.diffusers_channels
                else match_channels(diffusers, cfg, count_parameters(ours, trainable_only=True), args.latent))
    theirs = diffusers.UNet2DConditionModel(**diffusers_kwargs(cfg, channels, args.latent))
    return {OURS: ours, ANCHOR: theirs}


# --------------------------------------------------------------------------------------------- training


def make_batches(args: argparse.Namespace, cfg: dict, n: int = 4) -> list[dict]:
    """`n` training batches on the device: x_t, t, ε, pooled text, tokens and their padding mask."""
    g = torch.Generator().manual_seed(args.seed + 1)
    sched = NoiseSchedule(1000)
    b, s = args.batch, args.latent
    batches = []
    for _ in range(n):
        x0, eps = torch.randn(b, cfg["in_channels"], s, s, generator=g), torch.randn(b, cfg["in_channels"], s, s,
                                                                                    generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)
        lengths = torch.randint(4, TOKENS + 1, (b, 1), generator=g)
        batch = {"x_t": sched.add_noise(x0, eps, t), "t": t, "eps": eps,
                 "pooled": torch.randn(b, cfg["cond_dim"], generator=g),
                 "tokens": torch.randn(b, TOKENS, cfg["token_dim"], generator=g),
                 "mask": torch.arange(TOKENS)[None] < lengths}
        batches.append({k: v.to(args.device) for k, v in batch.items()})
    return batches


def predict(name: str, model, batch: dict) -> torch.Tensor:
    if name == OURS:
        return model(batch["x_t"], batch["t"].float(), batch["pooled"], batch["tokens"], batch["mask"])
    return model(batch["x_t"], batch["t"], encoder_hidden_states=batch["tokens"], class_labels=batch["pooled"],
                 encoder_attention_mask=batch["mask"]).sample


class Trainer:
    """One contender: model, AdamW, and `run(steps)`: wall and process CPU seconds of `steps` training steps."""

    def __init__(self, name: str, model: torch.nn.Module, args: argparse.Namespace, batches: list[dict]) -> None:
        self.name, self.device, self.batches, self.i = name, args.device, batches, 0
        self.model = model.to(args.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr)
        self.forward = torch.compile(self.model) if args.compile else self.model
        self.last_loss = math.nan

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
            loss = F.mse_loss(predict(self.name, self.forward, batch).float(), batch["eps"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last_loss = loss.detach()

    def run(self, steps: int) -> tuple[float, float]:
        if self.device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0


def measure(trainers: dict[str, Trainer], args: argparse.Namespace) -> tuple[dict, dict]:
    """Warm up each contender, then alternate timed windows: images/s and CPU seconds per step, per window."""
    for tr in trainers.values():
        logger.info("warming up %s (%d steps)", tr.name, args.warmup)
        tr.run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    for w in range(args.windows):
        order = list(trainers) if w % 2 == 0 else list(trainers)[::-1]
        for name in order:
            secs, cpu_secs = trainers[name].run(args.steps)
            rates[name].append(args.batch * args.steps / secs)
            cpu[name].append(cpu_secs / args.steps)
            logger.info("window %d %-22s %8.1f img/s (%.3f s/step, %.3f CPU s/step)", w, name, rates[name][-1],
                        secs / args.steps, cpu[name][-1])
    return rates, cpu


# --------------------------------------------------------------------------------------------- main


def report(args: argparse.Namespace, models: dict, trainers: dict, rates: dict, cpu: dict) -> dict:
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med[OURS] / med[ANCHOR]
    params = {k: count_parameters(m, trainable_only=True) for k, m in models.items()}
    channels = {OURS: list(PRESETS[args.preset]["channels"]), ANCHOR: list(models[ANCHOR].config.block_out_channels)}
    print(f"\ntrain benchmark: preset {args.preset}, latents 4×{args.latent}×{args.latent}, batch {args.batch}, "
          f"device {args.device}{' (bf16 autocast)' if args.device == 'cuda' else ''}, threads "
          f"{torch.get_num_threads()}, {args.windows} windows × {args.steps} steps (order alternated)")
    print(f"{'contender':<24}{'channels':>16}{'params':>12}{'median img/s':>14}{'min':>9}{'max':>9}"
          f"{'ms/step':>9}{'CPU s/step':>11}{'loss':>8}")
    for name in (ANCHOR, OURS):
        xs = rates[name]
        print(f"{name:<24}{tuple(channels[name])!s:>16}{params[name]:>12,}{med[name]:>14.1f}{min(xs):>9.1f}"
              f"{max(xs):>9.1f}{1000 * args.batch / med[name]:>9.0f}{cpu_med[name]:>11.3f}"
              f"{float(trainers[name].last_loss):>8.3f}")
    gap = params[ANCHOR] / params[OURS] - 1
    verdict = "OK" if ratio >= TARGET else "BELOW TARGET"
    print(f"\nratio ours/diffusers = {ratio:.2f} (target ≥ {TARGET:.2f})  {verdict}; diffusers has {gap:+.1%} "
          f"parameters{'  (more than 15% apart!)' if abs(math.log(1 + gap)) > math.log(PARAM_TOLERANCE) else ''}\n"
          f"CPU-time ratio diffusers/ours = {cpu_med[ANCHOR] / cpu_med[OURS]:.2f} (process CPU seconds per step; "
          "steadier than the wall clock on a shared machine)")
    return {"params": vars(args), "channels": channels, "parameters": params, "images_per_s": rates,
            "cpu_s_per_step": cpu, "median_images_per_s": med, "median_cpu_s_per_step": cpu_med,
            "ratio": round(ratio, 3), "cpu_time_ratio": round(cpu_med[ANCHOR] / cpu_med[OURS], 3),
            "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                        "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    diffusers = require_diffusers()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.latent = args.latent or NATURAL_LATENT[args.preset]
    models = build_models(args, diffusers)
    for name, m in models.items():
        logger.info("%-22s %12s parameters", name, f"{count_parameters(m, trainable_only=True):,}")
    batches = make_batches(args, PRESETS[args.preset])
    trainers = {name: Trainer(name, m, args, batches) for name, m in models.items()}
    results = report(args, models, trainers, *measure(trainers, args))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
