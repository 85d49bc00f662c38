"""DS-DiT inference API (used by the CLI and the ComfyUI nodes).

    model = load_dsdit("dsdit_small.safetensors")
    sr = super_resolve(model, lr, ref, scale=4, steps=20, guidance=1.0, seed=0)

Images are float arrays or tensors in [0, 1], channels last: [H, W, 3] or [B, H, W, 3] (the
ComfyUI IMAGE layout); the result has the same layout and type (numpy in, numpy out).
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_dsdit, sampling_defaults
from .config import SAMPLING_BOUNDS, check_number
from .data import upsample
from .limits import check_request
from .model import DSDiT
from .registration import align_reference
from .space import LatentCodec, WorkingSpace
from .stages import condition_reference, initial_noise, pad_to, sample_tile
from .tiling import run_tiled, tiles
from .transfer import apply_transfer

log = logging.getLogger(__name__)

TILE_PLANS = ("flush", "even")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "dsdit_small.safetensors"

__all__ = ["DEFAULT_CHECKPOINT", "default_ref_transfer", "default_steps", "default_temperature",
           "load_dsdit", "sampling_settings", "super_resolve", "prepare_inputs",
           "reference_weight_map"]


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
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite pixel values: images must be finite, in [0, 1]")
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
        log.warning(msg)
        ref_t = F.interpolate(ref_t, size=want, mode="bicubic", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
    return lr_t, ref_t, batched


def _sampling_default(model: DSDiT, key: str, fallback: float) -> float:
    """One value of the checkpoint's "sampling_defaults" metadata (chosen at training time),
    checked finite and in range (checkpoint.sampling_defaults)."""
    return sampling_defaults(getattr(model, "metadata", None) or {}).get(key, fallback)


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


def sampling_settings(model: DSDiT, steps: Optional[int], guidance: float,
                      temperature: Optional[float], ref_transfer: Optional[float]
                      ) -> tuple[int, float, float, float]:
    """(steps, guidance, temperature, transfer gain): None takes the checkpoint's default, a
    given value is checked against SAMPLING_BOUNDS (one rule for super_resolve and scenes)."""
    steps = default_steps(model) if steps is None else \
        int(check_number("steps", steps, *SAMPLING_BOUNDS["steps"]))
    temperature = default_temperature(model) if temperature is None else \
        check_number("temperature", temperature, *SAMPLING_BOUNDS["temperature"])
    gain = default_ref_transfer(model) if ref_transfer is None else \
        check_number("ref_transfer", ref_transfer, *SAMPLING_BOUNDS["ref_transfer"])
    guidance = check_number("guidance", guidance, *SAMPLING_BOUNDS["guidance"])
    return steps, float(guidance), temperature, gain


def _check_size(cfg, lr, has_ref: bool, scale, tile: int, overlap: int, register: bool,
                transfer: bool, memory_limit: Optional[int]) -> tuple[int, int]:
    """check_request on the LR's shape before any copy is made; returns (tile, overlap). A
    shape or scale it cannot read is left to prepare_inputs, which says what is wrong."""
    shape = tuple(lr.shape) if hasattr(lr, "shape") else np.shape(lr)
    if len(shape) in (3, 4) and int(scale) == scale and scale >= 1:
        b, h, w = (1, *shape[:2]) if len(shape) == 3 else shape[:3]
        return check_request(cfg, b, h, w, int(scale), tile, overlap, has_ref, register,
                             transfer and has_ref, memory_limit)
    return tile, overlap


def _condition(cfg, lr_t: torch.Tensor, ref_t: Optional[torch.Tensor], scale: int, register: bool,
               transfer: bool, cancel) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(up, Ref', confidence, gated detail) of the whole image, padded to whole tokens (gated
    stays at the image size: it is added after sampling). Ref None: (up, None, None, None)."""
    height, width = scale * lr_t.shape[-2], scale * lr_t.shape[-1]
    up = upsample(lr_t, (height, width))
    conf = gated = None
    if ref_t is not None:
        ref_t, conf, gated = condition_reference(ref_t, up, scale, cfg, register, transfer,
                                                 cancel=cancel)
    hp, wp = height + -height % cfg.unit, width + -width % cfg.unit
    if ref_t is not None:
        ref_t, conf = pad_to(ref_t, hp, wp), pad_to(conf, hp, wp)
    return pad_to(up, hp, wp), ref_t, conf, gated


class _StepCounter:
    """progress(done, total) after every Euler step of every tile."""

    def __init__(self, total: int, progress: Optional[Callable[[int, int], None]]):
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _sample_window(model, space, up, ref, conf, noise, down: int, steps: int, guidance: float,
                   tick, check, y: int, x: int, th: int, tw: int) -> torch.Tensor:
    """One tile of the padded image (the run_tiled callback): its window of every input and of
    the whole-image noise, sampled."""
    check()
    win = (slice(None), slice(None), slice(y, y + th), slice(x, x + tw))
    r, c = (None, None) if ref is None else (ref[win], conf[win])
    x0 = noise[:, :, y // down:(y + th) // down, x // down:(x + tw) // down]
    return sample_tile(model, space, up[win], r, c, x0, steps, guidance, tick)


@torch.no_grad()
def super_resolve(model: DSDiT, lr, ref=None, scale: int = 4, steps: Optional[int] = None,
                  guidance: float = 1.0, seed: int = 0, tile: int = 512, overlap: int = 64,
                  vae: Optional[LatentCodec] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  register: bool = True, temperature: Optional[float] = None,
                  ref_transfer: Optional[float] = None,
                  cancel: Optional[Callable[[], None]] = None, memory_limit: Optional[int] = None,
                  tile_plan: str = "flush"):
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
    cancel(): called inside every long stage (registration, each tile, the transfer); it aborts the
    call by raising (ComfyUI: throw_exception_if_processing_interrupted). memory_limit: bytes the
    whole-image stages may use (None: what the system reports available); a request that needs more
    is refused before allocating (sharp.refsr.limits).
    steps: Euler steps; None takes the checkpoint's default (else 20). tile_plan "flush": tiles of
    `tile`, the last flush with the edge; "even": as many tiles, each only as large as the
    overlap needs, spread evenly (sharp.refsr.tiling.even_starts; the scene path's plan)."""
    cfg = model.cfg
    if tile_plan not in TILE_PLANS:
        raise ValueError(f"tile_plan must be one of {TILE_PLANS}, got {tile_plan!r}")
    steps, guidance, temperature, gain = sampling_settings(model, steps, guidance, temperature,
                                                           ref_transfer)
    check = cancel if cancel is not None else (lambda: None)
    tile, overlap = _check_size(cfg, lr, ref is not None, scale, tile, overlap, register,
                                bool(gain), memory_limit)
    lr_t, ref_t, batched = prepare_inputs(lr, ref, scale)
    if scale != cfg.scale:
        log.info("checkpoint was trained for x%d, running x%d", cfg.scale, scale)
    b, _, h, w = lr_t.shape
    up, ref_t, conf_t, gated = _condition(cfg, lr_t, ref_t, scale, register, bool(gain), cancel)
    del lr_t
    if ref_t is not None:
        check()
    hp, wp = up.shape[-2:]
    down = cfg.unit // cfg.patch                                # pixels per working-grid cell
    noise = initial_noise(temperature, seed, b, cfg.in_channels, hp // down, wp // down)
    even = cfg.unit if tile_plan == "even" else 0
    tick = _StepCounter(len(tiles(hp, wp, tile, overlap, even)) * steps, progress)
    one_tile = partial(_sample_window, model, WorkingSpace(cfg, vae), up, ref_t, conf_t, noise,
                       down, steps, guidance, tick, check)
    out = run_tiled(one_tile, b, 3, hp, wp, tile, overlap, even)[:, :, :scale * h, :scale * w].clamp_(0, 1)
    if gated is not None:
        out = apply_transfer(out, gated, gain)
    if not bool(torch.isfinite(out).all()):   # never hand back a black image as a success
        raise ValueError("DS-DiT produced non-finite values (NaN/inf): the checkpoint or the inputs are "
                         "damaged; check the LR/Ref images and the checkpoint's weights")
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
