"""Encoders: a tiny compact checkpoint and a tiny open_clip architecture, both built in code (no downloads)."""

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from curation.score import clip_train, encoders
from mithridate.core import compute

TINY = dataclasses.replace(clip_train.PRESETS["tiny"], embed_dim=32, vision_width=8, vision_head_width=8,
                           text_width=32, text_layers=1, text_heads=2, context_length=16)
ARCH = "mithridate-test-tiny-rn"  # an open_clip config registered for these tests only


@pytest.fixture(scope="module")
def checkpoint(tiny_clip_checkpoint):
    return tiny_clip_checkpoint


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return encoders.load_encoder("compact", str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def open_clip_weights(tmp_path_factory):
    """A tiny architecture registered with open_clip (its own mechanism for custom configs) and random weights."""
    folder = tmp_path_factory.mktemp("openclip")
    (folder / f"{ARCH}.json").write_text(json.dumps(clip_train.model_config(TINY)))
    open_clip.add_model_config(folder / f"{ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    path = folder / "weights.pt"
    torch.save(model.state_dict(), path)
    return path, model


def _images(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_image_embeddings_are_unit_float32_rows(encoder):
    emb = encoder.encode_images(_images(5))
    assert emb.shape == (5, encoder.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == TINY.embed_dim and encoder.device == "cpu"


def test_pil_and_array_inputs_agree_and_batching_does_not_change_results(encoder):
    arrays = _images(7, seed=1)
    pil = [Image.fromarray(a) for a in arrays]
    one = encoder.encode_images(arrays, batch_size=64)
    np.testing.assert_allclose(encoder.encode_images(pil, batch_size=64), one, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_images(arrays, batch_size=2), one, atol=1e-5)
    grey = encoder.encode_images([arrays[0].mean(axis=2).astype(np.uint8)])
    assert grey.shape == (1, encoder.dim)


def test_text_embeddings_batch_and_truncate(encoder):
    texts = ["a cow", "automobile", "", "word " * 200]  # the last is far beyond the context length
    emb = encoder.encode_texts(texts, batch_size=3)
    assert emb.shape == (4, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_texts(texts[:1]), emb[:1], atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, encoder.dim)


def test_length_batched_texts_equal_open_clips_own_encode_text(encoder):
    texts = ["cow", "a picture of a red apple by twemoji", "", "word " * 50, "cow", "dog emoji"]
    tokens = encoder.tokenizer(texts)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(encoder.model.encode_text(tokens), dim=-1).numpy()
    assert encoder._trims_text()  # the short texts really take the cut-down path
    np.testing.assert_allclose(encoder.encode_texts(texts, batch_size=2), ref, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_tokens(tokens, batch_size=4), ref, atol=1e-5)


def test_non_uint8_arrays_are_refused(encoder):
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode_images([np.zeros((8, 8, 3), np.float32)])


def test_checkpoint_by_file_folder_or_bare_path_is_the_same_encoder(checkpoint, encoder):
    by_folder = encoders.load_encoder("compact", str(checkpoint.parent), device="cpu")
    by_path = encoders.load_encoder(str(checkpoint), device="cpu")
    assert by_folder.name == by_path.name == encoder.name
    assert encoder.name.startswith("compact-clip-") and len(encoder.name) == len("compact-clip-") + 8
    x = _images(2, seed=3)
    np.testing.assert_array_equal(by_folder.encode_images(x), by_path.encode_images(x))
    assert encoder.info() == {"name": encoder.name, "model": "compact", "pretrained": str(checkpoint),
                              "dim": encoder.dim}


def test_open_clip_architecture_with_a_local_weights_file(open_clip_weights):
    path, model = open_clip_weights
    enc = encoders.load_encoder(ARCH, str(path), device="cpu")
    assert enc.name == f"{ARCH}-weights" and enc.dim == TINY.embed_dim
    tokens = open_clip.get_tokenizer(ARCH)(["a cow"])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.eval().encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(["a cow"]), ref, atol=1e-5)


def test_open_clip_local_dir_folder(open_clip_weights, tmp_path):
    path, _ = open_clip_weights
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_train.model_config(TINY)}))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(path.read_bytes())
    enc = encoders.load_encoder(f"local-dir:{tmp_path}", device="cpu")
    ref = encoders.load_encoder(ARCH, str(path), device="cpu")
    np.testing.assert_allclose(enc.encode_texts(["a cow"]), ref.encode_texts(["a cow"]), atol=1e-6)
    assert enc.name == f"local-{tmp_path.name}"
    (tmp_path / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="no weights"):
        encoders.load_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(ValueError, match="nothing is downloaded"):
        encoders.load_encoder("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_device_auto_and_bad_devices():
    assert compute.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="allowed values"):
        compute.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            compute.resolve_device("cuda")


@pytest.mark.parametrize("model,pretrained,match", [
    ("no-such-arch", "x", "not 'compact'"),
    ("RN50", "", "pretrained=''"),
    ("RN50", "not-a-tag", "not an open_clip tag"),
    ("compact", "", "needs pretrained"),
])
def test_bad_names_are_clear_errors(model, pretrained, match):
    with pytest.raises(ValueError, match=match):
        encoders.load_encoder(model, pretrained, device="cpu")


def test_missing_weight_files_are_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        encoders.load_encoder("compact", str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        encoders.load_encoder("RN50", str(tmp_path / "nope.bin"))
