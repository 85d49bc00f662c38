"""The output grid and the georeference checks made before any work.

Output grid = the LR grid refined by the scale: same CRS, transform * scale(1/s), s times the
pixels per side, so the footprint (bounds) is the LR's to the pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SceneError


@dataclass(frozen=True)
class Grid:
    crs: object
    transform: object     # affine.Affine
    width: int
    height: int

    def window_transform(self, row0: int, col0: int):
        from affine import Affine
        return self.transform @ Affine.translation(col0, row0)


def open_raster(path, what: str):
    """rasterio dataset of path, or a SceneError that says what is wrong with it."""
    import rasterio
    from rasterio.errors import RasterioIOError

    from pathlib import Path
    if not Path(path).is_file():
        raise SceneError(f"{what} {path}: no such file")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as err:
        raise SceneError(f"{what} {path} is not a raster GDAL can read ({err}); expected a "
                         "GeoTIFF (or another GDAL raster) with a CRS and a geotransform") from None
    if ds.crs is None:
        ds.close()
        raise SceneError(f"{what} {path} has no CRS: assign one first (e.g. gdal_edit.py -a_srs "
                         "EPSG:xxxx) or use the in-memory `refsr` command for plain images")
    if ds.transform.is_identity or ds.transform.is_degenerate:
        ds.close()
        raise SceneError(f"{what} {path} has no geotransform (pixel-to-map mapping): georeference "
                         "it first (GCPs and RPCs are not supported: warp it with gdalwarp)")
    if ds.transform.b != 0 or ds.transform.d != 0:
        ds.close()
        raise SceneError(f"{what} {path} has a rotated geotransform: warp it north-up first "
                         "(gdalwarp)")
    return ds


def output_grid(lr, scale: int) -> Grid:
    from affine import Affine
    return Grid(lr.crs, lr.transform @ Affine.scale(1.0 / scale), lr.width * scale,
                lr.height * scale)


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def ref_coverage(lr, ref) -> float:
    """Fraction of the LR footprint inside the Ref's footprint (bounding box of the Ref's
    bounds transformed into the LR's CRS, densified along the edges)."""
    from rasterio.warp import transform_bounds
    rb = transform_bounds(ref.crs, lr.crs, *ref.bounds, densify_pts=21)
    lb = lr.bounds
    inter = (max(lb[0], rb[0]), max(lb[1], rb[1]), min(lb[2], rb[2]), min(lb[3], rb[3]))
    return _area(inter) / _area(lb)


def ref_pixel_size(lr, ref) -> float:
    """The Ref's pixel side in the LR's CRS units (its default reprojection's resolution)."""
    from rasterio.warp import calculate_default_transform
    t, _, _ = calculate_default_transform(ref.crs, lr.crs, ref.width, ref.height, *ref.bounds)
    return math.sqrt(abs(t.a * t.e))


def check_pair(lr, ref, lr_path, ref_path, min_overlap: float) -> dict:
    """Raise SceneError if the Ref cannot help: footprints disjoint or overlapping less than
    min_overlap of the LR, or Ref pixels coarser than the LR's. Returns the figures."""
    try:
        cover = ref_coverage(lr, ref)
        ref_px = ref_pixel_size(lr, ref)
    except Exception as err:   # pyproj/GDAL: CRSs without a transformation between them
        raise SceneError(f"cannot relate the Ref's CRS ({ref.crs}) to the LR's ({lr.crs}): {err}"
                         ) from None
    lr_px = math.sqrt(abs(lr.transform.a * lr.transform.e))
    if cover <= 0:
        raise SceneError(f"LR {lr_path} and Ref {ref_path} do not overlap: LR bounds {tuple(lr.bounds)}"
                         f" in {lr.crs}; the Ref must show the same place")
    if cover < min_overlap:
        raise SceneError(f"the Ref {ref_path} covers only {100 * cover:.1f}% of the LR footprint "
                         f"(need >= {100 * min_overlap:.0f}%, --min-overlap): use a Ref of the same "
                         "area, or lower --min-overlap (uncovered areas fall back to the LR)")
    if ref_px > 1.01 * lr_px:
        raise SceneError(f"the Ref {ref_path} is coarser than the LR: {ref_px:.4g} vs "
                         f"{lr_px:.4g} {lr.crs.linear_units or 'units'} per pixel; the Ref must be "
                         "the high-resolution image (swapped --lr / --ref?)")
    return {"coverage": cover, "ref_pixel": ref_px, "lr_pixel": lr_px}
