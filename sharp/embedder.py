"""`RoPEEmbedder`: a drop-in replacement for ComfyUI's Flux `EmbedND` with per-step resolution promotion.

The output layout is EmbedND's: [B, 1, L, sum(axes_dim)/2, 2, 2] float32, each trailing block
[[cos, -sin], [sin, cos]] of the angle pos * f_j, axes concatenated along dim -3. The angles are
formed in float64 and rounded once to float32, as ComfyUI's `rope` does, so method `base` is
bit-identical to stock RoPE.

Speed: the embedding is separable per axis, so trigonometry runs on the distinct positions of each
axis (h + w values for an image, not h * w tokens) and the token table is a gather. Outputs are
cached per ids until the time or the extents change (the one cache: frequencies are recomputed per
embedding, a few hundred values), so the cond and uncond calls of one step (and any repeated call) cost
one comparison of the ids and a copy (each call gets its own tensor, as from EmbedND).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sharp import rope

# Devices without float64 kernels: build the (small) trig tables on the CPU, gather on the device.
_NO_FLOAT64_DEVICES = frozenset({"mps", "xpu", "privateuseone"})

_CACHE_SIZE = 2  # one step's cond and uncond calls


class RoPEEmbedder(nn.Module):
    """Flux-style multi-axis RoPE with SHARP (or a baseline) applied per spatial axis.

    theta, axes_dim: as the model's own embedder (Flux.1: 10000, (16, 56, 56)).
    method: one of `sharp.rope.METHODS`.
    base_len: L0, positions per axis at the training resolution (64 = 1024 px / 16); a number for
        every spatial axis or one per spatial axis.
    spatial_axes: indices of the axes that are promoted; default every axis but 0 (the image index).
    head_axis: where the singleton head dimension goes in the output: 1 for ComfyUI's Flux EmbedND
        ([B, 1, L, ...], the default), 2 for embedders that return [B, L, 1, ...] (HiDream).
    params: a `sharp.rope.RoPEParams`, or its fields as keywords (alpha_s, beta, gamma, mscale, mscale_coeff,
        dype_exponent); the authors' defaults where not given.

    Call `set_extents` with the generated image's extent L per spatial axis (tokens along it; the
    promotion sets it from the latent each model call, never from the ids, where text and reference
    tokens may sit on the spatial axes too) and `set_time(t)` each sampling step with t = sigma / sigma_max
    (1 = pure noise; values outside [0, 1] are clamped). Before the first `set_time`, t = 1.
    """

    def __init__(self, theta: float = 10000.0, axes_dim: Sequence[int] = (16, 56, 56), method: str = "sharp",
                 base_len: float | Sequence[float] = 64, *, spatial_axes: Sequence[int] | None = None,
                 head_axis: int = 1, params: rope.RoPEParams | None = None, **constants):
        super().__init__()
        self.theta = float(theta)
        if not math.isfinite(self.theta) or self.theta <= 1.0:
            raise ValueError(f"RoPE theta must be a finite number > 1, got {theta!r}")
        self.axes_dim = tuple(rope.check_axis_dim(d) for d in axes_dim)
        if not self.axes_dim:
            raise ValueError("axes_dim must name at least one axis")
        self.dim = sum(self.axes_dim)
        self.method = rope.check_method(method)
        if params is not None and constants:
            raise ValueError(f"give the RoPE constants as params or as keywords, not both (got {sorted(constants)})")
        self.params = params if params is not None else rope.RoPEParams.from_kwargs(**constants)
        n_axes = len(self.axes_dim)
        self.spatial_axes = tuple(range(1, n_axes)) if spatial_axes is None else tuple(int(a) for a in spatial_axes)
        if any(not 0 <= a < n_axes for a in self.spatial_axes):
            raise ValueError(f"spatial_axes {self.spatial_axes} must index the {n_axes} axes of axes_dim")
        self.base_len = _per_axis(base_len, self.spatial_axes)
        if head_axis not in (1, 2):
            raise ValueError(f"head_axis must be 1 ([B, 1, L, ...]) or 2 ([B, L, 1, ...]), got {head_axis!r}")
        self.head_axis = head_axis
        self._extents: dict[int, float] | None = None  # L per spatial axis, from `set_extents`
        self.t = 1.0
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extra_repr(self) -> str:
        return (f"theta={self.theta:g}, axes_dim={self.axes_dim}, method={self.method!r}, "
                f"base_len={self.base_len}, t={self.t:.4f}")

    def set_time(self, t: float) -> None:
        """Set the normalised noise level t = sigma / sigma_max of the next calls (1 = pure noise); clamped
        to [0, 1], NaN/inf rejected (`sharp.rope.normalised_time`).

        Time is state, not an argument, because ComfyUI calls the embedder as it calls EmbedND, with the
        ids alone: the promotion's APPLY_MODEL wrapper sets it from the sampler's sigma before each call.
        """
        t = rope.normalised_time(t)
        if t != self.t:
            self._cache.clear()
        self.t = t

    def set_extents(self, extents: dict[int, float]) -> None:
        """Set the extent L (in positions) of each spatial axis of the image being generated, e.g. from the
        latent's size: {axis: L} for every axis of `spatial_axes`."""
        extents = {int(a): float(L) for a, L in extents.items()}
        if set(extents) != set(self.spatial_axes) or not all(L > 0 and math.isfinite(L) for L in extents.values()):
            raise ValueError(f"extents must give a positive length for each spatial axis {self.spatial_axes}, "
                             f"got {extents}")
        if extents != self._extents:
            self._cache.clear()
        self._extents = extents

    @property
    def extents(self) -> dict[int, float] | None:
        """The extents set by `set_extents` (a copy), None before."""
        return None if self._extents is None else dict(self._extents)

    # -- per-axis quantities ---------------------------------------------------------------

    def axis_scales(self) -> dict[int, float]:
        """s = L / L0 per spatial axis."""
        if self._extents is None:
            raise ValueError("RoPEEmbedder has no extents: call set_extents({axis: L}) with the generated image's "
                             f"tokens along each spatial axis {self.spatial_axes} first (the promotion sets them "
                             "from the latent before each model call)")
        return {a: L / self.base_len[a] for a, L in self._extents.items()}

    def frequencies(self, axis: int, scale: float) -> torch.Tensor:
        """f_j of one axis at the current time, float64 [D/2] (stock for non-spatial axes)."""
        if axis not in self.spatial_axes:
            scale, base_len = 1.0, 1.0
        else:
            base_len = self.base_len[axis]
        return rope._axis_frequencies(self.axes_dim[axis], self.theta, scale, self.t, self.method, base_len,
                                      self.params)

    def mscale(self, axis: int, scale: float) -> float:
        if axis not in self.spatial_axes:
            return 1.0
        return rope._axis_mscale(scale, self.method, self.params)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, L, n_axes] -> rotation blocks [B, 1, L, sum(axes_dim)/2, 2, 2] float32 on ids' device."""
        self._check_ids(ids)
        for cached_ids, out in self._cache:
            if cached_ids.shape == ids.shape and cached_ids.device == ids.device and torch.equal(cached_ids, ids):
                return out.clone()  # a fresh tensor per call, as EmbedND's: a patch may rewrite pe in place
        out = self._embed(ids)
        self._cache = [(ids.detach().clone(), out)] + self._cache[: _CACHE_SIZE - 1]
        return out.clone()

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        pos = ids.detach().to(torch.float32)  # as ComfyUI's rope: positions rounded to float32 first
        scales = self.axis_scales()
        table_device = torch.device("cpu") if pos.device.type in _NO_FLOAT64_DEVICES else pos.device
        out = torch.empty(*pos.shape[:2], self.dim // 2, 2, 2, dtype=torch.float32, device=pos.device)
        start = 0
        for axis, dim in enumerate(self.axes_dim):
            scale = scales.get(axis, 1.0)
            # separable: trig on the U distinct positions of this axis, then a gather per token
            values, index = distinct_positions(pos[..., axis])  # [U], [B, L]
            table = rotation_blocks(values.to(table_device), self.frequencies(axis, scale).to(table_device),
                                    self.mscale(axis, scale))  # [U, D/2, 2, 2]
            out[:, :, start:start + dim // 2] = table.to(pos.device)[index]
            start += dim // 2
        return out.unsqueeze(self.head_axis)  # [B, 1, L, sum(D)/2, 2, 2] (head_axis 2: [B, L, 1, ...])

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"ids must be a torch.Tensor [B, L, {len(self.axes_dim)}], got {type(ids).__name__}")
        if ids.ndim != 3:
            raise ValueError(f"ids must have rank 3 [B, L, n_axes], got shape {tuple(ids.shape)}")
        if ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"ids have {ids.shape[-1]} axes but axes_dim {self.axes_dim} names "
                             f"{len(self.axes_dim)}; build the embedder from the model's own axes_dim")


def distinct_positions(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pos [B, L] float32 -> (values [U], index [B, L]) with values[index] == pos.

    Positions on an integer grid (every Flux-family model without fractional RoPE scaling) take the
    fast path: values = lo..hi, index = pos - lo, no sort. Anything else goes through torch.unique.
    """
    lo, hi = pos.amin(), pos.amax()
    span = float(hi - lo) + 1
    if span <= 4 * pos.shape[-1] + 1024 and torch.equal(pos, pos.round()):
        values = torch.arange(int(lo), int(hi) + 1, device=pos.device, dtype=torch.float32)
        return values, (pos - lo).long()
    return torch.unique(pos, return_inverse=True)


def rotation_blocks(positions: torch.Tensor, freqs: torch.Tensor, mscale: float = 1.0) -> torch.Tensor:
    """positions [U] (any float), freqs float64 [D/2] -> float32 [U, D/2, 2, 2] of
    mscale * [[cos, -sin], [sin, cos]] of the float64 angle pos * f_j."""
    angle = positions.to(torch.float64)[:, None] * freqs[None, :]  # [U, D/2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    blocks = torch.stack([cos, -sin, sin, cos], dim=-1)  # [U, D/2, 4]
    if mscale != 1.0:
        blocks = blocks * mscale
    return blocks.view(*angle.shape, 2, 2).to(torch.float32)


def _per_axis(value, axes: tuple[int, ...]) -> dict[int, float]:
    values = list(value) if isinstance(value, Sequence) else [value] * len(axes)
    if len(values) != len(axes):
        raise ValueError(f"base_len needs one value per spatial axis {axes}, got {value!r}")
    out = {}
    for axis, v in zip(axes, values):
        v = float(v)
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"base_len must be positive (positions at the training resolution, e.g. 64 "
                             f"for 1024 px), got {value!r}")
        out[axis] = v
    return out
