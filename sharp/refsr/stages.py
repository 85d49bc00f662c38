"""The stages of `super_resolve` as functions of one window, shared with the scene path.

`super_resolve` applies them to the whole image (one window); `sharp.scene` applies them to
each tile's window of a GeoTIFF scene. Both run exactly this code, so where one tile covers the
image the two give the same pixels.

    condition_reference(ref, up, ...)  Ref alignment + confidence + gated detail of one window
    transfer_input(ref, up, ...)       the gated detail alone (also the gain fit's input)
    tile_geometry(tile, overlap, unit) tile size and overlap rounded to whole tokens
    pad_to(t, h, w)                    replicate padding of a window to whole tokens
    initial_noise(...)                 the x0 noise of a whole grid (super_resolve's stream)
    block_noise(...)                   x0 noise of any window, keyed by position (scenes)
    sample_tile(...)                   encode, Euler-sample and decode one tile
Images are [B, C, H, W] float tensors in [0, 1].
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .flow import euler_sample
from .registration import align_reference, refine_local
from .transfer import gated_detail

NOISE_BLOCK = 64   # working-grid cells per side of one independently seeded noise block


def condition_reference(ref: torch.Tensor, up: torch.Tensor, scale: int, cfg, register: bool,
                        transfer: bool, cancel: Optional[Callable[[], None]] = None
                        ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(Ref as the network sees it, matching confidence [B, 1, H, W], gated detail or None) of
    one window: ref and up [B, 3, H, W] on the same pixels. transfer: also compute the gated
    detail of the reference detail transfer, which always copies from the locally aligned Ref.
    cancel(): checked inside the registration's long loops (it aborts by raising)."""
    ref_a, conf = align_reference(ref, up, scale, cfg.ref_align, register, cancel=cancel)
    gated = transfer_input(ref, up, scale, cfg, register, (ref_a, conf), cancel) if transfer else None
    return ref_a, conf, gated


def transfer_input(ref: torch.Tensor, up: torch.Tensor, scale: int, cfg, register: bool = True,
                   aligned: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                   cancel: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """The input g of the reference detail transfer (sharp.refsr.transfer) of one window: the
    Ref's detail, locally aligned to up, gated by its matching confidence; [B, 3, H, W]. The one
    function super_resolve, the scene path and the gain fit (sharp.refsr.calibrate) use.
    aligned: (Ref', confidence) as align_reference gave them for the network (computed if
    None); a globally registered Ref is refined locally first, a locally aligned one (or, with
    register False, the Ref as given) is used as it is."""
    if aligned is None:
        aligned = align_reference(ref, up, scale, cfg.ref_align, register, cancel=cancel)
    ref_a, conf = aligned
    if cfg.ref_align != "local" and register:
        ref_a, conf = refine_local(ref_a, up, scale, cancel=cancel)
    return gated_detail(ref_a, conf, scale)


def pad_to(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad [B, C, h, w] at the bottom/right to [B, C, height, width]."""
    ph, pw = height - t.shape[-2], width - t.shape[-1]
    return F.pad(t, (0, pw, 0, ph), mode="replicate") if ph or pw else t


def initial_noise(temperature: float, seed: int, batch: int, channels: int, height: int,
                  width: int) -> torch.Tensor:
    """x0 of a whole [B, C, H, W] working grid from one seeded stream (super_resolve's noise)."""
    g = torch.Generator().manual_seed(int(seed))
    return temperature * torch.randn(batch, channels, height, width, generator=g)


def _block_seed(seed: int, by: int, bx: int) -> int:
    digest = hashlib.blake2b(f"{int(seed)}:{by}:{bx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def block_noise(temperature: float, seed: int, channels: int, y0: int, x0: int, height: int,
                width: int) -> torch.Tensor:
    """x0 noise [1, C, height, width] of the working-grid window at (y0, x0) of an unbounded
    grid made of NOISE_BLOCK^2 blocks, each drawn from its own stream seeded by (seed, block):
    any two windows agree where they overlap, so tiles see one consistent noise field and the
    result does not depend on how a scene is tiled or on which worker ran a tile."""
    out = torch.zeros(1, channels, height, width)
    if temperature == 0:
        return out
    n = NOISE_BLOCK
    for by in range(y0 // n, (y0 + height - 1) // n + 1):
        for bx in range(x0 // n, (x0 + width - 1) // n + 1):
            g = torch.Generator().manual_seed(_block_seed(seed, by, bx))
            block = torch.randn(1, channels, n, n, generator=g)
            ya, yb = max(y0, by * n), min(y0 + height, (by + 1) * n)
            xa, xb = max(x0, bx * n), min(x0 + width, (bx + 1) * n)
            out[:, :, ya - y0:yb - y0, xa - x0:xb - x0] = \
                block[:, :, ya - by * n:yb - by * n, xa - bx * n:xb - bx * n]
    return temperature * out


def sample_tile(model, space, up: torch.Tensor, ref: Optional[torch.Tensor],
                conf: Optional[torch.Tensor], x0: torch.Tensor, steps: int, guidance: float,
                callback: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """SR of one tile: up, ref [B, 3, th, tw] (ref None: the weak, LR-only prediction), conf
    [B, 1, th, tw], x0 the tile's noise on the working grid. Runs on the model's device;
    returns [B, 3, th, tw] on the CPU."""
    device = next(model.parameters()).device
    up_z = space.encode(up.to(device))
    ref_z = space.encode(ref.to(device)) if ref is not None else None
    conf = conf.to(device) if ref is not None and conf is not None else None
    x1 = euler_sample(model, x0.to(device), up_z, ref_z, steps=steps, guidance=guidance,
                      callback=callback, ref_conf=conf)
    return space.decode(space.untarget(x1, up_z)).cpu()
