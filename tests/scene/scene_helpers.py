"""Synthetic GeoTIFF scenes for the scene tests, built from RRSSRD triplets with a known CRS.

`from scene.scene_helpers import ...` (tests/ is on the pytest pythonpath; tests/scene is a
namespace package). The LR is placed in EPSG:3857 at 2.4 m pixels (the triplets' ~0.6 m HR x4)
at a fixed place; the Ref on the output grid (0.6 m), or reprojected to another CRS/pixel size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from affine import Affine
from PIL import Image

_ROOT = Path(__file__).resolve().parents[2]
# shared/ beside the clone (CI, /work/main), or the team's copy (git worktrees elsewhere)
RRSSRD = next((p for p in (_ROOT / ".." / "shared" / "data" / "rrssrd",
                           Path("/work/shared/data/rrssrd")) if (p / "val_1st").is_dir()),
              _ROOT / ".." / "shared" / "data" / "rrssrd")
NAME = "L18_112456_217112_s014.jpg"
ORIGIN = (12_958_000.0, 4_852_000.0)     # EPSG:3857 (Beijing area), upper-left corner
LR_PIXEL = 2.4


def triplet(name: str = NAME, folder: str = "val_1st") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, hr, ref) uint8 [H, W, 3] arrays of one RRSSRD triplet."""
    root = RRSSRD / folder
    return tuple(np.asarray(Image.open(root / d / name).convert("RGB")) for d in ("LR", "HR", "Ref"))


def write_tif(path: Path, hwc: np.ndarray, transform, crs: str = "EPSG:3857", nodata=None,
              colorinterp=("red", "green", "blue"), **extra) -> Path:
    """[H, W, C] array -> GeoTIFF (bands in C order)."""
    import rasterio
    from rasterio.enums import ColorInterp
    arr = np.moveaxis(np.asarray(hwc), -1, 0)
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=arr.shape[0], dtype=arr.dtype.name, crs=crs, transform=transform,
                       nodata=nodata, **extra) as dst:
        dst.write(arr)
        if colorinterp and len(colorinterp) == arr.shape[0]:
            dst.colorinterp = [ColorInterp[c] for c in colorinterp]
    return path


def masked_tif(path, hwc, transform, hole, kind):
    """A uint8 GeoTIFF whose pixels under `hole` hold garbage (255) and are marked invalid by
    `kind`: "nodata" (value 0 there), "alpha" (an RGBA file, alpha 0 there) or "mask" (an
    internal per-dataset mask, 0 there)."""
    import rasterio
    from rasterio.enums import ColorInterp
    x = hwc.copy()
    if kind == "nodata":
        x[hole] = 0
        return write_tif(path, x, transform, nodata=0)
    x[hole] = 255
    if kind == "alpha":
        alpha = np.where(hole, 0, 255).astype(np.uint8)[..., None]
        write_tif(path, np.concatenate([x, alpha], -1), transform, colorinterp=None,
                  photometric="RGB")
        with rasterio.open(path, "r+") as ds:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                              ColorInterp.alpha]
        return path
    write_tif(path, x, transform)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as ds:
        ds.write_mask(np.where(hole, 0, 255).astype(np.uint8))
    return path


def lr_transform(pixel: float = LR_PIXEL):
    return Affine(pixel, 0.0, ORIGIN[0], 0.0, -pixel, ORIGIN[1])


def write_pair(tmp: Path, lr: np.ndarray, ref: np.ndarray, scale: int = 4, **kw) -> tuple[Path, Path]:
    """LR at LR_PIXEL and Ref on the output grid (LR_PIXEL / scale), same origin."""
    a = write_tif(tmp / "lr.tif", lr, lr_transform(), **kw)
    b = write_tif(tmp / "ref.tif", ref, lr_transform(LR_PIXEL / scale))
    return a, b


def reproject_ref(src: Path, dst: Path, crs: str, pixel: float) -> Path:
    """A copy of the Ref GeoTIFF warped into another CRS and pixel size (bilinear)."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    with rasterio.open(src) as s:
        t, w, h = calculate_default_transform(s.crs, crs, s.width, s.height, *s.bounds,
                                              resolution=pixel)
        out = np.zeros((s.count, h, w), s.dtypes[0])
        reproject(rasterio.band(s, list(range(1, s.count + 1))), out, dst_transform=t,
                  dst_crs=crs, resampling=Resampling.bilinear, dst_nodata=0)
        with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=s.count,
                           dtype=s.dtypes[0], crs=crs, transform=t, nodata=0) as d:
            d.write(out)
    return dst


def read(path: Path) -> np.ndarray:
    import rasterio
    with rasterio.open(path) as s:
        return s.read()
