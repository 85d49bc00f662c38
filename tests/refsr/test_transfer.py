"""Reference detail transfer: formulas of sharp.refsr.transfer, its wiring into
super_resolve and the least-squares gain fit of sharp.refsr.calibrate."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refsr.refsr_helpers import TINY, randomised, smooth_image
from sharp.refsr.api import default_ref_transfer, super_resolve
from sharp.refsr.calibrate import calibrate_checkpoint, fit_ref_transfer
from sharp.refsr.checkpoint import load_dsdit, save_checkpoint
from sharp.refsr.data import upsample
from sharp.refsr.model import DSDiT
from sharp.refsr.registration import align_reference
from sharp.refsr.transfer import CONF_POWER, apply_transfer, detail_layer, fit_transfer_gain, gated_detail


def _textured(size, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.from_numpy(smooth_image(size, size, seed)).permute(2, 0, 1)[None]
    return (0.6 * img + 0.4 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_detail_layer_of_constant_and_of_nyquist_checkerboard():
    assert torch.allclose(detail_layer(torch.full((1, 3, 32, 32), 0.3), 4), torch.zeros(1, 3, 32, 32),
                          atol=1e-6)
    # a +-a checkerboard has no energy below the LR Nyquist: the LR is flat, the detail is all of it
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = 0.1 * (1 - 2 * ((yy + xx) % 2)).float()
    d = detail_layer((0.5 + checker).expand(1, 3, 64, 64), 4)
    assert torch.allclose(d[..., 8:-8, 8:-8], checker.expand(1, 3, 64, 64)[..., 8:-8, 8:-8], atol=0.01)


def test_gate_is_a_power_of_the_confidence():
    ref = _textured(32, 0)
    d = detail_layer(ref, 4)
    for c in (0.0, 0.5, 1.0):
        conf = torch.full((1, 1, 32, 32), c)
        assert torch.allclose(gated_detail(ref, conf, 4), c ** CONF_POWER * d, atol=1e-7)
    assert CONF_POWER >= 1


def test_gain_fit_is_least_squares_and_clipped():
    g = torch.Generator().manual_seed(0)
    gated = [torch.randn(1, 3, 16, 16, generator=g) for _ in range(3)]
    noise = [torch.randn(1, 3, 16, 16, generator=g) for _ in range(3)]
    errors = [0.3 * a + b for a, b in zip(gated, noise)]
    # closed form, written out independently of fit_transfer_gain's code
    num = sum(float((e * a).sum()) for e, a in zip(errors, gated))
    den = sum(float((a * a).sum()) for a in gated)
    assert fit_transfer_gain(errors, gated) == pytest.approx(num / den, rel=1e-6)
    assert 0.15 < num / den < 0.45
    assert fit_transfer_gain([-e for e in gated], gated) == 0.0           # Ref detail hurts: off
    assert fit_transfer_gain([3 * e for e in gated], gated) == 1.0        # never more than the Ref
    assert fit_transfer_gain(errors, [torch.zeros_like(e) for e in errors]) == 0.0


def test_apply_transfer():
    sr = torch.rand(1, 3, 8, 8)
    gated = torch.randn(1, 3, 8, 8)
    assert apply_transfer(sr, gated, 0.0) is sr
    out = apply_transfer(sr, gated, 0.5)
    assert torch.allclose(out, (sr + 0.5 * gated).clamp(0, 1))


def test_super_resolve_adds_the_gated_detail_with_the_checkpoints_gain(tmp_path):
    model = randomised(TINY)
    lr, ref = smooth_image(16, 16, 0), _textured(64, 1)[0].permute(1, 2, 0).numpy()
    assert default_ref_transfer(model) == 0.0                     # no metadata: off
    plain = super_resolve(model, lr, ref, steps=2, temperature=0.0)
    explicit = super_resolve(model, lr, ref, steps=2, temperature=0.0, ref_transfer=0.4)
    up = upsample(torch.from_numpy(lr).permute(2, 0, 1)[None], (64, 64))
    gated = gated_detail(*align_reference(torch.from_numpy(ref).permute(2, 0, 1)[None], up, 4, "local"), 4)
    want = np.clip(plain + 0.4 * gated[0].permute(1, 2, 0).numpy(), 0, 1)
    assert np.allclose(explicit, want, atol=1e-5)
    assert not np.allclose(explicit, plain, atol=1e-3)
    # the gain travels in the checkpoint's sampling defaults
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, extra={"sampling_defaults": {"temperature": 0.0, "ref_transfer": 0.4}})
    loaded = load_dsdit(path)
    assert default_ref_transfer(loaded) == 0.4
    assert np.allclose(super_resolve(loaded, lr, ref, steps=2), explicit, atol=1e-5)
    # no Ref, no transfer; bad gains are refused
    assert np.allclose(super_resolve(loaded, lr, None, steps=2),
                       super_resolve(model, lr, None, steps=2, temperature=0.0), atol=1e-6)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ref_transfer"):
            super_resolve(model, lr, ref, steps=1, ref_transfer=bad)


def _folder(root, refs):
    """HR textured, LR its antialiased bicubic x1/4, Ref given per image."""
    for d in ("HR", "LR", "Ref"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, ref in enumerate(refs):
        hr = _textured(64, 10 + i)
        lr = F.interpolate(hr, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
        for d, img in (("HR", hr), ("LR", lr), ("Ref", ref(hr, i))):
            arr = img.clamp(0, 1)[0].permute(1, 2, 0).numpy()
            Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).save(root / d / f"t{i}.png")
    return root


def test_fit_finds_a_perfect_reference_useful_and_an_unrelated_one_useless(tmp_path):
    """With an untrained network (its SR is the bicubic upsampling) the remaining error is the
    HR's detail layer: a Ref equal to the HR explains it (gain near 1), another image does not."""
    model = DSDiT(TINY).eval()
    same = _folder(tmp_path / "same", [lambda hr, i: hr] * 2)
    other = _folder(tmp_path / "other", [lambda hr, i: _textured(64, 50 + i)] * 2)
    good = fit_ref_transfer(model, same, steps=1, temperature=0.0)
    bad = fit_ref_transfer(model, other, steps=1, temperature=0.0)
    assert good["images"] == 2 and good["ref_transfer"] > 0.6 and good["psnr_gain_db"] > 1.0
    assert bad["ref_transfer"] < 0.15 and bad["psnr_gain_db"] < 0.1


def test_calibrate_checkpoint_writes_only_the_metadata(tmp_path):
    model = DSDiT(TINY).eval()
    src = tmp_path / "m.safetensors"
    save_checkpoint(src, model, extra={"sampling_defaults": {"temperature": 0.0}, "training": {"step": 3}})
    data = _folder(tmp_path / "d", [lambda hr, i: hr])
    out = tmp_path / "cal.safetensors"
    fit = calibrate_checkpoint(src, [data], out=out, steps=1)
    cal = load_dsdit(out)
    defaults = json.loads(cal.metadata["sampling_defaults"])
    assert defaults["temperature"] == 0.0 and defaults["ref_transfer"] == pytest.approx(fit["ref_transfer"])
    assert defaults["ref_transfer_fit"]["images"] == 1
    assert json.loads(cal.metadata["training"]) == {"step": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(cal.state_dict()[k], v)
    assert "ref_transfer" not in json.loads(load_dsdit(src).metadata["sampling_defaults"])
