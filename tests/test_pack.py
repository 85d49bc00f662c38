"""The node pack without ComfyUI: entry point, schemas, node execute through fakes, pyproject, workflows."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tomllib

import pytest
import torch

import comfy_api_fake as fake
import comfy_fake as cf
import workflow_check as W
from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

ROOT = fake.ROOT
NODE_IDS = {"SHARPResolutionPromotion", "SHARPLoadRSFlux", "SHARPSpectrumAnalysis", "SHARPSchedulePreview",
            "SHARPLoadDSDiT", "SHARPDSDiTReferenceSR", "SHARPFluxSigmas", "SHARPDSDiTSceneSR"}


@pytest.fixture(scope="module")
def object_info(nodes):
    return {**fake.CORE_OBJECT_INFO, **fake.FAMILY_CORE_OBJECT_INFO,
            **{k: fake.object_info(v) for k, v in nodes.items()}}


# --- entry point -------------------------------------------------------------------------------------

def test_root_init_imports_without_comfyui(tmp_path):
    """In a fresh interpreter without ComfyUI: the entry point imports, defines no nodes, loads no torch."""
    code = (
        "import importlib.util as u, sys\n"
        f"root = {ROOT!r}\n"
        "assert u.find_spec('comfy_api') is None\n"
        "s = u.spec_from_file_location('sharp_pack_plain', root + '/__init__.py', submodule_search_locations=[root])\n"
        "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
        "assert not hasattr(m, 'comfy_entrypoint'), 'entrypoint without ComfyUI'\n"
        "assert m.WEB_DIRECTORY == './web'\n"
        "assert 'sharp_pack_plain.nodes' not in sys.modules and 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_entrypoint_lists_v3_nodes(pack, nodes):
    assert set(nodes) == NODE_IDS
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack.nodes, "NODE_CLASS_MAPPINGS")
    assert os.path.isdir(os.path.join(ROOT, pack.WEB_DIRECTORY))


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_schema_tooltips_category_help(nodes, node_id):
    schema = nodes[node_id].define_schema()
    assert schema.category.startswith("SHARP/") and schema.display_name and schema.description
    for inp in schema.inputs:
        assert inp.tooltip and len(inp.tooltip) > 10, f"{node_id}.{inp.id} needs a tooltip"
    help_page = os.path.join(ROOT, "web", "docs", f"{node_id}.md")
    text = open(help_page, encoding="utf-8").read()
    assert text.startswith(f"# {schema.display_name}")
    for inp in schema.inputs:
        if not inp.id.endswith(("_lo", "_hi")):
            assert inp.id in text, f"help page of {node_id} does not mention {inp.id}"


def test_search_aliases_and_category_style(nodes):
    """The words a user types find our nodes (ComfyUI >= 0.14 matches search_aliases); categories follow
    core's snake_case path style (model_patches, not "model patches")."""
    aliases = {nid: n.define_schema().search_aliases for nid, n in nodes.items()}
    words = {w for names in aliases.values() for w in names}
    assert {"super resolution", "upscale", "rope", "resolution", "dype", "yarn", "hires"} <= words
    assert {"super resolution", "upscale"} <= set(aliases["SHARPDSDiTReferenceSR"])
    assert {"rope", "resolution", "dype", "yarn", "hires"} <= set(aliases["SHARPResolutionPromotion"])
    for nid, n in nodes.items():
        category = n.define_schema().category
        assert " " not in category, f"{nid}: category {category!r} has a space"
    assert nodes["SHARPResolutionPromotion"].define_schema().category == "SHARP/model_patches"


def test_resolution_node_defaults_and_advanced(nodes):
    schema = nodes["SHARPResolutionPromotion"].define_schema()
    by_id = {i.id: i for i in schema.inputs}
    assert by_id["method"].options[0] == "sharp" and by_id["method"].default == "sharp"
    assert set(by_id["method"].options) == {"base", "pi", "ntk", "yarn", "dy-ntk", "dype", "sharp"}
    assert by_id["base_resolution"].default == 0 and by_id["base_resolution"].min == 0  # 0 = the family's own
    assert by_id["alpha_s"].default == 4.0
    assert by_id["family"].default == "auto" and by_id["family"].advanced and "Qwen-Image" in by_id["family"].options
    # workflows saved before `family` existed keep their positional widget values
    assert [i.id for i in schema.inputs][:11] == ["model", "method", "base_resolution", "alpha_s", "noise_shift",
                                                  "beta_lo", "beta_hi", "gamma_lo", "gamma_hi", "mscale", "family"]
    assert by_id["noise_shift"].options == ["sharp", "resolution", "keep"]
    assert [by_id[k].default for k in ("beta_lo", "beta_hi", "gamma_lo", "gamma_hi")] == [1.25, 0.75, 16.0, 2.0]
    assert all(by_id[k].advanced for k in ("beta_lo", "beta_hi", "gamma_lo", "gamma_hi", "mscale"))
    assert not any(i.id in ("width", "height") for i in schema.inputs)


# --- execute through the fakes -------------------------------------------------------------------

def _fake_model():
    model = cf.flux_patcher()
    model.model.model_config = object()
    return model


def test_resolution_node_execute(nodes):
    node = nodes["SHARPResolutionPromotion"]
    model = _fake_model()
    patched = node.execute(model=model, method="dype", base_resolution=512, alpha_s=3.0, noise_shift="sharp",
                           beta_lo=2.0, beta_hi=0.5, gamma_lo=8.0, gamma_hi=1.0, mscale=False).result[0]
    emb = patched.get_model_object("diffusion_model.pe_embedder")
    assert emb.method == "dype" and set(emb.base_len.values()) == {32}
    assert emb.params.beta == (2.0, 0.5) and emb.params.gamma == (8.0, 1.0) and emb.params.mscale is False
    assert patched.get_model_object("model_sampling").shift == pytest.approx(1.15)
    assert len(patched.get_wrappers(fake.WrappersMP.APPLY_MODEL, "sharp")) == 1
    assert model.object_patches == {} and model.wrappers == {}
    seen = []
    emb.set_time = lambda t, orig=emb.set_time: (seen.append(t), orig(t))
    patched.sample(torch.zeros(1, 16, 32, 32), torch.tensor([1.0, 0.4, 0.0]))
    assert seen == pytest.approx([1.0, 0.4])
    resolution = node.execute(model=model, noise_shift="resolution").result[0]
    assert len(resolution.get_wrappers(fake.WrappersMP.OUTER_SAMPLE, "sharp")) == 1
    with pytest.raises(ValueError, match="SDXL.*Supported: Flux.1"):
        node.execute(model=cf.FakeModelPatcher(cf.FakeBaseModel(cf.FakeUNet(), cf.OtherSampling())))
    # a workflow saved before the family input (9 widget values): the defaults fill in, as the editor does
    old = node.execute(model, "sharp", 1024, 4.0, "sharp", 1.25, 0.75, 16.0, 2.0, True).result[0]
    assert old.get_model_object("diffusion_model.pe_embedder").base_len == {1: 64.0, 2: 64.0}


def test_spectrum_node_execute(nodes):
    node = nodes["SHARPSpectrumAnalysis"]
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(1, 48, 64, 3, generator=g)
    smooth = torch.nn.functional.avg_pool2d(noisy.permute(0, 3, 1, 2), 7, 1, 3).permute(0, 2, 3, 1)
    plot, table = node.execute(images=torch.cat([smooth, noisy]), labels="blurred", cutoff=0.5).result
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert float(plot.min()) >= 0 and float(plot.max()) <= 1 and float(plot.std()) > 0
    rows = table.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["blurred", "image"] and "64x48" in rows[0]
    assert float(rows[0].split()[-1]) < float(rows[1].split()[-1])
    with pytest.raises(ValueError, match="IMAGE batch"):
        node.execute(images=noisy[0], labels="", cutoff=0.5)


def test_schedule_preview_execute(nodes):
    node = nodes["SHARPSchedulePreview"]
    img = node.execute(width=2048, height=1024, method="yarn", steps=6, base_resolution=1024, alpha_s=4.0).result[0]
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and float(img.std()) > 0
    with pytest.raises(ValueError, match="multiple of 16"):
        node.execute(width=2048, height=2048, method="sharp", steps=4, base_resolution=1000)


def test_loader_execute(nodes, tmp_path):
    node = nodes["SHARPLoadRSFlux"]
    root = tmp_path / "diffusion_models"
    sd = tiny_diffusers_flux(seed=4)
    folder = write_diffusers_folder(str(root / "FLUX-RS"), sd, shards=2)
    os.makedirs(os.path.join(folder, "text_encoder"))
    from safetensors.torch import save_file

    save_file({"text_model.final_layer_norm.weight": torch.ones(4)},
              os.path.join(folder, "text_encoder", "model.safetensors"))
    fake.FolderPaths.roots["diffusion_models"] = [str(tmp_path / "missing"), str(root)]
    fake.FakeSD.calls.clear()
    options = next(i for i in node.define_schema().inputs if i.id == "folder").options
    assert options == ["FLUX-RS"]
    model, clip, vae = node.execute(folder="FLUX-RS", weight_dtype="fp8_e4m3fn_fast").result
    kind, passed_sd, opts = fake.FakeSD.calls[0]
    from sharp import diffusers_flux

    ref = diffusers_flux.convert_transformer(folder)
    assert kind == "model" and set(passed_sd) == set(ref) and all(torch.equal(passed_sd[k], ref[k]) for k in ref)
    assert opts == {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    assert clip == ("CLIP", "stable_diffusion") and vae is None  # CLIP-L alone, no vae/
    with pytest.raises(ValueError, match="no diffusers Flux folder"):
        node.execute(folder="other", weight_dtype="default")
    with pytest.raises(ValueError, match="weight_dtype"):
        node.execute(folder="FLUX-RS", weight_dtype="int4")


# --- pyproject and workflows --------------------------------------------------------------------

def test_pyproject_comfy_registry_fields():
    data = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] and project["description"] and project["license"]
    assert len(project["version"].split(".")) == 3 and all(p.isdigit() for p in project["version"].split("."))
    assert project["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy.get(key), f"[tool.comfy] {key} missing"
    assert comfy["requires-comfyui"].startswith(">=")
    # the registry shows the Icon URL: it points into this repository's main branch, at a file that exists
    icon = comfy["Icon"].split("/main/", 1)[1]
    assert os.path.isfile(os.path.join(ROOT, icon)), f"[tool.comfy] Icon points at {icon}, which is not in the repo"
    from PIL import Image
    with Image.open(os.path.join(ROOT, icon)) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] >= 256
    markers = " ".join(data["tool"]["pytest"]["ini_options"]["markers"])
    assert "comfyui:" in markers and "SHARP_COMFYUI_DIR" in markers


def _workflows():
    files = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
    assert len(files) >= 4
    return files


def test_workflows_listed():
    names = {os.path.basename(f)[:-5] for f in _workflows()}
    assert {"rsflux_sharp_2048", "rsflux_sharp_3744x2560", "method_comparison", "multiscale_sweep",
            "dsdit_refsr_x4"} <= names
    for f in _workflows():
        assert os.path.isfile(W.api_twin(f)), f"{f} has no API twin"


@pytest.mark.parametrize("path", _workflows(), ids=os.path.basename)
def test_workflow_valid(path, object_info):
    ui = json.load(open(path))
    api = json.load(open(W.api_twin(path)))
    problems = (W.check_ui(ui, object_info, path) + W.check_twin(ui, api, object_info, path)
                + W.check_api(api, object_info, path, skip_value_of=("SHARPLoadRSFlux.folder",)))
    assert problems == []
    if os.path.basename(path).startswith("family_"):
        _check_family_workflow(ui, api)
        return
    if "dsdit" in os.path.basename(path):  # DS-DiT: the shipped checkpoint, no download (test_dsdit_nodes.py)
        assert any(n["type"] == "SHARPLoadDSDiT" for n in ui["nodes"])
        return
    loaders = [n for n in ui["nodes"] if n["type"] == "SHARPLoadRSFlux"]
    # RS-FLUX is a folder: no properties.models (the frontend takes entries for files); the Note says where
    assert loaders and not any(n["properties"].get("models") for n in loaders)
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "https://huggingface.co/BxuanZ/FLUX-RS" in note and "models/diffusion_models/FLUX-RS" in note


def _check_family_workflow(ui, api):
    """A per-family workflow: stock loaders with download URLs, one SHARP node on auto detection and the
    family's own base grid, sampled above that grid."""
    from sharp import families

    fam = families.family(ui["extra"]["sharp_family"])
    for n in ui["nodes"]:
        if n["type"] in ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "QuadrupleCLIPLoader") or (
                n["type"] == "VAELoader" and n["widgets_values"] != ["pixel_space"]):
            models = n["properties"]["models"]
            assert {m["name"] for m in models} >= {v for v in n["widgets_values"] if str(v).endswith(".safetensors")}
            assert all(m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"])
                       for m in models)
    sharp_nodes = [n for n in api.values() if n["class_type"] == "SHARPResolutionPromotion"]
    assert len(sharp_nodes) == 1
    inp = sharp_nodes[0]["inputs"]
    assert inp["family"] == "auto" and inp["base_resolution"] == 0 and inp["method"] == "sharp"
    sampling = [n for n in api.values() if n["class_type"] in ("ModelSamplingAuraFlow", "ModelSamplingSD3")]
    if sampling or fam.flux_shift is None:  # a flow shift in the graph or the family's own: nothing to re-shift
        assert inp["noise_shift"] in ("keep", "sharp") and (inp["noise_shift"] == "keep" or fam.flux_shift is None)
    sizes = [(n["inputs"]["width"], n["inputs"]["height"]) for n in api.values() if n["class_type"].startswith("Empty")]
    assert sizes and all(min(w, h) > fam.base_resolution and w % fam.px_per_token == 0 for w, h in sizes)


def test_a_workflow_per_family():
    from sharp import families

    named = {}
    for f in _workflows():
        if os.path.basename(f).startswith("family_"):
            named[json.load(open(f))["extra"]["sharp_family"]] = f
    assert set(named) == {f.name for f in families.FAMILIES}


def test_workflow_contents():
    load = lambda name: json.load(open(W.api_twin(name)))
    sizes = lambda api: {(n["inputs"]["width"], n["inputs"]["height"]) for n in api.values()
                         if n["class_type"] == "EmptySD3LatentImage"}
    assert sizes(load("rsflux_sharp_2048")) == {(2048, 2048)}
    assert sizes(load("rsflux_sharp_3744x2560")) == {(3744, 2560)}  # the paper's "3756x2560" as diffusers samples it
    sweep = load("multiscale_sweep")
    assert sizes(sweep) == {(1024, 1024), (2048, 2048), (3744, 2560)}
    assert sum(n["class_type"] == "SHARPResolutionPromotion" for n in sweep.values()) == 1
    cmp = load("method_comparison")
    methods = sorted(n["inputs"]["method"] for n in cmp.values() if n["class_type"] == "SHARPResolutionPromotion")
    assert methods == ["base", "dype", "sharp", "yarn"]
    assert len({n["inputs"]["noise_seed"] for n in cmp.values() if n["class_type"] == "RandomNoise"}) == 1
    kinds = {n["class_type"] for n in cmp.values()}
    assert {"SHARPSpectrumAnalysis", "SaveImage", "ImageStitch"} <= kinds


def test_checker_catches_broken_workflow(object_info):
    """The validator itself: a wrong widget count, a dangling link and a type mismatch are reported."""
    ui = json.load(open(os.path.join(ROOT, "example_workflows", "rsflux_sharp_2048.json")))
    sigmas = next(n for n in ui["nodes"] if n["type"] == "SHARPFluxSigmas")
    sigmas["widgets_values"].pop()
    ui["links"][0][5] = "LATENT"
    ui["links"].append([999, 1, 0, 12345, 0, "MODEL"])
    problems = W.check_ui(ui, object_info)
    assert any("widget values" in p for p in problems)
    assert any("typed LATENT" in p for p in problems)
    assert any("missing node" in p for p in problems)
