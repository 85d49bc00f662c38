"""Node "Spectrum Analysis": IMAGE batch -> spectra plotted together (IMAGE) + HF-ratio table (STRING)."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from sharp import plots, spectrum_report

from ._compat import schema_extras


def figure_to_image(fig) -> torch.Tensor:
    """matplotlib figure -> ComfyUI IMAGE [1, H, W, 3] float in [0, 1]."""
    rgb = plots.figure_to_array(fig)
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div(255.0).unsqueeze(0)


class SpectrumAnalysis(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPSpectrumAnalysis",
            display_name="Spectrum Analysis",
            category="SHARP/analysis",
            description=(
                "Radially averaged power spectra of a batch of images on one plot, with the share of "
                "high-frequency energy (HF ratio) in the legend and in a table. Batch base and SHARP outputs "
                "(e.g. with 'Batch Images') to see which keeps fine structures such as vehicles and road markings."
            ),
            inputs=[
                io.Image.Input("images", tooltip="Images to compare (a batch; all rows are analysed)."),
                io.String.Input(
                    "labels", default="", multiline=False,
                    tooltip="One label per image, separated by commas (e.g. 'base, yarn, dype, sharp'). "
                            "Missing labels are numbered.",
                ),
                io.Float.Input(
                    "cutoff", default=0.5, min=0.05, max=0.95, step=0.05,
                    tooltip="HF ratio = spectral energy above this fraction of Nyquist / total energy.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="plot", tooltip="The spectra plotted together."),
                io.String.Output(display_name="table", tooltip="HF ratio per image, one line each."),
            ],
            **schema_extras(search_aliases=["fft", "frequency", "power spectrum", "hf ratio", "hires"]),
        )

    @classmethod
    def execute(cls, images, labels="", cutoff=0.5) -> io.NodeOutput:
        if images.ndim != 4:
            raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
        rows = [images[i] for i in range(images.shape[0])]
        names = spectrum_report.parse_labels(labels, len(rows))
        table = spectrum_report.spectrum_table(rows, names, cutoff)
        plot = figure_to_image(plots.plot_spectra(rows, names, cutoff))
        return io.NodeOutput(plot, table)
