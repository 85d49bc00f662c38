"""Cheap coarse registration of the Ref to the upsampled LR (issue 6).

RRSSRD references are another date of the same place: misaligned by a few pixels and with
different colours. Before tokenising, we
  1. estimate one global integer shift by phase correlation between the low-passed Ref and the
     upsampled LR (both grey, Hann-windowed), and apply it with edge replication;
  2. match the Ref's per-channel mean and standard deviation to the upsampled LR's, measuring
     the Ref's statistics at LR resolution so the two are compared like with like (the
     upsampled LR has no high frequencies).
Both are O(HW log HW) and run once per image, before tiling.
Images here are torch tensors [B, 3, H, W] in [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_grey(img: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H, W] luma."""
    return 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]


def low_pass(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Bring an HR image [B, C, H, W] to the upsampled LR's resolution with a shift-invariant
    Gaussian blur (sigma = scale / 2). A down/up resampling would put the result on the LR grid
    and bias phase correlation towards multiples of `scale`."""
    if scale <= 1:
        return img
    sigma = 0.5 * scale
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    out = F.pad(img, (r, r, r, r), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def phase_correlation(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Integer shifts [B, 2] (dy, dx) such that torch.roll(moving, (dy, dx)) best matches fixed.

    fixed, moving: [B, H, W] grey images."""
    b, h, w = fixed.shape
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=fixed.dtype),
                      torch.hann_window(w, periodic=False, dtype=fixed.dtype))
    fa = torch.fft.rfft2((fixed - fixed.mean((-2, -1), keepdim=True)) * win)
    fb = torch.fft.rfft2((moving - moving.mean((-2, -1), keepdim=True)) * win)
    cross = fa * fb.conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-8), s=(h, w))   # [B, H, W]
    idx = corr.reshape(b, -1).argmax(dim=1)
    dy, dx = idx // w, idx % w
    dy = torch.where(dy > h // 2, dy - h, dy)
    dx = torch.where(dx > w // 2, dx - w, dx)
    return torch.stack([dy, dx], dim=1)


def shift_image(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate [B, C, H, W] by (dy, dx) pixels (content moves down/right), replicating edges."""
    if dy == 0 and dx == 0:
        return img
    h, w = img.shape[-2:]
    py, px = abs(dy), abs(dx)
    padded = F.pad(img, (px, px, py, py), mode="replicate")
    return padded[..., py - dy:py - dy + h, px - dx:px - dx + w]


def match_colour(ref: torch.Tensor, target: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Per-channel mean/std matching of ref [B, 3, H, W] to target [B, 3, H', W'].

    The Ref's statistics are taken at the target's resolution (area-downsampled by `scale`), so
    the high frequencies the upsampled LR lacks do not inflate the Ref's standard deviation."""
    lp = F.avg_pool2d(ref, scale) if scale > 1 and min(ref.shape[-2:]) >= scale else ref
    mu_r, sd_r = lp.mean((-2, -1), keepdim=True), lp.std((-2, -1), keepdim=True)
    mu_t, sd_t = target.mean((-2, -1), keepdim=True), target.std((-2, -1), keepdim=True)
    gain = (sd_t / sd_r.clamp_min(1e-4)).clamp(0.25, 4.0)
    return ref.sub(mu_r).mul_(gain).add_(mu_t).clamp_(0.0, 1.0)


def register_reference(ref: torch.Tensor, up: torch.Tensor, scale: int, max_shift: int = 32,
                       colour: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Align ref [B, 3, H, W] to the upsampled LR up [B, 3, H, W]; returns (ref', shifts [B, 2]).

    Shifts larger than max_shift are treated as failed estimates and not applied."""
    shifts = phase_correlation(to_grey(up), low_pass(to_grey(ref)[:, None], scale)[:, 0])
    out = []
    for i in range(ref.shape[0]):
        dy, dx = (int(v) for v in shifts[i])
        if max(abs(dy), abs(dx)) > max_shift:
            dy = dx = 0
            shifts[i] = 0
        out.append(shift_image(ref[i:i + 1], dy, dx))
    ref = out[0] if len(out) == 1 else torch.cat(out, dim=0)
    if colour:
        ref = match_colour(ref, up, scale)
    return ref, shifts
