"""Node "SHARP Flux Sigmas (diffusers)": the exact sigma list of diffusers' FluxPipeline (logic: sharp.schedule)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from sharp import schedule

from ._compat import schema_extras

SHIFTS = ("fixed", "resolution")


class FluxSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPFluxSigmas",
            display_name="SHARP Flux Sigmas (diffusers)",
            category="SHARP/custom_sampling",
            description=(
                "The sigmas diffusers' FluxPipeline samples with (FlowMatchEulerDiscreteScheduler): "
                "linspace(1, 1/N, N) under the exponential time shift e^mu / (e^mu + 1/t - 1), then 0. "
                "The SHARP authors' pipeline runs on exactly this list; ComfyUI's 'simple' scheduler rounds "
                "time to a 10,000-entry table instead. Feed it to SamplerCustomAdvanced."
            ),
            inputs=[
                io.Int.Input("steps", default=schedule.FLUX_STEPS, min=1, max=10000,
                             tooltip="Number of sampling steps N."),
                io.Combo.Input(
                    "shift", options=list(SHIFTS), default="fixed",
                    tooltip=f"fixed: use mu below at every size (the SHARP authors: {schedule.FLUX_SHIFT_MU}). "
                            "resolution: mu from width x height as diffusers' FluxPipeline computes it "
                            "(calculate_shift: 0.5 at 256 tokens, 1.15 at 4096 tokens, linear in between and beyond).",
                ),
                io.Float.Input("mu", default=schedule.FLUX_SHIFT_MU, min=-20.0, max=20.0, step=0.01,
                               tooltip="The time shift mu for shift = fixed (ignored for resolution)."),
                io.Int.Input("width", default=2048, min=16, max=16384, step=16,
                             tooltip="Image width in pixels (only for shift = resolution; rounded down to 16 as "
                                     "diffusers does)."),
                io.Int.Input("height", default=2048, min=16, max=16384, step=16,
                             tooltip="Image height in pixels (only for shift = resolution; rounded down to 16)."),
            ],
            outputs=[io.Sigmas.Output(tooltip="N + 1 sigmas from 1 to 0, float32.")],
            **schema_extras(search_aliases=["flow match euler", "flux scheduler", "diffusers sigmas", "shift",
                                            "resolution"]),
        )

    @classmethod
    def execute(cls, steps=schedule.FLUX_STEPS, shift="fixed", mu=schedule.FLUX_SHIFT_MU, width=2048,
                height=2048) -> io.NodeOutput:
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
        if shift == "resolution":
            mu = schedule.diffusers_flux_mu(int(width), int(height))
        return io.NodeOutput(torch.from_numpy(schedule.flow_match_euler_sigmas(int(steps), float(mu))))
