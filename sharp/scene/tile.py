"""One tile of a scene: LR window (+ halo) and Ref window in, SR pieces out. Pure and
deterministic, so any worker gives the same bits; runs the same stages as super_resolve
(sharp.refsr.stages), which is why one tile covering the image equals super_resolve.

Per tile:
  1. LR holes filled from valid neighbours (sharp.scene.nodata), bicubic upsampling of the
     window, cropped to the tile (the halo makes it equal the whole-image upsampling);
  2. Ref: where it has no data it is replaced by the upsampled LR (the model's null Ref), then
     aligned to the upsampled LR on this tile (global shift + colour, local warp), and its
     matching confidence is set to 0 where it had no data: there the model falls back to its
     LR branch and the detail transfer adds nothing. A tile without any Ref pixel runs the
     weak, LR-only prediction;
  3. replicate padding to the tile size, Euler sampling, decoding;
  4. extra bands: bicubic upsampling of their native values (holes filled the same way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from sharp.refsr.data import upsample
from sharp.refsr.stages import (block_noise, condition_reference, initial_noise, pad_to,
                                sample_tile)

from .nodata import fill_holes


@dataclass(frozen=True)
class TileSettings:
    scale: int
    steps: int
    guidance: float
    seed: int
    temperature: float
    gain: float            # reference detail transfer lambda (0: off)
    register: bool
    grid_noise: Optional[tuple[int, int]] = None   # (cells_h, cells_w): one-tile scenes use
    #                                                super_resolve's noise stream over the grid


@dataclass
class TileJob:
    """All one worker needs for one tile (numpy, picklable)."""
    index: int
    box: tuple[int, int, int, int]        # (y0, x0, h, w) in output pixels, clipped to image
    size: tuple[int, int]                 # (th, tw) the tile's padded size
    lr_origin: tuple[int, int]            # (row0, col0) of the LR window
    lr: np.ndarray                        # [3, rows, cols] float32 in [0, 1]
    lr_valid: Optional[np.ndarray]        # [rows, cols] bool, None = all valid
    ref: Optional[np.ndarray]             # [3, h, w] float32 in [0, 1], NaN = no Ref
    extra: Optional[np.ndarray] = None    # [E, rows, cols] float32 native values
    settings: Optional[TileSettings] = None   # its scene's (so one pool serves many scenes)


def tensor(a: np.ndarray) -> torch.Tensor:
    """numpy -> torch without sharing a read-only buffer (arrays from Ray's object store)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _window_up(img: torch.Tensor, job: TileJob, scale: int, clamp: bool) -> torch.Tensor:
    """Bicubic x scale of an LR window [1, C, rows, cols], cropped to the tile's box."""
    rows, cols = img.shape[-2:]
    y0, x0, h, w = job.box
    oy, ox = y0 - job.lr_origin[0] * scale, x0 - job.lr_origin[1] * scale
    if clamp:
        up = upsample(img, (rows * scale, cols * scale))
    else:
        up = F.interpolate(img, size=(rows * scale, cols * scale), mode="bicubic",
                           align_corners=False)
    return up[..., oy:oy + h, ox:ox + w]


def empty_result(job: TileJob, st: TileSettings) -> dict[str, np.ndarray]:
    """The result of a tile whose LR is all nodata: never shown (every pixel is written as
    nodata), so the model is not run."""
    _, _, h, w = job.box
    out = {"sr": np.zeros((3, h, w), np.float32)}
    if st.gain > 0:
        out["gated"] = np.zeros((3, h, w), np.float32)
    if job.extra is not None:
        out["extra"] = np.zeros((job.extra.shape[0], h, w), np.float32)
    return out


def run_tile(model, space, job: TileJob, st: TileSettings,
             callback: Optional[Callable[[], None]] = None) -> dict[str, np.ndarray]:
    """{"sr": [3, h, w] in [0, 1], "gated": [3, h, w] (with a transfer), "extra": [E, h, w]}."""
    s = st.scale
    lr = tensor(job.lr)[None]
    valid = None if job.lr_valid is None else tensor(job.lr_valid)[None, None]
    if valid is not None and not bool(valid.all()):
        lr = fill_holes(lr, valid)
    up = _window_up(lr, job, s, clamp=True)
    _, _, h, w = up.shape
    th, tw = job.size
    ref = conf = gated = None
    if job.ref is not None:
        r = tensor(job.ref)[None]
        have = ~torch.isnan(r).any(1, keepdim=True)
        if bool(have.any()):
            r = torch.where(have, r, up)
            ref, conf, gated = condition_reference(r, up, s, model.cfg, st.register, st.gain > 0)
            conf = conf * have
            if gated is not None:
                gated = gated * have
            ref, conf = pad_to(ref, th, tw), pad_to(conf, th, tw)
    down = model.cfg.unit // model.cfg.patch
    c = model.cfg.in_channels
    if st.grid_noise is not None:
        x0 = initial_noise(st.temperature, st.seed, 1, c, *st.grid_noise)
    else:
        x0 = block_noise(st.temperature, st.seed, c, job.box[0] // down, job.box[1] // down,
                         th // down, tw // down)
    sr = sample_tile(model, space, pad_to(up, th, tw), ref, conf, x0, st.steps, st.guidance,
                     callback)[..., :h, :w]
    out = {"sr": sr[0].numpy()}
    if st.gain > 0:        # zeros where the tile has no Ref: every tile gives the same arrays
        out["gated"] = gated[0].numpy() if gated is not None else np.zeros_like(out["sr"])
    if job.extra is not None:
        ex = tensor(job.extra)[None]
        if valid is not None and not bool(valid.all()):
            ex = fill_holes(ex, valid)
        out["extra"] = _window_up(ex, job, s, clamp=False)[0].numpy()
    return out
