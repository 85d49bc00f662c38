"""The DS-DiT nodes inside a real ComfyUI: in-process execute (ComfyUI's ProgressBar, interruption,
folder_paths, a ComfyUI VAE), then a headless 127.0.0.1 server running the example workflow and bad inputs.

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
DS-DiT runs 2 steps everywhere (CPU). The server's base directory is temporary: custom_nodes/ links
this repository, input/ holds the example triplet under the workflow's names, models/dsdit/ a tiny
random checkpoint and a safetensors file that is not a DS-DiT checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from workflow_check import api_twin
from comfyui_harness import ROOT, skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

WORKFLOW = os.path.join(ROOT, "example_workflows", "dsdit_refsr_x4.json")
INPUTS = {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}


@pytest.fixture(scope="module")
def dsdit(H):
    return H.pack_module("nodes.dsdit")


def _image(name):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(os.path.join(ROOT, "examples", "refsr", name)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255.0)[None]


def _tiny_cfg(**kw):
    from sharp.refsr.config import DSDiTConfig

    base = dict(dim=8, depth=1, heads=1, radius=1, encoder_depth=1, plw_hidden=2)
    base.update(kw)
    return DSDiTConfig(**base)


def _write_tiny(path, cfg):
    from sharp.refsr.checkpoint import save_checkpoint
    from sharp.refsr.model import DSDiT

    save_checkpoint(path, DSDiT(cfg))
    return path


# --- in-process ------------------------------------------------------------------------------------

def test_model_folder_registered(H, dsdit, tmp_path):
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths["dsdit"]
    assert os.path.join(folder_paths.models_dir, "dsdit") in paths and set(exts) == {".safetensors"}
    extra = tmp_path / "extra_dsdit"
    extra.mkdir()
    _write_tiny(str(extra / "mine.safetensors"), _tiny_cfg())
    (extra / "mine.ckpt").write_bytes(b"never listed")
    folder_paths.add_model_folder_path("dsdit", str(extra))  # what extra_model_paths.yaml does
    try:
        options = dsdit.checkpoint_choices()
        assert options[0] == dsdit.SHIPPED and "mine.safetensors" in options and "mine.ckpt" not in options
        model = dsdit.LoadDSDiT.execute(ckpt_name="mine.safetensors", path="").result[0]
        assert model.model.cfg.dim == 8
    finally:
        folder_paths.folder_names_and_paths["dsdit"][0].remove(str(extra))


def test_execute_with_comfy_progress_bar(H, dsdit):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    import torch

    model = dsdit.LoadDSDiT.execute(ckpt_name=dsdit.SHIPPED, path="").result[0]
    assert isinstance(model, comfy.model_patcher.ModelPatcher)   # ComfyUI's model management holds it
    assert model.load_device == mm.get_torch_device() and model.offload_device == mm.unet_offload_device()
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None, **kw):
        seen.append((value, total))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        lr, ref = _image("lr.jpg")[:, :32, :48], _image("ref.jpg")[:, :128, :192]
        out = dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, scale=4, steps=2, guidance=1.0, seed=0,
                                             tile_size=64, overlap=16, temperature=-1.0,
                                             register_ref=True).result[0]
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert out.shape == (1, 128, 192, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # loaded by load_models_gpu: ComfyUI counts it among its loaded models and can unload it for others
    assert any(loaded.model is model for loaded in mm.current_loaded_models)
    assert model.model_size() == sum(t.nbytes for t in model.model.state_dict().values())
    assert seen and seen[-1][0] == seen[-1][1] and seen[-1][1] % 2 == 0 and seen[-1][1] >= 2 * 6  # 2 steps x tiles
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)


def test_interrupt_stops_the_node(H, dsdit):
    import comfy.model_management as mm
    import comfy.utils

    model = dsdit.LoadDSDiT.execute(ckpt_name=dsdit.SHIPPED, path="").result[0]
    seen = []

    def hook(value, total, preview, node_id=None, **kw):
        seen.append(value)
        mm.interrupt_current_processing(True)  # as the UI's cancel button does

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            dsdit.DSDiTReferenceSR.execute(model=model, lr=_image("lr.jpg")[:, :16, :16],
                                           ref=_image("ref.jpg")[:, :64, :64], scale=4, steps=50, guidance=1.0,
                                           seed=0, tile_size=512, overlap=0)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)
    assert seen == [1]


def _random_taesd(channels=16):
    """A ComfyUI VAE (TAESD layout, random weights) built with ComfyUI's own classes."""
    import comfy.sd

    import comfyui_harness

    return comfy.sd.VAE(sd=comfyui_harness.random_taesd_state_dict(channels))


def test_latent_checkpoint_with_comfy_vae(H, dsdit, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARP_ALLOW_ANY_PATH", "1")  # the checkpoint is in tmp_path, outside the model folders
    vae = _random_taesd(16)
    assert vae.latent_channels == 16 and vae.downscale_ratio == 8
    path = _write_tiny(str(tmp_path / "latent.safetensors"),
                       _tiny_cfg(space="latent", latent_channels=16, latent_downscale=8, patch=1, res_scale=1.0))
    model = dsdit.LoadDSDiT.execute(ckpt_name=dsdit.SHIPPED, path=path).result[0]
    lr, ref = _image("lr.jpg")[:, :16, :24], _image("ref.jpg")[:, :64, :96]
    args = dict(scale=4, steps=2, guidance=1.0, seed=0, tile_size=64, overlap=16)
    with pytest.raises(ValueError, match="connect the VAE"):
        dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, **args)
    out = dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, vae=vae, **args).result[0]
    assert out.shape == (1, 64, 96, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    with pytest.raises(ValueError, match="channels"):
        dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, vae=_random_taesd(4), **args)


# --- the server ------------------------------------------------------------------------------------

STANDIN = "tiny-dsdit.safetensors"
NOT_DSDIT = "not-dsdit.safetensors"


@pytest.fixture(scope="module")
def server(H, tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    from test_comfyui_server import Server, pack_base

    base = pack_base(tmp_path_factory, "comfy_dsdit_base")
    os.makedirs(os.path.join(base, "input"))
    for name, src in INPUTS.items():  # what docs/dsdit_nodes.md tells users to do
        shutil.copy(os.path.join(ROOT, "examples", "refsr", src), os.path.join(base, "input", name))
    models = os.path.join(base, "models", "dsdit")
    os.makedirs(models)
    _write_tiny(os.path.join(models, STANDIN), _tiny_cfg())
    save_file({"w": torch.zeros(2)}, os.path.join(models, NOT_DSDIT), metadata={"format": "pt"})
    with Server.running(base) as srv:
        yield srv


def _api():
    with open(api_twin(WORKFLOW)) as fh:
        api = json.load(fh)
    for node in api.values():
        if node["class_type"] == "SHARPDSDiTReferenceSR":
            node["inputs"]["steps"] = 2
    return api


def _sr_id(api):
    return next(nid for nid, n in api.items() if n["class_type"] == "SHARPDSDiTReferenceSR")


def _alive(server):
    assert server.proc.poll() is None and server.get("/object_info")


def test_nodes_in_object_info(server):
    oi = server.object_info
    loader, sr = oi["SHARPLoadDSDiT"], oi["SHARPDSDiTReferenceSR"]
    assert loader["category"] == sr["category"] == "SHARP/DS-DiT"
    assert loader["output"] == ["DSDIT"] and sr["output"] == ["IMAGE"]
    assert sr["input"]["required"]["model"][0] == "DSDIT" and "vae" in sr["input"]["optional"]
    spec = loader["input"]["required"]["ckpt_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert options[0] == "shipped: DS-DiT x4" and STANDIN in options and NOT_DSDIT in options
    lines = [line for line in server.log_tail(200000).splitlines() if "comfyui-sharp" in line]
    assert lines and not any("IMPORT FAILED" in line for line in lines), lines


def test_workflow_validates_against_object_info(server):
    import workflow_check as W

    ui = json.load(open(WORKFLOW))
    api = json.load(open(api_twin(WORKFLOW)))
    oi = server.object_info
    problems = W.check_ui(ui, oi, WORKFLOW) + W.check_twin(ui, api, oi, WORKFLOW) + W.check_api(api, oi, WORKFLOW)
    assert problems == []


def test_workflow_runs(server):
    from PIL import Image

    api = _api()
    hist = server.run(api)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    sizes = {}
    for nid, n in api.items():
        if n["class_type"] == "SaveImage":
            (img,) = hist["outputs"][nid]["images"]
            with Image.open(os.path.join(server.base, "output", img.get("subfolder", ""), img["filename"])) as im:
                sizes[n["inputs"]["filename_prefix"]] = im.size
    assert sizes == {"SHARP/dsdit_sr": (480, 480), "SHARP/dsdit_bicubic_sr_ref": (3 * 480, 480)}


def test_ref_of_other_size_is_resized(server):
    api = _api()
    api["90"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["3", 0], "upscale_method": "bicubic",
                                                          "scale_by": 0.9}}
    api[_sr_id(api)]["inputs"]["ref"] = ["90", 0]
    hist = server.run(api)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    assert "resizing the Ref" in server.log_tail(200000)


def test_invalid_widgets_are_node_errors(server):
    api = _api()
    sr = _sr_id(api)
    api[sr]["inputs"]["steps"] = -1          # 0 is valid: the checkpoint's default
    api[sr]["inputs"]["tile_size"] = 100000
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 400, json.dumps(body)[:2000]
    errors = body.get("node_errors", {})
    assert sr in errors, json.dumps(body)[:2000]
    text = json.dumps(errors[sr])
    assert "steps" in text and "tile_size" in text
    _alive(server)


def _rejected_or_failed(server, api, node_id, needle):
    """Newer ComfyUI validates V3 combo values when the prompt is queued (HTTP 400, node_errors);
    0.3.64 does not, so there the node itself must fail with a clear error at run time."""
    status, body = server.post("/prompt", {"prompt": api, "client_id": "test"})
    if status == 400:
        assert needle in json.dumps(body.get("node_errors", {}).get(node_id, {})), json.dumps(body)[:2000]
    else:
        assert status == 200, json.dumps(body)[:2000]
        pid = body["prompt_id"]
        for _ in range(600):
            hist = server.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("status_str") in ("success", "error"):
                break
            time.sleep(0.5)
        assert hist[pid]["status"]["status_str"] == "error"
        assert needle in json.dumps(hist[pid]["status"]["messages"])
    _alive(server)
    return status


def test_invalid_combo_values(server):
    api = _api()
    sr = _sr_id(api)
    api[sr]["inputs"]["scale"] = 3
    _rejected_or_failed(server, api, sr, "scale")
    api = _api()
    loader = next(nid for nid, n in api.items() if n["class_type"] == "SHARPLoadDSDiT")
    api[loader]["inputs"]["ckpt_name"] = "missing.safetensors"
    _rejected_or_failed(server, api, loader, "missing.safetensors")


def _expect_error(server, api, needle):
    hist = server.run(api)
    assert hist["status"]["status_str"] == "error", json.dumps(hist["status"])[:2000]
    text = json.dumps(hist["status"]["messages"])
    assert needle in text, text[:3000]
    _alive(server)
    return text


def test_runtime_errors_reported_server_survives(server):
    sr = _sr_id(_api())
    swapped = _api()  # LR and Ref swapped
    swapped[sr]["inputs"]["lr"], swapped[sr]["inputs"]["ref"] = ["3", 0], ["2", 0]
    text = _expect_error(server, swapped, "larger than the Ref")
    assert "SHARPDSDiTReferenceSR" in text  # the error is attributed to the node

    batch = _api()  # two LR images, one Ref
    batch["91"] = {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["2", 0]}}
    batch[sr]["inputs"]["lr"] = ["91", 0]
    _expect_error(server, batch, "batch")

    rgba = _api()  # an RGBA LR
    rgba["92"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["2", 0], "alpha": ["2", 1]}}
    rgba[sr]["inputs"]["lr"] = ["92", 0]
    _expect_error(server, rgba, "RGB")

    not_dsdit = _api()
    loader = next(nid for nid, n in not_dsdit.items() if n["class_type"] == "SHARPLoadDSDiT")
    not_dsdit[loader]["inputs"]["ckpt_name"] = NOT_DSDIT
    _expect_error(server, not_dsdit, "not a DS-DiT checkpoint")

    ok = _api()  # the server still runs prompts
    assert server.run(ok)["status"]["status_str"] == "success"
