"""The output file: a partial tiled GeoTIFF while running, the finished (COG) file at the end.

Pixels go to `OUT.partial` (never a name that looks finished), an uncompressed tiled GeoTIFF
written out in full when it is created: every block then has its place on disk, all later
writes land in place (a block written in pieces over several commits never grows the file, as
a compressed one would), and a disk too small for it fails at creation, before any work. `flush`
closes and reopens it so that everything written so far is on disk before the journal records
it. `finish` copies it, compressed (DEFLATE) with overviews (average, nodata-aware), either as a
Cloud-Optimized GeoTIFF with rio-cogeo (validated with its cog_validate) or as a tiled GeoTIFF,
to `OUT.cog-partial`, then renames that to OUT: only a complete file ever carries the final
name. Carried over from the LR: CRS, transform
(refined by the scale), nodata, dtype, dataset tags, and per band its description, colour
interpretation, tags, units, scale and offset; how it marks holes: its nodata value, its alpha
band (written last, the LR's alpha values nearest-upsampled) or its per-dataset mask (an
internal mask, upsampled the same way).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

from .errors import SceneError
from .grid import Grid

BLOCK = 512           # block side of the finished file
PARTIAL_BLOCK = 256   # block side of the uncompressed partial file


def create(path: Path, lr, grid: Grid, bands: Sequence[int], tags: dict, mask: bool = False):
    """The partial file for the grid, with the LR's metadata for `bands` (an alpha band among
    them stays one), reserved in full and opened for update. mask: with an internal
    per-dataset mask, all invalid until the cells are written (as the LR marks its holes)."""
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=len(bands),
                   dtype=lr.dtypes[bands[0] - 1], crs=grid.crs, transform=grid.transform,
                   nodata=lr.nodata, tiled=True, blockxsize=PARTIAL_BLOCK,
                   blockysize=PARTIAL_BLOCK, interleave="pixel", BIGTIFF="IF_SAFER")
    names = [lr.colorinterp[b - 1].name for b in bands]
    image = [n for n in names if n != "alpha"]
    if len(image) == 3 and profile["dtype"] in ("uint8", "uint16"):
        profile["photometric"] = "RGB" if image == ["red", "green", "blue"] else "MINISBLACK"
    try:
        _create(path, lr, bands, tags, profile, mask)
        import numpy as np
        nb = -(-grid.width // PARTIAL_BLOCK) * -(-grid.height // PARTIAL_BLOCK)
        _check_allocated(path, nb * PARTIAL_BLOCK ** 2 * len(bands) *
                         np.dtype(profile["dtype"]).itemsize)
    except Exception as err:
        path.unlink(missing_ok=True)
        raise SceneError(f"cannot create the partial output {path} "
                         f"({grid.width}x{grid.height} px, {len(bands)} band(s) "
                         f"{profile['dtype']}, uncompressed): {reasons(err)}; free disk space "
                         "or write elsewhere") from None
    return open_update(path)


def reasons(err: BaseException) -> str:
    """The messages of an exception and its causes (GDAL's detail is in the cause)."""
    chain, e = [], err
    while e is not None and len(chain) < 4:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    return "; ".join(dict.fromkeys(chain))


def _check_allocated(path: Path, data_bytes: int) -> None:
    """Reserve the file's disk blocks (GDAL leaves all-zero blocks as holes, which a full disk
    could not fill later) and raise if it is shorter than its blocks (GDAL does not always
    raise when a write fails at close)."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < data_bytes:
            raise OSError(f"only {size} of its {data_bytes} bytes could be written (disk full?)")
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, lr, bands, tags, profile, mask: bool) -> None:
    import rasterio
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**lr.tags(), **tags)
        ci = []
        for i, b in enumerate(bands, start=1):
            if lr.descriptions[b - 1]:
                dst.set_band_description(i, lr.descriptions[b - 1])
            if lr.units and lr.units[b - 1]:
                dst.set_band_unit(i, lr.units[b - 1])
            dst.update_tags(i, **lr.tags(b))
            ci.append(lr.colorinterp[b - 1])
        try:
            dst.colorinterp = ci
        except Exception:    # a combination GTiff cannot store (e.g. 2 x red): keep defaults
            pass
        if any(s != 1 for s in lr.scales) or any(o != 0 for o in lr.offsets):
            dst.scales = [lr.scales[b - 1] for b in bands]
            dst.offsets = [lr.offsets[b - 1] for b in bands]
        _fill(dst, mask)


def _fill(dst, mask: bool) -> None:
    """Write every block (nodata, else 0; the mask, if any: invalid): GDAL would leave the
    file sparse, and a disk that cannot hold it must fail now, not mid-run."""
    import numpy as np
    from rasterio.windows import Window
    value = dst.nodata if dst.nodata is not None and not np.isnan(dst.nodata) else 0
    band = np.full((dst.count, PARTIAL_BLOCK, dst.width), value, dst.dtypes[0])
    hole = np.zeros((PARTIAL_BLOCK, dst.width), np.uint8)
    for row in range(0, dst.height, PARTIAL_BLOCK):
        h = min(PARTIAL_BLOCK, dst.height - row)
        dst.write(band[:, :h], window=Window(0, row, dst.width, h))
        if mask:
            dst.write_mask(hole[:h], window=Window(0, row, dst.width, h))


def open_update(path: Path):
    import rasterio
    try:
        return rasterio.open(path, "r+")
    except Exception as err:
        raise SceneError(f"cannot reopen the partial output {path} ({err}); it may be damaged: "
                         "start over with --overwrite") from None


def flush(ds):
    """Close (GDAL writes its caches and the TIFF directory) and reopen; fsync the file."""
    path = ds.name
    ds.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return open_update(Path(path))


OVERVIEW_SIDE = 256     # overviews halve the image until its long side is at most this


def overview_factors(width: int, height: int) -> list[int]:
    out, f = [], 2
    while max(width, height) / (f // 2) > OVERVIEW_SIDE and f <= 4096:
        out.append(f)
        f *= 2
    return out


def finish(partial: Path, out: Path, cog: bool) -> Optional[list[str]]:
    """Turn the complete partial file into OUT (atomically); returns COG warnings if any."""
    import rasterio
    from rasterio.enums import Resampling
    if cog:
        from rio_cogeo.cogeo import cog_translate, cog_validate
        from rio_cogeo.profiles import cog_profiles
        tmp = Path(str(out) + ".cog-partial")
        with rasterio.open(partial) as ds:
            levels = len(overview_factors(ds.width, ds.height))
        cog_translate(str(partial), str(tmp), cog_profiles.get("deflate"),
                      overview_resampling="average", overview_level=levels, forward_band_tags=True,
                      forward_ns_tags=True, quiet=True, in_memory=False,
                      config={"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "1"})
        ok, errors, warnings = cog_validate(str(tmp), quiet=True)
        if not ok:
            raise SceneError(f"the COG written to {tmp} does not validate: {errors}")
        os.replace(tmp, out)
        partial.unlink()
        return warnings
    import rasterio.shutil
    tmp = Path(str(out) + ".cog-partial")
    with rasterio.open(partial, "r+") as ds:
        factors = overview_factors(ds.width, ds.height)
        if factors:
            ds.build_overviews(factors, Resampling.average)
    rasterio.shutil.copy(partial, tmp, driver="GTiff", tiled=True, blockxsize=BLOCK,
                         blockysize=BLOCK, compress="deflate", interleave="pixel",
                         BIGTIFF="IF_SAFER", COPY_SRC_OVERVIEWS="YES")
    os.replace(tmp, out)
    partial.unlink()
    return None


def run_tags(settings: dict) -> dict:
    return {"SHARP_REFSR_SCENE": json.dumps(settings, sort_keys=True)}
