"""The `mithridate` console script: the packages' command tables merged (a name defined twice is an error)."""

from __future__ import annotations

import curation.cli
import diffusion.cli
import poisoning.cli
import reports.cli
from mithridate.core import commands

COMMANDS = commands.merge(("curation", curation.cli.COMMANDS), ("diffusion", diffusion.cli.COMMANDS),
                          ("poisoning", poisoning.cli.COMMANDS), ("reports", reports.cli.COMMANDS))


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "mithridate", argv,
                         "mithridate: build, audit and poison text-to-image training data.")
