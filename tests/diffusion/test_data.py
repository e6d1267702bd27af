"""Training shards → images, captions and concept labels."""

import pyarrow as pa
import pytest
import torch

from diffusion import data
from mithridate.core import schema


def test_load_images_shapes_range_and_metadata(tiny_train):
    d = data.load_images(tiny_train, 32)
    assert d.images.shape == (72, 3, 32, 32) and d.images.dtype == torch.float32
    assert float(d.images.min()) >= -1 and float(d.images.max()) <= 1
    assert len(set(d.uids)) == 72 and all(d.artists)
    assert float(d.images.mean()) > 0.3  # white backgrounds (alpha composited on white), not black


def test_concept_filter_and_max_rows(tiny_train):
    d = data.load_images(tiny_train, 32, concepts=("cat", "house"))
    assert len(d) == 6 and all(("cat" in c) or ("house" in c) for c in d.captions)
    assert len(data.load_images(tiny_train, 32, max_rows=5)) == 5
    with pytest.raises(ValueError, match="no caption"):
        data.load_images(tiny_train, 32, concepts=("zeppelin",))


def test_match_concepts_prefers_the_longest_whole_word_name():
    labels = data.match_concepts(["a cow face emoji", "Cow", "cowboy hat", "", "the COW FACE"], ["cow", "cow face"])
    assert labels.tolist() == [1, 0, -1, -1, 1]
    with pytest.raises(ValueError, match="non-empty"):
        data.match_concepts(["x"], ["cow", " "])


def test_roundtrip_uint8():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert (data.from_uint8(data.to_uint8(x)) - x).abs().max() <= 1 / 127.5


def test_shard_without_images_and_missing_folder_are_clear_errors(tmp_path):
    row = {"uid": "0" * 32, "jpg": b"not an image", "caption": "a cow", "url": "http://127.0.0.1/x.png"}
    schema.write(pa.Table.from_pylist([row], schema=schema.TRAIN_SCHEMA), tmp_path / "00000.parquet", "train")
    with pytest.raises(ValueError, match="00000.parquet: training shard has no decodable images"):
        data.load_images(tmp_path, 32)
    with pytest.raises(FileNotFoundError, match="export"):
        data.load_images(tmp_path / "nowhere", 32)
