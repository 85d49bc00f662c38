"""Tile plan of an output grid and the cells the blend writes.

Tiles are as many as super_resolve's, in the even plan (sharp.refsr.tiling.even_starts over
the grid padded to whole tokens): each only as large as covering the scene with the overlap
needs, so no tile reaches far into its neighbour and every tile's registration and network work
is on pixels that count (at 2048^2 with 512 / 64: 25 tiles of 464^2, not 512^2). The
output is cut along every tile edge into cells: each cell lies wholly inside a fixed set of
tiles (1 in tile interiors, 2 or 4 in overlaps), so a cell can be blended and written as soon as
its tiles are done, and only overlap strips wait in memory. Cells are the unit of writing and of
the resume journal.
"""
from __future__ import annotations

from dataclasses import dataclass

from sharp.refsr.tiling import tiles as tile_plan


@dataclass(frozen=True)
class Tile:
    index: int
    y: int            # in the padded output grid
    x: int
    h: int            # tile size (may reach into the bottom/right token padding)
    w: int
    top: bool         # sides that face another tile (the blend ramps there)
    bottom: bool
    left: bool
    right: bool

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, x0, h, w) of the tile clipped to the image."""
        return self.y, self.x, min(self.h, height - self.y), min(self.w, width - self.x)


@dataclass(frozen=True)
class Cell:
    index: int
    y0: int
    y1: int
    x0: int
    x1: int
    cover: tuple[int, ...]   # indices of the tiles that contain it, ascending

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def make_tiles(height: int, width: int, unit: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles of a height x width output padded to multiples of unit (row-major)."""
    hp, wp = height + -height % unit, width + -width % unit
    plan = tile_plan(hp, wp, tile, overlap, even_unit=unit)
    ys = sorted({p[0] for p in plan})
    xs = sorted({p[1] for p in plan})
    return [Tile(i, y, x, th, tw, y != ys[0], y != ys[-1], x != xs[0], x != xs[-1])
            for i, (y, x, th, tw) in enumerate(plan)]


def make_cells(tiles: list[Tile], height: int, width: int) -> list[Cell]:
    """Cut the image along every tile edge; row-major cells with their covering tiles."""
    ys = sorted({0, height} | {min(t.y, height) for t in tiles} | {min(t.y + t.h, height) for t in tiles})
    xs = sorted({0, width} | {min(t.x, width) for t in tiles} | {min(t.x + t.w, width) for t in tiles})
    cells = []
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            cover = tuple(t.index for t in tiles
                          if t.y <= y0 and y1 <= t.y + t.h and t.x <= x0 and x1 <= t.x + t.w)
            cells.append(Cell(len(cells), y0, y1, x0, x1, cover))
    return cells


def tile_cells(cells: list[Cell], n_tiles: int) -> list[list[int]]:
    """For each tile, the indices of the cells it covers."""
    out: list[list[int]] = [[] for _ in range(n_tiles)]
    for c in cells:
        for t in c.cover:
            out[t].append(c.index)
    return out


def lr_window(tile: Tile, height: int, width: int, scale: int, halo: int
              ) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of the LR pixels the tile's image part needs: its footprint at
    LR resolution plus `halo` LR pixels each side (bicubic taps, hole filling), clipped to the
    LR image (F.interpolate replicates edges there, as on the whole image)."""
    y0, x0, h, w = tile.box(height, width)
    lh, lw = height // scale, width // scale
    r0, c0 = max(0, y0 // scale - halo), max(0, x0 // scale - halo)
    r1 = min(lh, -(-(y0 + h) // scale) + halo)
    c1 = min(lw, -(-(x0 + w) // scale) + halo)
    return r0, c0, r1 - r0, c1 - c0
