import numpy as np
import pytest
import torch

from refsr.refsr_helpers import TINY, randomised, smooth_image
from sharp.refsr.api import prepare_inputs, reference_weight_map, super_resolve
from sharp.refsr.config import DSDiTConfig
from sharp.refsr.model import DSDiT
from sharp.refsr.space import CallableVAE


@pytest.fixture(scope="module")
def model():
    return randomised(TINY)


def test_layouts_round_trip(model):
    lr, ref = smooth_image(12, 16, 0), smooth_image(48, 64, 1)
    out = super_resolve(model, lr, ref, steps=2)
    assert isinstance(out, np.ndarray) and out.shape == (48, 64, 3)
    assert 0.0 <= out.min() and out.max() <= 1.0
    batch = super_resolve(model, torch.from_numpy(np.stack([lr, lr])),
                          torch.from_numpy(np.stack([ref, ref])), steps=2)
    assert torch.is_tensor(batch) and batch.shape == (2, 48, 64, 3)
    assert np.allclose(batch[0].numpy(), out, atol=1e-5)        # same seed, same noise crop
    weak = super_resolve(model, lr, None, steps=2)
    assert weak.shape == out.shape and not np.allclose(weak, out)
    # sides that are not a multiple of the token size are padded internally and cropped back
    odd = super_resolve(model, smooth_image(11, 13, 2), smooth_image(44, 52, 3), steps=1)
    assert odd.shape == (44, 52, 3)
    x2 = super_resolve(model, lr, smooth_image(24, 32, 4), scale=2, steps=1)
    assert x2.shape == (24, 32, 3)


def test_guidance_one_equals_plain_ref(model):
    lr, ref = smooth_image(12, 12, 0), smooth_image(48, 48, 1)
    a = super_resolve(model, lr, ref, steps=2, guidance=1.0, seed=3)
    b = super_resolve(model, lr, ref, steps=2, guidance=2.0, seed=3)
    c = super_resolve(model, lr, ref, steps=2, guidance=1.0, seed=4)
    assert not np.allclose(a, b) and not np.allclose(a, c)
    assert np.array_equal(a, super_resolve(model, lr, ref, steps=2, guidance=1.0, seed=3))


def test_bad_inputs(caplog):
    lr, ref = smooth_image(12, 12, 0), smooth_image(48, 48, 1)
    with pytest.raises(ValueError, match="larger than the Ref"):
        prepare_inputs(ref, lr, 4)
    with pytest.raises(ValueError, match="batch"):
        prepare_inputs(np.stack([lr, lr]), ref[None], 4)
    with pytest.raises(ValueError, match="RGB"):
        prepare_inputs(np.concatenate([lr, lr[..., :1]], -1), ref, 4)
    with pytest.raises(ValueError, match="RGB"):
        prepare_inputs(lr[..., :1], ref, 4)
    with pytest.raises(ValueError, match="shape"):
        prepare_inputs(lr[..., 0], ref, 4)
    with pytest.raises(ValueError, match="scale"):
        prepare_inputs(lr, ref, 0)
    with caplog.at_level("WARNING"):   # logged once, not also warned: one channel, so ComfyUI shows it once
        _, fixed, _ = prepare_inputs(lr, smooth_image(50, 40, 2), 4)
    assert [r.getMessage() for r in caplog.records if "resizing the Ref" in r.getMessage()]
    assert fixed.shape == (1, 3, 48, 48)


def test_latent_space_needs_a_matching_vae():
    cfg = DSDiTConfig(space="latent", latent_channels=4, latent_downscale=2, patch=2, dim=16,
                      depth=1, heads=2, encoder_depth=1, plw_hidden=4)
    model = DSDiT(cfg).eval()
    lr, ref = smooth_image(8, 8, 0), smooth_image(32, 32, 1)
    with pytest.raises(ValueError, match="VAE"):
        super_resolve(model, lr, ref, steps=1)
    # a toy "VAE": 2x2 space-to-depth of the first channel + mean colour; invertible enough
    enc = lambda im: torch.nn.functional.pixel_unshuffle(im[:, :1], 2)           # [B,4,H/2,W/2]
    dec = lambda z: torch.nn.functional.pixel_shuffle(z, 2).repeat(1, 3, 1, 1)
    with pytest.raises(ValueError, match="channels"):
        super_resolve(model, lr, ref, steps=1, vae=CallableVAE(enc, dec, channels=8, downscale=2))
    calls = []
    vae = CallableVAE(lambda im: calls.append("e") or enc(im), dec, channels=4, downscale=2)
    out = super_resolve(model, lr, ref, steps=1, vae=vae, tile=16, overlap=4)
    assert out.shape == (32, 32, 3) and "e" in calls
    # ComfyUI-style VAE: images [B, H, W, 3] in and out
    cl = CallableVAE.channels_last(lambda im: enc(im.permute(0, 3, 1, 2)),
                                   lambda z: dec(z).permute(0, 2, 3, 1), channels=4, downscale=2)
    assert np.allclose(super_resolve(model, lr, ref, steps=1, vae=cl, tile=16, overlap=4), out)


def test_reference_weight_map_in_unit_interval(model):
    w = reference_weight_map(model, smooth_image(12, 12, 0), smooth_image(48, 48, 1))
    assert w.shape == (1, 12, 12) and w.min() >= 0 and w.max() <= 1
