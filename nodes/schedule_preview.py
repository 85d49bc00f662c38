"""Node "SHARP Schedule Preview": what the patch does per step at a size, as an IMAGE (heatmap)."""
from __future__ import annotations

from comfy_api.latest import io

from sharp import families, plots, promotion, rope, schedule

from ._compat import schema_extras
from .spectrum import figure_to_image


DEFAULT = rope.RoPEParams()
FLUX = families.family("Flux.1")
"""The family whose schedule the preview draws (sharp.schedule: Flux's sigmas, 16 px per position)."""


class SchedulePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPSchedulePreview",
            display_name="SHARP Schedule Preview",
            category="SHARP/analysis",
            description=(
                "Heatmap of the RoPE frequencies (f_j / stock f_j) per sampling step for each image axis, with "
                "t and kappa per step: what 'SHARP Resolution Promotion' will do at this size "
                "(the `python -m sharp schedule` figure)."
            ),
            inputs=[
                io.Int.Input("width", default=2048, min=64, max=16384, step=16, tooltip="Image width in pixels."),
                io.Int.Input("height", default=2048, min=64, max=16384, step=16, tooltip="Image height in pixels."),
                io.Combo.Input("method", options=list(rope.METHODS), default=rope.METHODS[0],
                               tooltip="RoPE method, as in SHARP Resolution Promotion."),
                io.Int.Input("steps", default=schedule.FLUX_STEPS, min=1, max=200,
                             tooltip=f"Sampling steps of the Flux schedule (mu {schedule.FLUX_SHIFT_MU}) shown."),
                io.Int.Input("base_resolution", default=promotion.FAMILY_DEFAULT, min=0, max=8192, step=16,
                             tooltip="Training resolution of the model in pixels, as in SHARP Resolution Promotion; "
                                     "0 = the family's own (this preview draws a Flux.1 / RS-FLUX schedule: "
                                     f"{FLUX.base_resolution})."),
                io.Float.Input("alpha_s", default=DEFAULT.alpha_s, min=1.0, max=64.0, step=0.1,
                               tooltip="SHARP decay strength (only used by 'sharp')."),
            ],
            outputs=[io.Image.Output(display_name="heatmap", tooltip="The schedule figure.")],
            **schema_extras(search_aliases=["rope", "resolution", "schedule", "hires", "dype", "yarn"]),
        )

    @classmethod
    def execute(cls, width, height, method=rope.METHODS[0], steps=schedule.FLUX_STEPS,
                base_resolution=promotion.FAMILY_DEFAULT, alpha_s=DEFAULT.alpha_s) -> io.NodeOutput:
        promotion.check_choice("method", method, rope.METHODS)
        base = (FLUX.base_resolution if int(base_resolution) == promotion.FAMILY_DEFAULT
                else promotion.check_base_resolution(base_resolution, FLUX.px_per_token, FLUX.name,
                                                     family_default=True))
        sched = schedule.rope_schedule(int(width), int(height), method=method, steps=int(steps),
                                       base_len=rope.base_len_from_resolution(base, FLUX.px_per_token),
                                       alpha_s=float(alpha_s))
        return io.NodeOutput(figure_to_image(plots.plot_schedule(sched)))
