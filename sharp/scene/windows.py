"""Windowed reading of the LR and of the Ref reprojected onto the output grid, and writing.

Reads touch only the pixels a tile needs. The Ref goes through rasterio.warp.reproject from the
open dataset straight into the tile's window of the output grid (GDAL reads just the source
region it needs): any CRS, pixel size or extent. Resampling: bilinear, or average where the Ref
is more than 1.5x finer than the output (anti-aliasing). Ref nodata, pixels its alpha band or
per-dataset mask marks invalid, and places outside the Ref come back as NaN: no reference there.
A Ref already on the output grid (same CRS and pixel size, shifted by whole pixels:
`aligned_offset`) is read by window instead, the same values the warp gives (every output pixel
centre falls on a Ref pixel centre) at a fraction of its cost; one with an alpha band always
goes through the warp (GDAL blends partial alpha into the destination).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .bands import BandScale, alpha_band, read_mask, valid_mask
from .grid import Grid


def read_lr(ds, bands: Sequence[int], box: tuple[int, int, int, int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(native values [C, rows, cols], valid [rows, cols] bool: see bands.valid_mask) of an LR
    window (row0, col0, rows, cols); bands may repeat."""
    arr = read_window(ds, bands, box)
    return arr, valid_mask(arr, ds.nodata, read_mask(ds, bands[0], window=_window(box)))


def _window(box: tuple[int, int, int, int]):
    from rasterio.windows import Window
    r0, c0, h, w = box
    return Window(c0, r0, w, h)


def read_window(ds, bands: Sequence[int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Native values [C, rows, cols] of a window (row0, col0, rows, cols); bands may repeat."""
    uniq = sorted(set(bands))
    return ds.read(uniq, window=_window(box))[[uniq.index(b) for b in bands]]


def ref_resampling(ref_pixel: float, out_pixel: float):
    from rasterio.enums import Resampling
    return Resampling.average if ref_pixel < out_pixel / 1.5 else Resampling.bilinear


def aligned_offset(ds, grid: Grid, tol: float = 1e-6) -> Optional[tuple[int, int]]:
    """(rows, cols) such that output pixel (r, c) is Ref pixel (r + rows, c + cols), when the Ref
    is on the output grid up to a whole-pixel shift (same CRS and pixel size, no rotation,
    within tol of a pixel) and has no alpha band; else None (the Ref is warped)."""
    t, g = ds.transform, grid.transform
    if alpha_band(ds) is not None or ds.crs != grid.crs or t.b or t.d or g.b or g.d:
        return None
    if abs(t.a - g.a) > tol * abs(g.a) or abs(t.e - g.e) > tol * abs(g.e):
        return None
    cols, rows = (g.c - t.c) / g.a, (g.f - t.f) / g.e
    if abs(cols - round(cols)) > tol or abs(rows - round(rows)) > tol:
        return None
    return round(rows), round(cols)


def _read_aligned(ds, uniq: list[int], box: tuple[int, int, int, int], offset: tuple[int, int]
                  ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(native values [C, rows, cols] of the Ref under an output window, valid [rows, cols] bool
    or None where every pixel is valid); outside the Ref is invalid."""
    r0, c0, h, w = box
    y0, x0 = r0 + offset[0], c0 + offset[1]                  # the window in Ref pixels
    ya, yb = max(y0, 0), min(y0 + h, ds.height)
    xa, xb = max(x0, 0), min(x0 + w, ds.width)
    if ya >= yb or xa >= xb:
        return np.zeros((len(uniq), h, w), ds.dtypes[uniq[0] - 1]), np.zeros((h, w), bool)
    win = (ya, xa, yb - ya, xb - xa)
    raw = read_window(ds, uniq, win)
    ok = valid_mask(raw, ds.nodata, read_mask(ds, uniq[0], window=_window(win)),
                    every_band=True)                     # as GDAL's warper decides
    if (yb - ya, xb - xa) == (h, w):
        return raw, None if ok.all() else ok
    native = np.zeros((len(uniq), h, w), raw.dtype)
    valid = np.zeros((h, w), bool)
    native[:, ya - y0:yb - y0, xa - x0:xb - x0] = raw
    valid[ya - y0:yb - y0, xa - x0:xb - x0] = ok
    return native, valid


def read_ref(ds, bands: Sequence[int], scale: BandScale, grid: Grid,
             box: tuple[int, int, int, int], resampling,
             offset: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The Ref on the output grid's window (row0, col0, rows, cols), mapped to [0, 1] by its
    BandScale: float32 [3, rows, cols], NaN where the Ref has no data. offset: aligned_offset's
    (read by window), or None (warped)."""
    import rasterio
    from rasterio.warp import reproject
    r0, c0, h, w = box
    uniq = sorted(set(bands))
    if offset is not None:
        native, valid = _read_aligned(ds, uniq, box, offset)
    else:
        native = np.full((len(uniq), h, w), np.nan, np.float32)
        # GDAL's warper honours a per-dataset mask by itself, an alpha band only when named
        reproject(source=rasterio.band(ds, uniq), destination=native, src_transform=ds.transform,
                  src_crs=ds.crs, src_nodata=ds.nodata, src_alpha=alpha_band(ds) or 0,
                  dst_transform=grid.window_transform(r0, c0), dst_crs=grid.crs,
                  dst_nodata=np.nan, resampling=resampling)
        valid = ~np.isnan(native).any(0)
    if list(bands) != uniq:
        native = native[[uniq.index(b) for b in bands]]
    out = scale.to_unit(native)
    if valid is not None and not valid.all():
        out[:, ~valid] = np.nan
    return out


def write_window(ds, arr: np.ndarray, row0: int, col0: int,
                 mask: Optional[np.ndarray] = None) -> None:
    """arr [C, h, w] at (row0, col0); mask [h, w] bool: also the per-dataset mask there."""
    win = _window((row0, col0, arr.shape[-2], arr.shape[-1]))
    ds.write(arr, window=win)
    if mask is not None:
        ds.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=win)
