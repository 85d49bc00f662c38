"""Spectrum tools: how much high-frequency structure an image keeps.

Images are numpy arrays or torch tensors, H x W (grey) or H x W x C (channel last, C in 1..4, as
PIL and ComfyUI's IMAGE rows), float in [0, 1] or integer 0..255. Colour images are reduced to
luminance (Rec. 601). Frequencies are radii in fractions of Nyquist (1.0 = 0.5 cycles/pixel along
an axis; the corners of the 2-D spectrum reach sqrt(2)).
"""
from __future__ import annotations

import numpy as np

MIN_SIZE = 8
_LUMA = np.array([0.299, 0.587, 0.114])


def to_luminance(image) -> np.ndarray:
    """H x W or H x W x C image -> float64 H x W luminance in [0, 1]-ish units."""
    if hasattr(image, "detach"):  # torch tensor (bfloat16 has no numpy twin)
        image = image.detach().cpu()
        image = (image.float() if image.is_floating_point() else image).numpy()
    a = np.asarray(image)
    is_integer = np.issubdtype(a.dtype, np.integer)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"image must be a numeric array, got dtype {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"image must be a 2-D (H x W) or 3-D (H x W x C) array, got shape {a.shape}; "
                         "pass one image of a batch at a time")
    if a.ndim == 3 and a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"3-D images must be channel-last H x W x C with C <= 4, got shape {a.shape}; "
                         "transpose C x H x W tensors first")
    if min(a.shape[:2]) < MIN_SIZE:
        raise ValueError(f"image is {a.shape[0]}x{a.shape[1]} px; the spectrum needs at least "
                         f"{MIN_SIZE}x{MIN_SIZE} px")
    a = a.astype(np.float64)
    if is_integer:
        a = a / 255.0
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    if a.ndim == 3:
        c = a.shape[2]
        a = a[..., 0] if c <= 2 else a[..., :3] @ _LUMA  # drop alpha
    return a


def power_spectrum_2d(image, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Centred 2-D power spectrum of the mean-removed (Hann-windowed) luminance, and the radius of
    each bin in fractions of Nyquist. Both H x W.

    Power is |FFT|^2 / sum(window^2), so white noise of variance v has power v in every bin at any
    image size, and spectra of images of different sizes compare directly.
    """
    a = to_luminance(image)
    a = a - a.mean()
    w = np.ones_like(a)
    if window:  # separable Hann: suppresses the edge discontinuity that would leak into every bin
        w = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2(a * w))) ** 2 / np.sum(w ** 2)
    fy = np.fft.fftshift(np.fft.fftfreq(a.shape[0])) / 0.5  # cycles/px -> fraction of Nyquist
    fx = np.fft.fftshift(np.fft.fftfreq(a.shape[1])) / 0.5
    radius = np.hypot(fy[:, None], fx[None, :])
    return power, radius


def radial_power_spectrum(image, n_bins: int | None = None, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum up to Nyquist.

    Returns (freq [n_bins] bin centres in fractions of Nyquist, power [n_bins] mean power per bin).
    Default n_bins = min(H, W) // 2 (one bin per frequency step of the shorter side).
    """
    power, radius = power_spectrum_2d(image, window)
    n_bins = n_bins or min(power.shape) // 2
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(radius.ravel(), edges) - 1  # bin index; DC falls in bin 0
    inside = (which >= 0) & (which < n_bins)
    total = np.bincount(which[inside], weights=power.ravel()[inside], minlength=n_bins)
    count = np.bincount(which[inside], minlength=n_bins)
    freq = 0.5 * (edges[:-1] + edges[1:])
    return freq, total / np.maximum(count, 1)


def hf_energy_ratio(image, cutoff: float = 0.5, window: bool = True) -> float:
    """Share of the (non-DC) spectral energy at radii above `cutoff` x Nyquist, corners included."""
    if not 0.0 < cutoff < np.sqrt(2):
        raise ValueError(f"cutoff is a fraction of Nyquist in (0, 1.41), got {cutoff}")
    if np.ptp(to_luminance(image)) == 0:
        return 0.0  # a flat image has no structure at any frequency
    power, radius = power_spectrum_2d(image, window)
    total = power[radius > 0].sum()
    return float(power[radius > cutoff].sum() / total)


def log_spectral_distance(a, b, n_bins: int | None = None, window: bool = True, eps: float = 1e-12) -> float:
    """Log-spectral distance in dB between the radial power spectra of two same-size images:
    sqrt(mean_k (10 log10(P_a(k) / P_b(k)))^2) over the bins above DC. 0 for identical spectra."""
    la, lb = to_luminance(a), to_luminance(b)
    if la.shape != lb.shape:
        raise ValueError(f"log-spectral distance needs images of one size, got {la.shape} and {lb.shape}; "
                         "resize one first")
    _, pa = radial_power_spectrum(la, n_bins, window)
    _, pb = radial_power_spectrum(lb, n_bins, window)
    d = 10.0 * np.log10((pa[1:] + eps) / (pb[1:] + eps))
    return float(np.sqrt(np.mean(d ** 2)))
