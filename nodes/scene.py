"""Node "DS-DiT Scene SR (GeoTIFF)": a GeoTIFF scene from ComfyUI's input folder -> a
georeferenced SR GeoTIFF in its output folder, plus a downsampled preview IMAGE.

Thin wrapper over sharp.scene (docs/scene.md): only ComfyUI's folders (file names, never
arbitrary paths), loading the network through model management, the progress bar and cancel
(checked between tiles; the run can be continued with `resume`) are handled here. Tiles run in this process on the connected model.
Needs the [geo] extra (rasterio, rio-cogeo); without it the node says so when run.
"""
from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ._compat import advanced
from .dsdit import DSDIT, SCALES, dsdit_patcher

log = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff")
NO_REF = "(none: LR only)"
PREVIEW_SIDE = 1024


def scene_files() -> list[str]:
    root = folder_paths.get_input_directory()
    try:
        names = sorted(n for n in os.listdir(root) if n.lower().endswith(SUFFIXES)
                       and os.path.isfile(os.path.join(root, n)))
    except OSError:
        names = []
    return names or ["(no .tif in the input folder)"]


def plain_name(name: str, what: str) -> str:
    """A bare file name (no folders, no '..'): the node only reads/writes ComfyUI's folders."""
    name = (name or "").strip()
    if not name or name != os.path.basename(name) or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{what} must be a plain file name in ComfyUI's "
                         f"{'output' if what == 'output_name' else 'input'} folder, got {name!r}")
    return name


def input_file(name: str, what: str) -> str:
    path = os.path.join(folder_paths.get_input_directory(), plain_name(name, what))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {name!r} is not in ComfyUI's input folder: put the "
                                "GeoTIFF there (and refresh)")
    return path


def preview(path: str):
    """[1, h, w, 3] float IMAGE of the output's first bands, at most PREVIEW_SIDE px, each band
    stretched between its 0.1 and 99.9 percentiles (uint8: / 255), nodata black."""
    import numpy as np
    import rasterio
    import torch
    with rasterio.open(path) as ds:
        f = max(1, -(-max(ds.width, ds.height) // PREVIEW_SIDE))
        idx = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
        arr = ds.read(idx, out_shape=(3, max(1, ds.height // f), max(1, ds.width // f)),
                      masked=True)
        dtype = ds.dtypes[0]
    valid = ~np.ma.getmaskarray(arr).any(0)
    data = np.ma.getdata(arr).astype(np.float64)
    if dtype == "uint8":
        img = data / 255.0
    else:
        img = np.zeros_like(data)
        for b in range(3):
            v = data[b][valid]
            lo, hi = np.percentile(v, (0.1, 99.9)) if v.size else (0.0, 1.0)
            img[b] = (data[b] - lo) / max(hi - lo, 1e-12)
    img = np.clip(img, 0, 1) * valid
    return torch.from_numpy(np.moveaxis(img, 0, -1).astype(np.float32))[None]


class DSDiTSceneSR(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPDSDiTSceneSR",
            display_name="DS-DiT Scene SR (GeoTIFF)",
            category="SHARP/DS-DiT",
            description=(
                "Reference-based super-resolution of a whole GeoTIFF scene: the output keeps the LR's "
                "CRS and footprint (transform refined by the scale), data type, nodata and band metadata. "
                "The Ref (any CRS / resolution) is reprojected onto the output grid. Streams by tiles, so "
                "memory does not grow with the scene; a cancelled run continues with 'resume'."
            ),
            inputs=[
                DSDIT.Input("model", tooltip="The DS-DiT network from 'Load DS-DiT'."),
                io.Combo.Input("lr_file", options=scene_files(),
                               tooltip="The LR scene: a GeoTIFF in ComfyUI's input folder."),
                io.Combo.Input("ref_file", options=[NO_REF] + scene_files(), default=NO_REF,
                               tooltip="The reference scene (same place, another date or sensor; "
                                       "any CRS and resolution finer than the LR), in the input "
                                       "folder; none = the LR-only prediction."),
                io.String.Input("output_name", default="refsr_scene.tif",
                                tooltip="File name of the result in ComfyUI's output folder."),
                io.Combo.Input("scale", options=list(SCALES), default=4,
                               tooltip="Upscaling factor: output pixels are the LR's / scale."),
                io.Int.Input("steps", default=0, min=0, max=200,
                             tooltip="Euler steps of the flow sampler per tile; 0 = the checkpoint's "
                                     "recommended steps (1 for the shipped one-step model)."),
                io.String.Input("bands", default="",
                                tooltip="LR bands for R,G,B, e.g. 3,2,1 or red,green,blue; empty = "
                                        "by colour interpretation, else 1,2,3."),
                io.String.Input("ref_bands", default="",
                                tooltip="Ref bands for R,G,B (a panchromatic Ref: 1,1,1); empty = "
                                        "as for the LR."),
                io.Int.Input("tile_size", default=512, min=64, max=4096, step=16,
                             tooltip="Tile size in output pixels; memory depends on this, not on "
                                     "the scene."),
                io.Int.Input("overlap", default=64, min=0, max=1024, step=8,
                             tooltip="Overlap of neighbouring tiles in output pixels, blended."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue a cancelled or interrupted run of the same "
                                         "scene and settings (its journal is checked)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing output file of that name."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Noise seed (no effect at temperature 0, the shipped "
                                     "model's default).", **advanced()),
                io.Boolean.Input("cog", default=True,
                                 tooltip="Write a Cloud-Optimized GeoTIFF (validated); off: a "
                                         "tiled GeoTIFF with overviews.", **advanced()),
            ],
            outputs=[
                io.Image.Output(display_name="preview",
                                tooltip=f"The result downsampled to at most {PREVIEW_SIDE} px."),
                io.String.Output(display_name="path", tooltip="Where the GeoTIFF was written."),
            ],
        )

    @classmethod
    def execute(cls, model, lr_file, ref_file=NO_REF, output_name="refsr_scene.tif", scale=4,
                steps=0, bands="", ref_bands="", tile_size=512, overlap=64, resume=False,
                overwrite=False, seed=0, cog=True) -> io.NodeOutput:
        try:
            from sharp.scene import SceneError, super_resolve_scene
        except ImportError as err:
            raise RuntimeError(f"DS-DiT Scene SR needs the [geo] extra ({err}): pip install "
                               "rasterio rio-cogeo (or 'comfyui-sharp[geo]')") from None
        if int(scale) not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        lr = input_file(lr_file, "lr_file")
        ref = None if ref_file == NO_REF else input_file(ref_file, "ref_file")
        out_dir = folder_paths.get_output_directory()
        os.makedirs(out_dir, exist_ok=True)       # ComfyUI makes it on the first save, as SaveImage does
        out = os.path.join(out_dir, plain_name(output_name, "output_name"))
        bar = comfy.utils.ProgressBar(1)
        stop = []

        def progress(done, total, pixels, seconds):
            bar.update_absolute(done, total)

        def should_stop():
            try:
                comfy.model_management.throw_exception_if_processing_interrupted()
            except Exception as err:     # ComfyUI's cancel: stop between tiles, re-raised below
                stop.append(err)
                return True
            return False

        patcher = dsdit_patcher(model)      # ComfyUI's model management loads the network
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
        model, device = patcher.model, patcher.load_device
        try:
            s = super_resolve_scene(lr, ref, out, model, scale=int(scale), steps=int(steps) or None,
                                    bands=bands.strip() or None, ref_bands=ref_bands.strip() or None,
                                    seed=int(seed), tile=int(tile_size), overlap=int(overlap),
                                    workers=0, resume=bool(resume), overwrite=bool(overwrite),
                                    cog=bool(cog), progress=progress, should_stop=should_stop,
                                    device=str(device))
        except SceneError:
            if stop:
                raise stop[0]
            raise
        log.info("DS-DiT scene: %s (%dx%d), %.3f Mpx/s", out, s["width"], s["height"],
                 s["mpx_per_s"])
        return io.NodeOutput(preview(out), out)
