"""Node "SHARP Resolution Promotion": MODEL -> MODEL with SHARP's per-step RoPE (logic: sharp.promotion)."""
from __future__ import annotations

import comfy.model_sampling
import comfy.patcher_extension
from comfy_api.latest import io

from sharp import families, promotion, rope

from ._compat import advanced, schema_extras


def _flux_sampling_factory(model):
    """New Flux noise schedules for `model` (as ComfyUI's ModelSamplingFlux node builds them); only
    called for families sampled with ModelSamplingFlux."""

    class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    def make(mu: float):
        sampling = ModelSamplingAdvanced(model.model.model_config)
        sampling.set_parameters(shift=mu)
        return sampling

    return make


def _deepclone_callbacks() -> tuple[str, ...]:
    """ComfyUI's callbacks for MultiGPU deep clones (absent before MultiGPU CFG Split)."""
    callbacks = getattr(comfy.patcher_extension, "CallbacksMP", None)
    names = ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES")
    return tuple(getattr(callbacks, n) for n in names if hasattr(callbacks, n))


DEFAULT = rope.RoPEParams()
"""The authors' constants: the inputs' defaults."""

_FLOW = [f for f in families.FAMILIES if f.flux_shift is None]
_RESOLUTION = [f for f in families.FAMILIES if f.resolution_shift]
_MSCALE = ", ".join(m for m in rope.METHODS if m in rope.MSCALE_METHODS)


class ResolutionPromotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        adv = advanced()
        return io.Schema(
            node_id="SHARPResolutionPromotion",
            display_name="SHARP Resolution Promotion",
            category="SHARP/model_patches",
            description=(
                f"Generate above the training resolution with a multi-axis RoPE DiT ({families.names_text()}; "
                "detected automatically): replaces the model's RoPE with SHARP's per-step promoted frequencies (or a "
                "baseline). The image size is read from the latent at run time, so one node serves every "
                "size. Returns a patched copy; the input model is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip=f"A multi-axis RoPE DiT: {families.names_text()} (Flux.1: dev, "
                                               "schnell, Krea, Kontext, Fill and fine-tunes such as RS-FLUX). "
                                               "SD1.5/SDXL/SD3 have no RoPE to promote."),
                io.Combo.Input(
                    "method", options=list(rope.METHODS), default=rope.METHODS[0],
                    tooltip=(
                        "sharp: per-step YaRN that relaxes toward stock RoPE as noise falls (recommended). "
                        "dype: Dy-YaRN. yarn: static YaRN. dy-ntk: dynamic NTK. ntk, pi: static scaling. "
                        "base: stock RoPE (no change, for comparisons)."
                    ),
                ),
                io.Int.Input(
                    "base_resolution", default=promotion.FAMILY_DEFAULT, min=0, max=8192, step=16,
                    tooltip="Training resolution of the model in pixels; 0 = the detected family's own ("
                            + families.grouped_text(lambda f: f.base_resolution, "{names}: {value}")
                            + "). Axes at or below it are left exactly as stock RoPE.",
                ),
                io.Float.Input(
                    "alpha_s", default=DEFAULT.alpha_s, min=1.0, max=64.0, step=0.1,
                    tooltip="SHARP decay strength: kappa(t) = t / (alpha_s - (alpha_s - 1) t). 1 = linear in the "
                            "noise level; larger = returns to stock frequencies earlier. Only used by 'sharp'.",
                ),
                io.Combo.Input(
                    "noise_shift", options=list(promotion.NOISE_SHIFTS), default=promotion.NOISE_SHIFTS[0],
                    tooltip=(
                        "sharp: the family's fixed noise shift at every size ("
                        + families.grouped_text(lambda f: f.flux_shift, "{names}: mu = {value:g}")
                        + f"; the SHARP authors sample Flux.1 so; {families.names_text(_FLOW)} already use a fixed "
                        "shift, left as is). resolution: ComfyUI's width/height-dependent Flux.1 shift, size read "
                        f"from the latent ({families.names_text(_RESOLUTION)} only). keep: leave the model's "
                        "schedule (e.g. from a ModelSampling node) alone."
                    ),
                ),
                io.Float.Input(
                    "beta_lo", default=DEFAULT.beta[0], min=0.01, max=128.0, step=0.01,
                    tooltip=f"YaRN stage-1 rotation count r_lo (PI <-> NTK blend). Paper default {DEFAULT.beta[0]:g}.",
                    **adv,
                ),
                io.Float.Input(
                    "beta_hi", default=DEFAULT.beta[1], min=0.01, max=128.0, step=0.01,
                    tooltip=f"YaRN stage-1 rotation count r_hi. Paper default {DEFAULT.beta[1]:g}.", **adv,
                ),
                io.Float.Input(
                    "gamma_lo", default=DEFAULT.gamma[0], min=0.01, max=1024.0, step=0.1,
                    tooltip="YaRN stage-2 rotation count r_lo (blend back to stock RoPE for fast dims). "
                            f"Default {DEFAULT.gamma[0]:g}.", **adv,
                ),
                io.Float.Input(
                    "gamma_hi", default=DEFAULT.gamma[1], min=0.01, max=1024.0, step=0.1,
                    tooltip=f"YaRN stage-2 rotation count r_hi. Default {DEFAULT.gamma[1]:g}.", **adv,
                ),
                io.Boolean.Input(
                    "mscale", default=DEFAULT.mscale,
                    tooltip=f"Attention temperature 1 + {DEFAULT.mscale_coeff:g} ln(s) on promoted axes ({_MSCALE} "
                            "only).", **adv,
                ),
                io.Combo.Input(
                    "family", options=list(promotion.FAMILY_CHOICES), default=promotion.AUTO,
                    tooltip="auto: detect the model family from its class and RoPE embedder (recommended). Pick a "
                            "family only if detection is wrong, e.g. a fork with other RoPE constants.", **adv,
                ),
            ],
            outputs=[io.Model.Output(tooltip="The patched copy of the model.")],
            **schema_extras(search_aliases=["rope", "resolution", "hires", "high resolution", "upscale", "dype", "yarn", "ntk", "position interpolation"]),
        )

    @classmethod
    def execute(cls, model, method=rope.METHODS[0], base_resolution=promotion.FAMILY_DEFAULT, alpha_s=DEFAULT.alpha_s,
                noise_shift=promotion.NOISE_SHIFTS[0], beta_lo=DEFAULT.beta[0], beta_hi=DEFAULT.beta[1],
                gamma_lo=DEFAULT.gamma[0], gamma_hi=DEFAULT.gamma[1], mscale=DEFAULT.mscale,
                family=promotion.AUTO) -> io.NodeOutput:
        # `family` is the last input so that workflows saved before it existed keep their widget order
        patched = promotion.promote(
            model, method=method, base_resolution=base_resolution, alpha_s=alpha_s,
            beta=(beta_lo, beta_hi), gamma=(gamma_lo, gamma_hi), mscale=mscale, noise_shift=noise_shift,
            family=family,
            apply_model_wrapper=comfy.patcher_extension.WrappersMP.APPLY_MODEL,
            outer_sample_wrapper=comfy.patcher_extension.WrappersMP.OUTER_SAMPLE,
            calc_cond_batch_wrapper=comfy.patcher_extension.WrappersMP.CALC_COND_BATCH,
            make_flux_sampling=_flux_sampling_factory(model),
            deepclone_callbacks=_deepclone_callbacks(),
        )
        return io.NodeOutput(patched)
