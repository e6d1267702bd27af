"""How close do generations come to an artist's works? Nearest-neighbour similarity and the ℓ2-ratio test.

- Nearest-neighbour similarity in a named feature space (compact-CLIP image features): each generation's
  highest cosine to the artist's works, read against the *train-to-train background* — each work's highest
  cosine to the artist's other works (leave one out). A generation closer to a work than the works are to each
  other is a near-copy.
- Carlini et al. (2023, "Extracting training data from diffusion models") ℓ2-ratio test in pixel space: a
  generation x̂ is memorised when ℓ2(x̂, x₁) < α · mean ℓ2(x̂, x_i) over its n nearest reference images
  (x₁ the nearest; α = 0.5, n = 50 as in the paper, n capped by the reference set size). The reference is the
  model's own training set (`l2_ratio`), or — for "is this a copy of the artist's work?" — a fixed reference set
  that does not depend on what the model trained on (`copies`): every work of the artist plus the other artists'
  works of the same concepts. A copy is a generation whose nearest reference image is the artist's and whose
  ratio is below α, so a model that never saw the artist can still score one (it drew a concept very like the
  artist's version of it).
"""

from __future__ import annotations

import numpy as np

ALPHA, NEIGHBOURS = 0.5, 50


def nearest_similarity(feats: np.ndarray, works: np.ndarray) -> np.ndarray:
    """Each row of `feats`' highest cosine to a row of `works` (both L2-normalised)."""
    if len(works) == 0:
        raise ValueError("nearest_similarity: no works to compare with")
    return (feats @ works.T).max(axis=1)


def background_similarity(works: np.ndarray) -> np.ndarray:
    """Each work's highest cosine to the other works (the train-to-train background)."""
    if len(works) < 2:
        raise ValueError("background_similarity: needs at least 2 works")
    sim = works @ works.T
    np.fill_diagonal(sim, -np.inf)
    return sim.max(axis=1)


def l2_ratio(generated: np.ndarray, train: np.ndarray, n: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """(ratio, index of the nearest training image) per generation; uint8 or float images `(N, S, S, 3)`.

    ratio = ℓ2 to the nearest / mean ℓ2 to the `n` nearest; memorised when ratio < `ALPHA`. With one training
    image the ratio is 1 (the test cannot tell a copy from a lone neighbour).
    """
    if len(train) == 0:
        raise ValueError("l2_ratio: no training images")
    g = generated.reshape(len(generated), -1).astype(np.float64) / 255.0
    t = train.reshape(len(train), -1).astype(np.float64) / 255.0
    d = np.sqrt(np.maximum((g * g).sum(1)[:, None] + (t * t).sum(1)[None] - 2 * g @ t.T, 0.0))
    n = min(n, len(train))
    if n == 1:
        return np.ones(len(g)), d.argmin(axis=1)
    near = np.sort(d, axis=1)[:, :n]
    return near[:, 0] / np.maximum(near.mean(axis=1), 1e-12), d.argmin(axis=1)


def copies(generated: np.ndarray, reference: np.ndarray, reference_artists: list[str], artist: str,
           n: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(copy, ratio, nearest index) per generation against a fixed `reference` set (uint8 `(M, S, S, 3)`).

    copy: the ℓ2-ratio test says memorised (ratio < `ALPHA`) and the nearest reference image is `artist`'s.
    """
    if len(reference_artists) != len(reference):
        raise ValueError(f"reference_artists: {len(reference_artists)} names for {len(reference)} reference images")
    if artist not in reference_artists:
        raise ValueError(f"artist={artist!r}: none of the reference images is theirs")
    if generated.shape[1:] != reference.shape[1:]:
        raise ValueError(f"reference: images {reference.shape[1:]} but generations {generated.shape[1:]}")
    ratio, nearest = l2_ratio(generated, reference, n)
    theirs = np.array(reference_artists)[nearest] == artist
    return (ratio < ALPHA) & theirs, ratio, nearest
