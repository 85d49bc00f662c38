"""Two-pass hires fix (sharp/hires.py) on a tiny Flux.1 from ComfyUI's classes, sampled with comfy.sample.sample
at denoise < 1 as KSampler does: the second pass's t per step for the schedule SHARP uses ("continue":
sigma / sigma_max, also tested in test_comfyui_patch_interplay.py) and for the re-anchored comparison arm of
benchmarks/hires_two_pass.py ("restart": sigma / sigma_start), ControlNet calls included.

Opt-in: SHARP_COMFYUI_DIR (tests/comfyui_harness.py).
"""
from __future__ import annotations

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

from sharp import families, hires  # noqa: E402

BASE_TOKENS = 8
HW = (24, 12)  # latent px: 12 x 6 tokens, the height above the base grid


def promote(H, model, **kw):
    res = H.pack_module("nodes.resolution")
    f = families.family("Flux.1")
    return res.ResolutionPromotion.execute(model=model, method="sharp", base_resolution=BASE_TOKENS * f.px_per_token,
                                           noise_shift="keep", **kw).result[0]


def schedule(patched, name):
    import comfy.patcher_extension as pe

    return hires.set_schedule(patched, name, apply_model_wrapper=pe.WrappersMP.APPLY_MODEL,
                              calc_cond_batch_wrapper=pe.WrappersMP.CALC_COND_BATCH)


def second_pass_times(H, patcher, denoise=0.5, steps=4):
    """(t of each embedder call, the partial sigma list KSampler samples, sigma_max)."""
    import comfy.samplers
    import torch

    emb = patcher.get_model_object("diffusion_model.pe_embedder")
    seen = []
    orig = emb.forward
    emb.forward = lambda ids: seen.append(emb.t) or orig(ids)
    comfy = H.import_comfy()
    latent = torch.randn(1, 16, *HW, generator=torch.Generator().manual_seed(3))  # "the upscaled first pass"
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", H.family_conditioning("Flux.1", 1),
                        H.family_conditioning("Flux.1", 2), latent, denoise=denoise, disable_pbar=True, seed=0)
    sampling = patcher.get_model_object("model_sampling")
    full = comfy.samplers.calculate_sigmas(sampling, "simple", int(steps / denoise))
    return seen, [float(s) for s in full[-(steps + 1):]], float(sampling.sigma_max)


def test_restart_reanchors_t_at_the_second_passs_first_sigma(H):
    model, _ = H.tiny_family_patcher("Flux.1")
    seen, partial, smax = second_pass_times(H, schedule(promote(H, model), "restart"))
    assert seen == pytest.approx([s / partial[0] for s in partial[:-1]], abs=1e-6)
    assert seen[0] == 1.0 and partial[0] < 0.9 * smax

    seen, partial, smax = second_pass_times(H, schedule(promote(H, model), "continue"))
    assert seen == pytest.approx([s / smax for s in partial[:-1]], abs=1e-6)  # the promotion's own schedule


def test_restart_reaches_the_controlnet_too(H):
    """A ControlNet runs before apply_model (sharp/controlnet.py); under restart it sees the re-anchored t."""
    import torch

    from test_comfyui_controlnet import STEPS, sample, spy_pe, tiny_controlnet

    model, ch = H.tiny_family_patcher("Flux.1")
    control = tiny_controlnet(H, "ControlNetFlux")
    patched = schedule(promote(H, model), "restart")
    emb = patched.get_model_object("diffusion_model.pe_embedder")
    seen_control, seen_model = [], []
    hooks = [spy_pe(control.control_model, "double_blocks.0", "pe", seen_control, emb),
             spy_pe(model.model.diffusion_model, "double_blocks.0", "pe", seen_model, emb)]
    try:
        sample(H, patched, "Flux.1", ch, control, denoise=0.5)  # a second pass: sigma_start < sigma_max
    finally:
        for h in hooks:
            h.remove()
    assert len(seen_control) == STEPS and seen_control[0][1] == 1.0  # re-anchored (continue: t < 0.9 here)
    for (pe_c, t_c), (pe_m, t_m) in zip(seen_control, seen_model):
        assert t_c == t_m and torch.equal(pe_c, pe_m)


def test_schedule_needs_a_promoted_model(H):
    model, _ = H.tiny_family_patcher("Flux.1")
    with pytest.raises(ValueError, match="connect it after"):
        schedule(model, "restart")
    with pytest.raises(ValueError, match="schedule must be one of continue, restart"):
        schedule(promote(H, model), "rewind")
