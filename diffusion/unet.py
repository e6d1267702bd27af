"""A small text-conditional UNet on VAE latents, written by hand in plain torch.

The layout follows Stable Diffusion's UNet (diffusers' `UNet2DConditionModel`) at a much smaller size:

- the timestep (0…999, may be fractional) gets a sinusoidal embedding and an MLP; the pooled text embedding
  goes through a Linear and is added to it. The sum is the conditioning vector `emb`;
- every ResBlock modulates its second GroupNorm with a scale and shift predicted from `emb`
  (`norm(h)·(1 + scale) + shift`, diffusers' "scale_shift");
- at the levels in `attention_levels` each ResBlock is followed by a transformer block (self-attention,
  cross-attention over the text tokens at the levels in `cross_attention_levels`, feed-forward);
- down path, mid block (ResBlock, attention, ResBlock), up path with skip concatenation
  (`layers_per_level + 1` blocks per level, as in diffusers).

The last conv of each ResBlock, the output projection of each transformer block and the output conv are
zero-initialised, so a fresh model predicts 0. Cross-attention always sees one learned "null" token in
front of the text tokens: masked padding is ignored, and a row whose mask is all False attends to the null
token alone (no NaN). With `tokens=None` cross-attention is skipped.

Parameter counts (the count does not depend on the latent size; 4×8×8 and 4×16×16 latents alike):
`tiny` 0.24M, `cpu` 5.36M, `gpu` 35.7M. A training step (forward, backward, AdamW) of the `cpu` preset on a batch
of 128 4×8×8 latents with 32 text tokens costs 0.67 CPU-seconds: ~0.37 s on 2 idle cores, ~0.65 s on one.
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.nn import timestep_embedding

FF_MULT = 2  # transformer feed-forward width, × channels


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm·(1 + scale) + shift from `emb` → SiLU → dropout → conv3×3, + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """`emb` is the conditioning vector after SiLU, (B, emb_dim)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of queries (B, N, C) over a context (B, L, context_dim), by scaled_dot_product_attention.

    `context_dim=None` is self-attention (one fused q/k/v projection).
    """

    def __init__(self, dim: int, context_dim: int | None, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False) if context_dim is not None else None
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False) if context_dim is not None else None
        self.qkv = nn.Linear(dim, 3 * dim, bias=False) if context_dim is None else None
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """`context` None = self-attention; `mask`: (B, L) bool, True = attend; None = attend everywhere."""
        if self.qkv is not None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=-1)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        h = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), attn_mask=attn_mask)
        return self.out(h.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """GroupNorm → proj_in → [self-attn] → [cross-attn over tokens] → feed-forward → proj_out (zero), + residual."""

    def __init__(self, ch: int, token_dim: int, heads: int, groups: int, self_attn: bool, cross_attn: bool) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.proj_in = nn.Linear(ch, ch)
        self.norm_self = nn.LayerNorm(ch) if self_attn else None
        self.self_attn = Attention(ch, None, heads) if self_attn else None
        self.norm_cross = nn.LayerNorm(ch) if cross_attn else None
        self.cross_attn = Attention(ch, token_dim, heads) if cross_attn else None
        self.norm_ff = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, FF_MULT * ch), nn.GELU(), nn.Linear(FF_MULT * ch, ch))
        self.proj_out = _zero(nn.Linear(ch, ch))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, H·W, C)
        if self.self_attn is not None:
            h = h + self.self_attn(self.norm_self(h))
        if self.cross_attn is not None and tokens is not None:
            h = h + self.cross_attn(self.norm_cross(h), tokens, mask)
        h = h + self.ff(self.norm_ff(h))
        return x + self.proj_out(h).transpose(1, 2).reshape(b, c, hgt, wid)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A ResBlock optionally followed by a transformer block."""

    def __init__(self, res: ResBlock, attn: TransformerBlock | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x, tokens, mask) if self.attn is not None else x


def _fail(field: str, value, allowed: str) -> ValueError:
    return ValueError(f"{field}={value!r}: {allowed}")


def _check_levels(field: str, levels: tuple[int, ...], n: int) -> None:
    if any(not isinstance(i, int) or not 0 <= i < n for i in levels) or len(set(levels)) != len(levels):
        raise _fail(field, list(levels), f"must be distinct level indices in 0..{n - 1} (len(channels)={n})")


def validate(cfg: dict) -> None:
    """Raise a one-line ValueError naming the first bad field of a UNet config (kwargs with defaults filled)."""
    ch = cfg["channels"]
    if not ch or any(not isinstance(c, int) or c <= 0 for c in ch):
        raise _fail("channels", list(ch), "must be a non-empty list of positive ints")
    for name in ("in_channels", "layers_per_level", "cond_dim", "token_dim", "heads", "groups"):
        if not isinstance(cfg[name], int) or cfg[name] <= 0:
            raise _fail(name, cfg[name], "must be a positive int")
    if cfg["time_dim"] is not None and (not isinstance(cfg["time_dim"], int) or cfg["time_dim"] <= 0):
        raise _fail("time_dim", cfg["time_dim"], "must be a positive int or None (= 4·channels[0])")
    if not 0 <= cfg["dropout"] < 1:
        raise _fail("dropout", cfg["dropout"], "must be in [0, 1)")
    _check_levels("attention_levels", cfg["attention_levels"], len(ch))
    _check_levels("cross_attention_levels", cfg["cross_attention_levels"], len(ch))
    for c in ch:
        if c % min(cfg["groups"], c):
            raise _fail("groups", cfg["groups"], f"min(groups, c) must divide every c of channels={list(ch)}")
    attn_ch = [ch[i] for i in set(cfg["attention_levels"]) | set(cfg["cross_attention_levels"])]
    attn_ch += [ch[-1]] if cfg["mid_attention"] or len(ch) - 1 in cfg["cross_attention_levels"] else []
    for c in attn_ch:
        if c % cfg["heads"]:
            raise _fail("heads", cfg["heads"], f"must divide the channels of every attention level ({c})")


class UNet(nn.Module):
    """Text-conditional latent UNet (see the module docstring).

    Args:
        in_channels: latent channels (input and output).
        channels: channels per level; the latent side must be divisible by 2^(len(channels) − 1).
        layers_per_level: ResBlocks per level on the down path (the up path has one more).
        attention_levels: levels (0 = full resolution) whose ResBlocks are followed by self-attention.
        cross_attention_levels: levels whose transformer blocks also cross-attend to the text tokens.
        mid_attention: self-attention in the mid block (cross-attention there iff the last level has it).
        cond_dim: width of the pooled text embedding.
        token_dim: width of the text token features.
        heads: attention heads (must divide the channels of every attention level).
        groups: GroupNorm groups, min(groups, channels) per layer (must divide the channels).
        dropout: dropout inside ResBlocks.
        time_dim: width of the conditioning vector (None = 4·channels[0]).

    Attributes:
        config: JSON-ready kwargs (lists, time_dim resolved); `UNet(**model.config)` rebuilds the model.

    Raises:
        ValueError: a bad config value, naming the field.
    """

    def __init__(self, in_channels: int = 4, channels=(64, 128), layers_per_level: int = 2, attention_levels=(1,),
                 cross_attention_levels=(1,), mid_attention: bool = True, cond_dim: int = 256, token_dim: int = 128,
                 heads: int = 4, groups: int = 32, dropout: float = 0.0, time_dim: int | None = None) -> None:
        super().__init__()
        cfg = {"in_channels": in_channels, "channels": tuple(channels), "layers_per_level": layers_per_level,
               "attention_levels": tuple(attention_levels), "cross_attention_levels": tuple(cross_attention_levels),
               "mid_attention": bool(mid_attention), "cond_dim": cond_dim, "token_dim": token_dim, "heads": heads,
               "groups": groups, "dropout": float(dropout), "time_dim": time_dim}
        validate(cfg)
        ch = cfg["channels"]
        time_dim = time_dim or 4 * ch[0]
        self.config = {**cfg, "time_dim": time_dim, **{k: list(cfg[k]) for k in
                                                       ("channels", "attention_levels", "cross_attention_levels")}}
        self.time_in = ch[0]
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_proj = nn.Linear(cond_dim, time_dim)
        self.null_token = nn.Parameter(torch.zeros(1, 1, token_dim))
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self._build_paths(cfg, time_dim)
        self.norm_out = nn.GroupNorm(min(groups, ch[0]), ch[0])
        self.conv_out = _zero(nn.Conv2d(ch[0], in_channels, 3, padding=1))

    def _stage(self, cfg: dict, level: int, in_ch: int, out_ch: int, emb_dim: int) -> Stage:
        res = ResBlock(in_ch, out_ch, emb_dim, cfg["groups"], cfg["dropout"])
        self_attn, cross = level in cfg["attention_levels"], level in cfg["cross_attention_levels"]
        attn = (TransformerBlock(out_ch, cfg["token_dim"], cfg["heads"], cfg["groups"], self_attn, cross)
                if self_attn or cross else None)
        return Stage(res, attn)

    def _build_paths(self, cfg: dict, emb_dim: int) -> None:
        ch, n = cfg["channels"], cfg["layers_per_level"]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, cur = [ch[0]], ch[0]
        for lvl, c in enumerate(ch):
            self.down.append(nn.ModuleList())
            for _ in range(n):
                self.down[-1].append(self._stage(cfg, lvl, cur, c, emb_dim))
                cur = c
                skips.append(cur)
            last = lvl == len(ch) - 1
            self.downsample.append(nn.Identity() if last else Downsample(cur))
            skips += [] if last else [cur]
        top = len(ch) - 1
        self.mid_res1 = ResBlock(cur, cur, emb_dim, cfg["groups"], cfg["dropout"])
        mid_cross = top in cfg["cross_attention_levels"]
        self.mid_attn = (TransformerBlock(cur, cfg["token_dim"], cfg["heads"], cfg["groups"], cfg["mid_attention"],
                                          mid_cross) if cfg["mid_attention"] or mid_cross else None)
        self.mid_res2 = ResBlock(cur, cur, emb_dim, cfg["groups"], cfg["dropout"])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(len(ch))):
            self.up.append(nn.ModuleList())
            for _ in range(n + 1):
                self.up[-1].append(self._stage(cfg, lvl, cur + skips.pop(), ch[lvl], emb_dim))
                cur = ch[lvl]
            self.upsample.append(nn.Identity() if lvl == 0 else Upsample(cur))

    def embed(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The conditioning vector `emb` = MLP(sinusoid(t)) + Linear(pooled), (B, time_dim)."""
        t = torch.as_tensor(t, device=pooled.device)
        if t.dim() == 0:
            t = t.expand(pooled.shape[0])
        return self.time_mlp(timestep_embedding(t, self.time_in)) + self.cond_proj(pooled)

    def _context(self, tokens: torch.Tensor | None,
                 token_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Tokens with the learned null token in front, and the mask extended with True for it."""
        if tokens is None:
            return None, None
        tokens = torch.cat([self.null_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if token_mask is None:
            return tokens, None
        keep = torch.ones(token_mask.shape[0], 1, dtype=torch.bool, device=token_mask.device)
        return tokens, torch.cat([keep, token_mask.bool()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor, tokens: torch.Tensor | None = None,
                token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε (or v) for noisy latents.

        Args:
            x: (B, in_channels, H, W) noisy latents.
            t: (B,) timesteps on the 0…999 scale, float or int (one 0-d value is broadcast).
            pooled: (B, cond_dim) pooled text embedding.
            tokens: (B, L, token_dim) text token features, or None to skip cross-attention.
            token_mask: (B, L) bool, True = real token; padding is ignored. None = all real.

        Returns:
            (B, in_channels, H, W), in `x`'s dtype.
        """
        factor = 2 ** (len(self.down) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"x.shape={tuple(x.shape)}: H and W must be divisible by 2^(levels − 1) = {factor}")
        emb = F.silu(self.embed(t, pooled))
        tokens, mask = self._context(tokens, token_mask)
        h = self.conv_in(x)
        skips = [h]
        for stages, down in zip(self.down, self.downsample):
            for stage in stages:
                h = stage(h, emb, tokens, mask)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid_res1(h, emb)
        h = self.mid_attn(h, tokens, mask) if self.mid_attn is not None else h
        h = self.mid_res2(h, emb)
        for stages, up in zip(self.up, self.upsample):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb, tokens, mask)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)


# the constructor's keyword defaults: written once, in `UNet.__init__`'s signature
UNET_DEFAULTS: dict = {name: p.default for name, p in inspect.signature(UNet.__init__).parameters.items()
                       if name != "self"}

PRESETS: dict[str, dict] = {
    # forward in milliseconds; for tests
    "tiny": {**UNET_DEFAULTS, "channels": (16, 32), "layers_per_level": 1, "groups": 8, "cond_dim": 32,
             "token_dim": 32, "heads": 2},
    # 5.36M parameters; 4×8×8 latents, trains on 2 CPU cores. Text: compact CLIP (pooled 256-d, tokens 128-d)
    "cpu": dict(UNET_DEFAULTS),
    # 35.7M parameters; 4×16×16 latents on a GPU
    "gpu": {**UNET_DEFAULTS, "channels": (128, 256, 256), "attention_levels": (1, 2),
            "cross_attention_levels": (1, 2), "heads": 8},
}

# the preset names as a type, for configs' CLI choices (`TrainConfig.model`): derived from PRESETS, never retyped
PresetName = Literal[tuple(PRESETS)]


def create(name: str, **overrides) -> UNet:
    """The UNet of preset `name` with some constructor arguments replaced (open_clip's `create_model(name)`); the
    weights are drawn from torch's global RNG, as `UNet(**PRESETS[name], ...)` would.

    Raises:
        ValueError: an unknown preset name or constructor argument (naming it and the allowed ones), or a bad
            value (see `validate`).
    """
    if name not in PRESETS:
        raise _fail("name", name, f"not a UNet preset; allowed names are {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(UNET_DEFAULTS))
    if unknown:
        raise _fail(unknown[0], overrides[unknown[0]], f"not a UNet argument; allowed are {', '.join(UNET_DEFAULTS)}")
    return UNet(**{**PRESETS[name], **overrides})
