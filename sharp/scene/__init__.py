"""GeoTIFF scenes through DS-DiT reference SR: georeferenced, windowed, resumable, on Ray.

Needs the `[geo]` extra (rasterio, rio-cogeo, ray): pip install 'comfyui-sharp[geo]'.

    from sharp.scene import super_resolve_scene
    summary = super_resolve_scene("LR.tif", "REF.tif", "SR.tif", scale=4, workers=2)

One concern per module: grid (output grid, georeference checks), bands (selection, value
scaling), nodata (hole filling, output mask), windows (windowed reads, Ref reprojection,
writes), plan (tiles and cells), tile (one tile's computation), blend (order-independent
streaming blend), pool (in-process / Ray workers), journal (resume), output (partial file,
overviews, COG, rename), run (the orchestration). See docs/scene.md.
"""
from .errors import SceneError
from .run import super_resolve_scene

__all__ = ["SceneError", "super_resolve_scene"]
