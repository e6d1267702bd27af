"""The reports command table (`python -m reports …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import commands
from reports import dataset, demo, generation, poisoning, story

COMMANDS = {
    ("report", "dataset"): (dataset.DatasetReportConfig, dataset.PRESETS, dataset.build,
                            "write the dataset audit (HTML with figures + metrics.json) from stage outputs"),
    ("report", "generation"): (generation.GenerationReportConfig, generation.PRESETS, generation.build,
                               "write the generation report (autoencoder, diffusion training, evaluation per "
                               "sampler) from the vae train / train / evaluate folders"),
    ("report", "poisoning"): (poisoning.PoisoningReportConfig, poisoning.PRESETS, poisoning.build,
                              "write the poisoning report (attack success vs N beside a control, bleed-through, "
                              "collateral, poisons, defences) from the poison sweep folder"),
    ("report", "story"): (story.StoryConfig, story.PRESETS, story.build,
                          "one page for a whole demo run: dataset, model, poisoning, opt-out and integrity parts with "
                          "a table of contents → report/index.html + metrics.json"),
    ("demo",): (demo.DemoConfig, demo.PRESETS, demo.run,
                "run the whole story on the embedded default: art → web → crawl → download → funnel → curate → "
                "dataset report → autoencoder → latent diffusion → evaluation → poisoning sweep → opt-out evaluation → "
                "release + domain expiry + verified rebuild → one report (report/index.html) + metrics.json"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "reports", argv, "Audit reports and the end-to-end demo.")
