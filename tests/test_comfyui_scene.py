"""The scene node "DS-DiT Scene SR (GeoTIFF)" queued on a real ComfyUI server (127.0.0.1): a small
LR + Ref GeoTIFF pair in the server's input folder, the shipped model from 'Load DS-DiT', the
preview saved by SaveImage. Checks the output GeoTIFF (grid, COG) and that its pixels are the
library's (sharp.scene.super_resolve_scene on the same files and settings), and the preview.

Opt-in: SHARP_COMFYUI_DIR (tests/comfyui_harness.py), with rasterio and rio-cogeo installed in the
ComfyUI venv (the node's [geo] extra); skipped otherwise, saying which.
"""
from __future__ import annotations

import json
import os

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

rasterio = pytest.importorskip("rasterio", reason="the scene node needs rasterio in the ComfyUI venv "
                                                  "(pip install rasterio rio-cogeo)")
pytest.importorskip("rio_cogeo", reason="the scene node needs rio-cogeo in the ComfyUI venv")

SETTINGS = dict(scale=4, steps=1, tile_size=128, overlap=32, seed=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from scene.scene_helpers import RRSSRD, lr_transform, triplet, write_tif
    from test_comfyui_server import Server, pack_base

    if not (RRSSRD / "val_1st").is_dir():
        pytest.skip(f"RRSSRD test data not found at {RRSSRD}")
    base = pack_base(tmp_path_factory, "comfy_scene_base")
    inp = os.path.join(base, "input")
    os.makedirs(inp)
    lr, _, ref = triplet()
    write_tif(os.path.join(inp, "scene_lr.tif"), lr[:60, :64], lr_transform())
    write_tif(os.path.join(inp, "scene_ref.tif"), ref[:240, :256], lr_transform(0.6))
    with Server.running(base) as srv:
        yield srv


def _shipped(server) -> str:
    spec = server.object_info["SHARPLoadDSDiT"]["input"]["required"]["ckpt_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    return next(o for o in options if o.startswith("shipped:"))


def _prompt(server, output_name="scene_sr.tif", **kw):
    node = dict(model=["1", 0], lr_file="scene_lr.tif", ref_file="scene_ref.tif",
                output_name=output_name, bands="", ref_bands="", resume=False, overwrite=False,
                cog=True, **SETTINGS)
    node.update(kw)
    return {"1": {"class_type": "SHARPLoadDSDiT", "inputs": {"ckpt_name": _shipped(server),
                                                             "path": ""}},
            "2": {"class_type": "SHARPDSDiTSceneSR", "inputs": node},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                        "filename_prefix": "SHARP/scene_preview"}}}


def test_scene_node_writes_the_librarys_geotiff_and_a_preview(server, tmp_path):
    import numpy as np
    from PIL import Image
    from rio_cogeo.cogeo import cog_validate

    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
    from sharp.scene import super_resolve_scene

    assert "SHARPDSDiTSceneSR" in server.object_info
    options = server.object_info["SHARPDSDiTSceneSR"]["input"]["required"]["lr_file"]
    assert "scene_lr.tif" in json.dumps(options)          # the input folder's GeoTIFFs are offered
    hist = server.run(_prompt(server))
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    out = os.path.join(server.base, "output", "scene_sr.tif")
    lr_path = os.path.join(server.base, "input", "scene_lr.tif")
    ok, errors, _ = cog_validate(out, quiet=True)
    assert ok, errors
    with rasterio.open(lr_path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and (dst.width, dst.height) == (256, 240)
        assert dst.transform.almost_equals(src.transform @ src.transform.scale(0.25), 1e-12)
        got = dst.read()
    # the same pixels as the library on the same files and settings (the node adds nothing)
    want_path = tmp_path / "library.tif"
    super_resolve_scene(lr_path, os.path.join(server.base, "input", "scene_ref.tif"), want_path,
                        load_dsdit(DEFAULT_CHECKPOINT), scale=4, steps=1, tile=128, overlap=32,
                        seed=0)
    with rasterio.open(want_path) as ds:
        assert np.array_equal(got, ds.read())
    (img,) = hist["outputs"]["3"]["images"]
    with Image.open(os.path.join(server.base, "output", img.get("subfolder", ""), img["filename"])) as im:
        preview = np.asarray(im.convert("RGB"))
    assert preview.shape == (240, 256, 3)
    # the preview is the output (uint8: / 255), to PNG's 8 bits
    assert np.abs(preview.astype(int) - np.moveaxis(got, 0, -1).astype(int)).max() <= 1


def test_existing_output_is_a_node_error_and_the_server_survives(server):
    hist = server.run(_prompt(server, output_name="exists.tif"))
    assert hist["status"]["status_str"] == "success"
    hist = server.run(_prompt(server, output_name="exists.tif", seed=1))
    assert hist["status"]["status_str"] == "error"
    text = json.dumps(hist["status"])
    assert "exists" in text and "overwrite" in text, text[:2000]
    assert server.proc.poll() is None and server.get("/object_info")
