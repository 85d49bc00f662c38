"""Windowed reading of the LR and of the Ref reprojected onto the output grid, and writing.

Reads touch only the pixels a tile needs. The Ref goes through rasterio.warp.reproject from the
open dataset straight into the tile's window of the output grid (GDAL reads just the source
region it needs): any CRS, pixel size or extent. Resampling: bilinear, or average where the Ref
is more than 1.5x finer than the output (anti-aliasing). Ref nodata, pixels its alpha band or
per-dataset mask marks invalid, and places outside the Ref come back as NaN: no reference there.
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


def read_ref(ds, bands: Sequence[int], scale: BandScale, grid: Grid,
             box: tuple[int, int, int, int], resampling) -> np.ndarray:
    """The Ref on the output grid's window (row0, col0, rows, cols), mapped to [0, 1] by its
    BandScale: float32 [3, rows, cols], NaN where the Ref has no data."""
    import rasterio
    from rasterio.warp import reproject
    r0, c0, h, w = box
    uniq = sorted(set(bands))
    dst = np.full((len(uniq), h, w), np.nan, np.float32)
    # GDAL's warper honours a per-dataset mask by itself, an alpha band only when named
    reproject(source=rasterio.band(ds, uniq), destination=dst, src_transform=ds.transform,
              src_crs=ds.crs, src_nodata=ds.nodata, src_alpha=alpha_band(ds) or 0,
              dst_transform=grid.window_transform(r0, c0), dst_crs=grid.crs, dst_nodata=np.nan,
              resampling=resampling)
    dst = dst[[uniq.index(b) for b in bands]]
    bad = np.isnan(dst).any(0)
    out = scale.to_unit(np.nan_to_num(dst))
    out[:, bad] = np.nan
    return out


def write_window(ds, arr: np.ndarray, row0: int, col0: int,
                 mask: Optional[np.ndarray] = None) -> None:
    """arr [C, h, w] at (row0, col0); mask [h, w] bool: also the per-dataset mask there."""
    win = _window((row0, col0, arr.shape[-2], arr.shape[-1]))
    ds.write(arr, window=win)
    if mask is not None:
        ds.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=win)
