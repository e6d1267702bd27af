"""The poisoning command table (`python -m poisoning …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import commands
from poisoning import inject

COMMANDS = {
    ("poison", "inject"): (inject.InjectConfig, inject.PRESETS, inject.run,
                           "mix N poisons (nightshade: encoder-space perturbations of source-concept images; "
                           "dirty_label: target images with source captions) into a copy of the clean shards"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "poisoning", argv, "Poisoning: Nightshade-style and dirty-label attacks.")
