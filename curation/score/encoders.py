"""CLIP encoders behind one small interface: our compact checkpoints and any open_clip model with local weights.

`load_encoder(model, pretrained, device)` returns an `Encoder` whose `encode_images` / `encode_texts` give
L2-normalised float32 embeddings. Nothing is downloaded: an open_clip pretrained tag is used only when its
weights are already in the local cache, otherwise the error says how to point at a local file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mithridate.core import checkpoints, compute

logger = logging.getLogger(__name__)

COMPACT = "compact"
CHECKPOINT_FORMAT = "mithridate-compact-clip"
CHECKPOINT_FILE = "clip.pt"
LOCAL_DIR = "local-dir:"  # open_clip's schema for a folder with open_clip_config.json and weights
CHECKPOINT_KEYS = ("format", "name", "model_cfg", "state_dict", "preprocess", "train_config")
# where open_clip keeps weights it downloaded (its defaults when no cache_dir is given)
_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class Encoder:
    """A CLIP model with its preprocess transform and tokenizer, on one device.

    Attributes:
        name: identifies the weights (folder name of its embeddings), e.g. "compact-clip-1a2b3c4d".
        dim: embedding size D.
        device: torch device string ("cpu", "cuda", …).
        model_name, pretrained: what `load_encoder` was given.
    """

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, name: str, device: str,
                 model_name: str = "", pretrained: str = ""):
        self.model = model.to(device).eval()
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.name, self.device, self.model_name, self.pretrained = name, device, model_name, pretrained
        self.dim = int(self.encode_texts([""]).shape[1])

    def __repr__(self) -> str:
        return f"Encoder(name={self.name!r}, dim={self.dim}, device={self.device!r})"

    def info(self) -> dict:
        """JSON-ready description: name, model, pretrained, dim."""
        return {"name": self.name, "model": self.model_name, "pretrained": self.pretrained, "dim": self.dim}

    def _autocast(self):
        # bf16 on GPUs only: on CPUs without bf16 units it is emulated (slower), and fp32 keeps CPU results exact
        return compute.autocast(self.device, compute.use_bf16("auto", self.device))

    def preprocess_images(self, images: Sequence) -> torch.Tensor:
        """Apply the model's open_clip preprocess transform.

        Args:
            images: PIL images or uint8 arrays `(H, W, 3)` (or `(H, W)` greyscale).

        Returns:
            `(N, 3, S, S)` float32 tensor on the CPU.
        """
        return torch.stack([self.preprocess(_as_pil(im)) for im in images]) if len(images) else torch.empty(0)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Embed already preprocessed images `(N, 3, S, S)`; returns `(N, D)` float32, L2-normalised."""
        out = []
        for i in range(0, len(pixels), batch_size):
            x = pixels[i : i + batch_size].to(self.device, non_blocking=True)
            with self._autocast():
                f = self.model.encode_image(x)
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, getattr(self, "dim", 0)), np.float32)

    def encode_images(self, images: Sequence, batch_size: int = 256) -> np.ndarray:
        """Embed images (PIL or uint8 arrays) in batches; returns `(N, D)` float32, L2-normalised."""
        out = [self.encode_pixels(self.preprocess_images(images[i : i + batch_size]), batch_size)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """Embed tokenized texts `(N, context_length)`; returns `(N, D)` float32, L2-normalised.

        For a CLIP text tower with a causal mask and end-of-text pooling, texts are batched by length and each
        batch is cut after its longest text: the padding behind a text's end token cannot reach its output, so
        the embeddings are those of the full-length forward (to float rounding) at a fraction of the cost.
        """
        if len(tokens) == 0:
            return np.zeros((0, self.dim), np.float32)
        lengths = tokens.argmax(dim=-1) + 1 if self._trims_text() else torch.full((len(tokens),), tokens.shape[1])
        order = torch.argsort(lengths, stable=True)
        parts = []
        for i in range(0, len(tokens), batch_size):
            idx = order[i : i + batch_size]
            x = tokens[idx, : int(lengths[idx].max())].to(self.device)
            with self._autocast():
                f = self._text_forward(x) if x.shape[1] < tokens.shape[1] else self.model.encode_text(x)
            parts.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        out = torch.empty(len(tokens), parts[0].shape[1])
        out[order] = torch.cat(parts)
        return out.numpy()

    def _trims_text(self) -> bool:
        """Whether the model is open_clip's CLIP with its own causal text tower pooled at the (argmax) end token."""
        import open_clip

        m = self.model
        return (isinstance(m, open_clip.CLIP) and type(m).encode_text is open_clip.CLIP.encode_text
                and getattr(m, "text_pool_type", None) == "argmax" and getattr(m, "attn_mask", None) is not None)

    def _text_forward(self, text: torch.Tensor) -> torch.Tensor:
        """open_clip's `CLIP.encode_text` on the first n = text.shape[1] positions (positional embedding and
        causal mask cut to n)."""
        from open_clip.transformer import text_global_pool

        m, n = self.model, text.shape[1]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype) + m.positional_embedding[:n].to(cast_dtype)  # (B, n, W)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = text_global_pool(x, text, m.text_pool_type)  # (B, W) at the end token
        return m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection

    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Embed texts (truncated to the model's context length); `(N, D)` float32, L2-normalised.

        Each distinct text is encoded once (alt texts repeat: empty ones, file names, templates).
        """
        index: dict[str, int] = {}
        inverse = [index.setdefault(t, len(index)) for t in texts]
        if not index:
            return np.zeros((0, self.dim), np.float32)
        emb = self.encode_tokens(self.tokenizer(list(index)), batch_size)
        return emb[np.asarray(inverse)]


def _as_pil(im) -> Image.Image:
    if isinstance(im, Image.Image):
        return im if im.mode == "RGB" else im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"image arrays must be uint8 (H, W, 3) or (H, W); got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr).convert("RGB")


# --- compact checkpoints ----------------------------------------------------------------------------------------


def build_compact_model(model_cfg: dict) -> torch.nn.Module:
    """An open_clip `CLIP` from a compact model config (`embed_dim`, `vision_cfg`, `text_cfg`)."""
    import open_clip

    return open_clip.CLIP(**model_cfg)


def compact_transform(preprocess: dict) -> Callable:
    """open_clip's inference transform for a checkpoint's `preprocess` dict (size, mean, std, …)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**preprocess), is_train=False)


def compact_tokenizer(context_length: int) -> Callable:
    """open_clip's bundled BPE tokenizer (no download) at `context_length` tokens."""
    from open_clip.tokenizer import SimpleTokenizer  # what open_clip.get_tokenizer gives CLIP configs, minus its logs

    return SimpleTokenizer(context_length=context_length)


def checkpoint_path(path: str | Path) -> Path:
    """`path` itself, or `<path>/clip.pt` when `path` is a `clip train` output folder."""
    p = Path(path).expanduser()
    return p / CHECKPOINT_FILE if p.is_dir() else p


def read_checkpoint(path: str | Path) -> dict:
    """Load and check a compact CLIP checkpoint written by `mithridate clip train`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file, or not a compact CLIP checkpoint.
    """
    p = checkpoint_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"compact CLIP checkpoint not found: {p} (train one with `mithridate clip train`)")
    ckpt = checkpoints.load(p, "delete it and rerun `mithridate clip train` (or give another clip.pt)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{p}: not a compact CLIP checkpoint from `mithridate clip train` (found {keys}); "
                         "for open_clip weights pass model=<open_clip architecture> and pretrained=<file>")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{p}: compact CLIP checkpoint lacks {missing}")
    return ckpt


def load_compact(path: str | Path, device: str = "auto") -> Encoder:
    """The `Encoder` of a compact CLIP checkpoint (a `clip.pt` file or the folder holding it)."""
    ckpt = read_checkpoint(path)
    try:
        model = build_compact_model(ckpt["model_cfg"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{checkpoint_path(path)}: weights do not fit the checkpoint's model_cfg "
                         f"({str(err).splitlines()[0]})") from None
    tokenizer = compact_tokenizer(ckpt["model_cfg"]["text_cfg"]["context_length"])
    device = compute.resolve_device(device)
    return Encoder(model, compact_transform(ckpt["preprocess"]), tokenizer, ckpt["name"], device, COMPACT,
                   str(checkpoint_path(path)))


# --- open_clip models ---------------------------------------------------------------------------------------------


def cached_weights(model: str, tag: str, cache_dir: str | None = None) -> str | None:
    """Local file of open_clip pretrained weights `model`/`tag` if already downloaded, else None (no network).

    Looks where open_clip's own download would have put them: the Hugging Face cache for `hf_hub`
    weights, `~/.cache/clip` (or `cache_dir`) for URL weights, or the tag's `file`.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        for name in ([filename] if filename else _HF_FILES):
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(target):
            return target
    return None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "encoder"


def _open_clip_weights(model: str, pretrained: str, cache_dir: str | None) -> tuple[str, dict, str]:
    """(local weights file, preprocess/quick_gelu overrides from the tag, encoder name) for an open_clip model."""
    import open_clip

    if not pretrained:
        raise ValueError(f"pretrained='' for model={model!r}: name an open_clip tag "
                         f"({', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none known'}) "
                         "or a local weights file")
    if os.path.isfile(pretrained):
        stem = Path(pretrained).stem
        return pretrained, {}, _safe_name(f"{model}-{stem}")
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        if any(ch in pretrained for ch in "/\\") or Path(pretrained).suffix:
            raise FileNotFoundError(f"pretrained={pretrained!r}: no such weights file")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(f"pretrained={pretrained!r} is not an open_clip tag of {model} (tags: {tags}) "
                         "nor a local weights file")
    local = cached_weights(model, pretrained, cache_dir)
    if local is None:
        raise ValueError(
            f"weights {model}/{pretrained} are not available offline: they are not in the local open_clip or "
            "Hugging Face cache and nothing is downloaded at run time. Download them once on a connected machine "
            f"(open_clip.create_model_and_transforms({model!r}, pretrained={pretrained!r})) or pass "
            "pretrained=<path to a local .bin/.pt/.safetensors file>")
    overrides = {"image_mean": tag_cfg.get("mean"), "image_std": tag_cfg.get("std"),
                 "image_interpolation": tag_cfg.get("interpolation"),
                 "image_resize_mode": tag_cfg.get("resize_mode"), "force_quick_gelu": tag_cfg.get("quick_gelu", False)}
    return local, overrides, _safe_name(f"{model}-{pretrained}")


def _local_dir(model: str) -> tuple[str, str]:
    """(weights file, encoder name) of an open_clip `local-dir:<folder>` (open_clip_config.json + weights)."""
    folder = Path(model[len(LOCAL_DIR) :]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"model={model!r}: no open_clip_config.json in {folder}")
    weights = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext))
    if not weights:
        raise ValueError(f"model={model!r}: no weights (*.safetensors, *.bin, *.pth) in {folder}")
    return str(folder), _safe_name(f"local-{folder.name}")


def load_open_clip(model: str, pretrained: str, device: str = "auto", cache_dir: str | None = None) -> Encoder:
    """The `Encoder` of an open_clip model: an architecture with a pretrained tag (cached locally) or a weights
    file, or a `local-dir:<folder>` holding open_clip_config.json and weights."""
    import open_clip

    if model.startswith("hf-hub:"):
        raise ValueError(f"model={model!r}: hf-hub models are fetched from the Hugging Face Hub and nothing is "
                         "downloaded at run time; save the repository to a folder and use model='local-dir:<folder>'")
    if model.startswith(LOCAL_DIR):
        weights, name = _local_dir(model)
        overrides, pretrained_arg = {}, None
    elif model in open_clip.list_models():
        weights, overrides, name = _open_clip_weights(model, pretrained, cache_dir)
        pretrained_arg = weights
    else:
        raise ValueError(f"model={model!r}: not 'compact', a compact checkpoint path, 'local-dir:<folder>' nor an "
                         f"open_clip architecture (e.g. {', '.join(open_clip.list_models()[:6])}, …; see "
                         "open_clip.list_models())")
    dev = compute.resolve_device(device)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained_arg, device=dev,
                                                                   cache_dir=cache_dir, **overrides)
    except RuntimeError as err:  # strict state-dict load: missing/unexpected keys or shape mismatches
        raise ValueError(f"{weights}: does not hold weights of open_clip architecture {model} "
                         f"({str(err).splitlines()[0][:300]})") from None
    try:
        tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
    except (OSError, ValueError, RuntimeError) as err:  # HF tokenizers would need a download
        raise ValueError(f"tokenizer of {model} is not available offline ({err})") from None
    return Encoder(net, preprocess, tokenizer, name, dev, model, pretrained)


def load_encoder(model: str, pretrained: str = "", device: str = "auto", cache_dir: str | None = None) -> Encoder:
    """Load an encoder by name, never downloading.

    Args:
        model: "compact" (then `pretrained` is our `clip.pt` or its folder), a path to a compact checkpoint,
            an open_clip architecture name such as "ViT-B-32", or "local-dir:<folder>" (open_clip's offline
            folder: open_clip_config.json and weights; `pretrained` is ignored).
        pretrained: for "compact", the checkpoint path; for open_clip, a pretrained tag whose weights are
            already cached (e.g. "laion2b_s34b_b79k") or a local weights file.
        device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
        cache_dir: where open_clip/Hugging Face cached weights live (None: their defaults).

    Returns:
        An `Encoder` in eval mode on the device.

    Raises:
        ValueError: unknown model, tag not cached, weights of another architecture, bad device.
        FileNotFoundError: a checkpoint or weights path that does not exist.
    """
    if model == COMPACT:
        if not pretrained:
            raise ValueError("model='compact' needs pretrained=<clip.pt or the `mithridate clip train` out folder>")
        return load_compact(pretrained, device)
    if model.startswith(("hf-hub:", LOCAL_DIR)):
        return load_open_clip(model, pretrained, device, cache_dir)
    if model.endswith(".pt") or os.path.sep in model or checkpoint_path(model).is_file():
        return load_compact(model, device)
    return load_open_clip(model, pretrained, device, cache_dir)
