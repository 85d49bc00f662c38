"""sharp.spectrum checked on signals whose spectra are known in closed form."""
import math

import numpy as np
import pytest
import torch

from sharp import spectrum


def sinusoid(n, f_nyq, angle=0.0):
    """cos wave of radial frequency f_nyq (fraction of Nyquist = 0.5 cycles/px) along `angle`."""
    y, x = np.mgrid[0:n, 0:n]
    k = f_nyq * 0.5 * 2 * math.pi
    return 0.5 + 0.4 * np.cos(k * (x * math.cos(angle) + y * math.sin(angle)))


@pytest.mark.parametrize("f0", (0.1, 0.3, 0.62, 0.9))
def test_radial_spectrum_peaks_at_the_sinusoid_frequency(f0):
    freq, power = spectrum.radial_power_spectrum(sinusoid(256, f0, angle=0.4))
    assert freq.shape == power.shape == (128,)
    assert abs(freq[np.argmax(power)] - f0) <= 1.5 / 128  # within the bin width (+ window spread)


def test_hf_ratio_of_pure_tones():
    assert spectrum.hf_energy_ratio(sinusoid(128, 0.8), cutoff=0.5) > 0.99
    assert spectrum.hf_energy_ratio(sinusoid(128, 0.2), cutoff=0.5) < 0.01


def test_hf_ratio_of_white_noise_is_the_area_share_beyond_the_cutoff():
    noise = np.random.default_rng(0).random((256, 256))
    for c in (0.25, 0.5, 0.75):
        area = (4 - math.pi * c * c) / 4  # [-1, 1]^2 minus the disc of radius c, over 4
        assert spectrum.hf_energy_ratio(noise, cutoff=c) == pytest.approx(area, abs=0.02)


def test_white_noise_power_level_does_not_depend_on_size():
    rng = np.random.default_rng(1)
    levels = []
    for n in (64, 256):
        _, p = spectrum.radial_power_spectrum(rng.normal(0.5, 0.1, (n, n)))
        levels.append(np.median(p[2:]))
    assert levels[0] == pytest.approx(0.01, rel=0.25)
    assert levels[1] == pytest.approx(0.01, rel=0.1)


def test_blur_removes_high_frequencies():
    rng = np.random.default_rng(2)
    img = rng.random((128, 128, 3))
    blurred = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, (1, 1), (0, 1))) / 4
    # a 2x2 box has |H(u, v)|^2 = cos^2(pi u / 2) cos^2(pi v / 2) (u, v in fractions of Nyquist):
    # on white noise the HF share is the integral of |H|^2 beyond the cutoff over its total
    u = np.linspace(-1, 1, 1001)
    h2 = np.outer(np.cos(np.pi * u / 2) ** 2, np.cos(np.pi * u / 2) ** 2)
    expected = h2[np.hypot(u[:, None], u[None, :]) > 0.5].sum() / h2.sum()
    assert spectrum.hf_energy_ratio(blurred) == pytest.approx(expected, abs=0.03)
    assert spectrum.hf_energy_ratio(blurred) < 0.6 * spectrum.hf_energy_ratio(img)


def test_log_spectral_distance():
    rng = np.random.default_rng(3)
    a = rng.random((64, 64))
    assert spectrum.log_spectral_distance(a, a) == 0.0
    # twice the contrast -> 4x the power in every bin -> 10 log10(4) dB everywhere
    assert spectrum.log_spectral_distance(2 * a, a) == pytest.approx(10 * math.log10(4), rel=1e-9)
    b = rng.random((64, 64))
    assert 0 < spectrum.log_spectral_distance(a, b) < spectrum.log_spectral_distance(a, 0.1 * b)


def test_input_forms_agree():
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    f = u8 / 255.0
    r = spectrum.hf_energy_ratio(f)
    assert spectrum.hf_energy_ratio(u8) == pytest.approx(r, rel=1e-12)
    assert spectrum.hf_energy_ratio(torch.from_numpy(f).float()) == pytest.approx(r, rel=1e-5)
    rgba = np.concatenate([f, np.ones((40, 50, 1))], -1)
    assert spectrum.hf_energy_ratio(rgba) == pytest.approx(r, rel=1e-12)
    grey = f @ np.array([0.299, 0.587, 0.114])
    assert spectrum.hf_energy_ratio(grey) == pytest.approx(r, rel=1e-12)


def test_flat_image_has_no_hf_energy():
    assert spectrum.hf_energy_ratio(np.full((32, 32), 0.3)) == 0.0


def test_bad_images_are_rejected_clearly():
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        spectrum.hf_energy_ratio(np.zeros(64))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        spectrum.hf_energy_ratio(np.zeros((2, 64, 64, 3)))
    with pytest.raises(ValueError, match="at least 8x8"):
        spectrum.hf_energy_ratio(np.zeros((7, 64)))
    with pytest.raises(ValueError, match="channel-last"):
        spectrum.hf_energy_ratio(np.zeros((64, 64, 8)))
    with pytest.raises(ValueError, match="NaN"):
        spectrum.hf_energy_ratio(np.full((16, 16), np.nan))
    with pytest.raises(ValueError, match="one size"):
        spectrum.log_spectral_distance(np.zeros((16, 16)), np.zeros((16, 17)))
    with pytest.raises(ValueError, match="cutoff"):
        spectrum.hf_energy_ratio(np.zeros((16, 16)), cutoff=0)
