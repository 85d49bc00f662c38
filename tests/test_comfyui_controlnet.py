"""ControlNets beside a promoted model (sharp.controlnet): a tiny ControlNet of each of ComfyUI's RoPE kinds,
built from ComfyUI's own classes, guides a tiny promoted model through comfy.sample.sample on the CPU.

- ControlNetFlux (XLabs / InstantX Flux ControlNets) and QwenImageControlNetModel (InstantX Qwen-Image) have
  their own stock pe_embedder; QwenImageFunControlNetModel calls the model's pe_embedder before apply_model.
  In every case the pe the ControlNet's blocks get equals the model's at every step, and its time is the
  step's sigma / sigma_max; without our CALC_COND_BATCH wrapper they differ (so the test can fail).
- `base` stays bit-identical with a ControlNet; the ControlNet's own embedder is back in place afterwards.
- A ControlNet whose RoPE has other constants is refused with a clear error (unless the method is base).

Opt-in: SHARP_COMFYUI_DIR (tests/comfyui_harness.py); each case skips where the ComfyUI lacks the class.
"""
from __future__ import annotations

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]

from sharp import families  # noqa: E402

BASE_TOKENS = 8
ABOVE = (12, 6)  # tokens: height above the base grid, width below it
STEPS = 3

# case -> (family, ComfyUI module, class, block of the ControlNet that takes the pe, its pe keyword,
#          block of the model that takes the pe, its keyword)
CASES = {
    "ControlNetFlux": ("Flux.1", "comfy.ldm.flux.controlnet", "ControlNetFlux", "double_blocks.0", "pe",
                       "double_blocks.0", "pe"),
    "QwenImageControlNetModel": ("Qwen-Image", "comfy.ldm.qwen_image.controlnet", "QwenImageControlNetModel",
                                 "transformer_blocks.0", "image_rotary_emb", "transformer_blocks.0",
                                 "image_rotary_emb"),
    "QwenImageFunControlNetModel": ("Qwen-Image", "comfy.ldm.qwen_image.controlnet", "QwenImageFunControlNetModel",
                                    "control_blocks.0", "image_rotary_emb", "transformer_blocks.0",
                                    "image_rotary_emb"),
}


def _class(H, case):
    import importlib

    H.import_comfy()
    _f, module, cls, *_ = CASES[case]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        pytest.skip(f"ComfyUI {H.comfy_version()} has no {module}.{cls}")


def tiny_controlnet(H, case, seed=11, **override):
    """A ComfyUI ControlNet object around a tiny control model of `case` (latent-space hint, no VAE)."""
    import comfy.controlnet
    import comfy.ops
    import torch

    cls = _class(H, case)
    name = CASES[case][0]
    cpu = torch.device("cpu")
    ops = comfy.ops.disable_weight_init
    cfg = H._filter_params(name, dict(H.TINY_FAMILIES[name][1], **override))
    if case == "ControlNetFlux":  # InstantX layout: hint in latent space, patchified like the image
        model = cls(latent_input=True, operations=ops, device=cpu, dtype=torch.float32, **cfg)
        wrapper, extra = comfy.controlnet.ControlNet, dict(extra_conds=["y", "guidance"])
    elif case == "QwenImageControlNetModel":
        cfg.pop("image_model", None)
        model = cls(extra_condition_channels=0, operations=ops, device=cpu, dtype=torch.float32, **cfg)
        wrapper, extra = comfy.controlnet.ControlNet, dict(extra_conds=[])
    else:  # Qwen Fun: control blocks of the model's width; the model's own embedder, img_in, txt_in at run time
        model = cls(control_in_features=64, inner_dim=128, num_attention_heads=1, attention_head_dim=128,
                    num_control_blocks=2, main_model_double=60, injection_layers=(0, 12), operations=ops,
                    device=cpu, dtype=torch.float32)
        wrapper, extra = comfy.controlnet.QwenFunControlNet, dict(extra_conds=[], concat_mask=False)
    H.randomise(model, seed)
    return wrapper(model, compression_ratio=1, latent_format=None, load_device=cpu, manual_cast_dtype=None, **extra)


def promote(H, model, f, **kw):
    res = H.pack_module("nodes.resolution")
    kw.setdefault("base_resolution", BASE_TOKENS * f.px_per_token)
    kw.setdefault("noise_shift", "keep")
    return res.ResolutionPromotion.execute(model=model, **kw).result[0]


def hint_for(name, ch, hw, seed=5):
    import torch

    shape = (1, ch, 1, *hw) if name == "Qwen-Image" else (1, ch, *hw)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sample(H, patcher, name, ch, control, seed=0, cfg=2.0, denoise=1.0):
    """STEPS euler steps at ABOVE with `control` on the positive and negative conds (one copy, as ComfyUI's
    Apply ControlNet node does); cfg 2 so cond and uncond run through the ControlNet together."""
    import torch

    f = families.family(name)
    per = f.px_per_token // f.latent_px
    hw = (ABOVE[0] * per, ABOVE[1] * per)
    c = control.copy().set_cond_hint(hint_for(name, ch, hw), 1.0, (0.0, 1.0))
    pos, neg = H.family_conditioning(name, 1), H.family_conditioning(name, 2)
    for cond in (pos, neg):
        cond[0][1]["control"] = c
    shape = (1, ch, 1, *hw) if name == "Qwen-Image" else (1, ch, *hw)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    comfy = H.import_comfy()
    return comfy.sample.sample(patcher, noise, STEPS, cfg, "euler", "simple", pos, neg, torch.zeros_like(noise),
                               denoise=denoise, disable_pbar=True, seed=seed)


def spy_pe(module, block, keyword, log, emb=None):
    """Record the pe (and our embedder's t, if given) each time `module.<block>` runs."""
    target = families.get_path(module, block)

    def hook(_m, args, kwargs):
        log.append((kwargs[keyword].detach().clone(), getattr(emb, "t", None)))

    return target.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("case", list(CASES))
def test_controlnet_sees_the_models_promoted_rope_time_and_extents(H, case):
    import comfy.patcher_extension as pe
    import comfy.samplers
    import torch

    name, _m, _c, c_block, c_kw, m_block, m_kw = CASES[case]
    f = families.family(name)
    control = tiny_controlnet(H, case)
    model, ch = H.tiny_family_patcher(name)
    own_before = families.get_path(control.control_model, f.embedder_attr)

    def run(patched):
        emb = patched.get_model_object(f"diffusion_model.{f.embedder_attr}")
        seen_control, seen_model = [], []
        hooks = [spy_pe(control.control_model, c_block, c_kw, seen_control, emb),
                 spy_pe(model.model.diffusion_model, m_block, m_kw, seen_model)]
        try:
            sample(H, patched, name, ch, control)
        finally:
            for h in hooks:
                h.remove()
        return emb, seen_control, seen_model

    patched = promote(H, model, f, method="sharp")
    emb, seen_control, seen_model = run(patched)
    assert len(seen_control) == len(seen_model) == STEPS  # cond + uncond batched: one call each per step
    sampling = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
    smax = float(sampling.sigma_max)
    for i, ((pe_c, t_c), (pe_m, _)) in enumerate(zip(seen_control, seen_model)):
        assert torch.equal(pe_c, pe_m), f"step {i}: the ControlNet's pe differs from the model's"
        assert t_c == pytest.approx(float(sigmas[i]) / smax, abs=1e-6)  # the step's time, before apply_model
    assert emb.extents == {1: float(ABOVE[0]), 2: float(ABOVE[1])}
    assert families.get_path(control.control_model, f.embedder_attr) is own_before  # restored afterwards

    # the promoted pe is not stock RoPE, and without our wrapper the ControlNet would not get it
    plain_emb, plain_control, plain_model = run(model.clone())
    assert not torch.equal(seen_model[0][0], plain_model[0][0])
    unwrapped = promote(H, model, f, method="sharp")
    unwrapped.remove_wrappers_with_key(pe.WrappersMP.CALC_COND_BATCH, "sharp")
    # extents as an earlier run leaves them (Qwen Fun calls the model's embedder before apply_model: on a
    # fresh embedder, without our wrapper, that first call finds no extents and is refused)
    unwrapped.get_model_object(f"diffusion_model.{f.embedder_attr}").set_extents(emb.extents)
    _e, off_control, off_model = run(unwrapped)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(off_control, off_model))


@pytest.mark.parametrize("case", list(CASES))
def test_base_is_bit_identical_with_a_controlnet(H, case):
    import torch

    name = CASES[case][0]
    f = families.family(name)
    control = tiny_controlnet(H, case)
    model, ch = H.tiny_family_patcher(name)
    ref = sample(H, model, name, ch, control, seed=4)
    out = sample(H, promote(H, model, f, method="base"), name, ch, control, seed=4)
    assert torch.equal(ref, out)
    assert torch.equal(ref, sample(H, model, name, ch, control, seed=4))  # nothing left patched


def test_controlnet_with_other_rope_constants_is_refused(H):
    """A Flux ControlNet whose embedder has another theta cannot get the model's RoPE: a clear error for a
    promoting method; with base (stock RoPE) it runs as without the promotion."""
    import torch

    from sharp.controlnet import UnsupportedControlNetError

    f = families.family("Flux.1")
    control = tiny_controlnet(H, "ControlNetFlux", theta=2000)
    assert control.control_model.pe_embedder.theta == 2000
    model, ch = H.tiny_family_patcher("Flux.1")
    with pytest.raises(UnsupportedControlNetError, match=r"ControlNetFlux.*theta 2000.*theta 10000.*method to 'base'"):
        sample(H, promote(H, model, f, method="sharp"), "Flux.1", ch, control)
    assert control.control_model.pe_embedder.theta == 2000  # left as it was
    ref = sample(H, model, "Flux.1", ch, control, seed=1)
    assert torch.equal(sample(H, promote(H, model, f, method="base"), "Flux.1", ch, control, seed=1), ref)
