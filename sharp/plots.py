"""Figures for the CLI and the nodes: the schedule heatmap and spectra plotted together.

matplotlib is imported lazily with the non-interactive Agg backend, so importing `sharp` never
needs a display, and a server never opens a window.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sharp import spectrum
from sharp.schedule import Schedule


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_schedule(schedule: Schedule):
    """Heatmap of f_j / base_j per step for each spatial axis, plus t and kappa per step. -> Figure."""
    plt = _pyplot()
    fig, axs = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    steps = np.arange(len(schedule.t))
    for ax, axis in zip(axs[:2], schedule.axes):
        im = ax.imshow(axis.ratio.T, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=1.0,
                       extent=(-0.5, len(steps) - 0.5, -0.5, axis.ratio.shape[1] - 0.5), interpolation="nearest")
        ax.set_title(f"{axis.name}: {axis.tokens} tokens, s = {axis.scale:.2f}, mscale = {axis.mscale:.3f}",
                     fontsize=9)
        ax.set_xlabel("sampling step")
    axs[0].set_ylabel("frequency index j (high -> low)")
    fig.colorbar(im, ax=axs[:2], label="f_j / base_j (1 = stock RoPE)", shrink=0.9)
    ax = axs[2]
    ax.plot(steps, schedule.t, "o-", ms=3, label="t = sigma / sigma_max")
    if schedule.kappa[0] is not None:
        ax.plot(steps, schedule.kappa, "s-", ms=3, label=f"kappa(t) ({schedule.method})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sampling step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{schedule.method} at {schedule.width}x{schedule.height} px, {len(steps)} steps", fontsize=11)
    return fig


def check_labels(labels: Sequence[str]) -> None:
    """Labels are drawn by matplotlib, which reads text between $ signs as mathtext: a label whose mathtext
    does not parse is a ValueError naming it (rather than matplotlib's error when the figure is drawn)."""
    _pyplot()
    from matplotlib import cbook
    from matplotlib.mathtext import MathTextParser

    parser = MathTextParser("path")
    for label in labels:
        if cbook.is_math_text(label):
            try:
                parser.parse(label)
            except ValueError as err:
                first = str(err).strip().splitlines()[-1][:200]
                raise ValueError(f"label {label!r}: text between $ signs is matplotlib mathtext and this does not "
                                 f"parse ({first}); fix it or write a literal dollar sign as \\$") from None


def plot_spectra(images: Sequence, labels: Sequence[str] | None = None, cutoff: float = 0.5):
    """Radially averaged power spectra of several images on one log plot, HF ratio in the legend."""
    plt = _pyplot()
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(len(images))]
    if len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    check_labels(labels)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for image, label in zip(images, labels):
        freq, power = spectrum.radial_power_spectrum(image)
        hf = spectrum.hf_energy_ratio(image, cutoff)
        ax.semilogy(freq[1:], power[1:] + 1e-20, label=f"{label} (HF {hf:.2%})")
    ax.axvline(cutoff, color="grey", ls="--", lw=1)
    ax.set_xlabel("radial frequency (fraction of Nyquist)")
    ax.set_ylabel("mean power")
    ax.set_title(f"Radially averaged power spectrum (HF = energy above {cutoff:g} x Nyquist)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def figure_to_array(fig, dpi: int = 100) -> np.ndarray:
    """Render a figure to an RGB uint8 array H x W x 3 and close it."""
    plt = _pyplot()
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].copy()


def save_figure(fig, path, dpi: int = 120) -> None:
    plt = _pyplot()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
