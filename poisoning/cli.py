"""The poisoning command table (`python -m poisoning …`, also under `mithridate …`)."""

from __future__ import annotations

from mithridate.core.commands import Command, main as _main

COMMANDS = {
    ("poison", "inject"): Command(
        "poisoning.inject", "InjectConfig",
        "mix N poisons (nightshade: encoder-space perturbations of source-concept images; dirty_label: target images "
        "with source captions) into a copy of the clean shards",
        examples=(
            "mithridate poison inject --preset=tiny --data=runs/pair/train --checkpoint=runs/pair/clean "
            "--out=runs/inject",
        )),
    ("poison", "pair"): Command(
        "poisoning.concept_pair", "PairConfig",
        "a concept pair with many clean images for dose experiments (vehicle → animal super-concepts, or one artist's"
        " style → another's) from the art corpus, and its independent judge → train/, pair.json, judge/",
        examples=(
            "mithridate poison pair --out=runs/pair-va",
            "mithridate poison pair --preset=style --out=runs/pair-style",
        )),
    ("poison", "sweep"): Command(
        "poisoning.sweep", "SweepConfig",
        "attack success vs dose (N, or a fraction of the clean images of C) for each attack, beside a clean control, "
        "a positive control and a benign victim, over seeds: preconditions, ε sweep, bleed-through, collateral, CLIP "
        "filter, detector vs its benign control, purification → results.parquet, doses.png, sweep.json, defences.json",
        examples=(
            "mithridate poison sweep --preset=tiny --data=runs/pair/train --checkpoint=runs/pair/clean "
            "--out=runs/sweep",
        )),
    ("poison", "attackability"): Command(
        "poisoning.attackability", "AttackabilityConfig",
        "fraction of the latent gap an L∞ attack closes at each budget ε (white-box and transfer), with poison "
        "PSNR/SSIM → attackability.json/.png beside the vae",
        examples=(
            "mithridate poison attackability --vae=runs/vae --data=runs/train --pairs=cow:house "
            "--out=runs/attackability",
        )),
    ("poison", "study"): Command(
        "poisoning.study", "StudyConfig",
        "train autoencoder design variants × seeds and measure each one's attackability → study.parquet, study.json, "
        "frontier.png (gap closed vs reconstruction PSNR)",
        examples=(
            "mithridate poison study --preset=tiny --data=runs/train --out=runs/study",
        )),
    ("optout", "evaluate"): Command(
        "poisoning.audit.artist_removal", "OptoutConfig",
        "does honouring opt-outs remove an artist from the model? datasets under each opt-out policy + retraining "
        "without the artist, one model each (same budget and seed), style probe, nearest-work similarity, l2-ratio "
        "memorisation → optout.json, optout.png",
        examples=(
            "mithridate optout evaluate --preset=tiny --art_preset=tiny --filter=runs/filter-record --out=runs/optout",
        )),
}


def main(argv: list[str] | None = None) -> int:
    return _main(COMMANDS, "poisoning", argv, "Poisoning: Nightshade-style and dirty-label attacks.")
