"""The example workflows as the Templates browser serves them and the frontend draws them, without a browser
(the same in a real frontend: tests/test_comfyui_frontend.py).

- the templates folder resolves as ComfyUI resolves it, and holds every UI workflow and its thumbnail;
- every workflow opens with its Note; no `properties.models` entry for a folder; saves under SHARP/;
- no two nodes overlap as drawn, with per-node minimum sizes from the slots and widget count (calibrated
  on the frontend's own sizes, see workflow_check.min_body_size);
- the DS-DiT example images reach ComfyUI's input folder, never over a user's file.
"""
from __future__ import annotations

import glob
import json
import os

import pytest
from PIL import Image

import comfy_api_fake as fake
import workflow_check as W

ROOT = fake.ROOT
WORKFLOWS = sorted(glob.glob(os.path.join(W.UI_DIR, "*.json")))
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def _load(path):
    return json.load(open(path))


def test_templates_folder_resolves_as_comfyui_does():
    folder = W.template_folder(ROOT)
    assert folder == W.UI_DIR, f"ComfyUI would serve templates from {folder}, not {W.UI_DIR}"
    # ComfyUI lists */<folder>/*.json of every candidate folder but serves only the first: nothing elsewhere
    for name in W.TEMPLATE_FOLDERS[1:]:
        assert not glob.glob(os.path.join(ROOT, name, "*.json")), f"{name}/ has workflow JSON ComfyUI would not serve"
    assert len(WORKFLOWS) >= 16


def test_template_folder_choice_follows_comfyui_order(tmp_path):
    """The resolver itself: the first existing folder in ComfyUI's order wins, whatever else exists."""
    assert W.template_folder(str(tmp_path)) is None
    (tmp_path / "workflows").mkdir()
    (tmp_path / "examples").mkdir()
    assert W.template_folder(str(tmp_path)) == str(tmp_path / "examples")
    (tmp_path / "example_workflows").mkdir()
    assert W.template_folder(str(tmp_path)) == str(tmp_path / "example_workflows")


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_thumbnail_beside_template(path):
    jpg = path[:-5] + ".jpg"
    assert os.path.isfile(jpg), f"{os.path.basename(jpg)} missing (python tools/workflow_thumbnails.py)"
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and min(im.size) >= 256
        rgb = im.convert("L")
        lo, hi = rgb.getextrema()
        assert hi - lo > 64, f"{os.path.basename(jpg)} is blank"


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_opens_with_its_note(path):
    wf = _load(path)
    notes = [n for n in wf["nodes"] if n["type"] in W.VIRTUAL_NODES]
    assert len(notes) == 1, "one Note per workflow"
    note, others = notes[0], [n for n in wf["nodes"] if n not in notes]
    text = note["widgets_values"][0]
    for part in ("WHAT IT SHOWS", "MODELS", "CHANGE FIRST", "COST"):
        assert part in text, f"the Note lacks {part}"
    # first thing one sees: top-left of the graph
    assert note["pos"][0] <= min(n["pos"][0] for n in others) and note["pos"][1] <= min(n["pos"][1] for n in others)
    for n in others:  # every model file the graph loads is named in the Note, with its folder
        for m in n.get("properties", {}).get("models", []):
            assert m["name"] in text and f"models/{m['directory']}" in text


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_models_entries_are_files_and_saves_go_under_sharp(path):
    wf = _load(path)
    for n in wf["nodes"]:
        for m in n.get("properties", {}).get("models", []):
            assert m["name"].endswith(MODEL_SUFFIXES), f"node {n['id']}: models entry {m['name']!r} is not a file"
            assert m["url"].startswith("https://") and m["directory"]
        if n["type"] == "SaveImage":
            assert n["widgets_values"][0].startswith("SHARP/"), n["widgets_values"]
    api = _load(W.api_twin(path))
    for node in api.values():
        if node["class_type"] == "SaveImage":
            assert node["inputs"]["filename_prefix"].startswith("SHARP/")


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_no_overlap_as_drawn(path):
    assert W.check_layout(_load(path), os.path.basename(path)) == []


def test_layout_check_sees_what_the_frontend_draws():
    """A node saved smaller than its widgets is drawn taller: the check must use the drawn height
    (the issue's case: promotion nodes 274 px tall placed 300 px apart, title bars included)."""
    promo = {"type": "SHARPResolutionPromotion", "pos": [0, 0], "size": [320, 160], "inputs": [{"name": "model", "link": 1}],
             "outputs": [{"name": "MODEL"}], "widgets_values": ["sharp", 0, 4.0, "sharp", 1.25, 0.75, 16.0, 2.0, True, "auto"]}
    assert W.min_body_size(promo)[1] == 274  # measured in Chromium, frontend 1.39.14 and 1.49.6
    below = dict(promo, pos=[0, 300])
    assert W.overlaps({1: W.drawn_rect(promo), 2: W.drawn_rect(below)}) == [(1, 2)]
    assert W.overlaps({1: W.drawn_rect(promo), 2: W.drawn_rect(dict(promo, pos=[0, 310]))}) == []
    for typ, values, links, outs, h in (("KSampler", [42, "fixed", 28, 1.0, "euler", "simple", 1.0], 4, 1, 262),
                                        ("VAEDecode", [], 2, 1, 46), ("SHARPLoadRSFlux", ["FLUX-RS", "default"], 0, 3, 122),
                                        ("SHARPDSDiTReferenceSR", [4, 20, 1.0, 0, "fixed", 512, 64, -1.0, True, -1.0], 4, 1, 334)):
        node = {"type": typ, "inputs": [{"name": str(i), "link": i} for i in range(links)],
                "outputs": [{"name": str(i)} for i in range(outs)], "widgets_values": values}
        assert W.min_body_size(node)[1] == h, typ


def test_rsflux_workflows_use_the_authors_schedule_and_sizes():
    for name in ("rsflux_sharp_2048", "rsflux_sharp_3744x2560", "multiscale_sweep", "method_comparison"):
        api = _load(W.api_twin(name))
        kinds = [n["class_type"] for n in api.values()]
        assert "KSampler" not in kinds and "SamplerCustomAdvanced" in kinds, name
        sig = [n for n in api.values() if n["class_type"] == "SHARPFluxSigmas"]
        assert len(sig) == 1 and sig[0]["inputs"]["shift"] == "fixed" and sig[0]["inputs"]["mu"] == 1.15
        assert sig[0]["inputs"]["steps"] == 28
        for n in api.values():
            if n["class_type"] == "SamplerCustomAdvanced":
                assert api[n["inputs"]["sigmas"][0]]["class_type"] == "SHARPFluxSigmas"
                assert api[n["inputs"]["sampler"][0]]["inputs"]["sampler_name"] == "euler"
            if n["class_type"] == "EmptySD3LatentImage":  # what the authors' pipeline samples: multiples of 16
                assert n["inputs"]["width"] % 16 == 0 and n["inputs"]["height"] % 16 == 0


def test_dsdit_example_inputs_installed_once_never_over_user_files(pack, tmp_path):
    dsdit = __import__(f"{fake.PACK}.nodes.dsdit", fromlist=["install_example_inputs"])
    fake.FolderPaths.input_dir = str(tmp_path / "input")
    try:
        copied = dsdit.install_example_inputs()
        assert sorted(os.path.basename(p) for p in copied) == ["sharp_refsr_lr.jpg", "sharp_refsr_ref.jpg"]
        lr = tmp_path / "input" / "sharp_refsr_lr.jpg"
        assert lr.read_bytes() == open(os.path.join(ROOT, "examples", "refsr", "lr.jpg"), "rb").read()
        lr.write_bytes(b"the user's own file")
        (tmp_path / "input" / "sharp_refsr_ref.jpg").unlink()
        assert [os.path.basename(p) for p in dsdit.install_example_inputs()] == ["sharp_refsr_ref.jpg"]
        assert lr.read_bytes() == b"the user's own file"
        fake.FolderPaths.input_dir = str(tmp_path / "a_file")
        (tmp_path / "a_file").write_text("not a folder")
        assert dsdit.install_example_inputs() == []  # logged, not raised
    finally:
        fake.FolderPaths.input_dir = None
    wf = _load(os.path.join(W.UI_DIR, "dsdit_refsr_x4.json"))
    names = {n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage"}
    assert names == set(dsdit.EXAMPLE_INPUTS)
