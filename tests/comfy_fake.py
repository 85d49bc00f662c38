"""A small, project-owned stand-in for the part of ComfyUI's ModelPatcher that SHARP uses.

Written for these tests from ComfyUI's documented behaviour (no ComfyUI code): `clone()` shares the
model and copies object patches and wrappers; object patches are applied while sampling and
reverted after; `APPLY_MODEL` wrappers are composable and called as
`fn(executor, x, sigma, *args, **kwargs)` and must call `executor(...)`; OUTER_SAMPLE wrappers as
`fn(executor, noise, latent_image, sampler, sigmas, ...)`.

The stock embedder is reference_rope's re-derivation of ComfyUI's Flux `EmbedND` (layout
[B, 1, L, sum(axes)/2, 2, 2], blocks [[cos, -sin], [sin, cos]], angles in float64), its ids reference_rope's.
"""
from __future__ import annotations

import math

import torch

from reference_rope import flux_ids, stock_embed_nd

APPLY_MODEL = "apply_model"
OUTER_SAMPLE = "outer_sample"


class FakeEmbedND(torch.nn.Module):
    """head_axis: 1 for Flux's EmbedND ([B, 1, L, ...]); 2 for HiDream's own EmbedND, which returns
    `emb.unsqueeze(2)` ([B, L, 1, ...])."""

    def __init__(self, theta=10000, axes_dim=(16, 56, 56), head_axis=1):
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)
        self.dim = sum(axes_dim)
        self.head_axis = head_axis

    def forward(self, ids):
        return stock_embed_nd(ids, self.axes_dim, self.theta).squeeze(1).unsqueeze(self.head_axis)


class Flux(torch.nn.Module):
    """Diffusion model named like ComfyUI's Flux class (the patch checks the family by class name);
    returns the positional embedding it computed, so tests see the RoPE output."""

    def __init__(self, theta=10000, axes_dim=(16, 56, 56)):
        super().__init__()
        self.pe_embedder = FakeEmbedND(theta, axes_dim)

    def forward(self, x, timestep, **kwargs):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2  # latent px -> tokens (2x2 patches)
        return self.pe_embedder(flux_ids(h, w, txt=4, batch=x.shape[0]))


FakeFlux = Flux


class ModelSamplingFlux:
    """Name-alike of ComfyUI's Flux schedule (the patch checks the class name)."""

    def __init__(self, shift=1.15, sigma_max=1.0):
        self.shift = shift
        self.sigma_max = torch.tensor(sigma_max)


class OtherSampling:
    sigma_max = torch.tensor(14.6)


class FakeUNet(torch.nn.Module):
    """Diffusion model of another family: no pe_embedder."""

    def forward(self, x, timestep, **kwargs):
        return x


class FakeBaseModel:
    def __init__(self, diffusion_model, model_sampling):
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling

    def apply_model(self, x, t, transformer_options):
        wrappers = [w for ws in transformer_options.get("wrappers", {}).get(APPLY_MODEL, {}).values() for w in ws]
        return Executor(lambda x, t: self.diffusion_model(x, t), self, wrappers)(x, t)


class Executor:
    """Calls the wrappers in order, then the original (ComfyUI's WrapperExecutor semantics)."""

    def __init__(self, original, class_obj, wrappers, idx=0):
        self.original, self.class_obj, self.wrappers, self.idx = original, class_obj, list(wrappers), idx

    def __call__(self, *args, **kwargs):
        if self.idx == len(self.wrappers):
            return self.original(*args, **kwargs)
        nxt = Executor(self.original, self.class_obj, self.wrappers, self.idx + 1)
        return self.wrappers[self.idx](nxt, *args, **kwargs)


def _get_attr(obj, path):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _set_attr(obj, path, value):
    *head, last = path.split(".")
    for name in head:
        obj = getattr(obj, name)
    setattr(obj, last, value)


class FakeModelPatcher:
    def __init__(self, model):
        self.model = model
        self.object_patches = {}
        self.wrappers = {}
        self.callbacks = {}
        self.model_options = {"transformer_options": {}}
        self.parent = None

    def clone(self):
        n = FakeModelPatcher(self.model)
        n.object_patches = self.object_patches.copy()
        n.wrappers = {k: {k1: list(w1) for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        n.parent = self
        return n

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        return _get_attr(self.model, name)

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type, key):
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def add_callback_with_key(self, call_type, key, callback):
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def remove_callbacks_with_key(self, call_type, key):
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type, key):
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, latent: torch.Tensor, sigmas: torch.Tensor) -> list[torch.Tensor]:
        """Apply object patches, run the OUTER_SAMPLE wrappers around a loop that calls the model at
        every sigma but the last (as samplers do), revert the patches. Returns the model outputs."""
        backup = {name: _get_attr(self.model, name) for name in self.object_patches}
        for name, obj in self.object_patches.items():
            _set_attr(self.model, name, obj)
        opts = {"wrappers": self.wrappers}
        outputs = []

        def loop(noise, latent_image, sampler, sigmas, *args, **kwargs):
            self.used_sigmas = sigmas
            for s in sigmas[:-1]:
                sigma = torch.full((latent_image.shape[0],), float(s))
                outputs.append(self.model.apply_model(latent_image, sigma, opts))
            return outputs

        try:
            outer = [w for ws in self.wrappers.get(OUTER_SAMPLE, {}).values() for w in ws]
            Executor(loop, self, outer)(torch.zeros_like(latent), latent, None, sigmas)
        finally:
            for name, obj in backup.items():
                _set_attr(self.model, name, obj)
        return outputs


def flux_patcher(theta=10000, axes_dim=(16, 56, 56), sigma_max=1.0) -> FakeModelPatcher:
    return FakeModelPatcher(FakeBaseModel(FakeFlux(theta, axes_dim), ModelSamplingFlux(sigma_max=sigma_max)))


def flux_sigmas(steps: int, mu: float = 1.15) -> torch.Tensor:
    """Independent Flux schedule for the fake: t linear 1 -> 0, sigma = e^mu / (e^mu + 1/t - 1)."""
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    out = torch.zeros_like(t)
    nz = t > 0
    out[nz] = math.exp(mu) / (math.exp(mu) + 1 / t[nz] - 1)
    return out.float()


class FamilyDiT(torch.nn.Module):
    """Stand-in for any family's diffusion model: holds a stock embedder at the family's attribute
    (`pe_embedder` / `rope_embedder`), builds ids from x with `ids_fn(h_tokens, w_tokens)` and returns the
    embedder output. `family_dit` names the class like ComfyUI's (detection reads the class name)."""

    def __init__(self, attr, theta, axes_dim, ids_fn, per_token, txt_ids_dims=None, head_axis=1, params=()):
        super().__init__()
        self.ids_fn, self.per_token = ids_fn, per_token
        head, _, inner = attr.partition(".")
        self.attr = head
        emb = FakeEmbedND(theta, axes_dim, head_axis)
        # a dotted attr (OmniGen2's "rope_embedder.rope_embedder"): a wrapper holding the EmbedND
        setattr(self, head, FakeRotaryPosEmbed(theta, axes_dim, inner, emb) if inner else emb)
        fields = dict(params, **({"txt_ids_dims": list(txt_ids_dims)} if txt_ids_dims is not None else {}))
        if fields:  # diffusion_model.params (Flux-class rows are told apart by these)
            self.params = type("Params", (), fields)()

    def forward(self, x, timestep, **kwargs):
        h, w = -(-x.shape[-2] // self.per_token), -(-x.shape[-1] // self.per_token)  # padded patchify
        return getattr(self, self.attr)(self.ids_fn(h, w).repeat(x.shape[0], 1, 1))


class FakeRotaryPosEmbed(torch.nn.Module):
    """Stand-in for OmniGen2's OmniGen2RotaryPosEmbed: carries theta / axes_dim itself, holds the EmbedND
    at `inner` (its `rope_embedder`), calls it with the ids and moves the head dim (`.movedim(1, 2)`)."""

    def __init__(self, theta, axes_dim, inner, embedder):
        super().__init__()
        self.theta, self.axes_dim, self.inner = theta, list(axes_dim), inner
        setattr(self, inner, embedder)

    def forward(self, ids):
        return getattr(self, self.inner)(ids).movedim(1, 2)


def family_dit(class_name, *args, **kwargs) -> FamilyDiT:
    return type(class_name, (FamilyDiT,), {})(*args, **kwargs)


class ModelSamplingDiscreteFlow:
    """Name-alike of ComfyUI's fixed-shift flow schedule (Lumina 2, Z-Image, HunyuanImage 2.1)."""

    def __init__(self, shift=3.0):
        self.shift = shift
        self.sigma_max = torch.tensor(1.0)
