"""Many scenes in one run (a folder of pairs, a CSV manifest): each output is the single-scene
run's, bad input stops the run before any work, and an interrupted batch resumes scene by scene."""
import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from scene.scene_helpers import RRSSRD, lr_transform, read, triplet, write_tif
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
from sharp.scene import (SceneError, folder_pairs, manifest_pairs, super_resolve_scene,
                         super_resolve_scenes)

pytestmark = pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                                reason=f"RRSSRD test data not found at {RRSSRD}")
ONE = dict(steps=1, cog=False)                       # 240 px scenes: one tile
TILED = dict(steps=1, tile=96, overlap=32, cog=False)  # 16 tiles


@pytest.fixture(scope="module")
def model():
    return load_dsdit(DEFAULT_CHECKPOINT)


def write_scenes(root, names=("a.tif", "b.tif")):
    """LR and Ref folders with one 60 x 60 LR (240 px output) scene per name, each a different
    crop of the triplet."""
    lr, _, ref = triplet()
    (root / "lr").mkdir()
    (root / "ref").mkdir()
    (root / "out").mkdir()
    for k, n in enumerate(names):
        y = 40 * k
        write_tif(root / "lr" / n, lr[y:y + 60, :60], lr_transform())
        write_tif(root / "ref" / n, ref[4 * y:4 * y + 240, :240], lr_transform(0.6))
    return root / "lr", root / "ref", root / "out"


def single(model, lr, ref, out, **kw):
    super_resolve_scene(lr, ref, out, model, **kw)
    return read(out)


def test_folder_and_manifest_give_the_single_scene_outputs(tmp_path, model):
    lr_dir, ref_dir, out_dir = write_scenes(tmp_path)
    r = super_resolve_scenes(folder_pairs(lr_dir, ref_dir, out_dir), model, **ONE)
    assert [s["output"] for s in r["scenes"]] == [str(out_dir / "a.tif"), str(out_dir / "b.tif")]
    for n in ("a.tif", "b.tif"):
        want = single(model, lr_dir / n, ref_dir / n, tmp_path / f"single_{n}", **ONE)
        assert np.array_equal(read(out_dir / n), want), n
    # manifest: relative paths from its folder; b LR-only and without out (-> --out-dir)
    (tmp_path / "m_out").mkdir()
    (tmp_path / "pairs.csv").write_text("lr,ref,out\nlr/a.tif,ref/a.tif,m_out/a_sr.tif\nlr/b.tif,,\n")
    pairs = manifest_pairs(tmp_path / "pairs.csv", out_dir=tmp_path / "m_out")
    assert pairs[1].ref is None and pairs[1].out == tmp_path / "m_out" / "b.tif"
    r = super_resolve_scenes(pairs, model, **ONE)
    assert len(r["scenes"]) == 2 and r["scenes"][1]["ref"] is None
    assert np.array_equal(read(tmp_path / "m_out" / "a_sr.tif"), read(out_dir / "a.tif"))
    lr_only = single(model, lr_dir / "b.tif", None, tmp_path / "single_b_lr_only.tif", **ONE)
    assert np.array_equal(read(tmp_path / "m_out" / "b.tif"), lr_only)
    assert not np.array_equal(lr_only, read(out_dir / "b.tif"))      # the Ref mattered


def test_interrupted_batch_resumes_scene_by_scene(tmp_path, model):
    lr_dir, ref_dir, out_dir = write_scenes(tmp_path)
    want = {n: single(model, lr_dir / n, ref_dir / n, tmp_path / f"single_{n}", **TILED)
            for n in ("a.tif", "b.tif")}
    pairs = folder_pairs(lr_dir, ref_dir, out_dir)
    started, tiles = [], []

    def on_scene(i, n, pair):
        started.append(pair.out.name)

    def progress(done, total, pixels, seconds):
        tiles.append((started[-1], done))

    def stop_in_b():             # cancel after b's 10th tile
        return tiles[-1] == ("b.tif", 10)

    with pytest.raises(SceneError, match="--resume"):
        super_resolve_scenes(pairs, model, on_scene=on_scene, progress=progress,
                             should_stop=stop_in_b, commit_seconds=0, **TILED)
    assert started == ["a.tif", "b.tif"]
    assert np.array_equal(read(out_dir / "a.tif"), want["a.tif"])
    assert not (out_dir / "b.tif").exists() and (out_dir / "b.tif.partial").exists()
    # without --resume: refused before any work, naming the scene; nothing touched
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    with pytest.raises(SceneError, match=r"scene 1 of 2 .*a\.tif.*exists"):
        super_resolve_scenes(pairs, model, **TILED)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    r = super_resolve_scenes(pairs, model, resume=True, **TILED)
    assert r["skipped_done"] == [str(out_dir / "a.tif")] and len(r["scenes"]) == 1
    s = r["scenes"][0]
    assert s["cells_resumed"] > 0 and s["cells_resumed"] + s["cells_written"] == s["cells"]
    assert s["tiles_run"] < s["tiles"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.tif", "b.tif"]
    for n in ("a.tif", "b.tif"):
        assert np.array_equal(read(out_dir / n), want[n]), n
    # everything complete: resume runs nothing
    r = super_resolve_scenes(pairs, model, resume=True, **TILED)
    assert r["scenes"] == [] and len(r["skipped_done"]) == 2


def test_bad_batches_stop_before_any_work(tmp_path, model):
    lr_dir, ref_dir, out_dir = write_scenes(tmp_path)
    (ref_dir / "b.tif").unlink()
    with pytest.raises(SceneError, match=r"1 LR scene\(s\) have no Ref .* b\.tif"):
        folder_pairs(lr_dir, ref_dir, out_dir)
    m = tmp_path / "m.csv"
    m.write_text("low,ref\nlr/a.tif,ref/a.tif\n")
    with pytest.raises(SceneError, match="columns are .*'low'.* want 'lr'"):
        manifest_pairs(m, out_dir)
    m.write_text("lr,ref,out\nlr/a.tif,ref/a.tif,out/x.tif\nlr/a.tif,,out/x.tif\n")
    with pytest.raises(SceneError, match="would both write"):
        manifest_pairs(m)
    m.write_text("lr,out\nlr/a.tif,lr/a.tif\n")
    with pytest.raises(SceneError, match="is one of the inputs"):
        manifest_pairs(m)
    # scene 2's LR is not a raster: scene 1 (valid) is not computed either
    (tmp_path / "notes.tif").write_text("not a raster")
    m.write_text("lr,ref,out\nlr/a.tif,ref/a.tif,out/a.tif\nnotes.tif,,out/n.tif\n")
    with pytest.raises(SceneError, match=r"scene 2 of 2 .*notes\.tif.*nothing was computed"):
        super_resolve_scenes(manifest_pairs(m), model, **ONE)
    assert list(out_dir.iterdir()) == []


def test_cli_modes(tmp_path, capsys):
    from sharp.cli import main
    lr_dir, ref_dir, out_dir = write_scenes(tmp_path, names=("a.tif",))
    assert main(["refsr-scene", "--lr", str(lr_dir / "a.tif"), "--lr-dir", str(lr_dir),
                 "--out-dir", str(out_dir)]) == 2
    assert "got --lr/--out and --lr-dir" in capsys.readouterr().err
    assert main(["refsr-scene", "--lr-dir", str(lr_dir)]) == 2
    assert "--lr-dir needs --out-dir" in capsys.readouterr().err
    assert main(["refsr-scene", "--lr-dir", str(lr_dir), "--ref-dir", str(ref_dir), "--out-dir",
                 str(out_dir), "--workers", "0", "--steps", "1", "--no-cog"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {out_dir / 'a.tif'}" in out and "1 scene(s) written, 0 already complete" in out
    with rasterio.open(out_dir / "a.tif") as ds:
        assert ds.width == 240
