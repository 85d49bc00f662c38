"""Interrupt + resume, and runs that stop on a full disk: the finished file is identical to an
uninterrupted run, every window is written once, and nothing ever looks complete early."""
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from scene.scene_helpers import RRSSRD, lr_transform, masked_tif, read, triplet, write_tif
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
from sharp.scene import SceneError, super_resolve_scene

pytestmark = pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                                reason=f"RRSSRD test data not found at {RRSSRD}")
KW = dict(steps=1, tile=96, overlap=32, cog=False)


@pytest.fixture(scope="module")
def model():
    return load_dsdit(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, model):
    """(lr, ref, pixels of an uninterrupted run): 240 x 240 output, 16 tiles."""
    d = tmp_path_factory.mktemp("scene")
    lr, _, ref = triplet()
    a = write_tif(d / "lr.tif", lr[:60, :60], lr_transform())
    b = write_tif(d / "ref.tif", ref[:240, :240], lr_transform(0.6))
    super_resolve_scene(a, b, d / "full.tif", model, **KW)
    return a, b, read(d / "full.tif")


def journal_cells(path):
    lines = path.read_text().splitlines()
    return [c for line in lines[1:] for c in json.loads(line)["cells"]]


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_interrupt_and_resume(tmp_path, model, scene, how):
    a, b, full = scene
    out = tmp_path / "sr.tif"
    seen = []

    def stop_after_10():       # rows 0 and 1 of the 4 x 4 tiles done: row 0's windows complete
        return len(seen) >= 10

    def progress(done, total, pixels, seconds):
        seen.append(done)
        if how == "ctrl-c" and done == 10:
            raise KeyboardInterrupt

    err = KeyboardInterrupt if how == "ctrl-c" else SceneError
    with pytest.raises(err, match="--resume"):
        super_resolve_scene(a, b, out, model, progress=progress, commit_seconds=0,
                            should_stop=stop_after_10 if how == "cancel" else None, **KW)
    part, jpath = tmp_path / "sr.tif.partial", tmp_path / "sr.tif.refsr-journal"
    assert not out.exists() and part.exists() and jpath.exists()
    first = journal_cells(jpath)
    assert len(first) == len(set(first)) > 0
    with pytest.raises(SceneError, match="differs from the interrupted one in .*steps"):
        super_resolve_scene(a, b, out, model, resume=True, **{**KW, "steps": 2})
    with pytest.raises(SceneError, match="--resume to continue"):
        super_resolve_scene(a, b, out, model, **KW)
    s = super_resolve_scene(a, b, out, model, resume=True, **KW)
    assert s["cells_resumed"] == len(first)
    assert s["cells_resumed"] + s["cells_written"] == s["cells"]     # each window once
    # tiles whose windows are all written are not run again: row 0, and tile (1, 0), whose
    # neighbours (0, 0), (0, 1), (1, 1), (2, 0), (2, 1) had all run (10 tiles: rows 0-1 and two
    # of row 2); the others are (their overlaps with unfinished neighbours were not written),
    # with the same bits
    assert s["tiles_run"] == s["tiles"] - 5
    assert not part.exists() and not jpath.exists()
    assert np.array_equal(read(out), full)


@pytest.mark.parametrize("kind", ["alpha", "mask"])
def test_resume_keeps_alpha_and_mask(tmp_path, model, kind):
    """An LR whose holes are an alpha band / an internal mask, interrupted after 10 of 16
    tiles and resumed: the same pixels, alpha band and mask as an uninterrupted run (the mask
    written before the interruption survives the partial file's flush and reopening)."""
    lr, _, ref = triplet()
    hole = np.zeros((60, 60), bool)
    hole[10:25, 30:50] = True
    a = masked_tif(tmp_path / "lr.tif", lr[:60, :60], lr_transform(), hole, kind)
    b = write_tif(tmp_path / "ref.tif", ref[:240, :240], lr_transform(0.6))
    super_resolve_scene(a, b, tmp_path / "full.tif", model, **KW)
    out = tmp_path / "sr.tif"
    seen = []
    with pytest.raises(SceneError, match="--resume"):
        super_resolve_scene(a, b, out, model, commit_seconds=0,
                            progress=lambda *p: seen.append(p), should_stop=lambda: len(seen) >= 10,
                            **KW)
    super_resolve_scene(a, b, out, model, resume=True, **KW)
    with rasterio.open(tmp_path / "full.tif") as want, rasterio.open(out) as got:
        assert got.count == want.count == (4 if kind == "alpha" else 3)
        assert np.array_equal(got.read(), want.read())
        assert np.array_equal(got.dataset_mask(), want.dataset_mask())
        assert (got.dataset_mask() == 0).sum() == hole.sum() * 16


def cli(args, fsize=None, cwd=None):
    """python -m sharp refsr-scene ..., optionally under RLIMIT_FSIZE: no file can grow past
    `fsize` bytes, a real OS-level write failure like a full disk (EFBIG instead of ENOSPC)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "sharp", "refsr-scene", "--workers", "0",
                           "--steps", "1", *map(str, args)], preexec_fn=limit if fsize else None,
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_disk_full(tmp_path, scene):
    """100 kB: the uncompressed partial file (reserved in full up front) cannot be made: the
    run fails before any work and leaves nothing. 200 kB: the partial fits, the final COG copy
    does not: a clear error, no OUT, the work kept, and --resume only redoes the copy."""
    a, b, _ = scene
    out = tmp_path / "sr.tif"
    r = cli(["--lr", a, "--ref", b, "--out", out], fsize=100_000)
    assert r.returncode == 2 and "cannot create the partial output" in r.stderr, r.stderr
    assert "disk" in r.stderr and list(tmp_path.iterdir()) == []
    r = cli(["--lr", a, "--ref", b, "--out", out], fsize=200_000)
    assert r.returncode == 2 and "writing the final" in r.stderr and "too large" in r.stderr, \
        r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.tif.partial", "sr.tif.refsr-journal"]
    r = cli(["--lr", a, "--ref", b, "--out", out, "--resume"])
    assert r.returncode == 0 and "0 of 1 tiles run" in r.stdout, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.tif"]
    with rasterio.open(out) as ds:
        assert ds.width == 240 and ds.read().std() > 10


def test_killed_driver_resumes(tmp_path, scene):
    """SIGKILL of the running command (no chance to clean up): the journal lists only windows
    that were on disk, and --resume finishes with the uninterrupted run's pixels."""
    import time
    a, b, full = scene
    out = tmp_path / "sr.tif"
    args = ["--lr", a, "--ref", b, "--out", out, "--tile", 96, "--overlap", 32, "--no-cog",
            "--commit-every", 0]
    proc = subprocess.Popen([sys.executable, "-m", "sharp", "refsr-scene", "--workers", "0",
                             "--steps", "1", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    jpath = tmp_path / "sr.tif.refsr-journal"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if jpath.exists() and len(jpath.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not out.exists() and len(journal_cells(jpath)) > 0
    r = cli([*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read(out), full)
