"""Our nodes inside a real ComfyUI (in-process, CPU, tiny Flux built with ComfyUI's own classes).

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
"""
from __future__ import annotations

import os

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

EMB = "diffusion_model.pe_embedder"


@pytest.fixture(scope="module")
def base_model(H):
    return H.tiny_flux_patcher(seed=0)


def promote(H, model, **kw):
    res = H.pack_module("nodes.resolution")
    kw.setdefault("base_resolution", 256)  # tiny latents: 512 px = 2x the base length
    return res.ResolutionPromotion.execute(model=model, **kw).result[0]


def record_times(patched):
    """Record t at every embedder call (forward), and the sigma ComfyUI passed to apply_model."""
    import comfy.patcher_extension as pe

    emb = patched.get_model_object(EMB)
    seen_t, seen_sigma = [], []
    orig_forward = emb.forward

    def forward(ids):
        seen_t.append(emb.t)
        return orig_forward(ids)

    emb.forward = forward

    def spy(executor, x, t, *args, **kwargs):
        seen_sigma.append(float(t.max()))
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test-spy", spy)
    return seen_t, seen_sigma


def test_pack_exposes_v3_nodes(H):
    import asyncio

    pack = H.import_pack()
    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    ids = {n.define_schema().node_id for n in nodes}
    assert ids == {"SHARPResolutionPromotion", "SHARPLoadRSFlux", "SHARPSpectrumAnalysis", "SHARPSchedulePreview",
                   "SHARPLoadDSDiT", "SHARPDSDiTReferenceSR", "SHARPFluxSigmas", "SHARPDSDiTSceneSR"}
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack.nodes, "NODE_CLASS_MAPPINGS")
    for n in nodes:
        schema = n.define_schema()
        assert schema.category.startswith("SHARP/")
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        assert os.path.isfile(os.path.join(H.ROOT, "web", "docs", f"{schema.node_id}.md"))


@pytest.mark.parametrize("sampler, scheduler", [("euler", "simple"), ("dpmpp_2m", "beta")])
def test_embedder_sees_sigma_each_step(H, base_model, sampler, scheduler):
    import comfy.samplers

    patched = promote(H, base_model, method="sharp")
    seen_t, seen_sigma = record_times(patched)
    H.sample(patched, latent_hw=(64, 64), steps=5, sampler=sampler, scheduler=scheduler)
    sampling = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, 5)
    smax = float(sampling.sigma_max)
    # one model call per step for these samplers, at the schedule's sigmas (the last, 0, is never seen)
    assert seen_sigma == pytest.approx([float(s) for s in sigmas[:-1]], abs=1e-6)
    assert len(seen_t) >= len(seen_sigma) and len(seen_t) % len(seen_sigma) == 0
    per_call = len(seen_t) // len(seen_sigma)
    assert seen_t[::per_call] == pytest.approx([s / smax for s in seen_sigma], abs=1e-6)
    assert seen_t[0] == pytest.approx(1.0, abs=1e-6)


def test_custom_sigmas_followed(H, base_model):
    import torch

    patched = promote(H, base_model, method="dype", noise_shift="keep")
    seen_t, seen_sigma = record_times(patched)
    sigmas = torch.tensor([0.8, 0.6, 0.3, 0.05, 0.0])  # e.g. an img2img tail
    H.sample(patched, latent_hw=(48, 64), steps=4, sigmas=sigmas)
    assert seen_sigma == pytest.approx([0.8, 0.6, 0.3, 0.05], abs=1e-6)
    assert sorted(set(seen_t), reverse=True) == pytest.approx([0.8, 0.6, 0.3, 0.05], abs=1e-6)


@pytest.mark.parametrize("noise_shift", ["sharp", "keep"])
def test_method_base_bit_identical_to_unpatched(H, base_model, noise_shift):
    import torch

    ref = H.sample(base_model, latent_hw=(64, 48), steps=3, seed=7)
    out = H.sample(promote(H, base_model, method="base", noise_shift=noise_shift), latent_hw=(64, 48), steps=3, seed=7)
    assert torch.equal(ref, out)


def test_unpatched_clone_untouched(H, base_model):
    import torch

    plain = base_model.clone()
    before = H.sample(plain, latent_hw=(64, 64), steps=3, seed=3)
    patched = promote(H, base_model, method="sharp")
    promoted = H.sample(patched, latent_hw=(64, 64), steps=3, seed=3)
    after = H.sample(plain, latent_hw=(64, 64), steps=3, seed=3)
    assert not torch.equal(before, promoted)  # the patch does something above the base size
    assert torch.equal(before, after)
    assert type(plain.model.diffusion_model.pe_embedder).__name__ == "EmbedND"
    assert EMB not in plain.object_patches and EMB not in base_model.object_patches


def test_two_clones_at_different_sizes_do_not_interfere(H, base_model):
    import torch

    a = promote(H, base_model, method="sharp")
    b = promote(H, base_model, method="sharp", alpha_s=2.0)
    assert a.get_model_object(EMB) is not b.get_model_object(EMB)
    a1 = H.sample(a, latent_hw=(64, 64), steps=3, seed=5)
    b1 = H.sample(b, latent_hw=(96, 48), steps=4, seed=6)
    a2 = H.sample(a, latent_hw=(64, 64), steps=3, seed=5)
    b2 = H.sample(b, latent_hw=(96, 48), steps=4, seed=6)
    fresh = H.sample(promote(H, base_model, method="sharp"), latent_hw=(64, 64), steps=3, seed=5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and torch.equal(a1, fresh)


def test_resolution_noise_shift_uses_latent_size(H, base_model):
    import math

    patched = promote(H, base_model, method="base", noise_shift="resolution")
    _, seen_sigma = record_times(patched)
    H.sample(patched, latent_hw=(64, 96), steps=4)
    tokens = (64 * 8) * (96 * 8) / 256  # ComfyUI's ModelSamplingFlux formula, written out
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
    expect = [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1.0, 0.75, 0.5, 0.25)]
    assert seen_sigma == pytest.approx(expect, abs=1e-5)


def test_other_packs_wrapper_still_runs(H, base_model):
    import comfy.patcher_extension as pe

    calls = []
    other = base_model.clone()
    other.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "other-pack",
                               lambda ex, *a, **k: (calls.append(1), ex(*a, **k))[1])
    patched = promote(H, other, method="sharp")
    H.sample(patched, latent_hw=(32, 32), steps=2)
    assert len(calls) == 2


def test_non_flux_model_clear_error(H, base_model):
    import torch

    plain = base_model.clone()
    plain.add_object_patch(EMB, torch.nn.Identity())  # a model whose positional embedder is not Flux-style
    with pytest.raises(ValueError, match="Flux.1"):
        promote(H, plain)


def test_spectrum_node(H):
    import torch

    node = H.pack_module("nodes.spectrum").SpectrumAnalysis
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 64, generator=g), 5, 1, 2).permute(0, 2, 3, 1)
    sharp_img = torch.rand(1, 64, 64, 3, generator=g)
    out = node.execute(images=torch.cat([smooth, sharp_img]), labels="smooth, noisy", cutoff=0.5)
    plot, table = out.result
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= plot.min() and plot.max() <= 1
    lines = table.splitlines()
    assert len(lines) == 3 and lines[1].startswith("smooth") and lines[2].startswith("noisy")
    hf = [float(line.split()[-1]) for line in lines[1:]]
    assert hf[0] < hf[1]  # white noise keeps more high-frequency energy than a blurred image
    with pytest.raises(ValueError, match="labels"):
        node.execute(images=sharp_img, labels="a, b", cutoff=0.5)


def test_schedule_preview_node(H):
    node = H.pack_module("nodes.schedule_preview").SchedulePreview
    img = node.execute(width=3756, height=2560, method="sharp", steps=8).result[0]
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and img.shape[1] > 100
    with pytest.raises(ValueError, match="method"):
        node.execute(width=1024, height=1024, method="nope", steps=8)


def _tiny_lora(seed=0, rank=4):
    """A LoRA on the tiny Flux's img_attn.proj, in the plain `<key>.lora_up/down.weight` format."""
    import torch

    g = torch.Generator().manual_seed(seed)
    H = 128
    key = "diffusion_model.double_blocks.0.img_attn.proj"
    return {f"{key}.lora_up.weight": torch.randn(H, rank, generator=g) * 0.5,
            f"{key}.lora_down.weight": torch.randn(rank, H, generator=g) * 0.5}


@pytest.mark.parametrize("order", ["lora_then_sharp", "sharp_then_lora"])
def test_with_lora(H, base_model, order):
    import comfy.sd
    import torch

    lora = _tiny_lora()
    if order == "lora_then_sharp":
        with_lora, _ = comfy.sd.load_lora_for_models(base_model, None, lora, 1.0, 0)
        patched = promote(H, with_lora, method="sharp")
        reference = promote(H, base_model, method="sharp")
    else:
        reference = promote(H, base_model, method="sharp")
        patched, _ = comfy.sd.load_lora_for_models(reference, None, lora, 1.0, 0)
    assert type(patched.get_model_object(EMB)).__name__ == "RoPEEmbedder"
    seen_t, _ = record_times(patched)
    out = H.sample(patched, latent_hw=(64, 64), steps=3, seed=2)
    ref = H.sample(reference, latent_hw=(64, 64), steps=3, seed=2)
    assert seen_t and seen_t[0] == pytest.approx(1.0)
    assert not torch.equal(out, ref)  # the LoRA is applied on top of the promoted model
    again = H.sample(reference, latent_hw=(64, 64), steps=3, seed=2)
    assert torch.equal(ref, again)  # and it does not leak into the model without it


def test_kontext_reference_latent_not_counted(H, base_model):
    """Flux Kontext reference images (ids index 1) do not change the extent the embedder promotes."""
    import comfy.sample
    import torch

    patched = promote(H, base_model, method="sharp")
    emb = patched.get_model_object(EMB)
    extents = []
    orig = emb.forward

    def spy(ids):
        extents.append((tuple(ids.shape), emb.extents))
        return orig(ids)

    emb.forward = spy
    latent = torch.zeros(1, 16, 64, 48)  # 32 x 24 tokens
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    ref_latent = torch.randn(1, 16, 96, 96, generator=torch.Generator().manual_seed(1))  # 48 x 48 tokens
    pos = H.conditioning(1)
    pos[0][1]["reference_latents"] = [ref_latent]
    out = comfy.sample.sample(patched, noise, 2, 1.0, "euler", "simple", pos, H.conditioning(2), latent,
                              disable_pbar=True, seed=0)
    assert torch.isfinite(out).all()
    assert extents, "the embedder was not called"
    for shape, ext in extents:
        assert shape[1] == 8 + 32 * 24 + 48 * 48  # text + image + reference tokens reached the embedder
        assert ext == {1: 32.0, 2: 24.0}
