"""Candidate selection for a concept attack, as Nightshade's released code does it.

For a source concept C: take the training pairs whose caption names C, keep those whose image agrees with the
caption (CLIP score at or above a threshold), rank the captions by text-embedding similarity to a prompt for C,
and take the N best (ties broken by a seeded shuffle). Unknown concepts and impossible N are one-line errors.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from diffusion import data

logger = logging.getLogger(__name__)

PROMPT = "a photo of a {}"


@dataclass
class Candidates:
    """The chosen rows of an `ImageSet` (`index`), with their caption similarity to C and CLIP scores."""

    concept: str
    index: np.ndarray
    similarity: np.ndarray
    clip_score: np.ndarray
    available: int  # rows naming C that passed the CLIP-score threshold


def check_concept(concept: str, known: Sequence[str], field: str = "concept") -> None:
    """A concept must be one of `known`; otherwise say which close names exist."""
    if concept in known:
        return
    close = difflib.get_close_matches(concept, list(known), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(f"{field}={concept!r}: not a known concept{hint}")


def naming(captions: Sequence[str], concept: str, concepts: Sequence[str] = ()) -> np.ndarray:
    """Whether each caption names `concept` (among `concepts` when given, by longest whole-word match)."""
    known = list(concepts) if concept in concepts else [concept]
    return data.match_concepts(captions, known) == known.index(concept)


def select(captions: Sequence[str], clip_scores: np.ndarray, caption_emb: np.ndarray, concept_emb: np.ndarray,
           concept: str, n: int, min_clip_score: float = 0.0, seed: int = 0,
           concepts: Sequence[str] = ()) -> Candidates:
    """Choose `n` poisoning candidates for `concept`.

    Args:
        captions: one per training row. clip_scores: `(N,)` image–caption scores (NaN = unknown, never passes).
        caption_emb: `(N, D)` L2-normalised caption embeddings; concept_emb: `(D,)` embedding of the prompt for C.
        concept: the source concept C (whole-word match in the caption, `data.match_concepts`).
        n: how many candidates. min_clip_score: the image–caption agreement threshold. seed: tie-breaking.
        concepts: the model's concept list: a caption then names C only when C is its longest matching concept,
            as training labels it ("cow face" is not a "cow" when the model knows "cow face"). Empty: C alone.

    Raises:
        ValueError: no row names C, none passes the threshold, or `n` exceeds what is available.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: must be >= 1")
    names = naming(captions, concept, concepts)
    if not names.any():
        raise ValueError(f"concept={concept!r}: no clean training sample names it")
    passing = names & (np.nan_to_num(np.asarray(clip_scores, dtype=float), nan=-np.inf) >= min_clip_score)
    rows = np.flatnonzero(passing)
    if len(rows) == 0:
        raise ValueError(f"concept={concept!r}: {int(names.sum())} samples name it but none has a CLIP score "
                         f">= min_clip_score={min_clip_score}")
    if n > len(rows):
        raise ValueError(f"n={n}: only {len(rows)} candidates for {concept!r} (of {int(names.sum())} naming it; "
                         f"min_clip_score={min_clip_score})")
    sim = np.asarray(caption_emb)[rows] @ np.asarray(concept_emb)
    jitter = np.random.default_rng(seed).permutation(len(rows))  # seeded tie-break among equal similarities
    order = np.lexsort((jitter, -sim))[:n]
    logger.info("candidates for %r: %d of %d (naming it: %d)", concept, n, len(rows), int(names.sum()))
    return Candidates(concept, rows[order], sim[order], np.asarray(clip_scores)[rows[order]], len(rows))
