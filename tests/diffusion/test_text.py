"""The frozen compact-CLIP text tower as the diffusion model's conditioning."""

import pytest
import torch

from diffusion.text import TextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def text(tiny_clip_checkpoint):
    return TextEncoder(tiny_clip_checkpoint)


def test_pooled_embedding_is_the_clip_text_embedding(text):
    prompts = ["a cow", "", "automobile by twemoji", "a cow"]
    c = text.encode(prompts)
    assert c.pooled.shape == (4, text.pooled_dim) and c.tokens.shape == (4, text.context_length, text.token_dim)
    ref = torch.from_numpy(text.encoder.encode_texts(prompts))
    assert torch.allclose(c.pooled, ref, atol=1e-5)
    assert torch.equal(c.pooled[0], c.pooled[3])
    assert c.mask.sum(1).tolist() == [n for n in text.token_counts(prompts)]  # start + words + end


def test_prompts_must_be_non_empty_and_fit_the_context(text):
    text.check_prompts(["a cow"])
    with pytest.raises(ValueError, match="empty prompt"):
        text.check_prompts(["a cow", "  "])
    with pytest.raises(ValueError, match="longer than the text encoder's context"):
        text.check_prompts([" ".join(["cow"] * 40)])


def test_reference_is_checked_by_weights_name(text, tiny_clip_checkpoint):
    ref = text.reference()
    assert load_text_encoder(ref).name == text.name
    with pytest.raises(ValueError, match="trained with"):
        load_text_encoder({**ref, "name": "compact-clip-00000000"})
