"""SHARP's embedder in ErnieImage's RoPE layout (ComfyUI's `ErnieImageEmbedND3`, comfy/ldm/ernie/model.py).

ErnieImage's `pos_embed` differs from Flux's EmbedND in two ways, both reproduced here bit for bit:

- frequencies: base_j = 1 / theta^(arange(0, D, 2) / D) (EmbedND: linspace(0, (D - 2) / D, D / 2); the two
  exponent grids differ in the last bits). A promoted frequency is SHARP's f_j scaled onto this grid,
  f_j * base_j(arange) / base_j(linspace); a frequency SHARP leaves stock is the arange one exactly.
- layout: with cos_k, sin_k of the N = sum(axes_dim) / 2 frequencies concatenated over the axes and
  half = N / 2, block n (of N) is [[cos_{n//2}, -sin_{n//2}], [sin_{half+n//2}, cos_{half+n//2}]]: the
  split-half rotation comfy-kitchen's `rms_rope_split_half` / `apply_rope_split_half` consume
  (channel k of a head turns with k + N). Output [B, L, 1, N, 2, 2] (`unsqueeze(2)`), float32.

mscale multiplies every entry, as in EmbedND's layout.
"""
from __future__ import annotations

import functools

import torch

from sharp import rope
from sharp.embedder import RoPEEmbedder


@functools.lru_cache(maxsize=64)
def arange_base_frequencies(dim: int, theta: float) -> torch.Tensor:
    """ErnieImage's stock frequencies, float64 [D/2], computed as its `rope` does."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def to_arange_grid(f: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """SHARP's frequencies f (on EmbedND's linspace grid) moved onto ErnieImage's arange grid."""
    lin, ar = rope.base_frequencies(dim, theta), arange_base_frequencies(dim, theta)
    return torch.where(f == lin, ar, f * (ar / lin))


def split_half_layout(blocks: torch.Tensor) -> torch.Tensor:
    """EmbedND blocks [..., N, 2, 2] (block k = m [[cos_k, -sin_k], [sin_k, cos_k]]) -> ErnieImage's
    [..., N, 2, 2] (block n = m [[cos_{n//2}, -sin_{n//2}], [sin_{N/2+n//2}, cos_{N/2+n//2}]])."""
    n = blocks.shape[-3]
    j = torch.arange(n, device=blocks.device) // 2
    return torch.stack([blocks[..., j, 0, :], blocks[..., n // 2 + j, 1, :]], dim=-2)


class SplitHalfRoPEEmbedder(RoPEEmbedder):
    """`RoPEEmbedder` returning ErnieImageEmbedND3's frequencies and layout (head_axis 2: [B, L, 1, ...])."""

    def __init__(self, *args, **kwargs):
        kwargs["head_axis"] = 2
        super().__init__(*args, **kwargs)
        if (self.dim // 2) % 2:
            raise ValueError(f"the split-half layout needs an even number of frequencies, got axes_dim {self.axes_dim}")

    def frequencies(self, axis: int, scale: float) -> torch.Tensor:
        return to_arange_grid(super().frequencies(axis, scale), self.axes_dim[axis], self.theta)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return split_half_layout(super()._embed(ids))
