"""The Resolution Promotion patch (sharp.promotion) on the project's fake ModelPatcher (no ComfyUI)."""
from __future__ import annotations

import math

import pytest
import torch

import comfy_fake as cf
import sharp
from sharp import families
from sharp import promotion as P
from reference_rope import flux_ids
from test_families import by_axis, ernie_embed_nd3, family_ids


def promote(model, **kw):
    kw.setdefault("make_flux_sampling", lambda mu: cf.ModelSamplingFlux(shift=mu))
    kw.setdefault("base_resolution", 256)  # small latents (fast) are then above the base size
    return P.promote(model, apply_model_wrapper=cf.APPLY_MODEL, outer_sample_wrapper=cf.OUTER_SAMPLE, **kw)


def spy_times(embedder):
    seen = []
    orig = embedder.set_time

    def set_time(t):
        seen.append(t)
        orig(t)

    embedder.set_time = set_time
    return seen


def test_clone_gets_fresh_embedder_from_original_config():
    model = cf.flux_patcher(theta=2000, axes_dim=(8, 28, 28))
    patched = promote(model, method="yarn", base_resolution=512, alpha_s=3.0, family="Flux.1")  # other constants: override
    emb = patched.get_model_object(P.EMBEDDER_PATH)
    assert isinstance(emb, sharp.RoPEEmbedder)
    assert emb.theta == 2000 and tuple(emb.axes_dim) == (8, 28, 28) and emb.method == "yarn"
    assert set(emb.base_len.values()) == {32}
    # the input patcher and its model are untouched
    assert model.object_patches == {} and model.wrappers == {}
    assert isinstance(model.model.diffusion_model.pe_embedder, cf.FakeEmbedND)
    assert patched is not model and patched.model is model.model


def test_time_set_from_sigma_over_sigma_max_each_step():
    model = cf.flux_patcher(sigma_max=2.0)
    patched = promote(model, noise_shift="keep")
    emb = patched.get_model_object(P.EMBEDDER_PATH)
    seen = spy_times(emb)
    sigmas = torch.tensor([2.0, 1.5, 0.7, 0.1, 0.0])
    patched.sample(torch.zeros(1, 16, 16, 16), sigmas)
    assert seen == pytest.approx([1.0, 0.75, 0.35, 0.05])
    # the stock embedder is back in place after sampling
    assert isinstance(model.model.diffusion_model.pe_embedder, cf.FakeEmbedND)


def test_base_method_is_bit_identical_to_unpatched():
    model = cf.flux_patcher()
    sigmas = cf.flux_sigmas(4)
    latent = torch.zeros(1, 16, 24, 40)  # 12 x 20 tokens: below the base length on one axis, above on the other
    ref = model.sample(latent, sigmas)
    out = promote(model, method="base").sample(latent, sigmas)
    again = model.sample(latent, sigmas)
    assert len(out) == len(ref) == 4
    for a, b, c in zip(ref, out, again):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_promoted_output_differs_above_base_and_unpatched_clone_untouched():
    model = cf.flux_patcher()
    plain = model.clone()
    latent = torch.zeros(1, 16, 64, 64)  # 32 x 32 tokens = 512 px, 2x the base
    sigmas = cf.flux_sigmas(3)
    ref = plain.sample(latent, sigmas)
    out = promote(model, method="sharp").sample(latent, sigmas)
    assert not torch.equal(ref[0], out[0])
    after = plain.sample(latent, sigmas)
    assert all(torch.equal(a, b) for a, b in zip(ref, after))
    assert plain.object_patches == {} and plain.wrappers == {}


def test_two_clones_do_not_share_time_or_size():
    model = cf.flux_patcher()
    a = promote(model, method="sharp")
    b = promote(model, method="sharp")
    ea, eb = a.get_model_object(P.EMBEDDER_PATH), b.get_model_object(P.EMBEDDER_PATH)
    assert ea is not eb
    a.sample(torch.zeros(1, 16, 64, 64), cf.flux_sigmas(4))
    t_a = ea.t
    b.sample(torch.zeros(1, 16, 48, 80), torch.tensor([0.5, 0.25, 0.0]))
    assert eb.t == pytest.approx(0.25)
    assert ea.t == t_a  # b's run did not touch a's embedder
    # a alone, re-run at its size, reproduces its own output
    out1 = a.sample(torch.zeros(1, 16, 64, 64), cf.flux_sigmas(4))
    b.sample(torch.zeros(1, 16, 48, 80), cf.flux_sigmas(4))
    out2 = a.sample(torch.zeros(1, 16, 64, 64), cf.flux_sigmas(4))
    assert all(torch.equal(x, y) for x, y in zip(out1, out2))


def test_wrapper_composes_and_repromotion_replaces_ours():
    model = cf.flux_patcher()
    calls = []

    def other(executor, x, t, *args, **kwargs):
        calls.append(float(t[0]))
        return executor(x, t, *args, **kwargs)

    model.add_wrapper_with_key(cf.APPLY_MODEL, "other-pack", other)
    once = promote(model, method="yarn")
    twice = promote(once, method="sharp", alpha_s=2.0)
    assert len(twice.get_wrappers(cf.APPLY_MODEL, P.PATCH_KEY)) == 1
    assert len(twice.get_wrappers(cf.APPLY_MODEL, "other-pack")) == 1
    emb = twice.get_model_object(P.EMBEDDER_PATH)
    assert emb.method == "sharp"
    seen = spy_times(emb)
    twice.sample(torch.zeros(1, 16, 32, 32), torch.tensor([1.0, 0.5, 0.0]))
    assert calls == [1.0, 0.5] and seen == [1.0, 0.5]


def test_non_flux_model_error_names_families():
    unet = cf.FakeModelPatcher(cf.FakeBaseModel(cf.FakeUNet(), cf.OtherSampling()))
    with pytest.raises(P.UnsupportedModelError, match="Flux.1") as err:
        promote(unet)
    assert "FakeUNet" in str(err.value)


def test_noise_shift_needs_flux_schedule():
    model = cf.FakeModelPatcher(cf.FakeBaseModel(cf.FakeFlux(), cf.OtherSampling()))
    with pytest.raises(P.UnsupportedModelError, match="'keep'"):
        promote(model, noise_shift="sharp")
    patched = promote(model, noise_shift="keep")
    assert P.SAMPLING_PATH not in patched.object_patches


def test_noise_shift_sharp_fixes_mu():
    model = cf.flux_patcher()
    model.add_object_patch(P.SAMPLING_PATH, cf.ModelSamplingFlux(shift=3.0))
    patched = promote(model, noise_shift="sharp")
    assert patched.get_model_object(P.SAMPLING_PATH).shift == pytest.approx(1.15)
    assert model.get_model_object(P.SAMPLING_PATH).shift == 3.0
    assert cf.OUTER_SAMPLE not in patched.wrappers or not patched.wrappers[cf.OUTER_SAMPLE]


def test_noise_shift_resolution_reshifts_by_latent_size():
    model = cf.flux_patcher()
    patched = promote(model, noise_shift="resolution", method="base")
    steps = 6
    for h, w in ((64, 64), (80, 116)):
        patched.sample(torch.zeros(1, 16, h, w), cf.flux_sigmas(steps, mu=1.15))
        tokens = (h * 8) * (w * 8) / 256
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)  # ComfyUI's ModelSamplingFlux node
        expect = cf.flux_sigmas(steps, mu=mu)
        assert torch.allclose(patched.used_sigmas, expect, atol=1e-6)


def test_reshift_sigmas_keeps_underlying_time():
    t = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.01, 0.0], dtype=torch.float64)

    def flux(mu):
        s = torch.zeros_like(t)
        s[t > 0] = math.exp(mu) / (math.exp(mu) + 1 / t[t > 0] - 1)
        return s

    out = P.reshift_sigmas(flux(1.15), 1.15, 2.7)
    assert torch.allclose(out, flux(2.7), atol=1e-12)
    assert out[0] == 1.0 and out[-1] == 0.0


def test_normalised_time_checks():
    assert sharp.rope.normalised_time(torch.tensor([0.3, 0.3]), torch.tensor(0.6)) == pytest.approx(0.5)
    assert sharp.rope.normalised_time(2.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="finite"):
        sharp.rope.normalised_time(float("nan"), 1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        sharp.rope.normalised_time(0.5, 0.0)


@pytest.mark.parametrize("kw, match", [
    ({"method": "linear"}, "method must be one of"),
    ({"noise_shift": "auto"}, "noise_shift must be one of"),
    ({"base_resolution": 1000}, "multiple of 16"),
])
def test_bad_settings_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        promote(cf.flux_patcher(), **kw)


def test_method_choices_cover_core_methods():
    assert sharp.rope.METHODS[0] == "sharp"  # the default, first in the node lists


def family_patcher(name, txt=5):
    """A fake patcher whose diffusion model is named and built like the family's ComfyUI class, with
    ids as the family builds them (test_families.family_ids, written from the ComfyUI sources)."""
    f = families.family(name)
    head_axis = 2 if name in ("HiDream", "ErnieImage") else 1  # their own embedders return [B, L, 1, ...]
    model = cf.family_dit(f.classes[0], f.embedder_attr, f.theta, f.axes_dim,
                          lambda h, w: family_ids(name, h, w, txt), f.px_per_token // f.latent_px, f.txt_ids_dims,
                          head_axis=head_axis, params=f.params)
    if f.layout == "split_half":  # ErnieImage's own ErnieImageEmbedND3 (re-derived in test_families)
        model.pos_embed = FakeErnieEmbedND3(f.theta, f.axes_dim)
    sampling = cf.ModelSamplingFlux(shift=f.flux_shift) if f.flux_shift else cf.ModelSamplingDiscreteFlow()
    return cf.FakeModelPatcher(cf.FakeBaseModel(model, sampling))


class FakeErnieEmbedND3(cf.FakeEmbedND):
    def forward(self, ids):
        return ernie_embed_nd3(ids, self.axes_dim, self.theta)


def latent_for(f, scale, batch=1):
    """A latent of the family at scale x its base grid per side: [B, C, H, W] ([B, C, 1, H, W] for Qwen-Image)."""
    per_token = f.px_per_token // f.latent_px
    h, w = (int(round(f.base_len * s)) * per_token for s in scale)
    return torch.zeros(batch, 4, 1, h, w) if f.name == "Qwen-Image" else torch.zeros(batch, 4, h, w)


@pytest.mark.parametrize("f", families.FAMILIES, ids=lambda f: f.name)
def test_each_family_detected_and_its_own_embedder_patched(f):
    model = family_patcher(f.name)
    patched = P.promote(model, method="sharp", noise_shift="keep", apply_model_wrapper=cf.APPLY_MODEL,
                        outer_sample_wrapper=cf.OUTER_SAMPLE)
    path = f"diffusion_model.{f.embedder_attr}"
    emb = patched.get_model_object(path)
    assert isinstance(emb, sharp.RoPEEmbedder) and list(patched.object_patches) == [path]
    assert tuple(emb.axes_dim) == f.axes_dim and emb.theta == f.theta and emb.spatial_axes == f.spatial_axes
    assert emb.base_len == {a: f.base_len for a in f.spatial_axes}  # base_resolution 0 = the family's grid
    latent = latent_for(f, (1.25, 0.5))
    ref = model.sample(latent, cf.flux_sigmas(2))
    out = patched.sample(latent, cf.flux_sigmas(2))
    s_h, s_w = (round(f.base_len * s) / f.base_len for s in (1.25, 0.5))
    assert emb.axis_scales() == pytest.approx(
        dict(zip(f.spatial_axes, (s_h, s_w))))  # set from the latent by the wrapper, not from the ids
    # only the height axis (above the base grid) changed; every other channel is stock
    for r, o in zip(ref, out):
        assert r.shape == o.shape  # the family's own layout (HiDream: [B, L, 1, ...])
        assert not torch.equal(by_axis(f, r, f.spatial_axes[0]), by_axis(f, o, f.spatial_axes[0]))
        for a in range(len(f.axes_dim)):
            if a != f.spatial_axes[0]:
                assert torch.equal(by_axis(f, r, a), by_axis(f, o, a))
    assert isinstance(families.get_path(model.model.diffusion_model, f.embedder_attr), cf.FakeEmbedND)  # reverted


@pytest.mark.parametrize("f", families.FAMILIES, ids=lambda f: f.name)
def test_base_is_bit_identical_for_every_family(f):
    model = family_patcher(f.name)
    latent = latent_for(f, (0.5, 1.25))
    ref = model.sample(latent, cf.flux_sigmas(2))
    out = promote(model, method="base", base_resolution=0, noise_shift="keep").sample(latent, cf.flux_sigmas(2))
    assert all(torch.equal(a, b) for a, b in zip(ref, out))


def test_family_override_and_choices():
    model = family_patcher("Ovis-Image")
    assert P.detect(model).name == "Ovis-Image"
    patched = promote(model, family="Flux.1", noise_shift="keep")  # same embedder: override wins
    assert isinstance(patched.get_model_object(P.EMBEDDER_PATH), sharp.RoPEEmbedder)
    assert P.FAMILY_CHOICES[0] == "auto" and set(P.FAMILY_CHOICES[1:]) == {f.name for f in families.FAMILIES}
    with pytest.raises(ValueError, match="family must be one of"):
        promote(model, family="SD3")
    with pytest.raises(P.UnsupportedModelError, match="expects rope_embedder"):
        promote(model, family="Z-Image")


def test_unsupported_models_name_the_families():
    for cls in ("UNetModel", "MMDiT"):  # SD1.5/SDXL, SD3: no multi-axis RoPE embedder
        model = cf.FakeModelPatcher(cf.FakeBaseModel(type(cls, (cf.FakeUNet,), {})(), cf.OtherSampling()))
        with pytest.raises(P.UnsupportedModelError, match=f"{cls}.*SDXL.*Flux.2.*Z-Image.*HunyuanImage 2.1"):
            promote(model)
    video = cf.family_dit("HunyuanVideo", "pe_embedder", 256, (16, 56, 56), None, 1)  # 3 axes: not the image model
    with pytest.raises(P.UnsupportedModelError, match="matches no known family"):
        promote(cf.FakeModelPatcher(cf.FakeBaseModel(video, cf.OtherSampling())))


def test_omnigen2_inner_embedder_patched_and_long_captions_do_not_count():
    f = families.family("OmniGen2")
    model = family_patcher(f.name, txt=200)  # caption ids (k, k, k) up to 199 on both spatial axes
    dit = model.model.diffusion_model
    wrapper, stock = dit.rope_embedder, dit.rope_embedder.rope_embedder
    patched = promote(model, noise_shift="keep", base_resolution=0)
    assert list(patched.object_patches) == ["diffusion_model.rope_embedder.rope_embedder"]
    emb = patched.get_model_object("diffusion_model.rope_embedder.rope_embedder")
    assert isinstance(emb, sharp.RoPEEmbedder)
    out = patched.sample(torch.zeros(1, 16, 160, 112), cf.flux_sigmas(1))  # 80 x 56 positions
    assert emb.axis_scales() == {1: 80 / 64, 2: 56 / 64}
    assert out[0].shape[1] == 200 + 80 * 56 and out[0].shape[2] == 1  # the wrapper's movedim(1, 2) still runs
    assert dit.rope_embedder is wrapper and dit.rope_embedder.rope_embedder is stock  # reverted
    again = promote(patched, noise_shift="keep", method="yarn")  # re-promotion finds our embedder there
    assert again.get_model_object("diffusion_model.rope_embedder.rope_embedder").method == "yarn"


def test_latent_extents_ignore_text_on_spatial_axes():
    f = families.family("Ovis-Image")
    model = family_patcher(f.name, txt=300)  # text positions 0..299 on both spatial axes
    patched = promote(model, noise_shift="keep", base_resolution=0)
    emb = patched.get_model_object(P.EMBEDDER_PATH)
    patched.sample(torch.zeros(1, 16, 160, 140), cf.flux_sigmas(1))
    assert emb.axis_scales() == {1: 80 / 64, 2: 70 / 64}


def test_kontext_uxo_reference_does_not_enlarge_the_extent():
    # Flux Kontext ref_latents_method "uxo" (comfy/ldm/flux/model.py): reference tokens at index 0, offset
    # past the image on both axes. With extents from the latent the image tokens' rotations are the same
    # as without the reference (an extent read from the ids would promote them further).
    h, w, rh, rw = 40, 36, 24, 24

    def ids_with_ref(hh, ww):
        ids = flux_ids(hh, ww, txt=4)
        ref = flux_ids(rh, rw, txt=0)
        ref[..., 1] += hh
        ref[..., 2] += ww
        return torch.cat([ids, ref], 1)

    plain = cf.FakeModelPatcher(cf.FakeBaseModel(cf.family_dit("Flux", "pe_embedder", 10000, (16, 56, 56),
                                                               lambda a, b: flux_ids(a, b, txt=4), 2), cf.ModelSamplingFlux()))
    uxo = cf.FakeModelPatcher(cf.FakeBaseModel(cf.family_dit("Flux", "pe_embedder", 10000, (16, 56, 56),
                                                             ids_with_ref, 2), cf.ModelSamplingFlux()))
    latent, sigmas = torch.zeros(1, 16, 2 * h, 2 * w), cf.flux_sigmas(2)
    n = 4 + h * w  # text + image tokens
    want = promote(plain, noise_shift="keep").sample(latent, sigmas)
    got = promote(uxo, noise_shift="keep").sample(latent, sigmas)
    assert all(torch.equal(a, b[:, :, :n]) for a, b in zip(want, got))


def test_noise_shift_per_family():
    flux2 = promote(family_patcher("Flux.2"), noise_shift="sharp")
    assert flux2.get_model_object(P.SAMPLING_PATH).shift == pytest.approx(2.02)  # Flux.2's own fixed shift
    with pytest.raises(P.UnsupportedModelError, match="'sharp'.*'keep'"):
        promote(family_patcher("Flux.2"), noise_shift="resolution")
    with pytest.raises(P.UnsupportedModelError, match="Qwen-Image has its own schedule"):
        promote(family_patcher("Qwen-Image"), noise_shift="resolution")
    for name in ("Z-Image", "Lumina 2", "HunyuanImage 2.1", "HiDream", "OmniGen2"):  # fixed-shift flow: sharp = keep
        patched = promote(family_patcher(name), noise_shift="sharp")
        assert P.SAMPLING_PATH not in patched.object_patches
        with pytest.raises(P.UnsupportedModelError, match="'resolution'"):
            promote(family_patcher(name), noise_shift="resolution")
    chroma = promote(family_patcher("Chroma Radiance"), noise_shift="resolution", method="base")
    chroma.sample(torch.zeros(1, 3, 1024, 2048), cf.flux_sigmas(3))
    tokens = 1024 * 2048 / 256
    mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)  # pixel space: the size is the x size itself
    assert torch.allclose(chroma.used_sigmas, cf.flux_sigmas(3, mu=mu), atol=1e-6)


def test_base_resolution_checked_per_family():
    with pytest.raises(ValueError, match="multiple of 32 px.*HunyuanImage 2.1"):
        promote(family_patcher("HunyuanImage 2.1"), base_resolution=1040, noise_shift="keep")
    emb = promote(family_patcher("HunyuanImage 2.1"), base_resolution=1024,
                  noise_shift="keep").get_model_object(P.EMBEDDER_PATH)
    assert emb.base_len == {0: 32.0, 1: 32.0}


def test_detection_sees_object_patches():
    model = cf.flux_patcher()
    model.add_object_patch(P.EMBEDDER_PATH, torch.nn.Identity())  # another pack's non-RoPE replacement
    with pytest.raises(P.UnsupportedModelError, match="matches no known family.*Supported: Flux.1"):
        promote(model)


def test_rope_options_extents_are_the_scaled_positions():
    """ScaleROPE (ComfyUI's rope_options): n tokens at shift + k * scale span (n - 1) * scale + 1 positions."""
    ext = {1: 24.0, 2: 10.0}
    assert P.rope_options_extents(ext, (1, 2), None) == ext
    out = P.rope_options_extents(ext, (1, 2), {"scale_y": 0.5, "scale_x": 2.0, "shift_y": 7.0})
    assert out == {1: 23 * 0.5 + 1, 2: 9 * 2.0 + 1}
    with pytest.raises(ValueError, match="scale_x"):
        P.rope_options_extents(ext, (1, 2), {"scale_x": 0.0})


def test_step_time_deep_copy_owns_its_embedder():
    """A deep copy of the wrapper (a MultiGPU clone) must not share time or extents with the original."""
    import copy

    f = families.family("Flux.1")
    emb = families.build_embedder(f, "sharp")
    step = P.StepTime(emb, f)
    twin = copy.deepcopy(step)
    assert twin is not step and twin.embedder is not emb and twin.family == f
    twin.embedder.set_time(0.25)
    twin.embedder.set_extents({1: 90.0, 2: 70.0})
    assert emb.t == 1.0 and emb.extents is None


class _Clone:
    """The part of ComfyUI's ModelPatcher a deep clone's callback touches."""

    def __init__(self, object_patches, wrappers):
        self.object_patches = dict(object_patches)  # ComfyUI's clone: a copy of the dict, the same objects
        self.wrappers = {k: {k1: list(v1) for k1, v1 in v.items()} for k, v in wrappers.items()}

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def add_wrapper_with_key(self, kind, key, fn):
        self.wrappers.setdefault(kind, {}).setdefault(key, []).append(fn)

    def remove_wrappers_with_key(self, kind, key):
        self.wrappers.get(kind, {}).pop(key, None)


def test_deepclone_callback_gives_each_clone_its_own_embedder():
    model = cf.flux_patcher()
    patched = promote(model, noise_shift="keep", deepclone_callbacks=("on_deepclone", "on_match"))
    ours = patched.object_patches[P.EMBEDDER_PATH]
    callbacks = patched.callbacks
    assert set(callbacks) == {"on_deepclone", "on_match"}
    for kind in ("on_deepclone", "on_match"):
        clone = _Clone(patched.object_patches, patched.wrappers)
        assert clone.object_patches[P.EMBEDDER_PATH] is ours  # what ComfyUI's clone alone would do
        (cb,) = callbacks[kind][P.PATCH_KEY]
        cb(patched, clone)
        own = clone.object_patches[P.EMBEDDER_PATH]
        assert isinstance(own, sharp.RoPEEmbedder) and own is not ours
        assert (own.theta, own.axes_dim, own.method, own.base_len) == (ours.theta, ours.axes_dim, ours.method,
                                                                        ours.base_len)
        (step,) = clone.wrappers[cf.APPLY_MODEL][P.PATCH_KEY]
        assert step.embedder is own
        assert patched.wrappers[cf.APPLY_MODEL][P.PATCH_KEY][0].embedder is ours  # the source is untouched
    # another pack's embedder in the clone is left alone
    clone = _Clone({P.EMBEDDER_PATH: cf.FakeEmbedND()}, patched.wrappers)
    callbacks["on_deepclone"][P.PATCH_KEY][0](patched, clone)
    assert isinstance(clone.object_patches[P.EMBEDDER_PATH], cf.FakeEmbedND)
