"""Nodata: holes are filled from valid pixels only before the model sees them, and put back.

The model and the bicubic upsampling look at neighbours, so a hole must hold something; it
must not be the nodata value (e.g. 0 or -9999 would pull every neighbour's output towards it).
Holes are filled by normalised convolution of the valid pixels with a Gaussian (sigma
FILL_SIGMA LR px, radius FILL_RADIUS), i.e. a local weighted mean of valid neighbours; pixels
with no valid pixel within the radius get mid-grey 0.5. The fill depends only on valid pixels
within FILL_RADIUS, which the tile's LR halo includes, so it never carries the nodata value and
is the same in every tile. Output pixels whose LR pixel is nodata are written as nodata.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FILL_SIGMA = 2.0
FILL_RADIUS = 6
FILL_EMPTY = 0.5


def _gauss(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with zero padding (no data outside)."""
    r = FILL_RADIUS
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / FILL_SIGMA) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def fill_holes(img: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """img [B, C, H, W] with valid [B, 1, H, W] bool -> img with every invalid pixel replaced
    by the Gaussian-weighted mean of the valid pixels near it (FILL_EMPTY if there are none)."""
    m = valid.to(img.dtype)
    num, den = _gauss(torch.where(valid, img, 0.0)), _gauss(m)
    fill = torch.where(den > 1e-6, num / den.clamp_min(1e-6), torch.full_like(num, FILL_EMPTY))
    return torch.where(valid, img, fill)


def output_valid(lr_valid: torch.Tensor, scale: int) -> torch.Tensor:
    """Output-pixel validity [..., H*s, W*s] from LR validity [..., H, W]: an output pixel is
    valid iff the LR pixel it lies in is."""
    return lr_valid.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
