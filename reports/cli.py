"""The reports command table (`python -m reports …`, also under `mithridate …`)."""

from __future__ import annotations

from mithridate.core.commands import Command, main as _main

COMMANDS = {
    ("report", "dataset"): Command(
        "reports.dataset", "DatasetReportConfig",
        "write the dataset audit (HTML with figures + metrics.json) from stage outputs",
        examples=(
            "mithridate report dataset --crawl=runs/crawl --shards=runs/shards --filter=runs/filter --out=runs/report",
        ), run="build"),
    ("report", "generation"): Command(
        "reports.generation", "GenerationReportConfig",
        "write the generation report (autoencoder, diffusion training, evaluation per sampler) from the vae train / "
        "train / evaluate folders",
        examples=(
            "mithridate report generation --vae=runs/vae --diffusion=runs/diffusion --evaluate=runs/evaluate "
            "--out=runs/report",
        ), run="build"),
    ("report", "poisoning"): Command(
        "reports.poisoning", "PoisoningReportConfig",
        "write the poisoning report (attack success vs N beside a control, bleed-through, collateral, poisons, "
        "defences) from the poison sweep folder",
        examples=(
            "mithridate report poisoning --sweep=runs/sweep --out=runs/report",
        ), run="build"),
    ("report", "story"): Command(
        "reports.story", "StoryConfig",
        "one page for a whole demo run: dataset, model, poisoning, opt-out and integrity parts with a table of "
        "contents → report/index.html + metrics.json",
        examples=(
            "mithridate report story --run=mithridate-out/demo",
        ), run="build"),
    ("demo",): Command(
        "reports.demo", "DemoConfig",
        "run the whole story on the embedded default: art → web → crawl → download → funnel → curate → dataset report"
        " → autoencoder → latent diffusion → evaluation → poisoning sweep → opt-out evaluation → release + domain "
        "expiry + verified rebuild → one report (report/index.html) + metrics.json",
        examples=(
            "mithridate demo",
            "mithridate demo --preset=tiny --out=runs/demo-tiny",
        )),
}


def main(argv: list[str] | None = None) -> int:
    return _main(COMMANDS, "reports", argv, "Audit reports and the end-to-end demo.")
