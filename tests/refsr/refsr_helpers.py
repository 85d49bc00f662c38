"""Shared helpers for the DS-DiT tests (`from refsr.refsr_helpers import ...`: tests/ is on the
pytest pythonpath and tests/refsr is a namespace package, no __init__.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sharp.refsr.config import DSDiTConfig
from sharp.refsr.model import DSDiT

TINY = DSDiTConfig(dim=16, depth=2, heads=2, radius=1, encoder_depth=1, plw_hidden=4,
                   cond_highpass=True)
# TINY with the Ref-matching options of the shipped "medium-match" preset (local alignment,
# confidence tokens, null-Ref weak path)
TINY_MATCH = DSDiTConfig(dim=16, depth=2, heads=2, radius=1, encoder_depth=1, plw_hidden=4,
                         cond_highpass=True, ref_align="local", ref_confidence=True, weak_ref="null")
# repo root is parents[2] of this file; shared/ sits beside the clone
RRSSRD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "rrssrd"


def randomised(cfg: DSDiTConfig = TINY, seed: int = 0) -> DSDiT:
    """A model whose zero-initialised layers (adaLN gates, output, PLW) are made non-zero, so
    every path of the network actually influences the output."""
    torch.manual_seed(seed)
    model = DSDiT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.2)
    return model.eval()


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """Deterministic smooth-ish RGB test image [h, w, 3] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    img = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.rand(1, 3, h, w, generator=g)
    return img.clamp(0, 1)[0].permute(1, 2, 0).numpy()


def write_triplets(root: Path, n: int = 3, size: int = 64, scale: int = 4) -> Path:
    """A tiny RRSSRD-style folder: HR/, LR/ (area-downsampled HR), Ref/ (shifted HR)."""
    for d in ("HR", "LR", "Ref"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        hr = smooth_image(size, size, seed=i)
        lr = torch.nn.functional.avg_pool2d(torch.from_numpy(hr).permute(2, 0, 1)[None], scale)
        lr = lr[0].permute(1, 2, 0).numpy()
        ref = np.roll(hr, (2, -3), axis=(0, 1))
        for d, img in (("HR", hr), ("LR", lr), ("Ref", ref)):
            Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(root / d / f"t{i}.png")
    return root
