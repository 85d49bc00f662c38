"""SHARP on a tiny model of every RoPE family (sharp.families), built with ComfyUI's own classes,
patched through our node and sampled with comfy.sample.sample on the CPU.

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
Families a checkout does not have (Flux.2, Ovis-Image, Z-Image before 0.14.1) skip with the reason.
"""
from __future__ import annotations

import glob
import os

import pytest

from workflow_check import api_twin
from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

from sharp import families  # noqa: E402

NAMES = [f.name for f in families.FAMILIES]
BASE_TOKENS = 8  # base grid of these tests (base_resolution = 8 positions); the family default is far larger
ABOVE = (12, 6)  # (height, width) in tokens: height above the base grid, width below it
WITHIN = (8, 5)


@pytest.fixture(scope="module")
def built(H):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = H.tiny_family_patcher(name)
        return cache[name]

    return get


def latent_hw(f, tokens):
    per_token = f.px_per_token // f.latent_px
    return tokens[0] * per_token, tokens[1] * per_token


def promote(H, model, f, **kw):
    res = H.pack_module("nodes.resolution")
    kw.setdefault("base_resolution", BASE_TOKENS * f.px_per_token)
    kw.setdefault("noise_shift", "keep")
    return res.ResolutionPromotion.execute(model=model, **kw).result[0]


def path(f):
    return f"diffusion_model.{f.embedder_attr}"


def record(patched, f):
    """Spy on the patched embedder: (ids, output, t) per call, and the sigma of each model call."""
    import comfy.patcher_extension as pe

    emb = patched.get_model_object(path(f))
    calls, sigmas = [], []
    orig = emb.forward

    def forward(ids):
        out = orig(ids)
        calls.append((ids.detach().clone(), out.detach().clone(), emb.t))
        return out

    emb.forward = forward

    def spy(executor, x, t, *args, **kwargs):
        sigmas.append(float(t.max()))
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test-spy", spy)
    return emb, calls, sigmas


STOCK = {"ErnieImage": "ErnieImageEmbedND3"}  # the family's own embedder class, where it is not EmbedND


def by_axis(f, out, axis):
    """The entries of an embedder output that depend on `axis` only (tests/test_families.by_axis: ErnieImage's
    split-half blocks are read back as (cos, sin) per frequency)."""
    from test_families import by_axis as entries

    return entries(f, out, axis)


def channels(f, axis):
    start = sum(d // 2 for d in f.axes_dim[:axis])
    return slice(start, start + f.axes_dim[axis] // 2)


@pytest.mark.parametrize("name", NAMES)
def test_detected_and_base_bit_identical(H, built, name):
    import torch

    f = families.family(name)
    model, ch = built(name)
    patched = promote(H, model, f, method="base", family="auto")
    emb = patched.get_model_object(path(f))
    assert "RoPEEmbedder" in [c.__name__ for c in type(emb).__mro__]
    assert tuple(emb.axes_dim) == f.axes_dim and emb.theta == f.theta
    assert emb.spatial_axes == f.spatial_axes
    ref = H.sample_family(name, model, ch, latent_hw(f, ABOVE), steps=3, seed=7)
    out = H.sample_family(name, patched, ch, latent_hw(f, ABOVE), steps=3, seed=7)
    assert torch.equal(ref, out)
    again = H.sample_family(name, model, ch, latent_hw(f, ABOVE), steps=3, seed=7)
    assert torch.equal(ref, again)  # the unpatched model is untouched afterwards
    assert type(model.get_model_object(path(f))).__name__ == STOCK.get(name, "EmbedND")


@pytest.mark.parametrize("name", NAMES)
def test_sharp_changes_only_spatial_axes_above_the_base_grid(H, built, name):
    import torch

    f = families.family(name)
    model, ch = built(name)
    stock = model.get_model_object(path(f))  # ComfyUI's own EmbedND of this model
    assert type(stock).__name__ == STOCK.get(name, "EmbedND")
    patched = promote(H, model, f, method="sharp")
    emb, calls, _ = record(patched, f)
    H.sample_family(name, patched, ch, latent_hw(f, ABOVE), steps=2)
    assert calls
    height, width = f.spatial_axes
    changed = 0
    for ids, out, _t in calls:
        want = stock(ids)
        # what the model's attention (ComfyUI >= 0.28: comfy-kitchen's fused apply_rope / rms_rope) consumes
        assert out.shape == want.shape and out.dtype == want.dtype and out.stride() == want.stride()
        for axis in range(len(f.axes_dim)):
            if axis != height:  # width (below the base grid) and every non-spatial axis: stock, bit for bit
                assert torch.equal(by_axis(f, out, axis), by_axis(f, want, axis)), axis
        changed += not torch.equal(by_axis(f, out, height), by_axis(f, want, height))
    assert changed > 0
    assert emb.axis_scales() == pytest.approx({height: ABOVE[0] / BASE_TOKENS, width: ABOVE[1] / BASE_TOKENS})

    # within the base grid nothing changes: every embedder call and the sample itself are stock
    within = promote(H, model, f, method="sharp")
    _, calls, _ = record(within, f)
    out = H.sample_family(name, within, ch, latent_hw(f, WITHIN), steps=2, seed=3)
    assert all(torch.equal(o, stock(ids)) for ids, o, _t in calls)
    assert torch.equal(out, H.sample_family(name, model, ch, latent_hw(f, WITHIN), steps=2, seed=3))


@pytest.mark.parametrize("name", NAMES)
def test_time_follows_the_sampler_sigmas(H, built, name):
    import comfy.samplers

    f = families.family(name)
    model, ch = built(name)
    patched = promote(H, model, f, method="sharp")
    _, calls, seen_sigma = record(patched, f)
    H.sample_family(name, patched, ch, latent_hw(f, ABOVE), steps=4, sampler="euler", scheduler="simple")
    sampling = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", 4)
    smax = float(sampling.sigma_max)
    assert seen_sigma == pytest.approx([float(s) for s in sigmas[:-1]], abs=1e-6)
    per_call = len(calls) // len(seen_sigma)
    assert per_call >= 1 and len(calls) == per_call * len(seen_sigma)  # Z-Image / Lumina 2: caption + image calls
    seen_t = [t for _ids, _out, t in calls]
    for i, s in enumerate(seen_sigma):
        assert seen_t[i * per_call:(i + 1) * per_call] == pytest.approx([s / smax] * per_call, abs=1e-6)


def test_kontext_uxo_reference_does_not_count(H, built):
    """Flux Kontext references placed with ref_latents_method "uxo" sit at image index 0 past the image's
    rows/columns; the extents still come from the generated latent."""
    import inspect

    import comfy.ldm.flux.model
    import torch

    if '"uxo"' not in inspect.getsource(comfy.ldm.flux.model):
        pytest.skip("this ComfyUI has no ref_latents_method 'uxo'")
    f = families.family("Flux.1")
    model, ch = built("Flux.1")
    patched = promote(H, model, f, method="sharp")
    emb, calls, _ = record(patched, f)
    pos, neg = H.family_conditioning("Flux.1", 1), H.family_conditioning("Flux.1", 2)
    ref = torch.randn(1, ch, 16, 16, generator=torch.Generator().manual_seed(4))
    for c in (pos, neg):
        c[0][1].update({"reference_latents": [ref], "reference_latents_method": "uxo"})
    h, w = latent_hw(f, ABOVE)
    noise = torch.randn(1, ch, h, w, generator=torch.Generator().manual_seed(0))
    comfy = H.import_comfy()
    comfy.sample.sample(patched, noise, 2, 1.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
                        disable_pbar=True, seed=0)
    ids = calls[0][0]
    own = ids[..., 0] == 0
    assert float(ids[..., 1][own].max()) + 1 > ABOVE[0]  # an extent read from the ids would count the reference
    assert emb.extents == {1: float(ABOVE[0]), 2: float(ABOVE[1])}


def _sample_with(H, patched, name, ch, hw, extra, seed=0):
    import torch

    pos, neg = H.family_conditioning(name, 1), H.family_conditioning(name, 2)
    for c in (pos, neg):
        c[0][1].update(extra)
    noise = torch.randn(1, ch, *hw, generator=torch.Generator().manual_seed(seed))
    comfy = H.import_comfy()
    return comfy.sample.sample(patched, noise, 2, 1.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)


def test_omnigen2_reference_images_and_caption_do_not_count(H, built):
    """OmniGen2 puts each reference image at its own index with rows/cols from 0 and the caption at
    (k, k, k); the patched inner EmbedND gets all of them in one call, the extents come from the latent."""
    import torch

    f = families.family("OmniGen2")
    model, ch = built("OmniGen2")
    patched = promote(H, model, f, method="sharp")
    emb, calls, _ = record(patched, f)
    rh, rw = 2 * 16, 2 * 14  # a reference of 16 x 14 positions, larger than the generated image's width
    ref = torch.randn(1, ch, rh, rw, generator=torch.Generator().manual_seed(4))
    out = _sample_with(H, patched, "OmniGen2", ch, latent_hw(f, ABOVE), {"reference_latents": [ref]})
    assert torch.isfinite(out).all()
    ids = calls[0][0]
    tokens = 8  # family_conditioning's caption
    assert ids.shape[1] == tokens + 16 * 14 + ABOVE[0] * ABOVE[1]  # caption + reference + image, one call
    assert float(ids[..., 1].max()) + 1 == 16 and float(ids[..., 2].max()) + 1 == 14  # the reference's grid
    assert emb.extents == {1: float(ABOVE[0]), 2: float(ABOVE[1])}
    height, width = f.spatial_axes
    stock = model.get_model_object(path(f))
    for ids, o, _t in calls:  # every token of the one call: the width axis (below the base grid) is stock
        assert torch.equal(o[..., channels(f, width), :, :], stock(ids)[..., channels(f, width), :, :])


def test_hidream_e1_image_cond_does_not_count(H, built):
    """HiDream-E1 concatenates the reference latent (concat_latent_image -> image_cond) to the right of
    the generated one: the ids span twice the width, the extents stay the generated latent's."""
    import torch

    f = families.family("HiDream")
    model, ch = built("HiDream")
    patched = promote(H, model, f, method="sharp")
    emb, calls, _ = record(patched, f)
    hw = latent_hw(f, ABOVE)
    cond = torch.randn(1, ch, *hw, generator=torch.Generator().manual_seed(5))
    out = _sample_with(H, patched, "HiDream", ch, hw, {"concat_latent_image": cond})
    assert torch.isfinite(out).all() and tuple(out.shape[-2:]) == hw
    ids = calls[0][0]
    assert float(ids[..., 2].max()) + 1 == 2 * ABOVE[1]  # the ids span twice the width
    assert emb.extents == {1: float(ABOVE[0]), 2: float(ABOVE[1])}


# --- the per-family workflows against a real server's /object_info -----------------------------------

FAMILY_WORKFLOWS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "example_workflows", "family_*.json")))
MODEL_FILE_INPUTS = ("UNETLoader.unet_name", "CLIPLoader.clip_name", "DualCLIPLoader.clip_name1",
                     "DualCLIPLoader.clip_name2", "VAELoader.vae_name", "QuadrupleCLIPLoader.clip_name1",
                     "QuadrupleCLIPLoader.clip_name2", "QuadrupleCLIPLoader.clip_name3",
                     "QuadrupleCLIPLoader.clip_name4")  # the files a user downloads


@pytest.fixture(scope="module")
def family_server(H, tmp_path_factory):
    from test_comfyui_server import Server, pack_base

    base = pack_base(tmp_path_factory, "comfy_family_base")
    with Server.running(base) as srv:
        yield srv


def _needs(H, f):
    have, need = H.version_tuple(), tuple(int(p) for p in f.comfyui.split("."))
    if have < need:
        pytest.skip(f"{f.name} needs ComfyUI >= {f.comfyui}; this is {H.comfy_version()}")


def test_family_core_definitions_match_server(H, family_server):
    """The always-run workflow checks use hand-written definitions of these core nodes: keep them honest."""
    import comfy_api_fake
    import workflow_check as W

    missing = []
    for t, info in comfy_api_fake.FAMILY_CORE_OBJECT_INFO.items():
        real = family_server.object_info.get(t)
        if real is None:
            missing.append(t)
            continue
        key = lambda i: [(n, typ, w, bool(o.get("control_after_generate")), r) for n, typ, w, o, r in W.ordered_inputs(i)]
        assert key(info) == key(real), t
        assert info["output"] == W.outputs_without_later(t, real["output"]), t
    if H.version_tuple() >= (0, 14, 1):
        assert missing == []
    else:  # only the newer families' latent node may be absent
        assert set(missing) <= {"EmptyFlux2LatentImage"}


@pytest.mark.parametrize("path", FAMILY_WORKFLOWS, ids=os.path.basename)
def test_family_workflow_validates_against_object_info(H, family_server, path):
    import json

    import workflow_check as W

    ui = json.load(open(path))
    api = json.load(open(api_twin(path)))
    _needs(H, families.family(ui["extra"]["sharp_family"]))
    oi = family_server.object_info
    problems = (W.check_ui(ui, oi, path) + W.check_twin(ui, api, oi, path)
                + W.check_api(api, oi, path, skip_value_of=MODEL_FILE_INPUTS))
    assert problems == []
    status, body = family_server.post("/prompt", {"prompt": api})  # the server's own validation
    errors = json.dumps(body.get("node_errors", {}))
    assert status == 400 and body.get("node_errors"), errors  # the test server has no model files
    # only the model files are missing on the test server (value_not_in_list on the file inputs)
    for nid, err in body.get("node_errors", {}).items():
        for e in err["errors"]:
            assert e["type"] == "value_not_in_list" and e["extra_info"]["input_name"] in {
                k.split(".")[1] for k in MODEL_FILE_INPUTS}, errors


# --- models SHARP refuses by name (sharp.families.NOT_PATCHABLE) -------------------------------------

UNPATCHABLE_MODULES = {"Ideogram4Transformer2DModel": "ideogram4.model",
                       "HiDreamO1Transformer": "hidream_o1.model", "JoyImageTransformer3DModel": "joyimage.model",
                       "PixDiT_T2I": "pixeldit.model", "PidNet": "pixeldit.pid"}


@pytest.mark.parametrize("cls", sorted(UNPATCHABLE_MODULES))
def test_refused_models_are_comfyuis_own_classes(H, cls):
    import importlib

    assert set(UNPATCHABLE_MODULES) == set(families.NOT_PATCHABLE)
    try:
        module = importlib.import_module(f"comfy.ldm.{UNPATCHABLE_MODULES[cls]}")
    except ImportError:
        pytest.skip(f"ComfyUI {H.comfy_version()} has no comfy.ldm.{UNPATCHABLE_MODULES[cls]}")
    assert isinstance(getattr(module, cls, None), type), cls  # the refusal is keyed on the real class name
