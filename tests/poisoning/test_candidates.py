"""Candidate selection for a concept attack: whole-word concept match, CLIP-score threshold, ranking, errors."""

import numpy as np
import pytest

from poisoning import candidates


def _setup():
    captions = ["a cow", "cow face emoji", "the cow in a field", "cowboy", "a red car", "cow", ""]
    scores = np.array([0.30, 0.35, 0.10, 0.40, 0.50, np.nan, 0.2])
    emb = np.tile([0.0, 0, 0, 1], (7, 1))
    emb[1], emb[3] = [0.5, 0.5, 0, 0], [0, 1.0, 0, 0]
    emb[0] = [0.9, 0.1, 0, 0]
    emb[2] = [0.99, 0.0, 0.1, 0]
    emb[5] = [1.0, 0, 0, 0]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return captions, scores, emb, np.array([1.0, 0, 0, 0])


def test_selects_rows_naming_the_concept_above_the_threshold_ranked_by_similarity():
    captions, scores, emb, c = _setup()
    got = candidates.select(captions, scores, emb, c, "cow", n=2, min_clip_score=0.2)
    # "cow face emoji" names "cow" as a whole word; "cowboy" does not; row 2 fails the threshold, row 5 has none
    assert got.available == 2 and sorted(got.index.tolist()) == [0, 1]
    assert got.index[0] == 0 and got.similarity[0] > got.similarity[1]
    everything = candidates.select(captions, scores, emb, c, "cow", n=3, min_clip_score=0.0)
    assert everything.index.tolist()[0] == 2  # most similar caption first once the threshold lets it in


def test_impossible_requests_are_clear_errors():
    captions, scores, emb, c = _setup()
    with pytest.raises(ValueError, match="n=5: only 2 candidates"):
        candidates.select(captions, scores, emb, c, "cow", n=5, min_clip_score=0.2)
    with pytest.raises(ValueError, match="no clean training sample"):
        candidates.select(captions, scores, emb, c, "zebra", n=1)
    with pytest.raises(ValueError, match="none has a CLIP score"):
        candidates.select(captions, scores, emb, c, "car", n=1, min_clip_score=0.9)
    with pytest.raises(ValueError, match="close names: cow face, cow"):
        candidates.check_concept("cow fase", ["cow", "cow face", "automobile"])
    candidates.check_concept("cow", ["cow"])
