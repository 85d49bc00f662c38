import pytest
import torch

from refsr.refsr_helpers import TINY, randomised
from sharp.refsr.config import PRESETS, DSDiTConfig
from sharp.refsr.model import DSDiT, patchify, unpatchify


def test_patchify_round_trip():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 2, 3, 48)
    assert torch.equal(unpatchify(p, 4), x)


def test_forward_shapes_and_weights():
    model = randomised(TINY)
    x = torch.randn(2, 3, 16, 24)
    v, ws = model(x, torch.rand(2), x, x, return_weights=True)
    assert v.shape == x.shape
    assert len(ws) == TINY.depth and ws[0].shape == (2, 4, 6, 1)
    assert all(w is None for w in model(x, torch.rand(2), x, None, return_weights=True)[1])


def test_fresh_model_predicts_zero_velocity():
    """adaLN-zero + zero output layer: an untrained model is the identity flow (bicubic)."""
    model = DSDiT(TINY)
    x = torch.randn(1, 3, 8, 8)
    assert torch.count_nonzero(model(x, torch.rand(1), x, x)) == 0


def test_translation_equivariance_in_the_interior():
    """Local attention + convs: shifting all inputs by one token shifts the output (away from
    the border), the property that makes tiles blend without seams."""
    model = randomised(TINY)
    g = torch.Generator().manual_seed(1)
    x, lr, ref = (torch.randn(1, 3, 96, 96, generator=g) for _ in range(3))
    t = torch.tensor([0.3])
    v = model(x, t, lr, ref)
    s = 4                                                        # one token
    v2 = model(x.roll(s, dims=-1), t, lr.roll(s, dims=-1), ref.roll(s, dims=-1))
    assert torch.allclose(v2[..., 40:56, 44:60], v[..., 40:56, 40:56], atol=1e-5)
    assert not torch.allclose(v2[..., 40:56, 40:56], v[..., 40:56, 40:56], atol=1e-3)


def test_grid_not_multiple_of_patch_is_rejected():
    with pytest.raises(ValueError, match="multiple of patch"):
        DSDiT(TINY)(torch.randn(1, 3, 10, 12), torch.rand(1), torch.randn(1, 3, 10, 12))


def test_presets_are_valid_and_small_is_small():
    for cfg in PRESETS.values():
        cfg.validate()
    n = sum(p.numel() for p in DSDiT(PRESETS["small"]).parameters())
    assert n < 1_000_000                                        # a few MB at most in fp32
    with pytest.raises(ValueError, match="divisible"):
        DSDiTConfig(dim=10, heads=4).validate()


def test_precomputed_conditions_match_and_highpass_is_optional():
    for cfg in (TINY, DSDiTConfig(dim=16, depth=1, heads=2, encoder_depth=1, plw_hidden=4)):
        model = randomised(cfg)
        x, lr, ref = (torch.randn(2, 3, 16, 16) for _ in range(3))
        t = torch.tensor([0.2, 0.7])
        direct = model(x, t, lr, ref)
        cached = model(x, t, lr * 0, ref * 0, conds=model.encode_conditions(lr, ref))
        assert torch.equal(direct, cached)
    with pytest.raises(ValueError, match="true/false"):
        DSDiTConfig.from_dict({"cond_highpass": 1})
