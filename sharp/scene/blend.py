"""Streaming blend: tile results in, finished cells out, independent of arrival order.

Each cell keeps the pieces of its covering tiles until the last one arrives, then blends them
with the raised-cosine windows of sharp.refsr.tiling in ascending tile order, with the same
arithmetic as run_tiled (acc = 0; acc += piece * win; wsum += win; acc / wsum). So results are
bit-identical whatever order workers finish in, and a single tile (weight 1) passes unchanged.
Waiting pieces go to a seam store (sharp.scene.seams: on disk for scenes), so the memory the
blend holds is the one tile being added, whatever the scene's width.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import torch

from sharp.refsr.tiling import blend_window

from .plan import Cell, Tile, tile_cells
from .seams import MemorySeams


@lru_cache(maxsize=32)          # a plan has at most 9 kinds of tile (by the sides facing others)
def _window(th: int, tw: int, overlap: int, top: bool, bottom: bool, left: bool, right: bool
            ) -> torch.Tensor:
    return blend_window(th, tw, overlap, top, bottom, left, right).to(torch.float32)


class CellBlender:
    """Collects per-tile arrays {name: [C, h, w] over the tile's image box} and returns the
    cells they complete as (cell, {name: blended [C, ch, cw] float32})."""

    def __init__(self, tiles: list[Tile], cells: list[Cell], height: int, width: int,
                 overlap: int, done: Iterable[int] = (), seams=None):
        self.tiles, self.cells = tiles, cells
        self.height, self.width, self.overlap = height, width, overlap
        self.done = set(done)
        self.of_tile = tile_cells(cells, len(tiles))
        self.seams = seams if seams is not None else MemorySeams()
        self.pending: dict[int, dict[int, int]] = {}     # cell -> {tile: seam-store key}
        self.seen: set[int] = set()

    def needed(self) -> list[int]:
        """Tiles that still contribute to a cell not yet written, ascending."""
        return [t.index for t in self.tiles
                if any(c not in self.done for c in self.of_tile[t.index])]

    def window(self, tile: Tile) -> torch.Tensor:
        return _window(tile.h, tile.w, self.overlap, tile.top, tile.bottom, tile.left, tile.right)

    def add(self, index: int, arrays: dict[str, torch.Tensor]) -> list[tuple[Cell, dict]]:
        """Take tile `index`'s result; a tile seen before (a retried task) is ignored."""
        if index in self.seen:
            return []
        self.seen.add(index)
        tile = self.tiles[index]
        ready = []
        for ci in self.of_tile[index]:
            if ci in self.done:
                continue
            c = self.cells[ci]
            sl = (slice(None), slice(c.y0 - tile.y, c.y1 - tile.y), slice(c.x0 - tile.x, c.x1 - tile.x))
            piece = {k: v[sl] for k, v in arrays.items()}
            waiting = self.pending.get(ci, {})
            if len(waiting) + 1 < len(c.cover):         # others still to come: store it
                self.pending.setdefault(ci, {})[index] = self.seams.put(piece)
                continue
            pieces = {t: self.seams.get(key) for t, key in self.pending.pop(ci, {}).items()}
            pieces[index] = piece
            ready.append((c, self._blend(c, pieces)))
        return ready

    def _blend(self, c: Cell, pieces: dict[int, dict[str, torch.Tensor]]) -> dict:
        if len(c.cover) == 1:                       # weight 1: 0 + p * 1 over 1 is p itself
            return pieces[c.cover[0]]
        out = {}
        wins = {}
        for t in c.cover:
            tile = self.tiles[t]
            wins[t] = self.window(tile)[c.y0 - tile.y:c.y1 - tile.y, c.x0 - tile.x:c.x1 - tile.x]
        for name in pieces[c.cover[0]]:
            acc = torch.zeros_like(pieces[c.cover[0]][name])
            wsum = torch.zeros(1, *acc.shape[1:])
            for t in c.cover:
                acc += pieces[t][name] * wins[t]
                wsum += wins[t]
            out[name] = acc.div_(wsum)
        return out

    def mark_done(self, cell: int) -> None:
        self.done.add(cell)

    @property
    def pending_pixels(self) -> int:
        """Pixels of the pieces waiting in the seam store."""
        return sum(self.cells[c].pixels * len(p) for c, p in self.pending.items())

    def close(self) -> None:
        self.seams.close()
