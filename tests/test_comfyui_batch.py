"""`python -m sharp batch --launch 2` against real ComfyUI: two servers started by the Ray actors on
this CPU machine (one core each) with the pack installed; the DS-DiT workflow over a 20-row
manifest (the shipped checkpoint, 2 steps) plus one bad row, a server killed mid-run, Ctrl-C and
--resume; a 12-row tiny-Flux SHARP grid (stand-in weights, three sizes).

Opt-in: SHARP_COMFYUI_DIR (see tests/comfyui_harness.py); the launched servers run with this
Python. The batch driver needs Ray, which ComfyUI's environment may lack: it runs as a subprocess
with SHARP_BATCH_PYTHON (default: this Python, if it has Ray; else the test is skipped).
"""
from __future__ import annotations

import collections
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from comfyui_harness import ROOT, skip_without_comfyui

pytestmark = [pytest.mark.comfyui, pytest.mark.slow, skip_without_comfyui]

WORKFLOW = os.path.join(ROOT, "workflows", "api", "dsdit_refsr_x4.json")
SR_STEPS = "DS-DiT Reference SR (x4).steps=2"


def _batch_python() -> str:
    py = os.environ.get("SHARP_BATCH_PYTHON", sys.executable)
    probe = subprocess.run([py, "-c", "import ray"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"{py} has no Ray: set SHARP_BATCH_PYTHON to a Python with comfyui-sharp[scale]")
    return py


@pytest.fixture(scope="module")
def base(H, tmp_path_factory):
    """ComfyUI base directory: custom_nodes/ links this checkout; input/ holds the workflow's default
    images; models/ the tiny-Flux stand-ins."""
    from test_comfyui_server import pack_base

    d = pack_base(tmp_path_factory, "batch_base")
    os.makedirs(os.path.join(d, "input"))
    for name, src in {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}.items():
        shutil.copy(os.path.join(ROOT, "examples", "refsr", src), os.path.join(d, "input", name))
    from test_comfyui_server import _write_standins

    _write_standins(os.path.join(d, "models"))
    return d


def _dsdit_manifest(folder: str) -> str:
    """20 rows: the example LR and its mirror image, seeds 0-19; then one bad row whose LR is a
    600 px image, larger than the 480 px Ref (the node refuses it while running)."""
    from PIL import Image, ImageOps

    lr = os.path.join(ROOT, "examples", "refsr", "lr.jpg")
    ref = os.path.join(ROOT, "examples", "refsr", "ref.jpg")
    with Image.open(lr) as im:
        ImageOps.mirror(im).save(os.path.join(folder, "lr_mirror.png"))
    with Image.open(ref) as im:
        im.resize((600, 600)).save(os.path.join(folder, "too_large.png"))
    path = os.path.join(folder, "dsdit.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "LR (120x120).image", "DS-DiT Reference SR (x4).seed"])
        for i in range(20):
            w.writerow([f"ds{i:02d}", lr if i % 2 == 0 else "lr_mirror.png", i])
        w.writerow(["bad", "too_large.png", 0])
    return path


def _start(py, out, manifest, workflow, base, *extra):
    cmd = [py, "-m", "sharp", "batch", "--workflow", workflow, "--manifest", manifest, "--out", out,
           "--launch", "2", "--comfyui", os.environ["SHARP_COMFYUI_DIR"], "--comfyui-python", sys.executable,
           "--comfyui-base", base, "--no-progress", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    log = open(out + ".log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _log(out):
    return open(out + ".log", errors="replace").read()[-6000:]


def _results(out):
    path = os.path.join(out, "results.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def _server_pids(out, worker):
    """pids of the ComfyUI processes whose output folder is OUT/servers/<worker>/output."""
    needle = os.path.join(out, "servers", worker, "output").encode()
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            if needle in cmd and b"main.py" in cmd:
                pids.append(int(p))
    return pids


def _wait(proc, out, until=None, timeout=900):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return proc.returncode
        if until is not None and until(_results(out)):
            return None
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"batch did not finish in {timeout} s:\n{_log(out)}")


def _ok(records):
    return collections.Counter(r["key"] for r in records if r["status"] == "ok")


def test_dsdit_manifest_two_servers_one_killed(base, tmp_path):
    from PIL import Image

    py = _batch_python()
    manifest = _dsdit_manifest(str(tmp_path))
    out = str(tmp_path / "out")
    proc = _start(py, out, manifest, WORKFLOW, base, "--set", SR_STEPS, "--retries", "2")
    rc = _wait(proc, out, until=lambda recs: len(_ok(recs)) >= 3)
    assert rc is None, f"finished before a server could be killed:\n{_log(out)}"
    (victim,) = _server_pids(out, "w0")
    (other,) = _server_pids(out, "w1")
    if len(os.sched_getaffinity(0)) >= 2:  # each server pinned to its own core
        assert os.sched_getaffinity(victim) == {0} and os.sched_getaffinity(other) == {1}
    os.kill(victim, signal.SIGKILL)  # a crash, mid-run
    rc = _wait(proc, out)
    recs = _results(out)
    keys = [f"ds{i:02d}" for i in range(20)]
    assert _ok(recs) == {k: 1 for k in keys}, _log(out)  # every row exactly once
    (bad,) = [r for r in recs if r["status"] == "failed"]
    assert bad["key"] == "bad" and "larger than the Ref" in bad["message"] and bad["kind"] == "execution"
    assert rc == 1  # some row failed
    for k in keys:
        side = json.load(open(os.path.join(out, "sidecars", f"{k}.json")))
        assert side["comfyui_version"] and side["seeds"] == {"DS-DiT Reference SR (x4).seed": int(k[2:])}
        assert side["sharp_params"]["DS-DiT Reference SR (x4)"]["steps"] == 2
        with Image.open(os.path.join(out, "images", f"{k}_Save-SR_00.png")) as im:
            assert im.size == (480, 480)
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(
        f"{k}_{n}_00.png" for k in keys for n in ("Save-SR", "Save-comparison"))
    server_log = open(os.path.join(out, "servers", "w0", "server.log")).read()
    assert server_log.count("=== start") == 2  # restarted by its actor
    assert not _server_pids(out, "w0") and not _server_pids(out, "w1")  # all stopped at the end
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["rows_ok"] == 20 and set(summary["workers"]) == {"w0", "w1"}
    assert summary["workers"]["w0"]["rows"] >= 1 and summary["workers"]["w1"]["rows"] >= 1


def test_ctrl_c_then_resume_redoes_nothing(base, tmp_path):
    py = _batch_python()
    manifest = _dsdit_manifest(str(tmp_path))
    out = str(tmp_path / "out")
    proc = _start(py, out, manifest, WORKFLOW, base, "--set", SR_STEPS)
    assert _wait(proc, out, until=lambda recs: len(_ok(recs)) >= 4) is None, _log(out)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the driver's process group
    rc = _wait(proc, out, timeout=120)
    assert rc == 130, _log(out)
    first = _results(out)
    done = set(_ok(first))
    assert 4 <= len(done) < 21
    assert {r["status"] for r in first} <= {"ok", "interrupted"}
    assert set(os.listdir(os.path.join(out, "sidecars"))) == {f"{k}.json" for k in done}
    stamps = {k: os.stat(os.path.join(out, "sidecars", f"{k}.json")).st_mtime_ns for k in done}
    assert not _server_pids(out, "w0") and not _server_pids(out, "w1")

    proc = _start(py, out, manifest, WORKFLOW, base, "--set", SR_STEPS, "--resume", "--retries", "0")
    _wait(proc, out)
    second = _results(out)[len(first):]
    assert {r["key"] for r in second if r["status"] == "skipped"} == done
    assert set(_ok(second)) == {f"ds{i:02d}" for i in range(20)} - done  # nothing complete was redone
    assert {k: os.stat(os.path.join(out, "sidecars", f"{k}.json")).st_mtime_ns for k in done} == stamps


def test_tiny_flux_sharp_grid(H, base, tmp_path):
    if H.version_tuple() < (0, 9, 0):
        pytest.skip(f"ComfyUI {H.comfy_version()} cannot load the tiny stand-in transformer (see test_comfyui_server)")
    from PIL import Image

    from test_comfyui_server import STANDIN, _tiny

    py = _batch_python()
    api = _tiny(json.load(open(os.path.join(ROOT, "workflows", "api", "rsflux_sharp_2048.json"))))
    wf = str(tmp_path / "sharp_tiny_api.json")
    json.dump(api, open(wf, "w"))
    (tmp_path / "prompts.txt").write_text("a dense urban district, nadir view\nfarmland with irrigation circles\n")
    grid = str(tmp_path / "grid.jsonl")
    subprocess.run([py, "-m", "sharp", "batch-grid", "--prompts", str(tmp_path / "prompts.txt"),
                    "--sizes", "256x256,512x512,512x384", "--seeds", "0-1", "--out", grid,
                    "--width-key", "EmptySD3LatentImage.width", "--width-key", "SHARPSchedulePreview.width",
                    "--height-key", "EmptySD3LatentImage.height", "--height-key", "SHARPSchedulePreview.height"],
                   cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    out = str(tmp_path / "out")
    rc = _wait(_start(py, out, grid, wf, base), out)
    recs = _results(out)
    rows = [json.loads(line) for line in open(grid)]
    assert len(rows) == 12 and _ok(recs) == {r["id"]: 1 for r in rows}, _log(out)
    assert rc == 0
    for r in rows:
        side = json.load(open(os.path.join(out, "sidecars", f"{r['id']}.json")))
        assert side["sharp_params"]["SHARP Resolution Promotion"]["method"] == "sharp"
        assert side["sharp_params"]["Load RS-FLUX (diffusers folder)"]["folder"] == STANDIN
        assert side["seeds"] == {"RandomNoise.noise_seed": r["RandomNoise.noise_seed"]}
        (save,) = [o for o in side["outputs"] if o["title"] == "SaveImage"]
        with Image.open(os.path.join(out, save["file"])) as im:
            assert im.size == (r["EmptySD3LatentImage.width"], r["EmptySD3LatentImage.height"])
