"""Resolution promotion of a loaded model: the logic behind the "SHARP Resolution Promotion" node.

No ComfyUI import here. `promote()` works on any object with the small part of ComfyUI's
`ModelPatcher` surface it uses (`clone`, `get_model_object`, `add_object_patch`,
`add_wrapper_with_key`, `remove_wrappers_with_key`); the node passes in ComfyUI's wrapper type names
and a factory for a Flux noise-shift object, so this module stays importable (and testable)
without ComfyUI.

What a promoted clone does:
- its `diffusion_model.pe_embedder` is a fresh `sharp.RoPEEmbedder` (one instance per clone, so two
  promoted clones never share a time or an extent) built from the original embedder's theta and
  axes_dim; the original model object is never modified (object patches are applied while the
  clone is loaded and reverted afterwards);
- an APPLY_MODEL wrapper (key "sharp", composable with other packs' wrappers) sets the embedder's
  time each model call from the sampler's sigma: t = sigma / sigma_max (1 = pure noise), so it
  follows every sampler, scheduler and custom sigma list;
- the noise shift: "sharp" fixes Flux's shift at mu = 1.15 at every size (the authors' pipeline);
  "resolution" applies ComfyUI's width/height-dependent Flux shift, with the size read from the
  latent at sampling time (an OUTER_SAMPLE wrapper re-shifts the sigma list); "keep" leaves the
  model's noise schedule alone.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

import sharp
from sharp.rope import METHODS
from sharp.schedule import FLUX_SHIFT_MU, flux_resolution_mu

PATCH_KEY = "sharp"
"""Key of our wrappers (ComfyUI's `add_wrapper_with_key`)."""

EMBEDDER_PATH = "diffusion_model.pe_embedder"
SAMPLING_PATH = "model_sampling"

METHOD_CHOICES = ("sharp", "dype", "yarn", "dy-ntk", "ntk", "pi", "base")
"""The methods in the order the node lists them (default first); the same set as `sharp.rope.METHODS`."""
assert set(METHOD_CHOICES) == set(METHODS)

NOISE_SHIFTS = ("sharp", "resolution", "keep")

SUPPORTED_FAMILIES = (
    "Flux.1 (dev, schnell, Krea, Kontext, Fill, and fine-tunes such as RS-FLUX), Chroma and Chroma Radiance: "
    "DiTs whose `diffusion_model.pe_embedder` is a Flux-style EmbedND over (image index, row, column)"
)

SUPPORTED_MODEL_CLASSES = ("Flux", "Chroma", "ChromaRadiance")
"""ComfyUI diffusion-model classes (or their subclasses) of the supported families. Flux.2 shares the
`Flux` class but has 4 RoPE axes and is refused by the axis check; Qwen-Image (ids centred on the
image), HunyuanVideo (axis 0 is time) and HiDream have other position layouts and are refused."""

LATENT_PX = 8
"""Image pixels per latent pixel (Flux VAE)."""

PATCH_PX = 16
"""Image pixels per token / RoPE position (VAE 8x, patchify 2x2)."""


class UnsupportedModelError(ValueError):
    """The model has no Flux-style positional embedder (or no Flux noise schedule where one is needed)."""


# --- checks ---------------------------------------------------------------------------------------

def flux_embedder_config(embedder, model_name: str = "this model") -> tuple[float, tuple[int, ...]]:
    """(theta, axes_dim) of a Flux-style positional embedder, or UnsupportedModelError naming the families."""
    theta = getattr(embedder, "theta", None)
    axes_dim = getattr(embedder, "axes_dim", None)
    if embedder is None or theta is None or axes_dim is None or not callable(embedder):
        kind = "no pe_embedder" if embedder is None else f"a pe_embedder of type {type(embedder).__name__}"
        raise UnsupportedModelError(
            f"SHARP Resolution Promotion cannot patch {model_name}: it has {kind} without a Flux-style "
            f"theta/axes_dim. Supported: {SUPPORTED_FAMILIES}. Connect a Flux-family MODEL "
            "(e.g. from 'Load Diffusion Model' or 'Load RS-FLUX (diffusers folder)')."
        )
    try:
        axes = tuple(int(d) for d in axes_dim)
        theta = float(theta)
    except (TypeError, ValueError) as err:
        raise UnsupportedModelError(
            f"{model_name}'s pe_embedder has theta={theta!r}, axes_dim={axes_dim!r}, which are not a "
            f"number and a list of ints. Supported: {SUPPORTED_FAMILIES}."
        ) from err
    if len(axes) != 3:
        raise UnsupportedModelError(
            f"{model_name}'s pe_embedder has {len(axes)} axes {axes}; SHARP promotes the Flux.1 layout "
            f"(image index, row, column). Supported: {SUPPORTED_FAMILIES}."
        )
    return theta, axes


def check_family(diffusion_model, model_name: str = "this model") -> None:
    """UnsupportedModelError unless the diffusion model is (a subclass of) a supported family's class."""
    names = {c.__name__ for c in type(diffusion_model).__mro__}
    if diffusion_model is None or not names & set(SUPPORTED_MODEL_CLASSES):
        raise UnsupportedModelError(
            f"SHARP Resolution Promotion cannot patch {model_name}: supported are {SUPPORTED_FAMILIES}. "
            "Connect a Flux-family MODEL (e.g. from 'Load Diffusion Model' or 'Load RS-FLUX (diffusers folder)')."
        )


def is_flux_sampling(model_sampling) -> bool:
    """True for ComfyUI's ModelSamplingFlux (and subclasses): the mu-shifted flow schedule."""
    return any(c.__name__ == "ModelSamplingFlux" for c in type(model_sampling).__mro__) and hasattr(
        model_sampling, "shift")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_base_resolution(base_resolution: int) -> int:
    base = int(base_resolution)
    if base < PATCH_PX or base % PATCH_PX:
        raise ValueError(
            f"base_resolution must be a positive multiple of {PATCH_PX} px (one RoPE position), got "
            f"{base_resolution}; Flux.1 and RS-FLUX were trained at 1024."
        )
    return base


# --- time and noise shift -------------------------------------------------------------------------

def normalised_time(sigma, sigma_max) -> float:
    """t = sigma / sigma_max in [0, 1] (1 = pure noise) from the sampler's sigma.

    sigma may be a tensor with one value per batch row (ComfyUI passes that); rows are sampled at the
    same noise level, the largest is used. Raises ValueError on a non-finite sigma or sigma_max <= 0.
    """
    s = float(torch.as_tensor(sigma, dtype=torch.float64).max())
    smax = float(torch.as_tensor(sigma_max, dtype=torch.float64).max())
    if not math.isfinite(s) or not math.isfinite(smax) or smax <= 0:
        raise ValueError(f"cannot normalise sigma={s} by sigma_max={smax}: both must be finite, sigma_max > 0")
    return min(max(s / smax, 0.0), 1.0)


def reshift_sigmas(sigmas: torch.Tensor, mu_from: float, mu_to: float) -> torch.Tensor:
    """Move a Flux sigma list from shift mu_from to mu_to, keeping each sigma's underlying time.

    Flux: sigma = e^mu / (e^mu + 1/t - 1). 0 and 1 map to themselves; the order is kept.
    """
    s = sigmas.to(torch.float64)
    odds = torch.where(s > 0, (1.0 / s.clamp(min=1e-300)) - 1.0, torch.full_like(s, math.inf))  # 1/sigma - 1
    inv = odds * math.exp(mu_from)  # = 1/t - 1
    out = math.exp(mu_to) / (math.exp(mu_to) + inv)
    out = torch.where(s > 0, out, torch.zeros_like(s))
    return out.to(sigmas.dtype)


def latent_size_px(latent_image, latent_shapes=None) -> tuple[int, int]:
    """(width, height) in image pixels of the latent being sampled."""
    shape = latent_shapes[0] if latent_shapes else latent_image.shape
    if len(shape) < 4:
        raise ValueError(f"expected an image latent [B, C, H, W], got shape {tuple(shape)}")
    return int(shape[-1]) * LATENT_PX, int(shape[-2]) * LATENT_PX


class StepTime:
    """APPLY_MODEL wrapper: set the embedder's time from sigma before each model call.

    It sets the time on the pe_embedder the model is running with (the object patch of the clone
    being sampled), and on its own embedder when the model has none it recognises.
    """

    def __init__(self, embedder):
        self.embedder = embedder

    def __call__(self, executor, x, t, *args, **kwargs):
        base_model = getattr(executor, "class_obj", None)
        sampling = getattr(base_model, "model_sampling", None)
        sigma_max = getattr(sampling, "sigma_max", 1.0)
        time = normalised_time(t, sigma_max)
        live = getattr(getattr(base_model, "diffusion_model", None), "pe_embedder", None)
        target = live if isinstance(live, sharp.RoPEEmbedder) else self.embedder
        target.set_time(time)
        return executor(x, t, *args, **kwargs)

    def __deepcopy__(self, memo):  # model_options get deep-copied; the embedder must stay shared
        return self


class ResolutionShift:
    """OUTER_SAMPLE wrapper: re-shift the sigma list from mu_from to ComfyUI's resolution mu."""

    def __init__(self, mu_from: float = FLUX_SHIFT_MU):
        self.mu_from = float(mu_from)

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        width, height = latent_size_px(latent_image, kwargs.get("latent_shapes"))
        sigmas = reshift_sigmas(sigmas, self.mu_from, flux_resolution_mu(width, height))
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def __deepcopy__(self, memo):
        return self


# --- the patch ------------------------------------------------------------------------------------

def build_embedder(original, method: str = "sharp", base_resolution: int = 1024, alpha_s: float = 4.0,
                   beta: tuple = (1.25, 0.75), gamma: tuple = (16.0, 2.0), mscale: bool = True,
                   model_name: str = "this model") -> "sharp.RoPEEmbedder":
    """A new `sharp.RoPEEmbedder` with the original embedder's theta and axes_dim."""
    theta, axes_dim = flux_embedder_config(original, model_name)
    check_choice("method", method, METHOD_CHOICES)
    base = check_base_resolution(base_resolution)
    return sharp.RoPEEmbedder(theta=theta, axes_dim=axes_dim, method=method, base_len=base // PATCH_PX,
                              alpha_s=float(alpha_s), beta=tuple(beta), gamma=tuple(gamma), mscale=bool(mscale))


def promote(model, *, method: str = "sharp", base_resolution: int = 1024, alpha_s: float = 4.0,
            beta: tuple = (1.25, 0.75), gamma: tuple = (16.0, 2.0), mscale: bool = True,
            noise_shift: str = "sharp", apply_model_wrapper: str = "apply_model",
            outer_sample_wrapper: str = "outer_sample",
            make_flux_sampling: Callable[[float], object] | None = None):
    """Return a promoted clone of `model` (a ComfyUI ModelPatcher or a stand-in); `model` is untouched.

    apply_model_wrapper / outer_sample_wrapper: ComfyUI's WrappersMP.APPLY_MODEL / OUTER_SAMPLE names.
    make_flux_sampling(mu): a new Flux noise-schedule object with shift mu (needed for noise_shift
    "sharp" and "resolution").
    """
    check_choice("noise_shift", noise_shift, NOISE_SHIFTS)
    model_name = _model_name(model)
    try:
        diffusion_model = model.get_model_object("diffusion_model")
    except AttributeError:
        diffusion_model = None
    check_family(diffusion_model, model_name)
    try:
        original = model.get_model_object(EMBEDDER_PATH)
    except AttributeError:
        original = None
    embedder = build_embedder(original, method, base_resolution, alpha_s, beta, gamma, mscale, model_name)

    if noise_shift != "keep":
        try:
            sampling = model.get_model_object(SAMPLING_PATH)
        except AttributeError:
            sampling = None
        if not is_flux_sampling(sampling):
            raise UnsupportedModelError(
                f"noise_shift {noise_shift!r} needs a Flux noise schedule (ModelSamplingFlux), but {model_name} "
                f"uses {type(sampling).__name__}. Set noise_shift to 'keep' for this model."
            )
        if make_flux_sampling is None:
            raise ValueError(f"noise_shift {noise_shift!r} needs make_flux_sampling")

    patched = model.clone()
    patched.add_object_patch(EMBEDDER_PATH, embedder)
    patched.remove_wrappers_with_key(apply_model_wrapper, PATCH_KEY)
    patched.add_wrapper_with_key(apply_model_wrapper, PATCH_KEY, StepTime(embedder))
    patched.remove_wrappers_with_key(outer_sample_wrapper, PATCH_KEY)
    if noise_shift != "keep":
        patched.add_object_patch(SAMPLING_PATH, make_flux_sampling(FLUX_SHIFT_MU))
    if noise_shift == "resolution":
        patched.add_wrapper_with_key(outer_sample_wrapper, PATCH_KEY, ResolutionShift(FLUX_SHIFT_MU))
    return patched


def _model_name(model) -> str:
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    return f"the model ({type(inner).__name__})" if inner is not None else "the model"
