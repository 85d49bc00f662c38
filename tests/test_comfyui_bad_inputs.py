"""Hostile inputs (tests/bad_inputs.py) against a real ComfyUI server (and, for interruption, ComfyUI in-process).

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
The server's base directory is temporary: models/dsdit holds a good tiny checkpoint and every bad checkpoint
of tests/bad_inputs.py; models/diffusion_models a tiny transformer-only Flux folder and the bad config.json
folders (present at startup). What is asserted: the pack imports with all its nodes, /object_info keeps
answering (also after a bad folder appears while running), every bad prompt fails fast with its message, the
server's peak RSS grows by less than RSS_BOUND over all of them, and the next good prompt succeeds.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import time

import pytest

import bad_inputs as B
from comfyui_harness import ROOT, skip_without_comfyui
from workflow_check import api_twin

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

WORKFLOW = os.path.join(ROOT, "example_workflows", "dsdit_refsr_x4.json")
INPUTS = {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}
GOOD = "good-tiny.safetensors"
RSS_BOUND = 256 << 20
"""Most the server's peak RSS (VmHWM) may grow over all bad checkpoints and arguments (the depth bomb alone
once climbed to a 10 GiB cap, before config fields were bounded: depth 10**7)."""
NODE_IDS = ("SHARPResolutionPromotion", "SHARPLoadRSFlux", "SHARPSpectrumAnalysis", "SHARPSchedulePreview",
            "SHARPLoadDSDiT", "SHARPDSDiTReferenceSR")
SKIPPED_FOLDERS = sorted(k for k, (_, (kind, _)) in B.FOLDERS.items() if kind == "skipped")


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.fixture(scope="module")
def server(H, tmp_path_factory):
    from safetensors.torch import save_file

    from sharp.refsr.checkpoint import read_checkpoint, save_checkpoint
    from refsr.refsr_helpers import TINY, randomised
    from test_bad_inputs import good_folder
    from test_comfyui_server import Server, pack_base

    base = pack_base(tmp_path_factory, "comfy_bad_base")
    os.makedirs(os.path.join(base, "input"))
    for name, src in INPUTS.items():
        shutil.copy(os.path.join(ROOT, "examples", "refsr", src), os.path.join(base, "input", name))
    dsdit = os.path.join(base, "models", "dsdit")
    os.makedirs(dsdit)
    save_checkpoint(os.path.join(dsdit, GOOD), randomised(TINY))
    cfg, state, meta = read_checkpoint(os.path.join(dsdit, GOOD))
    good = (json.loads(meta["dsdit_config"]), meta, state)
    for case, (build, _) in B.CHECKPOINTS.items():
        bad_meta, bad_state = build(*good)
        save_file(bad_state, os.path.join(dsdit, f"{case}.safetensors"), metadata=bad_meta)
    # a safetensors file in input/ (where /upload/image puts anything) that Load DS-DiT must not read
    save_checkpoint(os.path.join(base, "input", "uploaded.safetensors"), randomised(TINY))
    flux = os.path.join(base, "models", "diffusion_models")
    os.makedirs(flux)
    good_folder(os.path.join(flux, "good"))
    for case in SKIPPED_FOLDERS:  # each builder writes "bad": give each its own folder
        scratch = os.path.join(base, "scratch", case)
        os.makedirs(scratch)
        name = B.FOLDERS[case][0](scratch, good_folder)
        os.replace(os.path.join(scratch, name), os.path.join(flux, case))
    with Server.running(base) as srv:
        yield srv


def _api(**sr):
    with open(api_twin(WORKFLOW)) as fh:
        api = json.load(fh)
    api["4"]["inputs"].update(steps=2, **sr)
    return api


def _error(server, api) -> tuple[str, float]:
    """(the prompt's exception messages, seconds it took); the server must still answer afterwards."""
    start = time.time()
    hist = server.run(api)
    took = time.time() - start
    assert hist["status"]["status_str"] == "error", json.dumps(hist["status"])[:2000]
    assert server.proc.poll() is None and server.get("/object_info")
    msgs = [m[1].get("exception_message", "") for m in hist["status"]["messages"]
            if isinstance(m, list) and len(m) > 1 and isinstance(m[1], dict)]
    return " ".join(msgs) or json.dumps(hist["status"]["messages"]), took


def test_pack_imports_with_bad_folders_present(server):
    for node_id in NODE_IDS:
        assert node_id in server.object_info, f"{node_id} missing:\n{server.log_tail()}"
    log = server.log_tail(400000)
    assert not any("IMPORT FAILED" in line for line in log.splitlines() if "comfyui-sharp" in line)
    for case in SKIPPED_FOLDERS:  # each bad folder is named in a warning
        assert re.search(rf"skipping .*{re.escape(case)} in the model list", log), case
    spec = server.get("/object_info/SHARPLoadRSFlux")["SHARPLoadRSFlux"]["input"]["required"]["folder"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert options == ["good"]


def test_bad_folder_added_while_running(server):
    flux = os.path.join(server.base, "models", "diffusion_models")
    scratch = os.path.join(server.base, "scratch", "late")
    os.makedirs(scratch)
    name = B.FOLDERS["flux-config-nested"][0](scratch, __import__("test_bad_inputs").good_folder)
    os.replace(os.path.join(scratch, name), os.path.join(flux, "late-nested"))
    info = server.get("/object_info/SHARPLoadRSFlux")  # was HTTP 500
    spec = info["SHARPLoadRSFlux"]["input"]["required"]["folder"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert "late-nested" not in options and "good" in options
    assert all(n in server.get("/object_info") for n in NODE_IDS)


def test_bad_checkpoints_fail_fast_bounded_memory_then_good_prompt(server):
    assert server.run(_api())["status"]["status_str"] == "success"  # warm up: the baseline includes a good run
    hwm0 = _vm(server.proc.pid, "VmHWM")
    slowest = 0.0
    for case, (_, pattern) in sorted(B.CHECKPOINTS.items()):
        api = _api()
        api["1"]["inputs"]["ckpt_name"] = f"{case}.safetensors"
        text, took = _error(server, api)
        assert re.search(pattern, text), (case, text[:1500])
        assert B.SECRET not in text
        slowest = max(slowest, took)
    grown = _vm(server.proc.pid, "VmHWM") - hwm0
    print(f"peak RSS growth over {len(B.CHECKPOINTS)} bad checkpoints: {grown / 2**20:.1f} MiB; slowest {slowest:.1f} s")
    assert grown < RSS_BOUND
    good = _api()
    good["1"]["inputs"]["ckpt_name"] = GOOD
    assert server.run(good)["status"]["status_str"] == "success"


SERVER_SR = {  # the SR cases a prompt can carry (NaN travels as JSON's NaN extension, which ComfyUI parses)
    "sr-guidance-nan": {"guidance": math.nan},
    "sr-temperature-nan": {"temperature": math.nan},
    "sr-ref-transfer-nan": {"ref_transfer": math.nan},
    "sr-overlap-equals-tile": {"tile_size": 32, "overlap": 32},
    "sr-stride-4px": {"tile_size": 32, "overlap": 28},
}


@pytest.mark.parametrize("case", sorted(SERVER_SR))
def test_bad_sr_arguments_through_server(server, case):
    text, _ = _error(server, _api(**SERVER_SR[case]))
    assert re.search(B.SR_ARGS[case][1], text), text[:1500]
    assert server.run(_api())["status"]["status_str"] == "success"


def test_tiny_lr_through_server(server):
    api = _api()
    api["95"] = {"class_type": "ImageCrop", "inputs": {"image": ["2", 0], "width": 1, "height": 1, "x": 0, "y": 0}}
    api["4"]["inputs"]["lr"] = ["95", 0]
    text, _ = _error(server, api)
    assert "LR is 1x1 px: DS-DiT needs an LR of at least 2x2 px" in text


def test_path_outside_model_folders_through_server(server):
    messages = set()
    for target in (os.path.join(server.base, "input", "uploaded.safetensors"),
                   os.path.join(server.base, "input", "absent.safetensors")):
        api = _api()
        api["1"]["inputs"]["path"] = target
        text, _ = _error(server, api)
        assert "outside ComfyUI's dsdit model folders" in text and "SHARP_ALLOW_ANY_PATH=1" in text
        messages.add(text.replace(target, "PATH"))
    assert len(messages) == 1  # the same answer whether the file exists: no existence oracle
    inside = _api()
    inside["1"]["inputs"]["path"] = os.path.join(server.base, "models", "dsdit", GOOD)
    assert server.run(inside)["status"]["status_str"] == "success"


def test_spectrum_bad_label_through_server(server):
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "sharp_refsr_lr.jpg"}},
           "2": {"class_type": "SHARPSpectrumAnalysis", "inputs": {"images": ["1", 0], "labels": r"$\frac{$",
                                                                   "cutoff": 0.5}},
           "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    text, took = _error(server, api)
    assert "text between $ signs is matplotlib mathtext" in text
    api["2"]["inputs"]["labels"] = "x" * (1 << 20)
    text, took = _error(server, api)
    assert "labels text is 1048576 characters" in text and took < 30
    api["2"]["inputs"]["labels"] = r"$\alpha$"
    assert server.run(api)["status"]["status_str"] == "success"


# --- in-process: interruption inside registration ---------------------------------------------------------

def test_interrupt_lands_inside_registration(H):
    """A cancel during the local block matching (before any tile) stops the node within a second."""
    import comfy.model_management as mm
    import torch

    from refsr.refsr_helpers import TINY_MATCH, randomised

    dsdit = H.pack_module("nodes.dsdit")
    model = randomised(TINY_MATCH, seed=1)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 128, 128, 3, generator=g)
    ref = torch.rand(1, 512, 512, 3, generator=g)
    args = dict(scale=4, steps=2, guidance=1.0, seed=0, tile_size=512, overlap=64, ref_transfer=0.5)
    start = time.time()
    dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, **args)
    full = time.time() - start
    fired = []

    def cancel():
        fired.append(time.time())
        mm.interrupt_current_processing(True)

    timer = threading.Timer(min(0.3, full / 4), cancel)
    start = time.time()
    timer.start()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            dsdit.DSDiTReferenceSR.execute(model=model, lr=lr, ref=ref, **args)
        stopped = time.time()
    finally:
        timer.cancel()
        mm.interrupt_current_processing(False)
    latency = stopped - fired[0]
    print(f"full run {full:.1f} s, interrupt latency {latency:.2f} s")
    assert latency < max(1.0, full / 10)
