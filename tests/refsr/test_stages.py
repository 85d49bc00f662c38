"""The shared per-window stages: the reference-detail-transfer input is one function for
super_resolve, scenes and the gain fit, and equals its definition (transfer.py's docstring:
the detail of the Ref aligned with align_reference(..., "local"), gated by the confidence)."""
import dataclasses

import pytest
import torch

from sharp.refsr.config import DSDiTConfig
from sharp.refsr.registration import align_reference
from sharp.refsr.stages import condition_reference, transfer_input
from sharp.refsr.transfer import detail_layer

from refsr.refsr_helpers import smooth_image


def images():
    """(up, ref) [1, 3, 96, 96]: a smooth image, its x4 bicubic round trip, a shifted copy."""
    hr = torch.from_numpy(smooth_image(96, 96, seed=5)).permute(2, 0, 1)[None]
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    up = torch.nn.functional.interpolate(lr, size=(96, 96), mode="bicubic",
                                         align_corners=False).clamp(0, 1)
    return up, torch.roll(hr, (3, -2), dims=(2, 3))


@pytest.mark.parametrize("ref_align", ["global", "local"])
def test_transfer_input_is_the_locally_aligned_gated_detail(ref_align):
    up, ref = images()
    cfg = dataclasses.replace(DSDiTConfig(), ref_align=ref_align)
    g = transfer_input(ref, up, 4, cfg)
    ref_l, conf = align_reference(ref, up, 4, "local")
    want = conf.clamp(0, 1) ** 8 * detail_layer(ref_l, 4)           # g = conf^p * detail(Ref')
    assert torch.equal(g, want) and float(want.abs().max()) > 1e-3
    # condition_reference hands the network its own alignment and the same g
    ref_a, conf_a, gated = condition_reference(ref, up, 4, cfg, True, True)
    assert torch.equal(gated, want)
    assert torch.equal(ref_a, ref_l) == (ref_align == "local")
    # without registration: the Ref as given, its zero-displacement confidence
    ref0, conf0 = align_reference(ref, up, 4, ref_align, register=False)
    assert torch.equal(ref0, ref)
    assert torch.equal(transfer_input(ref, up, 4, cfg, register=False),
                       conf0.clamp(0, 1) ** 8 * detail_layer(ref, 4))


def test_block_noise_is_keyed_by_position():
    """Multi-tile scenes draw x0 from block_noise: any two windows agree where they overlap
    (so tiles see one noise field, whatever the tiling, order or worker), a window is the crop
    of any larger one, and the field is standard normal x temperature, seeded."""
    from sharp.refsr.stages import NOISE_BLOCK, block_noise
    big = block_noise(1.0, 7, 3, 10, 20, 200, 230)                 # rows 10..209, cols 20..249
    a = block_noise(1.0, 7, 3, 40, 50, 96, 96)
    b = block_noise(1.0, 7, 3, 100, 120, 96, 96)
    assert torch.equal(a, big[:, :, 30:126, 30:126]) and torch.equal(b, big[:, :, 90:186, 100:196])
    assert torch.equal(a[:, :, 60:, 70:], b[:, :, :36, :26])      # the overlap of a and b
    assert torch.equal(block_noise(0.5, 7, 3, 40, 50, 96, 96), 0.5 * a)
    assert not bool(block_noise(0.0, 7, 3, 40, 50, 96, 96).any())
    assert not torch.equal(block_noise(1.0, 8, 3, 40, 50, 96, 96), a)
    # neighbouring blocks are different draws, and the field is N(0, 1)
    n = NOISE_BLOCK
    whole = block_noise(1.0, 7, 3, 0, 0, 2 * n, 2 * n)
    assert not torch.equal(whole[..., :n, :n], whole[..., :n, n:])
    assert abs(float(whole.mean())) < 0.03 and abs(float(whole.std()) - 1) < 0.03
