"""The Resolution Promotion patch (sharp.promotion) on the project's fake ModelPatcher (no ComfyUI)."""
from __future__ import annotations

import math

import pytest
import torch

import comfy_fake as cf
import sharp
from sharp import promotion as P


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
    patched = promote(model, method="yarn", base_resolution=512, alpha_s=3.0)
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
    assert P.normalised_time(torch.tensor([0.3, 0.3]), torch.tensor(0.6)) == pytest.approx(0.5)
    assert P.normalised_time(2.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="finite"):
        P.normalised_time(float("nan"), 1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        P.normalised_time(0.5, 0.0)


@pytest.mark.parametrize("kw, match", [
    ({"method": "linear"}, "method must be one of"),
    ({"noise_shift": "auto"}, "noise_shift must be one of"),
    ({"base_resolution": 1000}, "multiple of 16"),
])
def test_bad_settings_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        promote(cf.flux_patcher(), **kw)


def test_method_choices_cover_core_methods():
    assert set(P.METHOD_CHOICES) == set(sharp.rope.METHODS) and P.METHOD_CHOICES[0] == "sharp"


def test_other_layouts_refused():
    class QwenImageTransformer2DModel(torch.nn.Module):  # a Flux-style EmbedND, but ids centred on the image
        def __init__(self):
            super().__init__()
            self.pe_embedder = cf.FakeEmbedND()

    qwen = cf.FakeModelPatcher(cf.FakeBaseModel(QwenImageTransformer2DModel(), cf.ModelSamplingFlux()))
    with pytest.raises(P.UnsupportedModelError, match="QwenImageTransformer2DModel.*Flux.1"):
        promote(qwen)
    flux2 = cf.flux_patcher(theta=2000, axes_dim=(32, 32, 32, 32))  # Flux.2: the Flux class, 4 axes
    with pytest.raises(P.UnsupportedModelError, match="4 axes"):
        promote(flux2)

    class Finetune(cf.Flux):  # subclasses of a supported class are accepted
        pass

    tuned = cf.FakeModelPatcher(cf.FakeBaseModel(Finetune(), cf.ModelSamplingFlux()))
    assert isinstance(promote(tuned).get_model_object(P.EMBEDDER_PATH), sharp.RoPEEmbedder)
