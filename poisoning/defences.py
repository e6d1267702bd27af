"""Defences against poisons, each measured: the CLIP-score filter, a latent-consistency detector, purification.

- `clip_filter`: the curation filter's test — image–caption CLIP score at or above the threshold the `filter`
  stage applied (`clip_threshold_effective`). Dirty-label poisons pair an image of A with a caption of C, so the
  filter should catch them; Nightshade poisons are images of C with captions of C, so it should not.
- `consistency_scores`: ‖F(x) − F(purify(x))‖ / ‖F(x)‖ for the autoencoder encoder F. An adversarial
  perturbation lives in fine pixel detail that JPEG removes, so a poison's latent moves more under
  purification than a clean image's. `detector` turns scores into precision/recall at a fixed false-positive
  rate on clean images (threshold = the clean scores' (1 − fpr) quantile) plus the ROC AUC.
- `purify`: JPEG re-encoding, or Gaussian noise then a 2× down- and up-resize — applied to every training row
  (a defender cannot tell poisons apart) before the victim trains.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from diffusion import data

logger = logging.getLogger(__name__)

PURIFICATIONS = ("jpeg", "noise_resize")
JPEG_QUALITY = 75
NOISE_STD = 8 / 255  # [0, 1] pixel units


def purify(images: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """uint8 `(N, H, W, 3)` → purified uint8 of the same shape."""
    if method not in PURIFICATIONS:
        raise ValueError(f"purification={method!r}: expected one of {', '.join(PURIFICATIONS)}")
    out = []
    rng = np.random.default_rng(seed)
    for im in images:
        if method == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=JPEG_QUALITY)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        else:
            noisy = np.clip(im / 255.0 + rng.normal(0, NOISE_STD, im.shape), 0, 1)
            pil = Image.fromarray((noisy * 255).round().astype(np.uint8))
            h, w = im.shape[:2]
            small = pil.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
            out.append(np.asarray(small.resize((w, h), Image.BILINEAR)))
    return np.stack(out) if out else images.copy()


def clip_scores(encoder, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """Image–caption cosine similarity per uint8 image (the `embed` stage's CLIP score)."""
    return np.sum(encoder.encode_images(list(images)) * encoder.encode_texts(captions), axis=1)


def clip_filter(encoder, images: np.ndarray, captions: list[str], threshold: float) -> dict:
    """CLIP scores of (image, caption) pairs and whether each passes `threshold` (the filter keeps ≥)."""
    scores = clip_scores(encoder, images, captions)
    return {"scores": scores, "passed": scores >= threshold, "threshold": float(threshold)}


@torch.no_grad()
def consistency_scores(ae, images: np.ndarray, method: str = "jpeg", batch: int = 256) -> np.ndarray:
    """Relative latent shift under purification, one per uint8 image `(N, H, W, 3)`."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        f = ae.encode_latents(data.from_uint8(x)).flatten(1)
        g = ae.encode_latents(data.from_uint8(purify(x, method))).flatten(1)
        out.append(((f - g).norm(dim=1) / f.norm(dim=1).clamp_min(1e-8)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def detector(clean_scores: np.ndarray, poison_scores: np.ndarray, fpr: float = 0.05) -> dict:
    """Precision, recall and AUC of "score above the clean (1 − fpr) quantile ⇒ poison"."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr={fpr!r}: must be within (0, 1)")
    if len(clean_scores) < 2 or len(poison_scores) == 0:
        raise ValueError(f"detector: needs ≥ 2 clean and ≥ 1 poison scores (got {len(clean_scores)}, "
                         f"{len(poison_scores)})")
    threshold = float(np.quantile(clean_scores, 1 - fpr))
    flagged_clean = int((clean_scores > threshold).sum())
    caught = int((poison_scores > threshold).sum())
    labels = np.r_[np.zeros(len(clean_scores)), np.ones(len(poison_scores))]
    return {"fpr_target": fpr, "threshold": threshold, "fpr": flagged_clean / len(clean_scores),
            "recall": caught / len(poison_scores),
            "precision": caught / (caught + flagged_clean) if caught + flagged_clean else float("nan"),
            "auc": float(roc_auc_score(labels, np.r_[clean_scores, poison_scores])),
            "clean": len(clean_scores), "poisons": len(poison_scores)}
