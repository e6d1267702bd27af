"""The attacks of `poison inject` and `poison sweep`, by kind (torch-free: the reports read it)."""

from typing import Literal

ATTACKS = ("dirty_label", "nightshade", "benign", "anchor", "gradient_matching", "latent_target")
PERTURBING = ("nightshade", "gradient_matching", "latent_target")  # clean label: images perturbed within a budget ε
TRAINING_SIGNAL = ("gradient_matching", "latent_target")  # aim at what the UNet learns: crafted on the clean UNet
Attack = Literal[ATTACKS]  # a config field's type (CLI choices), derived from ATTACKS, never retyped
