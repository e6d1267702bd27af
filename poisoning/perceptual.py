"""LPIPS (Zhang et al. 2018) as the perceptual budget of Nightshade's paper — with backbone weights the user gives.

The `lpips` package ships its calibrated linear layers but fetches the AlexNet trunk from the network; here the
trunk is built untrained and filled from a local torchvision AlexNet state dict (`--lpips_backbone=<.pth>`,
e.g. `alexnet-owt-7be5be79.pth` from torchvision's cache). Without one, crafting uses the SSIM budget instead.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import torch

from mithridate.core import checkpoints

logger = logging.getLogger(__name__)

PAPER_LIMIT = 0.07  # Nightshade's perceptual budget p


def _slice(index: int) -> int:
    """AlexNet `features` index → the lpips trunk's slice (1–5) holding it."""
    return 1 + sum(index >= b for b in (2, 5, 8, 10))


def load(backbone: str | Path, device: str = "cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`distance(x, y) → (N,)` LPIPS for images in [−1, 1], trunk weights from `backbone`.

    Raises:
        ValueError: the file is missing, unreadable or not an AlexNet state dict.
    """
    try:
        import lpips
    except ImportError as e:  # a dependency, but say so plainly if it is missing
        raise ValueError("budget=lpips needs the `lpips` package (pip install lpips)") from e
    path = Path(backbone)
    if not path.is_file():
        raise ValueError(f"lpips_backbone={str(backbone)!r}: file not found (a torchvision AlexNet state dict)")
    state = checkpoints.load(path, "give lpips_backbone= a torchvision AlexNet state dict (alexnet-owt-7be5be79.pth "
                                   "from torchvision's cache)", "not a readable torch file")
    if not isinstance(state, dict):
        raise ValueError(f"lpips_backbone={str(backbone)!r}: holds a {type(state).__name__}; expected a torchvision "
                         "AlexNet state dict")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        raise ValueError(f"lpips_backbone={str(backbone)!r}: no `features.*` weights; expected a torchvision "
                         "AlexNet state dict")
    with warnings.catch_warnings():  # torchvision's `pretrained=` deprecation, inside lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    trunk = {f"slice{_slice(int(k.split('.')[0]))}.{k}": v for k, v in feats.items()}
    missing, unexpected = model.net.load_state_dict(trunk, strict=False)
    if missing or unexpected:
        raise ValueError(f"lpips_backbone={str(backbone)!r}: does not fit AlexNet (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model = model.to(device).eval().requires_grad_(False)
    logger.info("LPIPS budget: AlexNet trunk from %s", path)
    return lambda x, y: model(x, y, normalize=False).flatten()
