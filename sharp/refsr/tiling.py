"""Tiled inference with overlap and raised-cosine blending.

The output is assembled from overlapping tiles, each weighted by a separable window that ramps
up as a raised cosine across the overlap on sides facing another tile and is 1 elsewhere (also
along the image border), so:
  * one tile covering the image gets weight 1 everywhere: identical to untiled inference;
  * overlaps cross-fade smoothly, with no seams;
  * peak working memory is that of one tile; only the output and weight-sum buffers grow with
    the scene.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by >= `overlap`."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def even_starts(length: int, tile: int, overlap: int, unit: int = 1) -> tuple[list[int], int]:
    """(starts, size): the fewest tiles of at most `tile` that cover [0, length) overlapping by
    >= `overlap` (as many as tile_starts uses), each only as large as that needs, spread
    evenly; starts and size are multiples of unit (length and tile must be too).
    tile_starts puts the last tile flush with the end, so at unlucky lengths the tiles overlap
    far more than asked (2048 with 512 / 64: five tiles of 512 where five of 464 do)."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length % unit or tile % unit:
        raise ValueError(f"length ({length}) and tile ({tile}) must be multiples of {unit}")
    if length <= tile:
        return [0], length
    n = -(-(length - overlap) // (tile - overlap))            # fewest tiles with that overlap
    need = -(-(length + (n - 1) * overlap) // n)             # n tiles of this size just fit
    for size in range(-(-need // unit) * unit, tile + 1, unit):
        span = (length - size) // unit                        # last start, in units
        starts = [unit * round(i * span / (n - 1)) for i in range(n)]
        if all(a < b <= a + size - overlap for a, b in zip(starts, starts[1:])):
            return starts, size
    return tile_starts(length, tile, overlap), tile           # unreachable: size = tile fits


def ramp(n: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """[n] window: raised-cosine rise over the first `overlap` samples (if rise), fall over the
    last (if fall), 1 elsewhere. Strictly positive."""
    w = torch.ones(n, dtype=torch.float64)
    m = min(overlap, n)
    if m > 0:
        edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(m, dtype=torch.float64) + 0.5) / m)
        if rise:
            w[:m] = torch.minimum(w[:m], edge)
        if fall:
            w[n - m:] = torch.minimum(w[n - m:], edge.flip(0))
    return w


def blend_window(th: int, tw: int, overlap: int, top: bool, bottom: bool, left: bool,
                 right: bool) -> torch.Tensor:
    """[th, tw] separable blending weight; flags say which sides face a neighbouring tile."""
    return torch.outer(ramp(th, overlap, top, bottom), ramp(tw, overlap, left, right))


def tiles(height: int, width: int, tile: int, overlap: int, even_unit: int = 0
          ) -> list[tuple[int, int, int, int]]:
    """(y, x, th, tw) of every tile, row-major. even_unit 0: tiles of `tile`, the last flush
    with the edge (tile_starts; super_resolve); > 0: the even plan (even_starts) on that unit
    (scenes)."""
    if even_unit:
        (ys, th), (xs, tw) = (even_starts(n, tile, overlap, even_unit) for n in (height, width))
    else:
        ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in ys for x in xs]


def run_tiled(fn: Callable[[int, int, int, int], torch.Tensor], batch: int, channels: int,
              height: int, width: int, tile: int, overlap: int, even_unit: int = 0
              ) -> torch.Tensor:
    """Blend fn(y, x, th, tw) -> [B, C, th, tw] over the tiling of a [B, C, H, W] output."""
    plan = tiles(height, width, tile, overlap, even_unit)
    ys = sorted({p[0] for p in plan})
    xs = sorted({p[1] for p in plan})
    out = torch.zeros(batch, channels, height, width)
    wsum = torch.zeros(1, 1, height, width)
    for y, x, th, tw in plan:
        win = blend_window(th, tw, overlap, y != ys[0], y != ys[-1], x != xs[0], x != xs[-1])
        win = win.to(torch.float32)
        piece = fn(y, x, th, tw).to(torch.float32)
        out[:, :, y:y + th, x:x + tw] += piece * win
        wsum[:, :, y:y + th, x:x + tw] += win
    return out.div_(wsum)
