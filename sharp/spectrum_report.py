"""Spectrum comparison of an image batch as the "Spectrum Analysis" node shows it: labels and a table.

The numbers come from `sharp.spectrum`; the figure from `sharp.plots.plot_spectra`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from sharp import spectrum


def parse_labels(text: str | None, count: int) -> list[str]:
    """Labels for `count` images from a comma- or newline-separated string.

    Empty -> "image 1", "image 2", ...; fewer labels than images -> the rest numbered; more -> ValueError.
    """
    parts = [p.strip() for p in re.split(r"[,\n]", text or "")]
    parts = [p for p in parts if p]
    if len(parts) > count:
        raise ValueError(f"got {len(parts)} labels ({', '.join(parts)}) for {count} image(s); "
                         "give one label per image, separated by commas or new lines")
    return parts + [f"image {i + 1}" for i in range(len(parts), count)]


def spectrum_table(images: Sequence, labels: Sequence[str], cutoff: float = 0.5) -> str:
    """A plain-text table: label, size, HF energy ratio above `cutoff` x Nyquist, one row per image."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be a fraction of Nyquist in (0, 1), got {cutoff}")
    width = max([len("image")] + [len(label) for label in labels])
    lines = [f"{'image':<{width}}  {'size':>11}  HF ratio (> {cutoff:g} Nyquist)"]
    for image, label in zip(images, labels):
        ratio = spectrum.hf_energy_ratio(image, cutoff)
        size = f"{image.shape[1]}x{image.shape[0]}"
        lines.append(f"{label:<{width}}  {size:>11}  {ratio:.6f}")
    return "\n".join(lines)
