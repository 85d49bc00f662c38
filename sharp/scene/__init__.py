"""GeoTIFF scenes through DS-DiT reference SR: georeferenced, windowed, resumable, on Ray.

Needs the `[geo]` extra (rasterio, rio-cogeo, ray): pip install 'comfyui-sharp[geo]'.

    from sharp.scene import super_resolve_scene
    summary = super_resolve_scene("LR.tif", "REF.tif", "SR.tif", scale=4, workers=2)
    from sharp.scene import folder_pairs, manifest_pairs, super_resolve_scenes
    summary = super_resolve_scenes(folder_pairs("lr/", "ref/", "sr/"), workers=2, resume=True)

One concern per module: grid (output grid, georeference checks), bands (selection, value
scaling), nodata (hole filling, output mask), windows (windowed reads, Ref reprojection,
writes), plan (tiles and cells), tile (one tile's computation), blend (order-independent
streaming blend), seams (where overlap pieces wait: on disk), pool (in-process / Ray workers),
journal (resume), output (partial file, overviews, COG, rename), run (one scene's stages),
batch (a folder or manifest of scenes on one pool). See docs/scene.md.
"""
from .batch import Pair, folder_pairs, manifest_pairs, super_resolve_scenes
from .errors import SceneError
from .run import super_resolve_scene

__all__ = ["Pair", "SceneError", "folder_pairs", "manifest_pairs", "super_resolve_scene",
           "super_resolve_scenes"]
