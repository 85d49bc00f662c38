"""DS-DiT inference API (used by the CLI and the ComfyUI nodes).

    model = load_dsdit("dsdit_small.safetensors")
    sr = super_resolve(model, lr, ref, scale=4, steps=20, guidance=1.0, seed=0)

Images are float arrays or tensors in [0, 1], channels last: [H, W, 3] or [B, H, W, 3] (the
ComfyUI IMAGE layout); the result has the same layout and type (numpy in, numpy out).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_dsdit
from .data import upsample
from .flow import euler_sample
from .model import DSDiT
from .registration import align_reference, refine_local
from .space import LatentCodec, WorkingSpace
from .tiling import run_tiled, tiles
from .transfer import apply_transfer, gated_detail

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "dsdit_small.safetensors"

__all__ = ["DEFAULT_CHECKPOINT", "default_ref_transfer", "default_steps", "default_temperature",
           "load_dsdit",
           "super_resolve", "prepare_inputs", "reference_weight_map"]


def _to_bchw(img, name: str) -> tuple[torch.Tensor, bool]:
    """[H, W, 3] / [B, H, W, 3] array or tensor -> ([B, 3, H, W] float32, had_batch_axis)."""
    t = torch.as_tensor(np.asarray(img) if not torch.is_tensor(img) else img)
    if t.ndim not in (3, 4):
        raise ValueError(f"{name} must be an image [H, W, 3] or a batch [B, H, W, 3], got shape "
                         f"{tuple(t.shape)}")
    batched = t.ndim == 4
    if not batched:
        t = t[None]
    if t.shape[-1] != 3:
        raise ValueError(f"{name} must be RGB with 3 channels on the last axis, got shape "
                         f"{tuple(t.shape)}: convert it to RGB first (drop alpha / repeat grey)")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    t = t.detach().to("cpu", torch.float32)
    return t.permute(0, 3, 1, 2).contiguous(), batched


def prepare_inputs(lr, ref, scale: int) -> tuple[torch.Tensor, Optional[torch.Tensor], bool]:
    """Validate LR/Ref and bring the Ref to scale x LR; returns (lr, ref, batched), [B, 3, H, W]."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer (2, 4 or 8), got {scale}")
    lr_t, batched = _to_bchw(lr, "LR")
    if ref is None:
        return lr_t, None, batched
    ref_t, _ = _to_bchw(ref, "Ref")
    if ref_t.shape[0] != lr_t.shape[0]:
        raise ValueError(f"LR batch ({lr_t.shape[0]}) and Ref batch ({ref_t.shape[0]}) differ: "
                         "pass one Ref per LR image")
    h, w = lr_t.shape[-2:]
    rh, rw = ref_t.shape[-2:]
    if h > rh or w > rw:
        raise ValueError(f"LR ({w}x{h}) is larger than the Ref ({rw}x{rh}): the Ref must be the "
                         f"high-resolution image (swapped inputs?); expected Ref {scale * w}x{scale * h}")
    want = (scale * h, scale * w)
    if (rh, rw) != want:
        msg = (f"Ref is {rw}x{rh} but scale {scale} x LR {w}x{h} is {want[1]}x{want[0]}: "
               "resizing the Ref to match")
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
        ref_t = F.interpolate(ref_t, size=want, mode="bicubic", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
    return lr_t, ref_t, batched


def _sampling_default(model: DSDiT, key: str, fallback: float) -> float:
    """One value of the checkpoint's "sampling_defaults" metadata (chosen at training time)."""
    raw = getattr(model, "metadata", {}).get("sampling_defaults")
    if raw:
        try:
            return float(json.loads(raw).get(key, fallback))
        except (ValueError, AttributeError, TypeError):
            log.warning("ignoring malformed sampling_defaults metadata: %r", raw)
    return fallback


def default_temperature(model: DSDiT) -> float:
    """The checkpoint's recommended initial-noise temperature (1 if it has none)."""
    return _sampling_default(model, "temperature", 1.0)


def default_steps(model: DSDiT) -> int:
    """The checkpoint's recommended number of Euler steps (20 if it has none; 1 for x1-predicting
    checkpoints whose one-step conditional-mean estimate won on validation)."""
    return max(1, int(_sampling_default(model, "steps", 20)))


def default_ref_transfer(model: DSDiT) -> float:
    """The checkpoint's fitted reference-detail-transfer gain lambda (0 = off if it has none)."""
    return _sampling_default(model, "ref_transfer", 0.0)


def _from_bchw(t: torch.Tensor, batched: bool, like):
    out = t.permute(0, 2, 3, 1).contiguous()
    if not batched:
        out = out[0]
    return out if torch.is_tensor(like) else out.numpy()


@torch.no_grad()
def super_resolve(model: DSDiT, lr, ref=None, scale: int = 4, steps: Optional[int] = None,
                  guidance: float = 1.0, seed: int = 0, tile: int = 512, overlap: int = 64,
                  vae: Optional[LatentCodec] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  register: bool = True, temperature: Optional[float] = None,
                  ref_transfer: Optional[float] = None):
    """Reference-based SR of lr ([H/s, W/s, 3] or [B, ...]) guided by ref ([H, W, 3]).

    ref=None (or guidance applied to a missing Ref) gives the weak, LR-only prediction.
    guidance g: v = v_weak + g (v_Ref - v_weak); 1 disables autoguidance (one pass per step).
    tile/overlap: output pixels (rounded to the model's token size); one tile covering the
    image equals untiled inference. progress(done, total) is called after every step of every
    tile. register: align the Ref to the upsampled LR (global shift + colour, and a local
    warp for checkpoints with ref_align "local"; see registration.align_reference).
    temperature: scale of the initial noise; None takes the checkpoint's default (chosen on
    validation at training time; 1 for the shipped model, whose default of one step is then the
    PSNR-oriented conditional-mean estimate), else 1 (the trained distribution).
    ref_transfer: gain lambda of the reference detail transfer (sharp.refsr.transfer: the Ref's
    locally aligned detail, gated by matching confidence, added after sampling); None takes the
    checkpoint's fitted value, 0 turns it off. Needs a Ref.
    steps: Euler steps; None takes the checkpoint's default (else 20)."""
    cfg = model.cfg
    if steps is None:
        steps = default_steps(model)
    if temperature is None:
        temperature = default_temperature(model)
    gain = default_ref_transfer(model) if ref_transfer is None else float(ref_transfer)
    if not (gain >= 0 and np.isfinite(gain)):
        raise ValueError(f"ref_transfer must be a finite number >= 0 (0 = off), got {ref_transfer}")
    lr_t, ref_t, batched = prepare_inputs(lr, ref, scale)
    if scale != cfg.scale:
        log.info("checkpoint was trained for x%d, running x%d", cfg.scale, scale)
    device = next(model.parameters()).device
    b, _, h, w = lr_t.shape
    height, width = scale * h, scale * w
    up = upsample(lr_t, (height, width))
    conf_t = gated = None
    if ref_t is not None:
        ref_t, conf_t = align_reference(ref_t, up, scale, cfg.ref_align, register)
        if gain:   # the transfer always copies from the locally aligned Ref
            local = (ref_t, conf_t) if cfg.ref_align == "local" or not register else \
                refine_local(ref_t, up, scale)
            gated = gated_detail(*local, scale)
    space = WorkingSpace(cfg, vae)
    unit = cfg.unit
    ph, pw = -height % unit, -width % unit                      # pad to whole tokens
    if ph or pw:
        up = F.pad(up, (0, pw, 0, ph), mode="replicate")
        if ref_t is not None:
            ref_t = F.pad(ref_t, (0, pw, 0, ph), mode="replicate")
            conf_t = F.pad(conf_t, (0, pw, 0, ph), mode="replicate")
    hp, wp = height + ph, width + pw
    tile = max(unit, int(tile) // unit * unit)
    overlap = min(max(0, -(-int(overlap) // unit) * unit), tile - unit)
    down = unit // cfg.patch                                    # pixels per working-grid cell
    g = torch.Generator().manual_seed(int(seed))
    noise = temperature * torch.randn(b, cfg.in_channels, hp // down, wp // down, generator=g)
    plan = tiles(hp, wp, tile, overlap)
    total, done = len(plan) * steps, [0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    def one_tile(y, x, th, tw):
        up_z = space.encode(up[:, :, y:y + th, x:x + tw].to(device))
        ref_z = conf = None
        if ref_t is not None:
            ref_z = space.encode(ref_t[:, :, y:y + th, x:x + tw].to(device))
            conf = conf_t[:, :, y:y + th, x:x + tw].to(device)
        x0 = noise[:, :, y // down:(y + th) // down, x // down:(x + tw) // down].to(device)
        x1 = euler_sample(model, x0, up_z, ref_z, steps=steps, guidance=guidance, callback=tick,
                          ref_conf=conf)
        return space.decode(space.untarget(x1, up_z)).cpu()

    del lr_t
    out = run_tiled(one_tile, b, 3, hp, wp, tile, overlap)[:, :, :height, :width].clamp_(0, 1)
    if gated is not None:
        out = apply_transfer(out, gated, gain)
    return _from_bchw(out, batched, lr)


@torch.no_grad()
def reference_weight_map(model: DSDiT, lr, ref, scale: int = 4, t: float = 0.5, seed: int = 0,
                         register: bool = True) -> np.ndarray:
    """PLW weight w (1 = trust LR, 0 = trust Ref) averaged over blocks, at one flow time t.

    Untiled; returns [B, H/p, W/p] per-token weights for inspection and statistics."""
    if model.cfg.space != "pixel":
        raise ValueError("reference_weight_map supports pixel-space checkpoints only")
    lr_t, ref_t, _ = prepare_inputs(lr, ref, scale)
    if ref_t is None:
        raise ValueError("reference_weight_map needs a Ref")
    up = upsample(lr_t, ref_t.shape[-2:])
    ref_t, conf_t = align_reference(ref_t, up, scale, model.cfg.ref_align, register)
    unit = model.cfg.unit
    hh, ww = up.shape[-2] // unit * unit, up.shape[-1] // unit * unit
    space = WorkingSpace(model.cfg)
    up_z, ref_z = space.encode(up[..., :hh, :ww]), space.encode(ref_t[..., :hh, :ww])
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(up_z.shape, generator=g)
    x1_guess = torch.zeros_like(x0)                  # residual prior mean
    tt = torch.full((x0.shape[0],), float(t))
    xt = (1 - t) * x0 + t * x1_guess
    _, weights = model(xt, tt, up_z, ref_z, return_weights=True, ref_conf=conf_t[..., :hh, :ww])
    return torch.stack([w[..., 0] for w in weights]).mean(0).numpy()
