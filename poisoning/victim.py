"""Victims: the clean model continued on (poisoned) training data — Nightshade's main setting — or retrained.

Every victim and its control share the clean model's training configuration (autoencoder, text encoder,
concepts, UNet) and differ only in the data folder: the same seed gives the same batch order, caption dropout
and noise, so a difference between them is the poisons' doing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from diffusion import pipeline, training
from mithridate.core import options, workers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VictimTraining:
    """How victims are trained: `steps` of continued training at `lr` (or from scratch), `batch_size` images."""
    steps: int = 150
    lr: float = 3e-4
    warmup_steps: int = 10
    batch_size: int = 64
    from_scratch: bool = False


def config(checkpoint: str | Path, data: str | Path, out: str | Path, how: VictimTraining,
           seed: int) -> training.TrainConfig:
    """The `TrainConfig` of a victim of the clean model at `checkpoint`, trained on `data`."""
    ckpt = pipeline.read_checkpoint(checkpoint)
    cfg = options.from_dict(training.TrainConfig, ckpt["train_config"])
    return dataclasses.replace(
        cfg, data=str(data), out=str(out), init="" if how.from_scratch else str(checkpoint),
        steps=how.steps if not how.from_scratch else max(how.steps, cfg.steps), lr=how.lr if not how.from_scratch
        else cfg.lr, warmup_steps=how.warmup_steps if not how.from_scratch else cfg.warmup_steps,
        batch_size=how.batch_size, minutes=0.0, sample_every=0, checkpoint_every=max(how.steps, cfg.steps),
        seed=seed, compile=False)


def train(checkpoint: str | Path, data: str | Path, out: str | Path, how: VictimTraining, seed: int) -> Path:
    """Train one victim (or reuse a finished one in `out`); returns its folder."""
    out, cfg = Path(out), config(checkpoint, data, out, how, seed)
    options.check_resumable(cfg, out, runtime_fields=("device", "compile"))
    if (out / pipeline.CHECKPOINT_FILE).is_file() and (out / "train.json").is_file():
        logger.debug("victim %s: finished earlier, reused", out.name)
        return out
    logger.info("victim %s: training", out.name)
    return training.run(cfg)


def train_all(checkpoint: str | Path, jobs: list[tuple[Path, Path, int]], how: VictimTraining, n_workers: int = 1,
              threads: int = 0) -> list[Path]:
    """Train every victim `(data, out, seed)` (finished ones reused), `n_workers` side by side with `threads` torch
    threads each (`core.workers.run`: the victims depend on `threads`, not on `n_workers`)."""
    return workers.run(train, [(str(checkpoint), str(d), str(o), how, s) for d, o, s in jobs], n_workers, threads,
                       "victim training")
