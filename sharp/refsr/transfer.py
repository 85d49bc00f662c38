"""Reference detail transfer: copy the Ref's aligned detail where it matches.

The network alone barely uses RRSSRD references (another date of the same place: 13-15 dB PSNR
against the HR, misaligned differently across the image). What a Ref does hold is measured by
benchmarks/refsr_reference_information.py: after local alignment its detail layer correlates
with the detail the SR must add, most where the Ref matches the LR. This stage adds it explicitly,
after sampling:

    d    = Ref' - up(down(Ref'))          the Ref's detail layer, Ref' = align_reference(Ref, "local")
    g    = conf^p * d                     gated by the matching confidence (p = 8)
    SR'  = clip(SR + lambda * g)          lambda = least squares over training triplets

lambda is the one fitted number: the regression coefficient of the network's remaining error
(HR - SR) on g over training images (`fit_transfer_gain`), stored in the checkpoint's
sampling_defaults. A wrong Ref has low confidence and uncorrelated detail, so it adds little.
Images here are [B, 3, H, W] tensors in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# p: chosen on the training folders (val_1st + val_2nd, bicubic base, least-squares lambda each):
# PSNR gain +0.031 / +0.041 / +0.054 / +0.060 / +0.062 / +0.059 dB for p = 1 / 2 / 4 / 6 / 8 / 12.
# A high power keeps only confidently matched places: partial matches carry wrong detail.
CONF_POWER = 8.0


def detail_layer(img: torch.Tensor, scale: int) -> torch.Tensor:
    """img - bicubic_up(antialiased bicubic_down(img)): what a x scale bicubic upsampling of
    this image's LR would miss. [B, C, H, W] -> [B, C, H, W]."""
    h, w = img.shape[-2:]
    small = F.interpolate(img, size=(max(1, h // scale), max(1, w // scale)), mode="bicubic",
                          antialias=True, align_corners=False)
    return img - F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)


def gated_detail(ref_aligned: torch.Tensor, conf: torch.Tensor, scale: int,
                 power: float = CONF_POWER) -> torch.Tensor:
    """g = conf^p * detail(Ref'); ref_aligned [B, 3, H, W], conf [B, 1, H, W] in [0, 1]."""
    return conf.clamp(0.0, 1.0) ** power * detail_layer(ref_aligned, scale)


def apply_transfer(sr: torch.Tensor, gated: torch.Tensor, gain: float) -> torch.Tensor:
    """SR' = clip(SR + gain * g, 0, 1)."""
    if gain == 0:
        return sr
    return (sr + gain * gated).clamp(0.0, 1.0)


def fit_transfer_gain(errors: list[torch.Tensor], gated: list[torch.Tensor]) -> float:
    """Least-squares lambda = sum <e, g> / sum <g, g> over images (e = HR - SR), clipped to
    [0, 1]: a negative fit means the Refs' detail does not help, and copying more than the Ref
    itself holds is never right."""
    num = sum(float((e.double() * g.double()).sum()) for e, g in zip(errors, gated))
    den = sum(float((g.double() ** 2).sum()) for g in gated)
    if den <= 0:
        return 0.0
    return min(max(num / den, 0.0), 1.0)
