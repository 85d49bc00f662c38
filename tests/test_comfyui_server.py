"""A headless ComfyUI server on 127.0.0.1 with the pack installed: /object_info, the example
workflows (validated, and run end to end with tiny stand-in weights), and bad inputs.

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
The Python running pytest must have that ComfyUI version's requirements, including the
comfyui-frontend-package / comfyui-workflow-templates versions its requirements.txt names.

Stand-ins in a temporary base directory: models/diffusion_models/tiny-rs-flux is a diffusers Flux
pipeline folder with a tiny 2-shard transformer (hidden 128), a random CLIP-L text encoder in
transformers format (text_encoder/) and a random 16-channel TAESD-format VAE (vae/); the workflows'
sizes are scaled down 4x and their steps cut to 2. The server is stopped at the end of the module.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from workflow_check import api_twin
from sharp.batch.launch import stop_process
from comfyui_harness import ROOT, skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

# the DS-DiT workflows need the example images in ComfyUI's input folder: tests/test_comfyui_dsdit.py
# the per-family workflows (family_*.json) load stock model files: validated in tests/test_comfyui_families.py
WORKFLOWS = sorted(p for p in glob.glob(os.path.join(ROOT, "example_workflows", "*.json"))
                   if "dsdit" not in os.path.basename(p) and not os.path.basename(p).startswith("family_"))
STANDIN = "tiny-rs-flux"
BROKEN = "broken-rs-flux"


# --- stand-in weights -------------------------------------------------------------------------------

def _write_standins(models: str) -> None:
    from safetensors.torch import save_file

    from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

    folder = os.path.join(models, "diffusion_models", STANDIN)
    # context and pooled sizes of CLIP-L (768), so the stand-in text encoder drives the tiny Flux
    write_diffusers_folder(folder, tiny_diffusers_flux(seed=5, context=768, pooled=768), shards=2)

    os.makedirs(os.path.join(folder, "text_encoder"))
    save_file(_random_clip_l(), os.path.join(folder, "text_encoder", "model.safetensors"))

    import comfyui_harness

    vae_sd = comfyui_harness.random_taesd_state_dict(16)
    os.makedirs(os.path.join(folder, "vae"))
    save_file(vae_sd, os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))

    broken = os.path.join(models, "diffusion_models", BROKEN)
    write_diffusers_folder(broken, tiny_diffusers_flux(seed=6), shards=2)
    victim = os.path.join(broken, "transformer", "diffusion_pytorch_model-00002-of-00002.safetensors")
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) // 2)


def _random_clip_l(seed: int = 0) -> dict:
    """Random CLIP-L text encoder weights in the transformers layout (what diffusers folders hold)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    D, F = 768, 3072
    sd = {"text_model.embeddings.token_embedding.weight": (49408, D),
          "text_model.embeddings.position_embedding.weight": (77, D), "text_projection.weight": (D, D)}
    for i in range(12):
        p = f"text_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{n}.weight"], sd[p + f"self_attn.{n}.bias"] = (D, D), (D,)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = (F, D), (F,)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = (D, F), (D,)
        for n in ("layer_norm1", "layer_norm2"):
            sd[p + f"{n}.weight"], sd[p + f"{n}.bias"] = "ones", "zeros"
    sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"] = "ones", "zeros"
    out = {}
    for k, shape in sd.items():
        if shape == "ones":
            out[k] = torch.ones(D, dtype=torch.float16)
        elif shape == "zeros":
            out[k] = torch.zeros(D, dtype=torch.float16)
        else:
            out[k] = (0.02 * torch.randn(shape, generator=g)).to(torch.float16)
    return out


# --- the server --------------------------------------------------------------------------------------

PACK_FOLDER = "comfyui-sharp"
"""The pack's folder name under custom_nodes (the Templates browser lists its workflows under it)."""


def pack_base(tmp_path_factory, prefix: str) -> str:
    """A fresh ComfyUI base directory with this checkout installed as custom_nodes/comfyui-sharp."""
    base = str(tmp_path_factory.mktemp(prefix))
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(ROOT, os.path.join(base, "custom_nodes", PACK_FOLDER))
    return base


class Server:
    def __init__(self, base: str):
        import comfyui_harness as H

        self.base = base
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", base, "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", "sqlite:///:memory:"]
        if "--disable-assets-autoscan" in open(os.path.join(H.COMFY_DIR, "comfy", "cli_args.py")).read():
            cmd.append("--disable-assets-autoscan")
        self.log_path = os.path.join(base, "server.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=H.COMFY_DIR, stdout=self.log, stderr=subprocess.STDOUT)

    def log_tail(self, n=4000) -> str:
        self.log.flush()
        return open(self.log_path, errors="replace").read()[-n:]

    def wait_ready(self, timeout=180):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.object_info = self.get("/object_info")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI not ready after {timeout} s:\n{self.log_tail()}")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def run(self, prompt, timeout=400):
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
        assert status == 200, f"POST /prompt -> {status}: {json.dumps(body)[:2000]}"
        pid = body["prompt_id"]
        end = time.time() + timeout
        while time.time() < end:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                if hist[pid]["status"].get("status_str") in ("success", "error"):
                    return hist[pid]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {pid} not finished after {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            stop_process(self.proc)
        self.log.close()

    @classmethod
    @contextlib.contextmanager
    def running(cls, base: str):
        """A server on `base`, ready, stopped on exit whatever happens."""
        srv = cls(base)
        try:
            srv.wait_ready()
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def H():
    import comfyui_harness

    comfyui_harness.import_comfy()
    return comfyui_harness


@pytest.fixture(scope="module")
def server(H, tmp_path_factory):
    base = pack_base(tmp_path_factory, "comfy_base")
    _write_standins(os.path.join(base, "models"))
    try:
        with Server.running(base) as srv:
            yield srv
    finally:
        shutil.rmtree(os.path.join(base, "models"), ignore_errors=True)


def _load(path):
    ui = json.load(open(path))
    api = json.load(open(api_twin(path)))
    return ui, api


# --- tests -------------------------------------------------------------------------------------------

def test_pack_loads_in_server(server):
    oi = server.object_info
    for node_id in ("SHARPResolutionPromotion", "SHARPLoadRSFlux", "SHARPSpectrumAnalysis", "SHARPSchedulePreview"):
        assert node_id in oi, f"{node_id} missing from /object_info:\n{server.log_tail()}"
        assert oi[node_id]["category"].startswith("SHARP/")
    assert oi["SHARPLoadRSFlux"]["input"]["required"]["folder"][0] == [BROKEN, STANDIN] or \
        sorted(oi["SHARPLoadRSFlux"]["input"]["required"]["folder"][1].get("options", [])) == [BROKEN, STANDIN]
    if "search_aliases" in server.object_info["KSampler"]:  # ComfyUI >= 0.14: the node search matches these
        assert {"rope", "dype", "yarn", "hires"} <= set(oi["SHARPResolutionPromotion"]["search_aliases"])
        assert {"super resolution", "upscale"} <= set(oi["SHARPDSDiTReferenceSR"]["search_aliases"])
    lines = [line for line in server.log_tail(200000).splitlines() if "comfyui-sharp" in line]
    assert lines and not any("IMPORT FAILED" in line for line in lines), lines


def test_fake_core_definitions_match_server(server):
    """The always-run tests validate workflows against a hand-written core subset: keep it honest."""
    import comfy_api_fake
    import workflow_check as W

    for t, info in comfy_api_fake.CORE_OBJECT_INFO.items():
        real = server.object_info[t]
        ours = [(n, typ, w, bool(o.get("control_after_generate")), r) for n, typ, w, o, r in W.ordered_inputs(info)]
        theirs = [(n, typ, w, bool(o.get("control_after_generate")), r) for n, typ, w, o, r in W.ordered_inputs(real)]
        assert ours == theirs, t
        assert info["output"] == W.outputs_without_later(t, real["output"]), t


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_validates_against_object_info(server, path):
    import workflow_check as W

    ui, api = _load(path)
    oi = server.object_info
    problems = (W.check_ui(ui, oi, path) + W.check_twin(ui, api, oi, path)
                + W.check_api(api, oi, path, skip_value_of=("SHARPLoadRSFlux.folder",)))
    assert problems == []


def _tiny(api: dict) -> dict:
    """The workflow on the stand-ins: 4x smaller images, 2 steps, base resolution 256 px (the node's
    minimum), so the promotion is active (s = 2 at 2048 / 4 = 512 px) as at full size."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        inp, t = node["inputs"], node["class_type"]
        if t == "SHARPLoadRSFlux":
            inp["folder"] = STANDIN
        elif t == "EmptySD3LatentImage":
            inp["width"] = max(64, round(inp["width"] / 64) * 16)
            inp["height"] = max(64, round(inp["height"] / 64) * 16)
        elif t in ("KSampler", "SHARPFluxSigmas"):
            inp["steps"] = 2
        elif t == "SHARPResolutionPromotion":
            inp["base_resolution"] = 256
        elif t == "SHARPSchedulePreview":
            inp["steps"] = 4
    return api


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_api_workflow_runs_end_to_end(H, server, path):
    if H.version_tuple() < (0, 9, 0):
        pytest.skip(f"ComfyUI {H.comfy_version()} detects only full-size Flux from a state dict, so the tiny "
                    "stand-in transformer cannot be loaded there (validation tests above still run)")
    _, api = _load(path)
    prompt = _tiny(api)
    hist = server.run(prompt)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    saves = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert saves
    for nid in saves:
        images = hist["outputs"][nid]["images"]
        assert images, f"SaveImage {nid} produced nothing"
        for img in images:
            assert os.path.isfile(os.path.join(server.base, "output", img.get("subfolder", ""), img["filename"]))
    previews = [nid for nid, n in prompt.items() if n["class_type"] == "PreviewAny"]
    for nid in previews:  # the spectrum table reached the UI
        text = json.dumps(hist["outputs"][nid])
        assert "HF ratio" in text and "sharp" in text


def test_invalid_inputs_come_back_as_node_errors(server):
    _, api = _load(os.path.join(ROOT, "example_workflows", "rsflux_sharp_2048.json"))
    bad = _tiny(api)
    sharp_id = next(nid for nid, n in bad.items() if n["class_type"] == "SHARPResolutionPromotion")
    bad[sharp_id]["inputs"]["method"] = "linear"
    bad[sharp_id]["inputs"]["alpha_s"] = -3.0
    # only the broken branch: ComfyUI rejects the whole prompt with HTTP 400
    only_bad = {nid: n for nid, n in bad.items() if n["class_type"] not in ("SHARPSchedulePreview", "PreviewImage")}
    status, body = server.post("/prompt", {"prompt": only_bad})
    assert status == 400, json.dumps(body)[:2000]
    assert sharp_id in body.get("node_errors", {}), json.dumps(body)[:2000]
    text = json.dumps(body["node_errors"][sharp_id])
    assert "linear" in text and "alpha_s" in text
    # with a valid branch beside it (the schedule preview), ComfyUI queues that and reports the bad one
    status, body = server.post("/prompt", {"prompt": bad})
    assert status == 200 and sharp_id in body.get("node_errors", {})
    unknown = dict(only_bad, **{sharp_id: json.loads(json.dumps(api[sharp_id]))})
    unknown[sharp_id]["inputs"]["model"] = ["999", 0]  # a link to a node that does not exist
    status, body = server.post("/prompt", {"prompt": unknown})
    assert status == 400
    assert server.proc.poll() is None and server.get("/object_info")  # still serving


def test_runtime_error_is_reported_not_fatal(server):
    _, api = _load(os.path.join(ROOT, "example_workflows", "rsflux_sharp_2048.json"))
    prompt = _tiny(api)
    loader = next(nid for nid, n in prompt.items() if n["class_type"] == "SHARPLoadRSFlux")
    prompt[loader]["inputs"]["folder"] = BROKEN  # listed, but a shard is truncated
    hist = server.run(prompt)
    assert hist["status"]["status_str"] == "error"
    text = json.dumps(hist["status"]["messages"])
    assert "00002-of-00002.safetensors" in text
    assert server.proc.poll() is None and server.get("/object_info")


def test_load_dsdit_checkpoint_names(server):
    """The shipped model's earlier ckpt_name (workflows saved before it was shortened) still runs the
    DS-DiT workflow; a name that is in no list is a node error naming the folder, not a crash."""
    _, api = _load(os.path.join(ROOT, "example_workflows", "dsdit_refsr_x4.json"))
    loader = next(nid for nid, n in api.items() if n["class_type"] == "SHARPLoadDSDiT")
    legacy = json.loads(json.dumps(api))
    legacy[loader]["inputs"]["ckpt_name"] = "dsdit_small.safetensors (shipped with SHARP)"
    hist = server.run(legacy)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:2000]
    unknown = json.loads(json.dumps(api))
    unknown[loader]["inputs"]["ckpt_name"] = "no_such_model.safetensors"
    status, body = server.post("/prompt", {"prompt": unknown})
    assert status == 400 and loader in body.get("node_errors", {}), json.dumps(body)[:2000]
    text = json.dumps(body["node_errors"][loader])
    assert "no_such_model.safetensors" in text and "models/dsdit" in text
    assert server.proc.poll() is None
