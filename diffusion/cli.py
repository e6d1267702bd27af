"""The diffusion command table (`python -m diffusion …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import commands
from diffusion import toy

COMMANDS = {
    ("toy",): (toy.ToyConfig, toy.PRESETS, toy.run,
               "the 2-D DDPM walk-through: four MLP variants (no time, time, Fourier, shifted schedule) on "
               "moons, circles or the sauropod emoji, scored by Chamfer distance and MMD"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "diffusion", argv, "Diffusion models: the 2-D toy experiment.")
