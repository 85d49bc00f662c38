"""Bad input: a clear error before any work, and no output file of any kind left behind."""
import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from scene.scene_helpers import lr_transform, write_tif
from sharp.scene import SceneError, super_resolve_scene
from sharp.refsr.checkpoint import load_dsdit
from sharp.refsr import DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def model():
    return load_dsdit(DEFAULT_CHECKPOINT)


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    lr = write_tif(tmp_path / "lr.tif", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                   lr_transform())
    ref = write_tif(tmp_path / "ref.tif", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                    lr_transform(0.6))
    return lr, ref


def fails(tmp_path, match, lr, ref, model, **kw):
    out = tmp_path / "out" / "sr.tif"
    out.parent.mkdir(exist_ok=True)
    before = set(out.parent.iterdir())
    with pytest.raises(SceneError, match=match):
        super_resolve_scene(lr, ref, out, model, steps=1, **kw)
    assert set(out.parent.iterdir()) == before          # nothing written


def test_not_a_raster(tmp_path, pair, model):
    txt = tmp_path / "notes.tif"
    txt.write_text("not an image")
    fails(tmp_path, "not a raster GDAL can read", txt, pair[1], model)
    fails(tmp_path, "no such file", tmp_path / "missing.tif", pair[1], model)


def test_no_crs_or_transform(tmp_path, pair, model):
    a = np.zeros((16, 16, 3), np.uint8)
    nocrs = write_tif(tmp_path / "nocrs.tif", a, lr_transform(), crs=None)
    fails(tmp_path, "has no CRS", nocrs, pair[1], model)
    from affine import Affine
    notr = write_tif(tmp_path / "notr.tif", a, Affine.identity())
    fails(tmp_path, "no geotransform", notr, pair[1], model)


def test_footprints(tmp_path, pair, model):
    far = write_tif(tmp_path / "far.tif", np.zeros((64, 64, 3), np.uint8),
                    lr_transform(0.6) @ lr_transform(0.6).translation(100000, 0))
    fails(tmp_path, "do not overlap", pair[0], far, model)
    # shifted by 3/4 of the LR's width: 25% covered -> below a 50% minimum, says how much
    from affine import Affine
    t = lr_transform(0.6)
    part = write_tif(tmp_path / "part.tif", np.zeros((64, 64, 3), np.uint8),
                     Affine(t.a, 0, t.c + 0.75 * 16 * 2.4, 0, t.e, t.f))
    fails(tmp_path, r"covers only 25\.0% of the LR footprint", pair[0], part, model,
          min_overlap=0.5)


def test_ref_coarser_than_lr(tmp_path, pair, model):
    coarse = write_tif(tmp_path / "coarse.tif", np.zeros((8, 8, 3), np.uint8), lr_transform(4.8))
    fails(tmp_path, "coarser than the LR", pair[0], coarse, model)


def test_bands(tmp_path, pair, model):
    fails(tmp_path, "band 5 does not exist", pair[0], pair[1], model, bands="5,2,1")
    fails(tmp_path, "band 'nir' does not exist", pair[0], pair[1], model, bands="nir,green,blue")
    fails(tmp_path, "needs 3 bands", pair[0], pair[1], model, bands="1,2")
    fails(tmp_path, "band 4 does not exist", pair[0], pair[1], model, ref_bands="4,4,4")


def test_existing_output_needs_overwrite(tmp_path, pair, model):
    out = tmp_path / "out" / "sr.tif"
    out.parent.mkdir()
    out.write_bytes(b"old")
    with pytest.raises(SceneError, match="--overwrite"):
        super_resolve_scene(pair[0], pair[1], out, model, steps=1)
    assert out.read_bytes() == b"old"
    with pytest.raises(SceneError, match="nothing to resume|already complete"):
        super_resolve_scene(pair[0], pair[1], out, model, steps=1, resume=True)
    super_resolve_scene(pair[0], pair[1], out, model, steps=1, overwrite=True)
    with rasterio.open(out) as ds:
        assert ds.width == 64
