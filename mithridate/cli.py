"""The `mithridate` console script: the packages' command tables merged, nothing else."""

from __future__ import annotations

import curation.cli
import diffusion.cli
import poisoning.cli
import reports.cli
from curation import commands

COMMANDS = {**curation.cli.COMMANDS, **diffusion.cli.COMMANDS, **poisoning.cli.COMMANDS, **reports.cli.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "mithridate", argv,
                         "mithridate: build, audit and poison text-to-image training data.")
