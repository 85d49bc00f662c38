"""Flux noise schedules and the per-step view of a RoPE method over one (width, height).

The model sees t = sigma / sigma_max at every step (Flux: sigma_max = 1); this module turns a
sampler schedule into the per-axis scale, kappa and f_j / base_j that SHARP applies at each step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sharp import rope
from sharp.rope import PATCH_PX, PATCH_SIZE, VAE_DOWNSCALE

FLUX_SHIFT_MU = 1.15
"""Flux's default noise shift, used by the authors' pipeline at every size."""

FLUX_STEPS = 28
"""Sampling steps of the authors' Flux pipeline (the default of the schedule views)."""


def flux_time_shift(mu: float, t):
    """sigma(t) = e^mu / (e^mu + 1/t - 1): Flux's shifted schedule (t = 1 -> 1, t = 0 -> 0).

    Evaluated as e^mu t / (e^mu t + 1 - t): the same function, exact at both ends, no 1/0 at t = 0.
    t: a float or numpy array (float64 numpy out) or a torch tensor (a tensor of its dtype out).
    """
    if not isinstance(t, torch.Tensor):
        t = np.asarray(t, dtype=np.float64)
    return math.exp(mu) * t / (math.exp(mu) * t + (1.0 - t))


def flux_time_unshift(mu: float, sigma):
    """The inverse of `flux_time_shift`: t(sigma) = sigma / (sigma + e^mu (1 - sigma)), for sigma in [0, 1]."""
    return sigma / (sigma + math.exp(mu) * (1.0 - sigma))


def flux_sigmas(steps: int, mu: float = FLUX_SHIFT_MU) -> np.ndarray:
    """steps + 1 sigmas from 1 to 0 (the last is the clean image, never seen by the model)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return flux_time_shift(mu, np.linspace(1.0, 0.0, steps + 1))


def calculate_shift(seq_len: float, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """Flux's resolution-dependent mu: linear in the image token count, base_shift at base_seq_len tokens,
    max_shift at max_seq_len (1024 px square); diffusers' FluxPipeline `calculate_shift` with the FLUX.1
    scheduler config."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + (base_shift - slope * base_seq_len)


def flux_resolution_mu(width: int, height: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """ComfyUI's resolution-dependent Flux shift (ModelSamplingFlux node): the token count is
    width * height / 256, not rounded."""
    tokens = (width * height) / (PATCH_PX * PATCH_PX)
    return calculate_shift(tokens, base_shift=base_shift, max_shift=max_shift)


def diffusers_image_size(px: int) -> int:
    """The size diffusers' FluxPipeline samples for a requested px: rounded down to a multiple of 16
    (VAE /8 times the 2x2 patch), e.g. 3756 -> 3744."""
    step = PATCH_PX
    if px < step:
        raise ValueError(f"image size must be at least {step} px, got {px}")
    return px // step * step


def diffusers_flux_mu(width: int, height: int) -> float:
    """The mu diffusers' FluxPipeline derives for width x height: calculate_shift of its packed latent
    length (height // 16) * (width // 16)."""
    step = PATCH_PX
    return calculate_shift((diffusers_image_size(height) // step) * (diffusers_image_size(width) // step))


def flow_match_euler_sigmas(steps: int, mu: float = FLUX_SHIFT_MU) -> np.ndarray:
    """The sigmas of diffusers' FlowMatchEulerDiscreteScheduler as FluxPipeline sets them: linspace(1, 1/N, N)
    under the exponential time shift with this mu (in float64), cast to float32, final 0 appended.

    Unlike `flux_sigmas` (N + 1 points of linspace(1, 0)) and ComfyUI's `simple` scheduler (which picks
    sigmas from a 10,000-entry table), the last step ends at shift(1/N) before the jump to 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not math.isfinite(mu):
        raise ValueError(f"mu must be a finite number, got {mu}")
    sigmas = flux_time_shift(mu, np.linspace(1.0, 1.0 / steps, steps)).astype(np.float32)
    return np.concatenate([sigmas, np.zeros(1, dtype=np.float32)])


def tokens_for_pixels(px: int) -> int:
    """RoPE positions along an image side of px pixels in Flux: VAE /8, then 2x2 patches (padded)."""
    if px < 1:
        raise ValueError(f"image size must be positive, got {px}")
    return math.ceil((px // VAE_DOWNSCALE) / PATCH_SIZE)


def method_kappa(method: str, t: float, params: rope.RoPEParams = rope.RoPEParams()) -> float | None:
    """The time schedule a method applies at t (None for static methods)."""
    if method == "sharp":
        return rope.kappa_sharp(t, params.alpha_s)
    if method in ("dype", "dy-ntk"):
        return rope.kappa_dype(t, params.dype_exponent)
    return None


@dataclass
class AxisSchedule:
    name: str            # "height" or "width"
    tokens: int          # extent L in positions
    scale: float         # s = L / L0
    mscale: float        # factor on cos/sin (1 where the method applies none)
    ratio: np.ndarray    # [steps, D/2]: f_j / base_j at each step


@dataclass
class Schedule:
    method: str
    width: int
    height: int
    sigmas: np.ndarray   # [steps + 1]
    t: np.ndarray        # [steps]: t = sigma / sigma_max seen by the model at each step
    kappa: list          # [steps] of float, or None for static methods
    axes: list           # [AxisSchedule] for the two spatial axes


def rope_schedule(width: int, height: int, method: str = "sharp", steps: int = FLUX_STEPS, mu: float = FLUX_SHIFT_MU,
                  base_len: float = 64, theta: float = 10000.0, axis_dim: int = 56, **params) -> Schedule:
    """What `method` does at each step of an N-step Flux schedule for a width x height image."""
    rope.check_method(method)
    p = rope.RoPEParams.from_kwargs(**params)
    sigmas = flux_sigmas(steps, mu)
    ts = sigmas[:-1] / sigmas[0]
    base = rope.base_frequencies(axis_dim, theta).numpy()
    axes = []
    for name, px in (("height", height), ("width", width)):
        L = tokens_for_pixels(px)
        s = L / base_len
        ratio = np.stack([rope._axis_frequencies(axis_dim, theta, s, float(t), method, base_len, p).numpy() / base
                          for t in ts])
        axes.append(AxisSchedule(name, L, s, rope._axis_mscale(s, method, p), ratio))
    return Schedule(method, width, height, sigmas, ts, [method_kappa(method, float(t), p) for t in ts], axes)
