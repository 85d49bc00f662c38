"""Resolution promotion of a loaded model: the logic behind the "SHARP Resolution Promotion" node.

No ComfyUI import here. `promote()` works on any object with the small part of ComfyUI's
`ModelPatcher` surface it uses (`clone`, `get_model_object`, `add_object_patch`,
`add_wrapper_with_key`, `remove_wrappers_with_key`); the node passes in ComfyUI's wrapper type names
and a factory for a Flux noise-shift object, so this module stays importable (and testable)
without ComfyUI.

What a promoted clone does:
- the model's family is detected (`sharp.families.detect_family`: class, embedder attribute, theta,
  axes_dim; or named by an override), and its own multi-axis RoPE embedder
  (`diffusion_model.<family.embedder_attr>`: `pe_embedder`, `rope_embedder` for Lumina 2 / Z-Image, or
  OmniGen2's inner `rope_embedder.rope_embedder`)
  is replaced by a fresh `sharp.RoPEEmbedder` built from the family row (one instance per clone, so two
  promoted clones never share a time or an extent); the original model object is never modified
  (object patches are applied while the clone is loaded and reverted afterwards);
- an APPLY_MODEL wrapper (key "sharp", composable with other packs' wrappers) sets, each model call,
  the embedder's time from the sampler's sigma, t = sigma / sigma_max (1 = pure noise), so it follows
  every sampler, scheduler and custom sigma list; and the extent of each spatial axis from the latent
  x the model is called with (`Family.extents_from_x`). That is the one rule for extents, for every
  family: the ids are never read for them, so text or reference tokens that sit on the spatial axes
  (Ovis-Image text, Flux Kontext "uxo" references) never count, and models that embed caption and image
  in separate calls (Lumina 2, Z-Image) rotate both with one scale;
- the noise shift: "sharp" fixes the family's own ComfyUI shift at every size (the row's `flux_shift`:
  Flux.1 mu = 1.15, the authors' Flux pipeline; Flux.2: 2.02) on a ModelSamplingFlux; families sampled
  with ModelSamplingDiscreteFlow (`flux_shift` None) already have a fixed, size-independent shift, which
  "sharp" leaves as it is. "resolution" applies ComfyUI's width/height-dependent Flux.1 shift (the
  ModelSamplingFlux node), with the size read from the latent at sampling time (an OUTER_SAMPLE wrapper
  re-shifts the sigma list); only for families that formula belongs to (`resolution_shift`). "keep"
  leaves the model's noise schedule alone.
- promoting an already promoted model replaces the earlier promotion's RoPE (the last node wins; the
  RoPE methods do not stack) and logs a warning; its noise_shift "keep" keeps the earlier node's
  schedule (a "resolution" wrapper included), any other value replaces it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

import sharp
from sharp import families, rope
from sharp.families import UnsupportedModelError  # noqa: F401  (re-exported: the node's error type)
from sharp.rope import METHODS
from sharp.schedule import flux_resolution_mu, flux_time_shift, flux_time_unshift

log = logging.getLogger(__name__)

PATCH_KEY = "sharp"
"""Key of our wrappers (ComfyUI's `add_wrapper_with_key`)."""

EMBEDDER_PATH = "diffusion_model.pe_embedder"
"""The Flux-style families' embedder path (see `embedder_path` for any family)."""
SAMPLING_PATH = "model_sampling"

NOISE_SHIFTS = ("sharp", "resolution", "keep")

AUTO = "auto"
FAMILY_CHOICES = (AUTO,) + tuple(f.name for f in families.FAMILIES)
"""The node's family override: auto-detect (default) or a family row's name."""

FAMILY_DEFAULT = 0
"""base_resolution value meaning "the family's training resolution"."""


def embedder_path(family: families.Family) -> str:
    """Object-patch path of the family's RoPE embedder, e.g. "diffusion_model.rope_embedder"."""
    return f"diffusion_model.{family.embedder_attr}"


# --- checks ---------------------------------------------------------------------------------------

def detect(model, family: str = AUTO) -> families.Family:
    """The family row of a ModelPatcher's diffusion model (`family`: "auto" or a row name)."""
    check_choice("family", family, FAMILY_CHOICES)
    try:
        diffusion_model = model.get_model_object("diffusion_model")
    except AttributeError:
        diffusion_model = None
    if diffusion_model is None:
        raise UnsupportedModelError(
            f"SHARP Resolution Promotion found no diffusion model in {type(model).__name__}. "
            f"Supported: {families.supported_families_text()}.")
    def effective(attr):  # the embedder the model would run with (object patches included)
        try:
            return model.get_model_object(f"diffusion_model.{attr}")
        except AttributeError:
            return None

    try:
        return families.detect_family(diffusion_model, None if family == AUTO else family, effective)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"SHARP Resolution Promotion cannot patch this model: {err}") from err


def is_flux_sampling(model_sampling) -> bool:
    """True for ComfyUI's ModelSamplingFlux (and subclasses): the mu-shifted flow schedule."""
    return any(c.__name__ == "ModelSamplingFlux" for c in type(model_sampling).__mro__) and hasattr(
        model_sampling, "shift")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_base_resolution(base_resolution: int, px_per_token: int = rope.PATCH_PX, family: str = "Flux.1",
                          family_default: bool = False) -> int:
    """A positive multiple of px_per_token (one RoPE position) in px. family_default: the caller also
    accepts 0 (= the family's training resolution), which the message then mentions."""
    base = int(base_resolution)
    if base < px_per_token or base % px_per_token:
        zero = "0 (the family's training resolution) or " if family_default else ""
        raise ValueError(
            f"base_resolution must be {zero}a positive multiple of {px_per_token} px (one RoPE position of "
            f"{family}), got {base_resolution}."
        )
    return base


# --- time and noise shift -------------------------------------------------------------------------

def reshift_sigmas(sigmas: torch.Tensor, mu_from: float, mu_to: float) -> torch.Tensor:
    """Move a Flux sigma list from shift mu_from to mu_to, keeping each sigma's underlying time t
    (`sharp.schedule.flux_time_shift` and its inverse, in float64). 0 and 1 map to themselves; the order is kept."""
    t = flux_time_unshift(mu_from, sigmas.to(torch.float64))
    return flux_time_shift(mu_to, t).to(sigmas.dtype)


def latent_size_px(latent_image, latent_shapes, latent_px: int) -> tuple[int, int]:
    """(width, height) in image pixels of the latent being sampled ([B, C, (T,) H, W]; latent_px image px
    per latent px)."""
    shape = latent_shapes[0] if latent_shapes else latent_image.shape
    if len(shape) < 4:
        raise ValueError(f"expected an image latent [B, C, H, W], got shape {tuple(shape)}")
    return int(shape[-1]) * latent_px, int(shape[-2]) * latent_px


def rope_options_extents(extents: dict[int, float], spatial_axes: tuple, rope_options: dict | None) -> dict[int, float]:
    """Extents in the positions the model really uses under ComfyUI's `rope_options` (the ScaleROPE node):
    n tokens along an axis sit at shift + k * scale, so they span (n - 1) * scale + 1 positions (height:
    scale_y, width: scale_x). None or {}: the extents as given."""
    if not rope_options:
        return extents
    keys = dict(zip(spatial_axes, ("scale_y", "scale_x")))
    out = {}
    for axis, L in extents.items():
        scale = float(rope_options.get(keys.get(axis, ""), 1.0))
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"rope_options {keys[axis]} must be a positive number, got {scale!r}")
        out[axis] = (L - 1.0) * scale + 1.0
    return out


class StepTime:
    """APPLY_MODEL wrapper: before each model call, set the embedder's time t = sigma / sigma_max from the
    sampler's sigma and its extents from the latent x ([B, C, (T,) H, W]).

    t comes from the sigma the sampler passes to apply_model (the generated image's noise level), not from
    the timestep the diffusion model builds from it: Flux's `ref_latents_method="index_timestep_zero"` runs
    with cat([timestep, 0 * timestep]) inside the model, which never reaches this wrapper.

    It acts on the embedder the model is running with (the object patch of the clone being sampled,
    at `diffusion_model.<family.embedder_attr>`), and on its own embedder when the model has none it
    recognises. Where the family applies ComfyUI's `rope_options` (ScaleROPE) to its ids, the extents are
    those of the scaled positions (`rope_options_extents`), so ScaleROPE and SHARP do not both stretch the
    same axis unseen.

    Deep copies (ComfyUI's MultiGPU clones, `DeepcloneOwnEmbedder`) own a copy of the embedder: no time or
    extent is shared between models that run concurrently.
    """

    def __init__(self, embedder, family: families.Family):
        self.embedder = embedder
        self.family = family

    def __call__(self, executor, x, sigma, *args, **kwargs):
        options = kwargs.get("transformer_options", args[3] if len(args) > 3 else None)
        self.sync(getattr(executor, "class_obj", None), x, sigma, options)
        return executor(x, sigma, *args, **kwargs)

    def sync(self, base_model, x, sigma, transformer_options=None) -> "sharp.RoPEEmbedder":
        """Set time and extents, for latent x at noise level sigma, on the embedder base_model runs with;
        return it. Also called before a ControlNet runs (`sharp.controlnet.ControlNetRoPE`)."""
        sigma_max = getattr(getattr(base_model, "model_sampling", None), "sigma_max", 1.0)
        live = families.get_path(getattr(base_model, "diffusion_model", None), self.family.embedder_attr)
        target = live if isinstance(live, sharp.RoPEEmbedder) else self.embedder
        target.set_time(rope.normalised_time(sigma, sigma_max))  # sigma -> t, checked and clamped (the boundary)
        extents = self.family.extents_from_x(x)
        if self.family.rope_options:
            options = transformer_options or {}
            extents = rope_options_extents(extents, self.family.spatial_axes, options.get("rope_options"))
        target.set_extents(extents)
        return target


class DeepcloneOwnEmbedder:
    """ComfyUI callback (ON_DEEPCLONE_MULTIGPU, ON_MATCH_MULTIGPU_CLONES): `callback(source, clone)`.

    MultiGPU CFG Split deep-clones the promoted patcher onto each device; ComfyUI's clone copies the
    object-patch dict, so every device would otherwise run the same embedder (time, extents and output
    cache) from its own thread. The clone gets a copy of the embedder in its object patch and a new
    StepTime wrapper bound to it."""

    def __init__(self, family: families.Family, apply_model_wrapper: str, calc_cond_batch_wrapper: str | None = None):
        self.family = family
        self.apply_model_wrapper = apply_model_wrapper
        self.calc_cond_batch_wrapper = calc_cond_batch_wrapper

    def __call__(self, source, clone):
        import copy

        path = embedder_path(self.family)
        current = clone.object_patches.get(path)
        if not isinstance(current, sharp.RoPEEmbedder):  # another pack replaced ours: leave it alone
            return
        own = copy.deepcopy(current)
        clone.add_object_patch(path, own)
        clone.remove_wrappers_with_key(self.apply_model_wrapper, PATCH_KEY)
        clone.add_wrapper_with_key(self.apply_model_wrapper, PATCH_KEY, StepTime(own, self.family))
        if self.calc_cond_batch_wrapper is not None:
            from sharp.controlnet import ControlNetRoPE

            clone.remove_wrappers_with_key(self.calc_cond_batch_wrapper, PATCH_KEY)
            clone.add_wrapper_with_key(self.calc_cond_batch_wrapper, PATCH_KEY,
                                       ControlNetRoPE(StepTime(own, self.family)))


class ResolutionShift:
    """OUTER_SAMPLE wrapper: re-shift the sigma list from mu_from to ComfyUI's resolution mu."""

    def __init__(self, mu_from: float, latent_px: int):
        self.mu_from = float(mu_from)
        self.latent_px = int(latent_px)

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        width, height = latent_size_px(latent_image, kwargs.get("latent_shapes"), self.latent_px)
        sigmas = reshift_sigmas(sigmas, self.mu_from, flux_resolution_mu(width, height))
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def __deepcopy__(self, memo):
        return self


# --- the patch ------------------------------------------------------------------------------------

def build_embedder(family: families.Family, method: str = "sharp", base_resolution: int = FAMILY_DEFAULT,
                   params: rope.RoPEParams = rope.RoPEParams(), theta: float | None = None,
                   axes_dim=None) -> "sharp.RoPEEmbedder":
    """A new `sharp.RoPEEmbedder` for the family; base_resolution 0 = the family's training grid;
    theta / axes_dim: the model's own embedder's (default the row's)."""
    check_choice("method", method, METHODS)
    base = None
    if int(base_resolution) != FAMILY_DEFAULT:
        base = check_base_resolution(base_resolution, family.px_per_token, family.name, family_default=True)
    return families.build_embedder(family, method, base, theta=theta, axes_dim=axes_dim, params=params)


def check_noise_shift(model, family: families.Family, noise_shift: str) -> float | None:
    """The mu to fix on a new ModelSamplingFlux, or None to leave the schedule alone; errors say what to pick."""
    check_choice("noise_shift", noise_shift, NOISE_SHIFTS)
    if noise_shift == "keep":
        return None
    if noise_shift == "resolution" and not family.resolution_shift:
        raise UnsupportedModelError(
            f"noise_shift 'resolution' is ComfyUI's size-dependent Flux.1 shift (the ModelSamplingFlux node); "
            f"{family.name} has its own schedule. Set noise_shift to 'sharp' (the family's fixed shift) or 'keep'.")
    if family.flux_shift is None:
        return None  # ModelSamplingDiscreteFlow: a fixed shift at every size already ("sharp" = keep)
    try:
        sampling = model.get_model_object(SAMPLING_PATH)
    except AttributeError:
        sampling = None
    if not is_flux_sampling(sampling):
        raise UnsupportedModelError(
            f"noise_shift {noise_shift!r} sets a Flux noise schedule (ModelSamplingFlux) on this {family.name} "
            f"model, but it uses {type(sampling).__name__} (e.g. from a ModelSampling node). Set noise_shift to "
            "'keep' to sample with that schedule.")
    return family.flux_shift


def promote(model, *, method: str = "sharp", base_resolution: int = FAMILY_DEFAULT, noise_shift: str = "sharp",
            family: str = AUTO,
            apply_model_wrapper: str = "apply_model", outer_sample_wrapper: str = "outer_sample",
            make_flux_sampling: Callable[[float], object] | None = None, deepclone_callbacks: tuple[str, ...] = (),
            calc_cond_batch_wrapper: str | None = None, **params):
    """Return a promoted clone of `model` (a ComfyUI ModelPatcher or a stand-in); `model` is untouched.

    params: the method's constants, fields of `sharp.rope.RoPEParams` (alpha_s, beta, gamma, mscale, ...);
    the ones not given keep the authors' defaults.
    family: "auto" (detect) or a family name (`FAMILY_CHOICES`). base_resolution: px, 0 = the family's.
    apply_model_wrapper / outer_sample_wrapper: ComfyUI's WrappersMP.APPLY_MODEL / OUTER_SAMPLE names.
    make_flux_sampling(mu): a new Flux noise-schedule object with shift mu (needed when noise_shift
    changes a ModelSamplingFlux schedule). deepclone_callbacks: ComfyUI's CallbacksMP names called when the
    patcher is deep-cloned onto another device (ON_DEEPCLONE_MULTIGPU, ON_MATCH_MULTIGPU_CLONES; empty
    where this ComfyUI has none): each clone then owns its embedder (`DeepcloneOwnEmbedder`).
    calc_cond_batch_wrapper: ComfyUI's WrappersMP.CALC_COND_BATCH name: ControlNets then run with the model's
    promoted RoPE, time and extents (`sharp.controlnet.ControlNetRoPE`); None: no ControlNet handling.
    """
    check_choice("noise_shift", noise_shift, NOISE_SHIFTS)
    params = rope.RoPEParams.from_kwargs(**params)
    fam = detect(model, family)
    try:
        original = model.get_model_object(embedder_path(fam))
    except AttributeError:
        original = None
    embedder = build_embedder(fam, method, base_resolution, params, theta=getattr(original, "theta", None),
                              axes_dim=getattr(original, "axes_dim", None))
    mu = check_noise_shift(model, fam, noise_shift)
    if mu is not None and make_flux_sampling is None:
        raise ValueError(f"noise_shift {noise_shift!r} needs make_flux_sampling")

    if isinstance(original, sharp.RoPEEmbedder):
        log.warning("SHARP Resolution Promotion: this model is already promoted (method %r); the later node "
                    "replaces that promotion's RoPE (method %r now) - chaining two does not stack them. Its "
                    "noise_shift %r %s.", original.method, method, noise_shift,
                    "keeps the earlier node's schedule" if noise_shift == "keep" else "replaces the earlier one's")
    patched = model.clone()
    patched.add_object_patch(embedder_path(fam), embedder)
    patched.remove_wrappers_with_key(apply_model_wrapper, PATCH_KEY)
    patched.add_wrapper_with_key(apply_model_wrapper, PATCH_KEY, StepTime(embedder, fam))
    if calc_cond_batch_wrapper is not None:
        from sharp.controlnet import ControlNetRoPE

        patched.remove_wrappers_with_key(calc_cond_batch_wrapper, PATCH_KEY)
        patched.add_wrapper_with_key(calc_cond_batch_wrapper, PATCH_KEY,
                                     ControlNetRoPE(StepTime(embedder, fam)))
    if noise_shift != "keep":  # "keep" keeps the schedule the model came with, an earlier promotion's too
        patched.remove_wrappers_with_key(outer_sample_wrapper, PATCH_KEY)
    if mu is not None:
        patched.add_object_patch(SAMPLING_PATH, make_flux_sampling(mu))
    if noise_shift == "resolution" and mu is not None:
        patched.add_wrapper_with_key(outer_sample_wrapper, PATCH_KEY, ResolutionShift(mu, fam.latent_px))
    for callback in deepclone_callbacks:
        patched.remove_callbacks_with_key(callback, PATCH_KEY)
        patched.add_callback_with_key(callback, PATCH_KEY, DeepcloneOwnEmbedder(fam, apply_model_wrapper,
                                                                                calc_cond_batch_wrapper))
    return patched
