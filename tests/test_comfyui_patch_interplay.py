"""Our promotion beside what newer ComfyUI does around the RoPE embedder (read from the 0.28 / 0.33 source):
Flux's ref_latents_method "index_timestep_zero", ScaleROPE's rope_options (now also on reference latents),
attn1_patch hooks that may replace pe, MultiGPU deep clones, Chroma Radiance's sequential text ids.

Tiny models from ComfyUI's own classes, sampled on the CPU. Opt-in: SHARP_COMFYUI_DIR (tests/comfyui_harness.py);
each test skips on a ComfyUI that lacks the feature, naming it.
"""
from __future__ import annotations

import inspect

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

from sharp import families  # noqa: E402
from sharp import promotion as P  # noqa: E402

BASE_TOKENS = 8
ABOVE = (12, 6)  # tokens (height above the base grid, width below it)
PATH = "diffusion_model.pe_embedder"


def promote(H, model, f, **kw):
    res = H.pack_module("nodes.resolution")
    kw.setdefault("base_resolution", BASE_TOKENS * f.px_per_token)
    kw.setdefault("noise_shift", "keep")
    kw.setdefault("method", "sharp")
    return res.ResolutionPromotion.execute(model=model, **kw).result[0]


def spy(patched, path=PATH):
    """(embedder, calls): each call's (ids, output, t, extents) of the embedder the model runs with."""
    emb = patched.get_model_object(path)
    calls = []
    orig = emb.forward

    def forward(ids):
        out = orig(ids)
        calls.append((ids.detach().clone(), out.detach().clone(), emb.t, emb.extents))
        return out

    emb.forward = forward
    return emb, calls


def sigma_spy(patched):
    import comfy.patcher_extension as pe

    sigmas = []

    def wrapper(executor, x, t, *args, **kwargs):
        sigmas.append(t.detach().clone())
        return executor(x, t, *args, **kwargs)

    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test-sigma-spy", wrapper)
    return sigmas


def run(H, patched, name, ch, hw, extra=None, steps=3, seed=0, batch=1, cfg=1.0):
    import torch

    pos, neg = H.family_conditioning(name, 1), H.family_conditioning(name, 2)
    for c in (pos, neg):
        c[0][1].update(extra or {})
    noise = torch.randn(batch, ch, *hw, generator=torch.Generator().manual_seed(seed))
    comfy = H.import_comfy()
    return comfy.sample.sample(patched, noise, steps, cfg, "euler", "simple", pos, neg, torch.zeros_like(noise),
                               disable_pbar=True, seed=seed)


@pytest.fixture(scope="module")
def flux(H):
    return H.tiny_family_patcher("Flux.1")


def _hw(tokens, f=None):
    f = f or families.family("Flux.1")
    per = f.px_per_token // f.latent_px
    return tokens[0] * per, tokens[1] * per


def test_index_timestep_zero_time_is_the_generated_images_sigma(H):
    """ref_latents_method "index_timestep_zero" runs the model with cat([timestep, 0 * timestep]); the
    embedder's t is still sigma / sigma_max of the generated image at every step, for every row of a batch."""
    import comfy.ldm.flux.model
    import torch

    if '"index_timestep_zero"' not in inspect.getsource(comfy.ldm.flux.model):
        pytest.skip(f"ComfyUI {H.comfy_version()}'s Flux has no ref_latents_method 'index_timestep_zero'")
    model, ch = H.tiny_family_patcher("Flux.2")  # the Flux.2 (Klein) edit models use it; Flux.1's guidance cannot
    f = families.family("Flux.2")
    patched = promote(H, model, f)
    emb, calls = spy(patched)
    sigmas = sigma_spy(patched)
    timesteps = []
    hook = model.model.diffusion_model.time_in.register_forward_pre_hook(lambda m, a: timesteps.append(a[0].shape[0]))
    ref = torch.randn(1, ch, 4, 4, generator=torch.Generator().manual_seed(4))
    try:
        out = run(H, patched, "Flux.2", ch, _hw(ABOVE, f), {"reference_latents": [ref],
                                                           "reference_latents_method": "index_timestep_zero"},
                  steps=4, batch=2)
    finally:
        hook.remove()
    assert torch.isfinite(out).all()
    assert timesteps and all(n == 2 * 2 for n in timesteps)  # the model really ran with the doubled timestep
    smax = float(patched.get_model_object("model_sampling").sigma_max)
    assert len(calls) == len(sigmas) == 4
    for (_ids, _out, t, extents), sigma in zip(calls, sigmas):
        assert sigma.shape == (2,) and float(sigma.min()) == float(sigma.max()) > 0
        assert t == pytest.approx(float(sigma[0]) / smax, abs=1e-7)
        assert extents == {1: float(ABOVE[0]), 2: float(ABOVE[1])}  # the reference (index 1) does not count
    assert [t for *_x, t, _e in calls] == sorted([t for *_x, t, _e in calls], reverse=True)


def test_scale_rope_options_give_the_extent_and_apply_to_references(H, flux):
    """ScaleROPE (rope_options) rescales the generated image's and (0.28+) the references' ids; SHARP's
    extent is the span of the scaled positions; `base` stays bit-identical to stock with the same options."""
    import torch

    model, ch = flux
    if not hasattr(model, "set_model_rope_options"):
        pytest.skip(f"ComfyUI {H.comfy_version()} has no rope_options (ScaleROPE)")
    f = families.family("Flux.1")
    scaled = model.clone()
    scaled.set_model_rope_options(0.5, 0.0, 0.75, 2.0, 1.0, 0.0)  # scale_x, shift_x, scale_y, shift_y, scale_t, shift_t
    ref = torch.randn(1, ch, 8, 8, generator=torch.Generator().manual_seed(4))
    extra = {"reference_latents": [ref], "reference_latents_method": "offset"}
    base = promote(H, scaled, f, method="base")
    assert torch.equal(run(H, base, "Flux.1", ch, _hw(ABOVE), extra), run(H, scaled, "Flux.1", ch, _hw(ABOVE), extra))

    patched = promote(H, scaled, f)
    emb, calls = spy(patched)
    run(H, patched, "Flux.1", ch, _hw(ABOVE), extra, steps=2)
    img = calls[0][0][0, 8:]  # after family_conditioning's 8 text tokens
    own = img[:, 0] == 0
    rows = img[own, 1]
    assert float(rows.min()) == 2.0 and float(rows.max()) == pytest.approx(2.0 + (ABOVE[0] - 1) * 0.75)
    want = {1: (ABOVE[0] - 1) * 0.75 + 1, 2: (ABOVE[1] - 1) * 0.5 + 1}
    assert calls[0][3] == pytest.approx(want)
    refs = img[~own]
    ref_cols = torch.unique(refs[:, 2])
    if H.version_tuple() >= (0, 28, 0):  # references get the rope_options too
        assert float(ref_cols[1] - ref_cols[0]) == pytest.approx(0.5)


def _stock_pe(model, ids):
    return model.get_model_object(PATH)(ids)


def test_attn1_patch_gets_our_pe_and_may_replace_it(H, flux):
    """attn1_patch hooks (Flux blocks, 0.28+) receive pe and may return another one: they get ours; a
    replacement (returned, or written into pe in place) is what attention uses, and never leaks into the
    embedder's next output."""
    import comfy.ldm.flux.layers
    import torch

    if "attn1_patch" not in inspect.getsource(comfy.ldm.flux.layers):
        pytest.skip(f"ComfyUI {H.comfy_version()}'s Flux blocks have no attn1_patch")
    model, ch = flux
    f = families.family("Flux.1")
    seen = []

    def observe(q, k, v, pe=None, attn_mask=None, extra_options=None):
        seen.append(pe.detach().clone())
        return {}

    patched = promote(H, model, f)
    patched.set_model_attn1_patch(observe)
    emb, calls = spy(patched)
    run(H, patched, "Flux.1", ch, _hw(ABOVE), steps=2)
    assert len(calls) == 2 and len(seen) == 2 * len(calls)  # a double and a single block per step
    for i, pe in enumerate(seen):
        assert torch.equal(pe, calls[i // 2][1])

    def to_stock(in_place):
        def patch(q, k, v, pe=None, attn_mask=None, extra_options=None):
            stock = _stock_pe(model, calls[-1][0])
            if in_place:
                pe.copy_(stock)
                return {}
            return {"pe": stock}
        return patch

    plain = model.clone()
    plain.set_model_attn1_patch(to_stock(False))
    for in_place in (False, True):
        patched = promote(H, model, f)
        patched.set_model_attn1_patch(to_stock(in_place))
        emb, calls = spy(patched)
        out = run(H, patched, "Flux.1", ch, _hw(ABOVE), steps=2, seed=5)
        # every block ran with the stock pe it was handed: the stock model's result, bit for bit
        want = run(H, plain, "Flux.1", ch, _hw(ABOVE), steps=2, seed=5)
        assert torch.equal(out, want)
        promoted = emb(calls[-1][0])
        assert not torch.equal(promoted, _stock_pe(model, calls[-1][0]))  # nothing leaked into the cache
        assert torch.equal(promoted, calls[-1][1])
    # a replaced pe reaches attention: replacing it with ours by hand gives the promoted result
    ours_by_hand = promote(H, model, f)
    ref_out = run(H, ours_by_hand, "Flux.1", ch, _hw(ABOVE), steps=2, seed=5)
    emb, calls = spy(ours_by_hand)
    ours_by_hand.set_model_attn1_patch(lambda q, k, v, pe=None, **kw: {"pe": pe.clone()})
    assert torch.equal(run(H, ours_by_hand, "Flux.1", ch, _hw(ABOVE), steps=2, seed=5), ref_out)


def test_multigpu_deepclone_owns_its_embedder(H, flux):
    """MultiGPU CFG Split deep-clones the promoted patcher per device (deepclone_multigpu, then
    match_multigpu_clones): every clone runs its own embedder and time, and samples as the original."""
    import torch

    model, ch = flux
    if not hasattr(model, "deepclone_multigpu"):
        pytest.skip(f"ComfyUI {H.comfy_version()} has no MultiGPU deep clones")
    f = families.family("Flux.1")
    fresh = model.clone()
    fresh.cached_patcher_init = (lambda: H.tiny_family_patcher("Flux.1")[0], ())  # what a core loader registers
    patched = promote(H, fresh, f)
    ours = patched.object_patches[PATH]
    cpu = torch.device("cpu")
    clone = patched.deepclone_multigpu(new_load_device=cpu)
    patched.set_additional_models("multigpu", [clone])
    patched.match_multigpu_clones()
    (matched,) = patched.get_additional_models_with_key("multigpu")
    import comfy.patcher_extension as pe

    for c in (clone, matched):
        own = c.object_patches[PATH]
        assert type(own).__name__ == "RoPEEmbedder" and own is not ours
        (step,) = c.wrappers[pe.WrappersMP.APPLY_MODEL][P.PATCH_KEY]
        assert step.embedder is own
    assert clone.object_patches[PATH] is not matched.object_patches[PATH]
    assert clone.model is not patched.model  # a fresh model from the loader factory

    ref = run(H, patched, "Flux.1", ch, _hw(ABOVE), steps=3, seed=2)
    ours_t = ours.t
    used = []
    ours_forward = ours.forward
    ours.forward = lambda ids: used.append(1) or ours_forward(ids)
    _emb, calls = spy(clone)
    out = run(H, clone, "Flux.1", ch, _hw(ABOVE), steps=3, seed=2)
    assert torch.equal(out, ref)  # same weights (the factory's seed), same promotion
    assert len(calls) == 3 and used == []  # the clone ran its own embedder only
    assert ours.t == ours_t  # and left the original's time alone


def test_chroma_radiance_sequential_text_ids(H):
    """Chroma Radiance's use_sequential_txt_ids puts text token k at (k, 0, 0): on the image-index axis, which
    is not promoted. base stays bit-identical; the extents and the spatial axes are as without it."""
    import dataclasses

    import comfy.ldm.chroma_radiance.model
    import torch

    fields = {x.name for x in dataclasses.fields(comfy.ldm.chroma_radiance.model.ChromaRadianceParams)}
    if "use_sequential_txt_ids" not in fields:
        pytest.skip(f"ComfyUI {H.comfy_version()}'s Chroma Radiance has no use_sequential_txt_ids")
    name = "Chroma Radiance"
    f = families.family(name)
    model, ch = H.tiny_family_patcher(name, use_sequential_txt_ids=True)
    hw = _hw(ABOVE, f)
    base = promote(H, model, f, method="base")
    assert torch.equal(run(H, base, name, ch, hw, steps=2), run(H, model, name, ch, hw, steps=2))
    patched = promote(H, model, f)
    emb, calls = spy(patched)
    run(H, patched, name, ch, hw, steps=2)
    ids = calls[0][0]
    tokens = 8  # family_conditioning's text
    assert torch.equal(ids[0, :tokens, 0], torch.arange(tokens, dtype=ids.dtype)) and not ids[0, :tokens, 1:].any()
    assert calls[0][3] == {1: float(ABOVE[0]), 2: float(ABOVE[1])}
    stock = model.get_model_object(PATH)
    for ids, out, _t, _e in calls:
        want = stock(ids)
        width = slice(8 + 28, 8 + 56)
        assert torch.equal(out[..., :8, :, :], want[..., :8, :, :])  # the index axis (where text now sits): stock
        assert torch.equal(out[..., width, :, :], want[..., width, :, :])  # width below the base grid: stock
        assert not torch.equal(out, want)


def test_second_pass_time_follows_its_partial_sigma_list(H, flux):
    """Two-pass hires (upscaled latent resampled at denoise < 1): t = sigma / sigma_max on the partial list the
    sampler runs, so SHARP's schedule continues where the noise level is (it is not re-anchored at 1)."""
    import comfy.samplers
    import torch

    model, ch = flux
    f = families.family("Flux.1")
    patched = promote(H, model, f)
    emb, calls = spy(patched)
    comfy = H.import_comfy()
    pos, neg = H.family_conditioning("Flux.1", 1), H.family_conditioning("Flux.1", 2)
    hw = _hw(ABOVE)
    latent = torch.randn(1, ch, *hw, generator=torch.Generator().manual_seed(3))  # the "upscaled first pass"
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    comfy.sample.sample(patched, noise, 4, 1.0, "euler", "simple", pos, neg, latent, denoise=0.5,
                        disable_pbar=True, seed=0)
    sampling = patched.get_model_object("model_sampling")
    full = comfy.samplers.calculate_sigmas(sampling, "simple", 8)  # KSampler: steps / denoise, last steps + 1
    partial = full[-5:]
    smax = float(sampling.sigma_max)
    assert [t for *_x, t, _e in calls] == pytest.approx([float(s) / smax for s in partial[:-1]], abs=1e-6)
    assert calls[0][2] < 0.9  # starts part-way down the schedule
