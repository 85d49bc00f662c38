"""Node "SHARP Resolution Promotion": MODEL -> MODEL with SHARP's per-step RoPE (logic: sharp.promotion)."""
from __future__ import annotations

import comfy.model_sampling
import comfy.patcher_extension
from comfy_api.latest import io

from sharp import promotion
from sharp.schedule import FLUX_SHIFT_MU

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


class ResolutionPromotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        adv = advanced()
        return io.Schema(
            node_id="SHARPResolutionPromotion",
            display_name="SHARP Resolution Promotion",
            category="SHARP/model_patches",
            description=(
                "Generate above the training resolution with a multi-axis RoPE DiT (Flux.1/2, Ovis-Image, "
                "Chroma, Chroma Radiance, Qwen-Image, Z-Image, Lumina 2, HunyuanImage 2.1; detected "
                "automatically): replaces the model's RoPE with SHARP's per-step promoted frequencies (or a "
                "baseline). The image size is read from the latent at run time, so one node serves every "
                "size. Returns a patched copy; the input model is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A multi-axis RoPE DiT: Flux.1 (dev/schnell/Krea/Kontext/Fill, RS-FLUX), "
                                               "Flux.2, Ovis-Image, Chroma, Chroma Radiance, Qwen-Image, Z-Image, "
                                               "Lumina 2, HunyuanImage 2.1, HiDream, OmniGen2, LongCat-Image, Krea 2, "
                                               "Lens, Mage-Flow, Boogu or ERNIE-Image. SD1.5/SDXL/SD3 have no RoPE to promote."),
                io.Combo.Input(
                    "method", options=list(promotion.METHOD_CHOICES), default="sharp",
                    tooltip=(
                        "sharp: per-step YaRN that relaxes toward stock RoPE as noise falls (recommended). "
                        "dype: Dy-YaRN. yarn: static YaRN. dy-ntk: dynamic NTK. ntk, pi: static scaling. "
                        "base: stock RoPE (no change, for comparisons)."
                    ),
                ),
                io.Int.Input(
                    "base_resolution", default=promotion.FAMILY_DEFAULT, min=0, max=8192, step=16,
                    tooltip="Training resolution of the model in pixels; 0 = the detected family's own (Flux.1, "
                            "RS-FLUX, Flux.2, Chroma, Z-Image, Lumina 2, HiDream, OmniGen2, LongCat-Image, Krea 2, "
                            "Mage-Flow, Boogu, ERNIE-Image: 1024; Qwen-Image: 1328; Lens: 1440; HunyuanImage 2.1: 2048). Axes at or below it are left exactly as stock RoPE.",
                ),
                io.Float.Input(
                    "alpha_s", default=4.0, min=1.0, max=64.0, step=0.1,
                    tooltip="SHARP decay strength: kappa(t) = t / (alpha_s - (alpha_s - 1) t). 1 = linear in the "
                            "noise level; larger = returns to stock frequencies earlier. Only used by 'sharp'.",
                ),
                io.Combo.Input(
                    "noise_shift", options=list(promotion.NOISE_SHIFTS), default="sharp",
                    tooltip=(
                        f"sharp: the family's fixed noise shift at every size (Flux.1, Chroma, Ovis, Qwen-Image: "
                        f"mu = {FLUX_SHIFT_MU}, as the SHARP authors sample; Flux.2: 2.02; Z-Image, Lumina 2, "
                        "HunyuanImage 2.1, HiDream and OmniGen2 already use a fixed shift, left as is). resolution: "
                        "ComfyUI's width/height-dependent Flux.1 shift, size read from the latent (Flux.1, Ovis, "
                        "Chroma only). keep: leave the model's schedule (e.g. from a ModelSampling node) alone."
                    ),
                ),
                io.Float.Input(
                    "beta_lo", default=1.25, min=0.01, max=128.0, step=0.01,
                    tooltip="YaRN stage-1 rotation count r_lo (PI <-> NTK blend). Paper default 1.25.", **adv,
                ),
                io.Float.Input(
                    "beta_hi", default=0.75, min=0.01, max=128.0, step=0.01,
                    tooltip="YaRN stage-1 rotation count r_hi. Paper default 0.75.", **adv,
                ),
                io.Float.Input(
                    "gamma_lo", default=16.0, min=0.01, max=1024.0, step=0.1,
                    tooltip="YaRN stage-2 rotation count r_lo (blend back to stock RoPE for fast dims). Default 16.",
                    **adv,
                ),
                io.Float.Input(
                    "gamma_hi", default=2.0, min=0.01, max=1024.0, step=0.1,
                    tooltip="YaRN stage-2 rotation count r_hi. Default 2.", **adv,
                ),
                io.Boolean.Input(
                    "mscale", default=True,
                    tooltip="Attention temperature 1 + 0.1 ln(s) on promoted axes (yarn, dype, sharp only).", **adv,
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
    def execute(cls, model, method="sharp", base_resolution=promotion.FAMILY_DEFAULT, alpha_s=4.0,
                noise_shift="sharp", beta_lo=1.25, beta_hi=0.75, gamma_lo=16.0, gamma_hi=2.0, mscale=True,
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
