"""Registration of the Ref to the upsampled LR: coarse (one shift + colour) and local (block matching).

RRSSRD references are another date of the same place: misaligned by a few pixels and with
different colours. Before tokenising, we
  1. estimate one global integer shift by phase correlation between the low-passed Ref and the
     upsampled LR (both grey, Hann-windowed), and apply it with edge replication;
  2. match the Ref's per-channel mean and standard deviation to the upsampled LR's, measuring
     the Ref's statistics at LR resolution so the two are compared like with like (the
     upsampled LR has no high frequencies).
Both are O(HW log HW) and run once per image, before tiling.
Optionally (config ref_align = "local"), a dense block-matching flow then removes the residual,
spatially varying misalignment (`local_flow`, `warp`) and yields a per-pixel matching
confidence (block NCC of the low-passed Ref with the upsampled LR) that tells the network
where the Ref can be trusted (`align_reference` is the one entry point).
Images here are torch tensors [B, 3, H, W] in [0, 1].
"""
from __future__ import annotations

import math
from typing import Callable, Optional

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


NCC_FLOOR = 1e-4   # variance floor of the block NCC (grey values in [0, 1])


def _mean_var(mean: torch.Tensor, mean_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) from the block means of x and of x * x."""
    return mean, (mean_sq - mean * mean).clamp_min(0.0)


def _block_stats(x: torch.Tensor, block: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block mean and (biased) variance of [B, 1, H, W] over block x block windows."""
    return _mean_var(F.avg_pool2d(x, block, stride), F.avg_pool2d(x * x, block, stride))


def block_ncc_volume(fixed: torch.Tensor, moving: torch.Tensor, block: int, radius: int,
                     cancel: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Normalised cross-correlation of every block x block window (stride block / 2) of fixed
    with moving displaced by every integer (dy, dx) in [-radius, radius]^2.

    fixed, moving: [B, 1, H, W] -> ncc [B, (2r+1)^2, Hb, Wb]; shift index k = (dy + r) * (2r+1)
    + (dx + r), and displaced means moving(p + (dy, dx)) (edges replicated). cancel() is called
    before each displacement (it aborts by raising)."""
    h, w = fixed.shape[-2:]
    stride = max(block // 2, 1)
    mu_f, var_f = _block_stats(fixed, block, stride)
    padded = F.pad(moving, (radius,) * 4, mode="replicate")
    hb, wb = mu_f.shape[-2:]
    # The displaced blocks' mean and variance, for many displacements: the block means of the
    # padded image at every offset (stride 1, the cost of ~stride^2 strided pools), sampled
    # per displacement -- the same sums, so the same bits as pooling each displaced copy.
    shared = (2 * radius + 1) ** 2 > stride * stride
    if shared:
        m1, m2 = F.avg_pool2d(padded, block, 1), F.avg_pool2d(padded * padded, block, 1)
    # One image-sized buffer for fixed * cand and the volume allocated once: a fresh image-sized
    # temporary per displacement, freed between small allocations, fragments glibc's heap
    # (measured: whole-image peaks of 2.5-3.3 GiB instead of 0.9 at 2048^2, run to run).
    prod = torch.empty_like(fixed)
    n = 2 * radius + 1
    volume = fixed.new_empty(fixed.shape[0], n * n, hb, wb)
    for k in range(n * n):
        dy, dx = k // n - radius, k % n - radius
        if cancel is not None:
            cancel()
        cand = padded[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        if shared:
            at = (..., slice(radius + dy, radius + dy + stride * (hb - 1) + 1, stride),
                  slice(radius + dx, radius + dx + stride * (wb - 1) + 1, stride))
            mu_c, var_c = _mean_var(m1[at], m2[at])
        else:
            mu_c, var_c = _block_stats(cand, block, stride)
        cov = F.avg_pool2d(torch.mul(fixed, cand, out=prod), block, stride) - mu_f * mu_c
        # the variance floor (grey std 0.01) sends flat blocks (water, fields) to ~0
        volume[:, k:k + 1] = cov / ((var_f + NCC_FLOOR) * (var_c + NCC_FLOOR)).sqrt()
    return volume


def _subpixel(volume: torch.Tensor, best: torch.Tensor, radius: int) -> torch.Tensor:
    """Parabolic refinement of the integer argmax along dy and dx -> [B, 2, Hb, Wb] float."""
    n = 2 * radius + 1
    iy, ix = best // n, best % n                                          # [B, 1, Hb, Wb]
    def at(y, x):
        return volume.gather(1, (y.clamp(0, n - 1) * n + x.clamp(0, n - 1)))
    c = at(iy, ix)
    offsets = []
    for lo, hi, inner in ((at(iy - 1, ix), at(iy + 1, ix), (iy > 0) & (iy < n - 1)),
                          (at(iy, ix - 1), at(iy, ix + 1), (ix > 0) & (ix < n - 1))):
        denom = lo - 2 * c + hi
        off = torch.where(inner & (denom < -1e-6), 0.5 * (lo - hi) / denom.clamp_max(-1e-6),
                          torch.zeros_like(c))
        offsets.append(off.clamp(-0.5, 0.5))
    return torch.cat([iy - radius + offsets[0], ix - radius + offsets[1]], dim=1).to(volume.dtype)


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median filter of [B, C, H, W] (edges replicated): removes isolated bad matches."""
    c = x.shape[1]
    windows = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3)       # [B, C*9, H*W]
    med = windows.view(x.shape[0], c, 9, -1).median(dim=2).values
    return med.view_as(x)


def local_flow(fixed: torch.Tensor, moving: torch.Tensor, block: int = 16, radius: int = 8,
               cancel: Optional[Callable[[], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense displacement field by block matching (the Ref is misaligned by a few pixels,
    differently in different places, e.g. parallax of tall buildings).

    fixed, moving: [B, 1, H, W] grey at the same resolution. Returns (flow [B, 2, H, W] in pixels,
    (dy, dx) such that moving(p + flow(p)) matches fixed(p); confidence [B, 1, H, W], the
    block NCC at the chosen displacement, in [-1, 1]). Cost: (2r+1)^2 box filters of the image."""
    h, w = fixed.shape[-2:]
    block = max(2, min(block, h, w))
    volume = block_ncc_volume(fixed, moving, block, radius, cancel)
    n = 2 * radius + 1
    dist = torch.arange(n, dtype=volume.dtype) - radius
    # tiny preference for small displacements: flat blocks (water, fields) stay put
    penalty = 1e-3 * (dist.abs()[:, None] + dist.abs()[None, :]).reshape(1, -1, 1, 1)
    best = (volume - penalty).argmax(dim=1, keepdim=True)
    shifts = _median3(_subpixel(volume, best, radius))                   # [B, 2, Hb, Wb]
    conf = _median3(volume.gather(1, best))
    # blocks are centred at stride * i + (block - 1) / 2: interpolate to pixel centres
    stride = max(block // 2, 1)
    hb, wb = shifts.shape[-2:]
    ys = ((torch.arange(h, dtype=volume.dtype) - (block - 1) / 2) / stride).clamp(0, hb - 1)
    xs = ((torch.arange(w, dtype=volume.dtype) - (block - 1) / 2) / stride).clamp(0, wb - 1)
    gy = 2 * ys / max(hb - 1, 1) - 1
    gx = 2 * xs / max(wb - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # [H, W, 2] (x, y)
    grid = grid.expand(fixed.shape[0], h, w, 2)
    flow = F.grid_sample(shifts, grid, mode="bilinear", align_corners=True)
    conf = F.grid_sample(conf, grid, mode="bilinear", align_corners=True)
    return flow, conf


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out(p) = img(p + flow(p)), bilinear, edges replicated. img [B, C, H, W], flow [B, 2, H, W]."""
    b, _, h, w = img.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=img.dtype), torch.arange(w, dtype=img.dtype),
                            indexing="ij")
    y = yy + flow[:, 0]
    x = xx + flow[:, 1]
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


ALIGN_MODES = ("global", "local")


def refine_local(ref: torch.Tensor, up: torch.Tensor, scale: int,
                 cancel: Optional[Callable[[], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The local stage alone: warp a globally registered ref [B, 3, H, W] by the dense
    block-matching flow against up; returns (ref', confidence [B, 1, H, W] in [0, 1])."""
    flow, conf = local_flow(to_grey(up)[:, None], low_pass(to_grey(ref)[:, None], scale), cancel=cancel)
    return warp(ref, flow), conf.clamp(0.0, 1.0)


def align_reference(ref: torch.Tensor, up: torch.Tensor, scale: int, mode: str = "global",
                    register: bool = True, cancel: Optional[Callable[[], None]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The Ref as the network sees it: ref [B, 3, H, W] aligned to the upsampled LR up.

    mode "global": phase-correlation shift + colour matching; "local": then a dense block-matching
    warp (`refine_local`). register=False leaves the Ref as given. Returns (ref', confidence
    [B, 1, H, W] in [0, 1]): the block NCC of the aligned Ref with up (negative correlation counts
    as no match). cancel(): called between and inside the stages (aborts by raising)."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"Ref alignment mode must be one of {ALIGN_MODES}, got {mode!r}")
    if register:
        ref, _ = register_reference(ref, up, scale)
        if cancel is not None:
            cancel()
        if mode == "local":
            return refine_local(ref, up, scale, cancel)
    # confidence of the Ref where it is (zero displacement)
    _, conf = local_flow(to_grey(up)[:, None], low_pass(to_grey(ref)[:, None], scale), radius=0, cancel=cancel)
    return ref, conf.clamp(0.0, 1.0)
