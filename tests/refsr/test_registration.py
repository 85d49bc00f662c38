import pytest
import torch

from refsr.refsr_helpers import smooth_image
from sharp.refsr.registration import (match_colour, phase_correlation, register_reference,
                                      shift_image, to_grey)


def _img(seed, size=96):
    return torch.from_numpy(smooth_image(size, size, seed)).permute(2, 0, 1)[None]


@pytest.mark.parametrize("dy,dx", [(0, 0), (3, -5), (-7, 2), (8, 8), (-1, 0)])
def test_phase_correlation_recovers_known_shifts(dy, dx):
    img = _img(0)
    moved = shift_image(img, -dy, -dx)                 # content moved the other way
    est = phase_correlation(to_grey(img), to_grey(moved))
    assert est.tolist() == [[dy, dx]]


def test_register_reference_undoes_shift_and_colour():
    hr = _img(1)
    up = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(hr, 4), scale_factor=4,
                                         mode="bicubic", align_corners=False).clamp(0, 1)
    ref = shift_image(hr, 5, -3) * torch.tensor([0.7, 1.1, 0.9]).view(1, 3, 1, 1) + 0.05
    reg, shifts = register_reference(ref.clamp(0, 1), up, scale=4)
    # against a blurred LR the estimate may be off by one pixel, never by a whole LR pixel
    assert abs(int(shifts[0, 0]) + 5) <= 1 and abs(int(shifts[0, 1]) - 3) <= 1, shifts
    inner = (slice(None), slice(None), slice(10, -10), slice(10, -10))
    err_before = float((ref[inner] - hr[inner]).abs().mean())
    err_after = float((reg[inner] - hr[inner]).abs().mean())
    assert err_after < 0.3 * err_before


def test_match_colour_matches_moments():
    a, b = _img(2), _img(3) * 0.5 + 0.2
    out = match_colour(a, b)
    assert torch.allclose(out.mean((-2, -1)), b.mean((-2, -1)), atol=0.02)
    assert torch.allclose(out.std((-2, -1)), b.std((-2, -1)), atol=0.02)


def test_implausible_shift_is_not_applied():
    a, b = _img(4), _img(5)
    reg, shifts = register_reference(b, a, scale=1, max_shift=0, colour=False)
    if shifts.abs().sum() == 0:
        assert torch.equal(reg, b)


def test_metrics_against_known_values():
    import numpy as np

    from sharp.refsr.metrics import psnr, ssim

    a = np.full((32, 32, 3), 100 / 255)
    b = np.full((32, 32, 3), 110 / 255)
    assert abs(psnr(a, b) - 10 * np.log10(255 ** 2 / 100)) < 1e-9   # MSE of 10^2
    img = _img(6, 64)[0].permute(1, 2, 0).numpy()
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.1, img.shape), 0, 1)
    assert 0 < ssim(img, noisy) < 0.9
