"""The attacker's pool: an art corpus folder (captions "{concept} emoji by {artist}") or training shards."""

import numpy as np
import pytest
import torch

from curation.world import art
from diffusion import data
from poisoning import pool


@pytest.mark.parametrize("size", [32, 64])
def test_corpus_gives_one_captioned_image_per_row(tiny_corpus, size):
    table = art.load(tiny_corpus)
    got = pool.load(tiny_corpus, size)
    assert len(got) == len(table) == len(got.uids) == len(got.artists)
    assert got.images.shape == (len(table), 3, size, size) and got.images.dtype == torch.float32
    assert got.images.min() >= -1 and got.images.max() <= 1
    assert got.images.min() < -0.5 and got.images.max() == 1  # real [−1, 1] pixels (white background), not [0, 1]
    assert got.captions == [f"{r.concept} emoji by {r.artist}" for r in table.itertuples()]
    assert got.uids == [f"art-{r.item_id}" for r in table.itertuples()]
    assert got.artists == list(table.artist)
    assert "cat emoji by" in " ".join(got.captions)  # the corpus' concepts, matched by whole words
    assert (data.match_concepts(got.captions, ["cat"]) == 0).sum() == (table.concept == "cat").sum()


def test_corpus_pixels_are_the_training_rows_pixels(tiny_corpus, tiny_train):
    """`tiny_train` holds the corpus' 64 px files in corpus order: decoded at 64 px they must be the pool's."""
    got = pool.load(tiny_corpus, 64)
    rows = data.load_images(tiny_train, 64)
    assert torch.equal(got.images, rows.images)
    assert got.artists == rows.artists


def test_corpus_at_32px_reads_the_32px_files(tiny_corpus):
    table = art.load(tiny_corpus)
    got = pool.load(tiny_corpus, 32)
    for k in (0, len(table) - 1):
        arr = data.decode((tiny_corpus / table.path32.iloc[k]).read_bytes(), 32)
        assert np.array_equal(data.to_uint8(got.images[k:k + 1])[0], arr)


def test_training_shards_load_like_load_images(tiny_train):
    assert not pool.is_corpus(tiny_train)
    got, want = pool.load(tiny_train, 32), data.load_images(tiny_train, 32)
    assert torch.equal(got.images, want.images)
    assert (got.captions, got.uids, got.artists) == (want.captions, want.uids, want.artists)
    assert len(got) == 72


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        pool.load(tmp_path / "nope", 32)
    with pytest.raises(FileNotFoundError):  # an existing folder that is neither a corpus nor shards
        pool.load(tmp_path, 32)
