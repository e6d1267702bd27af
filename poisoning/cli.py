"""The poisoning command table (`python -m poisoning …`, also under `mithridate …`)."""

from __future__ import annotations

from curation import commands
from poisoning import attackability, inject, optout, pairs, study, sweep

COMMANDS = {
    ("poison", "inject"): (inject.InjectConfig, inject.PRESETS, inject.run,
                           "mix N poisons (nightshade: encoder-space perturbations of source-concept images; "
                           "dirty_label: target images with source captions) into a copy of the clean shards"),
    ("poison", "pair"): (pairs.PairConfig, pairs.PRESETS, pairs.run,
                         "a concept pair with many clean images for dose experiments (vehicle → animal "
                         "super-concepts, or one artist's style → another's) from the art corpus, and its "
                         "independent judge → train/, pair.json, judge/"),
    ("poison", "sweep"): (sweep.SweepConfig, sweep.PRESETS, sweep.run,
                          "attack success vs dose (N, or a fraction of the clean images of C) for each attack, "
                          "beside a clean control, a positive control and a benign victim, over seeds: "
                          "preconditions, ε sweep, bleed-through, collateral, CLIP filter, detector vs its benign "
                          "control, purification → results.parquet, doses.png, sweep.json, defences.json"),
    ("poison", "attackability"): (attackability.AttackabilityConfig, attackability.PRESETS, attackability.run,
                                  "fraction of the latent gap an L∞ attack closes at each budget ε (white-box and "
                                  "transfer), with poison PSNR/SSIM → attackability.json/.png beside the vae"),
    ("poison", "study"): (study.StudyConfig, study.PRESETS, study.run,
                          "train autoencoder design variants × seeds and measure each one's attackability → "
                          "study.parquet, study.json, frontier.png (gap closed vs reconstruction PSNR)"),
    ("optout", "evaluate"): (optout.OptoutConfig, optout.PRESETS, optout.run,
                             "does honouring opt-outs remove an artist from the model? datasets under each opt-out "
                             "policy + retraining without the artist, one model each (same budget and seed), "
                             "style probe, nearest-work similarity, l2-ratio memorisation → optout.json, optout.png"),
}


def main(argv: list[str] | None = None) -> int:
    return commands.main(COMMANDS, "poisoning", argv, "Poisoning: Nightshade-style and dirty-label attacks.")
