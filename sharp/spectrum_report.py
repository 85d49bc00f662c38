"""Spectrum comparison of an image batch as the "Spectrum Analysis" node shows it: labels and a table.

The numbers come from `sharp.spectrum`; the figure from `sharp.plots.plot_spectra`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from sharp import spectrum


MAX_LABEL_CHARS = 80
"""Longest label: a legend entry (a 1 MB label took matplotlib 89 s to lay out)."""
MAX_LABELS_TEXT = 64 * 1024


def parse_labels(text: str | None, count: int) -> list[str]:
    """Labels for `count` images from a comma- or newline-separated string.

    Empty -> "image 1", "image 2", ...; fewer labels than images -> the rest numbered; more -> ValueError.
    A label longer than MAX_LABEL_CHARS is a ValueError (mathtext in labels: plots.check_labels).
    """
    text = text or ""
    if len(text) > MAX_LABELS_TEXT:
        raise ValueError(f"labels text is {len(text)} characters; give short labels (at most {MAX_LABEL_CHARS} "
                         "characters each), separated by commas or new lines")
    parts = [p.strip() for p in re.split(r"[,\n]", text)]
    parts = [p for p in parts if p]
    for i, p in enumerate(parts):
        if len(p) > MAX_LABEL_CHARS:
            raise ValueError(f"label {i + 1} is {len(p)} characters long ({p[:30]!r}...); labels are legend "
                             f"entries of at most {MAX_LABEL_CHARS} characters")
    if len(parts) > count:
        raise ValueError(f"got {len(parts)} labels ({', '.join(parts)[:300]}) for {count} image(s); "
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
