"""Image quality metrics on 8-bit RGB, as reported in the DS-DiT benchmark and training logs.

Inputs are float arrays/tensors in [0, 1], [H, W, 3] (numpy) or [B, 3, H, W] (torch); both are
quantised to 8 bits first, so figures match what a saved PNG would score.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_bchw_255(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    t = t.detach().to(torch.float64)
    if t.ndim == 3:                                  # [H, W, 3]
        t = t.permute(2, 0, 1)[None]
    return (t.clamp(0, 1) * 255.0).round()


def psnr(a, b) -> float:
    """PSNR in dB (peak 255) after 8-bit quantisation."""
    a, b = _as_bchw_255(a), _as_bchw_255(b)
    mse = float(torch.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim(a, b, sigma: float = 1.5, size: int = 11) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, L 255),
    computed per RGB channel on the valid region and averaged."""
    a, b = _as_bchw_255(a), _as_bchw_255(b)
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    c = a.shape[1]
    kh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kh, groups=c), kv, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
