"""A trained latent diffusion model ready to sample: UNet + frozen VAE + frozen text encoder + noise schedule.

The checkpoint (`model.pt`, format "mithridate-latent-diffusion") carries the UNet's config and EMA weights,
the whole autoencoder (config, weights, latent statistics), the schedule, the prediction type and a reference
(path and weights name) to the compact CLIP whose text tower conditions the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffusion import data, samplers, vae_train as vae_mod
from diffusion.autoencoder import Autoencoder
from diffusion.classifier import guidance_grad
from diffusion.schedule import NoiseSchedule
from diffusion.text import Conditioning, TextEncoder, load_text_encoder
from diffusion.unet import UNet
from mithridate.core import checkpoints, compute

logger = logging.getLogger(__name__)

FORMAT = "mithridate-latent-diffusion"
CHECKPOINT_FILE = "model.pt"
KEYS = ("format", "unet_config", "unet_state", "vae", "text", "schedule", "prediction", "clip_x0", "image_size")


def checkpoint_path(path: str | Path) -> Path:
    """`path`, or `<path>/model.pt` for a `train` output folder."""
    p = Path(path).expanduser()
    return p / CHECKPOINT_FILE if p.is_dir() else p


def read_checkpoint(path: str | Path) -> dict:
    """Load and check a diffusion checkpoint.

    Raises:
        FileNotFoundError: no such file. ValueError: not a torch file, or another kind of checkpoint.
    """
    p = checkpoint_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"diffusion checkpoint not found: {p} (train one with `mithridate train`)")
    ckpt = checkpoints.load(p, "delete it and rerun `mithridate train` to retrain (or give another model.pt)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format", sorted(ckpt)[:6]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{p}: not a diffusion checkpoint from `mithridate train` (found {found!r})")
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{p}: diffusion checkpoint lacks {missing}")
    return ckpt


def build_unet(config: dict, state: dict, where: str) -> UNet:
    """A UNet from its config and weights; a mismatch is a one-line error naming `where`."""
    try:
        unet = UNet(**config)
        unet.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{where}: UNet weights do not fit its config — a checkpoint from another architecture? "
                         f"({str(err).splitlines()[0][:200]})") from None
    return unet


def build_vae(entry: dict) -> Autoencoder:
    """The autoencoder stored inside a diffusion checkpoint (frozen)."""
    return vae_mod.from_checkpoint(entry)


def vae_entry(ae: Autoencoder, source: str) -> dict:
    """What a diffusion checkpoint stores of its autoencoder."""
    return {"config": ae.config, "state_dict": {k: v.detach().cpu() for k, v in ae.state_dict().items()},
            "latent_shift": ae.latent_shift.detach().cpu(), "latent_scale": float(ae.latent_scale), "source": source}


def _noise(shape: tuple, generator: torch.Generator, device: str) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device)


class Pipeline:
    """Text → image with one of the samplers, plus img2img, inpainting and classifier guidance.

    Attributes:
        unet, vae, text, schedule, prediction ("eps" | "v"), clip_x0, image_size, device, info (the checkpoint's
        non-weight entries: concepts, train config, …).
    """

    def __init__(self, unet: UNet, vae: Autoencoder, text: TextEncoder, schedule: NoiseSchedule, prediction: str,
                 clip_x0: float | None, image_size: int, device: str = "cpu", info: dict | None = None):
        self.unet, self.vae = unet.to(device).eval(), vae.to(device).eval()
        self.text, self.schedule, self.prediction, self.clip_x0 = text, schedule, prediction, clip_x0
        self.image_size, self.device, self.info = image_size, device, info or {}
        self.latent_shape = (vae.config["latent_channels"], image_size // vae.factor, image_size // vae.factor)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", clip: str = "") -> "Pipeline":
        """Load `model.pt` (or its folder); `clip` overrides where the text encoder is looked for."""
        ckpt = read_checkpoint(path)
        device = compute.resolve_device(device)
        unet = build_unet(ckpt["unet_config"], ckpt["unet_state"], str(checkpoint_path(path)))
        text = load_text_encoder(ckpt["text"], device, clip)
        sched = NoiseSchedule(**ckpt["schedule"])
        info = {k: v for k, v in ckpt.items() if k not in ("unet_state", "vae")}
        return cls(unet, build_vae(ckpt["vae"]), text, sched, ckpt["prediction"], ckpt["clip_x0"],
                   int(ckpt["image_size"]), device, info)

    def _autocast(self):
        return compute.autocast(self.device, compute.use_bf16("auto", self.device))

    def _net(self, cond: Conditioning, guidance: float):
        """The raw network as samplers see it, with classifier-free guidance at scale `guidance`."""
        def forward(x, t, c):
            with self._autocast():
                return self.unet(x, t, c.pooled, c.tokens, c.mask).float()

        if guidance == 1.0:
            return lambda x, t: forward(x, t, cond)
        both = Conditioning.cat([cond, self.text.encode([""] * len(cond))]).to(self.device)
        return samplers.classifier_free(lambda x2, t2: forward(x2, t2, both), guidance)

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 `(N, S, S, 3)` → normalised latents (posterior means)."""
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images are {images.shape[1]}×{images.shape[2]} px; the model works at "
                             f"{self.image_size}×{self.image_size}")
        with torch.no_grad():
            return self.vae.encode_latents(data.from_uint8(images).to(self.device))

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return data.to_uint8(self.vae.decode_latents(latents.float()))

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], sampler: str = "ddim", steps: int = 50, guidance: float = 3.0,
                 seed: int = 0, eta: float = 0.0, init_images: np.ndarray | None = None, strength: float = 0.6,
                 mask: np.ndarray | None = None, classifier=None, labels: Sequence[int] | None = None,
                 classifier_scale: float = 0.0, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Generate one image per prompt.

        Args:
            prompts: texts (checked: non-empty, within the text encoder's context).
            sampler: one of `samplers.SAMPLERS`. steps: sampler steps. guidance: classifier-free guidance scale s
                (ε̂ = ε̂_∅ + s·(ε̂_c − ε̂_∅); 1 = plain conditional, 0 = unconditional).
            seed: seeds the initial noise and every injected noise (`torch.Generator`), batch by batch.
            eta: DDIM's η. init_images: uint8 `(N, S, S, 3)` for img2img / inpainting (one per prompt).
            strength: img2img: the fraction of the noise schedule re-run (1 = ignore the init image).
            mask: inpainting: `(N, S, S)` or `(S, S)` bool/uint8, nonzero = regenerate; needs `init_images`.
            classifier, labels, classifier_scale: classifier guidance toward class `labels[i]` for image i with a
                `classifier.LatentClassifier` at scale s (ε̂ ← ε̂ − s·√(1 − ᾱ)·∇ log p(y | x_t), `samplers.Denoiser`).

        Returns:
            uint8 `(N, S, S, 3)`.
        """
        self.text.check_prompts(prompts)
        if sampler not in samplers.SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: allowed values are {', '.join(samplers.SAMPLERS)}")
        if mask is not None and init_images is None:
            raise ValueError("mask: inpainting needs init_images (the image to complete)")
        if init_images is not None and len(init_images) != len(prompts):
            raise ValueError(f"init_images: {len(init_images)} images for {len(prompts)} prompts")
        if not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r}: must be within (0, 1]")
        if classifier is not None and (labels is None or len(labels) != len(prompts)):
            raise ValueError("labels: classifier guidance needs one class label per prompt")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, len(prompts), batch_size):
            sl = slice(i, i + batch_size)
            init = None if init_images is None else init_images[sl]
            m = None if mask is None else (mask if mask.ndim == 2 else mask[sl])
            grad_fn = None if classifier is None else guidance_grad(
                classifier, torch.as_tensor(np.asarray(labels[sl]), device=self.device))
            out.append(self._batch(list(prompts[sl]), sampler, steps, guidance, gen, eta, init, strength, m,
                                   grad_fn, classifier_scale, progress))
        return np.concatenate(out)

    def _batch(self, prompts, sampler, steps, guidance, gen, eta, init, strength, mask, grad_fn, grad_scale,
               progress) -> np.ndarray:
        cond = self.text.encode(prompts).to(self.device)
        net = self._net(cond, guidance)
        den = samplers.Denoiser(net, self.schedule, self.prediction, self.clip_x0, grad_fn, grad_scale)
        shape = (len(prompts), *self.latent_shape)
        T = self.schedule.num_timesteps
        if init is None:
            z = samplers.sample(den, _noise(shape, gen, self.device), sampler, steps, eta=eta, generator=gen,
                                progress=progress)
            return self.decode(z)
        z0 = self.encode_images(init)
        if mask is not None:  # inpainting: the whole schedule, known latents re-noised and pasted at every step
            known = self._latent_known(mask, len(prompts))
            z = samplers.sample(den, _noise(shape, gen, self.device), sampler, steps, eta=eta, generator=gen,
                                inpaint=(z0, known), progress=progress)
            pixels = self.decode(z)
            keep = (np.broadcast_to(mask, pixels.shape[:3]) == 0)[..., None]
            return np.where(keep, init, pixels)
        start = max(0, min(T - 1, int(round(strength * T)) - 1))
        x = self.schedule.add_noise(z0, _noise(shape, gen, self.device), torch.full((len(z0),), start))
        n = max(1, min(start + 1, int(round(steps * strength))))
        return self.decode(samplers.sample(den, x, sampler, n, eta=eta, generator=gen, start_t=start,
                                           progress=progress))

    def _latent_known(self, mask: np.ndarray, n: int) -> torch.Tensor:
        """Pixel mask (nonzero = regenerate) → latent mask (1 = known): a latent cell is known only when every
        pixel it covers is."""
        m = torch.as_tensor(np.asarray(mask) != 0, dtype=torch.float32, device=self.device)
        m = m.reshape(-1, 1, *m.shape[-2:]).expand(n, 1, *m.shape[-2:]) if m.dim() == 2 else m[:, None]
        if m.shape[-1] != self.image_size:
            raise ValueError(f"mask is {m.shape[-2]}×{m.shape[-1]} px; the model works at {self.image_size} px")
        return 1.0 - F.max_pool2d(m, self.vae.factor)
