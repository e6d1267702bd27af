"""Whose style is an image in? A linear probe on compact-CLIP image features, trained on the art corpus.

Generations pass through the autoencoder's decoder, so the probe is trained on the corpus images *as the
autoencoder reconstructs them* (the best a generation can look) and tested on held-out concepts: it must
recognise the artist's drawing, not the concept. Its held-out accuracy (reconstructions and originals) is
reported beside every rate it produces. Held-out corpus images are not generations: the opt-out evaluation also
validates the probe on generations (`artist_removal.probe_validation`) — its rate on a model trained on the artist's
works must clear its false-positive floor on a model that never saw them, else it gives no style verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from diffusion import data

logger = logging.getLogger(__name__)


@torch.no_grad()
def reconstruct(ae, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Images in [−1, 1] → the autoencoder's reconstructions as uint8 `(N, S, S, 3)`."""
    out = []
    for i in range(0, len(images), batch):
        out.append(data.to_uint8(ae.decode_latents(ae.encode_latents(images[i : i + batch]))))
    return np.concatenate(out)


def concept_split(concepts: list[str], held_out: float, seed: int) -> np.ndarray:
    """True for rows whose concept is held out (a seeded `held_out` fraction of the distinct concepts)."""
    names = sorted(set(concepts))
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(names, size=max(1, round(held_out * len(names))), replace=False).tolist())
    return np.array([c in chosen for c in concepts])


@dataclass
class StyleClassifier:
    """Artist probe: `predict(features)` → artist index; `artists[i]` names it; accuracies on held-out concepts."""

    artists: list[str]
    model: object
    feature_space: str
    heldout_accuracy: float
    heldout_accuracy_originals: float
    heldout_images: int

    def predict(self, feats: np.ndarray) -> np.ndarray:
        return self.model.predict(feats)

    def info(self) -> dict:
        return {"artists": self.artists, "feature_space": self.feature_space,
                "heldout_accuracy": round(self.heldout_accuracy, 4),
                "heldout_accuracy_originals": round(self.heldout_accuracy_originals, 4),
                "heldout_images": self.heldout_images, "chance": round(1 / len(self.artists), 4)}


def train(corpus, concepts: list[str], encoder, ae, held_out: float = 0.2, seed: int = 0) -> StyleClassifier:
    """Fit the probe on the corpus (`data.ImageSet` with artists) reconstructed by `ae`, features of `encoder`."""
    from sklearn.linear_model import LogisticRegression

    artists = sorted(set(corpus.artists))
    if len(artists) < 2:
        raise ValueError(f"style classifier: the art corpus has {len(artists)} artist(s); it needs at least 2")
    y = np.array([artists.index(a) for a in corpus.artists])
    test = concept_split(concepts, held_out, seed)
    recon = encoder.encode_images(list(reconstruct(ae, corpus.images)))
    orig = encoder.encode_images(list(data.to_uint8(corpus.images)))
    model = LogisticRegression(max_iter=2000, C=1.0).fit(recon[~test], y[~test])
    acc = float((model.predict(recon[test]) == y[test]).mean())
    acc_orig = float((model.predict(orig[test]) == y[test]).mean())
    logger.info("style classifier: %d artists, held-out concepts %d images: accuracy %.1f%% on reconstructions, "
                "%.1f%% on originals (chance %.1f%%)", len(artists), int(test.sum()), 100 * acc, 100 * acc_orig,
                100 / len(artists))
    return StyleClassifier(artists, model.fit(recon, y), encoder.name, acc, acc_orig, int(test.sum()))
