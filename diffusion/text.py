"""The frozen text encoder that conditions the diffusion model: the compact CLIP's text tower.

Like Stable Diffusion, the denoiser sees two views of a prompt: the pooled, L2-normalised CLIP text embedding (a
vector, through adaptive group norm) and the text tower's final-layer token features (a sequence, through
cross-attention). The empty prompt "" is the null condition of classifier-free guidance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from curation.score import encoders

logger = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Encoded prompts: `pooled` (N, D), `tokens` (N, L, W), `mask` (N, L) bool (True = a real token)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.pooled)

    def index(self, idx: torch.Tensor) -> "Conditioning":
        """Rows `idx` (a long tensor)."""
        return Conditioning(self.pooled[idx], self.tokens[idx], self.mask[idx])

    def to(self, device: str) -> "Conditioning":
        return Conditioning(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        return Conditioning(*(torch.cat([getattr(p, k) for p in parts]) for k in ("pooled", "tokens", "mask")))


class TextEncoder:
    """A compact CLIP checkpoint's text tower, frozen.

    Attributes:
        path: the checkpoint file. name: its weights' name ("compact-clip-…"), checked when a diffusion
        checkpoint refers to it. context_length, pooled_dim (D), token_dim (W).
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.encoder = encoders.load_compact(path, device)
        self.path, self.name = str(encoders.checkpoint_path(path)), self.encoder.name
        self.model = self.encoder.model.requires_grad_(False)
        self.context_length = int(self.model.context_length)
        self.pooled_dim, self.token_dim = self.encoder.dim, int(self.model.token_embedding.weight.shape[1])
        self._long_tokenizer = encoders.compact_tokenizer(1024)

    def reference(self) -> dict:
        """What a diffusion checkpoint stores to find and verify this encoder."""
        return {"path": self.path, "name": self.name, "context_length": self.context_length,
                "pooled_dim": self.pooled_dim, "token_dim": self.token_dim}

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens per prompt including the start and end tokens (untruncated)."""
        ids = self._long_tokenizer(list(prompts))
        return [int(n) for n in (ids.argmax(dim=-1) + 1)]

    def check_prompts(self, prompts: Sequence[str], field: str = "prompt") -> None:
        """User prompts must be non-empty and fit the context (no silent truncation)."""
        for p, n in zip(prompts, self.token_counts(prompts)):
            if not str(p).strip():
                raise ValueError(f"{field}={p!r}: empty prompt (give a text; the empty prompt is the unconditional "
                                 "null condition, use guidance=0 for unconditional samples)")
            if n > self.context_length:
                raise ValueError(f"{field}={p!r}: {n - 2} tokens, longer than the text encoder's context of "
                                 f"{self.context_length - 2} tokens")

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 512) -> Conditioning:
        """Encode prompts (longer ones are truncated, as CLIP does); each distinct prompt is encoded once."""
        index: dict[str, int] = {}
        inverse = torch.tensor([index.setdefault(str(p), len(index)) for p in prompts], dtype=torch.long)
        uniq = list(index)
        parts = [self._encode(self.encoder.tokenizer(uniq[i : i + batch_size]))
                 for i in range(0, len(uniq), batch_size)]
        return Conditioning.cat(parts).index(inverse) if parts else None

    def _encode(self, ids: torch.Tensor) -> Conditioning:
        from open_clip.transformer import text_global_pool

        m = self.model
        ids = ids.to(self.encoder.device)
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # (N, L, W)
        pooled = text_global_pool(x, ids, m.text_pool_type)
        pooled = m.text_projection(pooled) if isinstance(m.text_projection, torch.nn.Linear) else pooled @ m.text_projection
        mask = torch.arange(ids.shape[1], device=ids.device)[None] <= ids.argmax(dim=-1)[:, None]
        return Conditioning(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu(), x.float().cpu(), mask.cpu())


def load_text_encoder(reference: dict, device: str = "cpu", path: str = "") -> TextEncoder:
    """The text encoder a checkpoint refers to (or the one at `path`), checked by name.

    Raises:
        FileNotFoundError: the referenced CLIP checkpoint is gone (pass `clip=` to point at it).
        ValueError: the file holds other weights than the ones the diffusion model was trained with.
    """
    text = TextEncoder(path or reference["path"], device)
    if text.name != reference["name"]:
        raise ValueError(f"clip={text.path!r}: holds {text.name}, but the diffusion model was trained with "
                         f"{reference['name']} (text conditioning would not match)")
    return text
