"""Per-axis RoPE frequencies for resolution promotion: SHARP and the classic baselines.

Every formula of the method lives here, named as the paper and the authors' reference
implementation name it. Notation, for one spatial axis of a Flux-style RoPE:

    D      axis dim (channels of this axis; D/2 frequencies, j = 0..D/2-1)
    theta  RoPE base (Flux.1: 10000)
    L0     base length: tokens along the axis at the training resolution (1024 px / 16 = 64)
    L      current extent: tokens along the axis of the image being generated
    s      scale L / L0; an axis with s <= 1 is left exactly as stock RoPE (no mscale)
    t      normalised noise level sigma / sigma_max in [0, 1], 1 = pure noise (`normalised_time`)

All frequencies are float64; `sharp.embedder.RoPEEmbedder` turns them into the rotation blocks.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields

import torch

METHODS = ("sharp", "dype", "yarn", "dy-ntk", "ntk", "pi", "base")
"""Method names, exactly as the nodes, the CLI and the configs spell them; the default first, in the order
the nodes list them."""

MSCALE_METHODS = frozenset({"yarn", "dype", "sharp"})
"""Methods that multiply the rotation blocks of a promoted axis by mscale(s)."""

VAE_DOWNSCALE = 8
"""Image pixels per latent pixel of Flux.1's VAE."""
PATCH_SIZE = 2
"""Latent pixels per side of one Flux.1 token (2x2 patchify)."""
PATCH_PX = VAE_DOWNSCALE * PATCH_SIZE
"""Image pixels per RoPE position in Flux.1: 16 (other families: `sharp.families.Family.px_per_token`)."""


@dataclass(frozen=True)
class RoPEParams:
    """Every constant of the methods, with the authors' defaults: the one place they are written
    (`RoPEParams()` gives the defaults to the nodes, the CLI and the library)."""

    alpha_s: float = 4.0            # SHARP decay strength; clamped to >= 1 (1 = linear kappa(t) = t)
    beta: tuple = (1.25, 0.75)      # stage-1 rotation pair (r_lo, r_hi): PI <-> NTK blend
    gamma: tuple = (16.0, 2.0)      # stage-2 rotation pair (r_lo, r_hi): result <-> base blend
    mscale: bool = True             # multiply promoted axes by mscale(s) (yarn, dype, sharp only)
    mscale_coeff: float = 0.1       # mscale(s) = 1 + mscale_coeff * ln(s)
    dype_exponent: float = 2.0      # DyPE's kappa(t) = t ** dype_exponent (also dy-NTK's t exponent)

    def __post_init__(self):
        for name in ("alpha_s", "mscale_coeff", "dype_exponent"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RoPE parameter {name} must be a finite number, got {value!r}")
        for name in ("beta", "gamma"):
            pair = tuple(getattr(self, name))
            if len(pair) != 2 or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in pair):
                raise ValueError(
                    f"RoPE parameter {name} must be a pair of positive rotation counts (r_lo, r_hi), got {pair!r}"
                )
            object.__setattr__(self, name, (float(pair[0]), float(pair[1])))
        object.__setattr__(self, "mscale", bool(self.mscale))

    @classmethod
    def from_kwargs(cls, **params) -> "RoPEParams":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(f"unknown RoPE parameter(s) {unknown}; valid ones are {sorted(valid)}")
        return cls(**params)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown RoPE method {method!r}; valid methods are: {', '.join(METHODS)}")
    return method


def normalised_time(sigma, sigma_max=1.0) -> float:
    """t = sigma / sigma_max, clamped to [0, 1] (1 = pure noise): the one check of the time a method sees.

    sigma may be a tensor with one value per batch row (ComfyUI passes that); rows are sampled at the
    same noise level, the largest is used. Raises ValueError on a non-finite sigma or sigma_max <= 0.
    """
    s = float(torch.as_tensor(sigma, dtype=torch.float64).max())
    smax = float(torch.as_tensor(sigma_max, dtype=torch.float64).max())
    if not math.isfinite(s) or not math.isfinite(smax) or smax <= 0:
        raise ValueError(f"the noise level must be finite (t = sigma / sigma_max, sigma_max > 0), got sigma={s}, "
                         f"sigma_max={smax}")
    return min(max(s / smax, 0.0), 1.0)


def base_len_from_resolution(resolution_px: int, patch_px: int = PATCH_PX) -> float:
    """Training resolution in pixels -> base length L0 in RoPE positions (1024 px -> 64)."""
    if resolution_px <= 0:
        raise ValueError(f"base resolution must be positive, got {resolution_px}")
    return resolution_px / patch_px


# --- schedules ------------------------------------------------------------------------------

def kappa_sharp(t: float, alpha_s: float) -> float:
    """SHARP's rational decay schedule kappa(t) = t / (alpha_s - (alpha_s - 1) t), alpha_s >= 1.

    kappa(1) = 1 (full YaRN-strength promotion at pure noise, for layout), kappa(0) = 0 (stock
    frequencies at the end, for fine detail); alpha_s > 1 makes the promotion relax early.
    """
    alpha_s = max(alpha_s, 1.0)
    return t / (alpha_s - (alpha_s - 1.0) * t)


def kappa_dype(t: float, exponent: float) -> float:
    """DyPE's schedule kappa(t) = t^exponent (the authors': t^2)."""
    return t ** exponent


# --- frequency families ---------------------------------------------------------------------

def rope_exponents(dim: int) -> torch.Tensor:
    """2j/D for j = 0..D/2-1, float64 [D/2], computed exactly as ComfyUI's `rope` does (linspace)."""
    return torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64)


def base_frequencies(dim: int, theta: float) -> torch.Tensor:
    """Stock RoPE: base_j = theta^(-2j/D), float64 [D/2], bit-identical to ComfyUI's `rope`."""
    return 1.0 / (theta ** rope_exponents(dim))


def pi_frequencies(dim: int, theta: float, s: float) -> torch.Tensor:
    """Position interpolation: PI_j = base_j / s."""
    return base_frequencies(dim, theta) / s


def ntk_frequencies(dim: int, theta: float, s: float) -> torch.Tensor:
    """NTK-aware scaling: NTK_j = (theta * s^(D/(D-2)))^(-2j/D)."""
    return base_frequencies(dim, theta * s ** (dim / (dim - 2)))


def dy_ntk_theta(dim: int, theta: float, s: float, t: float, exponent: float) -> float:
    """Dynamic NTK base: theta * max(1, (s^(D/(D-2)))^(2 t^exponent)) (the authors': t^2)."""
    return theta * max(1.0, (s ** (dim / (dim - 2))) ** (2.0 * t ** exponent))


def mscale(s: float, coeff: float) -> float:
    """YaRN attention scale folded into cos and sin: 1 + coeff ln(s) (the authors': 0.1)."""
    return 1.0 + coeff * math.log(s)


# --- YaRN by-parts blend --------------------------------------------------------------------

def correction_dim(r: float, dim: int, theta: float, base_len: float) -> float:
    """Dimension index whose wavelength fits r rotations in L0: c(r) = D ln(L0 / (2 pi r)) / (2 ln theta).

    r = 0 gives +inf (no dimension completes a rotation), which the blend maps to "keep all".
    """
    if r <= 0:
        return math.inf
    return dim * math.log(base_len / (2.0 * math.pi * r)) / (2.0 * math.log(theta))


def keep_mask(pair: tuple, dim: int, theta: float, base_len: float) -> torch.Tensor:
    """keep_j = 1 - ramp_j over the correction range of (r_lo, r_hi): 1 keeps the first family.

    lo = min(max(floor(c(r_lo)), 0), D/2), hi = min(ceil(c(r_hi)), D-1, D/2), hi += 0.001 if equal;
    ramp_j = clip((j - lo) / (hi - lo), 0, 1). float64 [D/2].
    """
    c_lo = correction_dim(pair[0], dim, theta, base_len)
    c_hi = correction_dim(pair[1], dim, theta, base_len)
    half = dim // 2
    lo = min(max(_floor(c_lo), 0), half)
    hi = min(_ceil(c_hi), dim - 1, half)
    if lo == hi:
        hi += 0.001
    j = torch.arange(half, dtype=torch.float64)
    ramp = ((j - lo) / (hi - lo)).clamp(0.0, 1.0)
    return 1.0 - ramp


def _floor(x: float) -> float:
    return x if math.isinf(x) else math.floor(x)


def _ceil(x: float) -> float:
    return x if math.isinf(x) else math.ceil(x)


def yarn_frequencies(dim: int, theta: float, s: float, base_len: float, beta: tuple, gamma: tuple) -> torch.Tensor:
    """Two-stage YaRN: stage 1 blends PI (low freq) with NTK (high freq) over beta,
    stage 2 blends that with the stock frequencies (highest freq) over gamma. float64 [D/2]."""
    base = base_frequencies(dim, theta)
    keep1 = keep_mask(beta, dim, theta, base_len)
    freqs = pi_frequencies(dim, theta, s) * (1 - keep1) + ntk_frequencies(dim, theta, s) * keep1
    keep2 = keep_mask(gamma, dim, theta, base_len)
    return freqs * (1 - keep2) + base * keep2


def sharp_pairs(kappa: float, beta: tuple, gamma: tuple) -> tuple[tuple, tuple]:
    """SHARP's per-step pairs: stage 1 (beta_lo^kappa, beta_hi^kappa), stage 2 (kappa gamma_lo, kappa gamma_hi)."""
    return (beta[0] ** kappa, beta[1] ** kappa), (gamma[0] * kappa, gamma[1] * kappa)


def dype_pairs(kappa: float, beta: tuple, gamma: tuple) -> tuple[tuple, tuple]:
    """Dy-YaRN's per-step pairs: both multiplied by kappa."""
    return (beta[0] * kappa, beta[1] * kappa), (gamma[0] * kappa, gamma[1] * kappa)


# --- public API -----------------------------------------------------------------------------

def axis_frequencies(dim: int, theta: float, scale: float, t: float, method: str = "sharp",
                     base_len: float = 64, **params) -> torch.Tensor:
    """Frequencies f_j of one RoPE axis under `method`, float64 [dim // 2].

    dim: axis dim D (even); theta: RoPE base; scale: s = L / L0; t: normalised noise level
    (clamped to [0, 1]); base_len: L0 in positions; params: fields of `RoPEParams`.
    """
    return _axis_frequencies(check_axis_dim(dim), theta, check_scale(scale), normalised_time(t), check_method(method),
                             base_len, RoPEParams.from_kwargs(**params))


def axis_mscale(scale: float, method: str = "sharp", **params) -> float:
    """The factor that multiplies this axis's cos and sin blocks (1.0 where none applies)."""
    return _axis_mscale(scale, check_method(method), RoPEParams.from_kwargs(**params))


def _axis_frequencies(dim: int, theta: float, s: float, t: float, method: str, base_len: float,
                      p: RoPEParams) -> torch.Tensor:
    """`axis_frequencies` on checked arguments (t already normalised)."""
    if s <= 1.0 or method == "base":
        return base_frequencies(dim, theta)
    if method == "pi":
        return pi_frequencies(dim, theta, s)
    if method == "ntk":
        return ntk_frequencies(dim, theta, s)
    if method == "dy-ntk":
        return base_frequencies(dim, dy_ntk_theta(dim, theta, s, t, p.dype_exponent))
    if method == "yarn":
        return yarn_frequencies(dim, theta, s, base_len, p.beta, p.gamma)
    if method == "dype":
        beta, gamma = dype_pairs(kappa_dype(t, p.dype_exponent), p.beta, p.gamma)
    else:  # sharp
        beta, gamma = sharp_pairs(kappa_sharp(t, p.alpha_s), p.beta, p.gamma)
    return yarn_frequencies(dim, theta, s, base_len, beta, gamma)


def _axis_mscale(s: float, method: str, p: RoPEParams) -> float:
    if s <= 1.0 or not p.mscale or method not in MSCALE_METHODS:
        return 1.0
    return mscale(s, p.mscale_coeff)


def check_scale(s: float) -> float:
    s = float(s)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a positive finite number, got {s}")
    return s


def check_axis_dim(dim: int) -> int:
    try:
        dim = operator.index(dim)
    except TypeError:
        raise ValueError(f"RoPE axis dim must be an even integer >= 2, got {dim!r}") from None
    if dim < 2 or dim % 2:
        raise ValueError(f"RoPE axis dim must be an even integer >= 2, got {dim!r}")
    return dim
