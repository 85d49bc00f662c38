"""The "DS-DiT Scene SR (GeoTIFF)" node without ComfyUI (tests/comfy_api_fake.py): schema,
ComfyUI's input/output folders only, progress, cancel between tiles + resume, the preview."""
import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

import comfy_api_fake as fake
from scene.scene_helpers import RRSSRD, lr_transform, read, triplet, write_tif
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit

pytestmark = pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                                reason=f"RRSSRD test data not found at {RRSSRD}")


@pytest.fixture()
def folders(tmp_path):
    saved = fake.FolderPaths.input_dir, fake.FolderPaths.output_dir
    fake.FolderPaths.input_dir, fake.FolderPaths.output_dir = str(tmp_path / "in"), str(tmp_path / "out")
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    lr, _, ref = triplet()
    write_tif(tmp_path / "in" / "lr.tif", lr[:60, :60], lr_transform())
    write_tif(tmp_path / "in" / "ref.tif", ref[:240, :240], lr_transform(0.6))
    fake.ProgressBar.updates = []
    fake.ModelManagement.checks, fake.ModelManagement.interrupt_after = 0, None
    yield tmp_path
    fake.FolderPaths.input_dir, fake.FolderPaths.output_dir = saved
    fake.ModelManagement.interrupt_after = None


def test_schema(nodes):
    node = nodes["SHARPDSDiTSceneSR"]
    s = node.define_schema()
    assert s.display_name == "DS-DiT Scene SR (GeoTIFF)" and s.category == "SHARP/DS-DiT"
    assert [o.io_type for o in s.outputs] == ["IMAGE", "STRING"]
    assert all(i.tooltip for i in s.inputs)


def test_run_cancel_resume_and_folders(nodes, folders):
    node = nodes["SHARPDSDiTSceneSR"]
    model = load_dsdit(DEFAULT_CHECKPOINT)
    kw = dict(steps=1, tile_size=96, overlap=32, cog=False)
    fake.ModelManagement.interrupt_after = 6                   # cancel during the run
    with pytest.raises(fake.InterruptProcessingException):
        node.execute(model, "lr.tif", "ref.tif", "sr.tif", **kw)
    assert not (folders / "out" / "sr.tif").exists() and (folders / "out" / "sr.tif.partial").exists()
    fake.ModelManagement.interrupt_after = None
    out = node.execute(model, "lr.tif", "ref.tif", "sr.tif", resume=True, **kw)
    image, path = out.result
    assert path == str(folders / "out" / "sr.tif") and image.shape == (1, 240, 240, 3)
    full = read(folders / "out" / "sr.tif")
    assert np.allclose(image[0].numpy(), np.moveaxis(full, 0, -1) / 255.0, atol=1e-6)
    assert fake.ProgressBar.updates[-1][0] == fake.ProgressBar.updates[-1][1]
    for bad in ("../lr.tif", "/etc/passwd", "sub/lr.tif"):
        with pytest.raises(ValueError, match="plain file name"):
            node.execute(model, bad, "ref.tif", "x.tif", **kw)
    with pytest.raises(ValueError, match="plain file name"):
        node.execute(model, "lr.tif", "ref.tif", "../x.tif", **kw)
    with pytest.raises(FileNotFoundError, match="input folder"):
        node.execute(model, "nope.tif", "ref.tif", "x.tif", **kw)
    with pytest.raises(ValueError, match="--overwrite"):
        node.execute(model, "lr.tif", "ref.tif", "sr.tif", **kw)
