"""x1 (clean-target) parametrisation, the one-step estimate, t = 0 training share,
checkpoint step defaults, the RRSSRD degradation and Ref-as-target training pairs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refsr.refsr_helpers import RRSSRD, TINY_MATCH, randomised, write_triplets
from sharp.refsr import load_dsdit, super_resolve
from sharp.refsr.api import default_steps
from sharp.refsr.checkpoint import save_checkpoint
from sharp.refsr.config import PRESETS, DSDiTConfig
from sharp.refsr.data import RefSRDataset, TripletFolder, load_image, rrssrd_degrade
from sharp.refsr.flow import euler_sample, flow_loss, sample_tau
from sharp.refsr.model import DSDiT
from sharp.refsr.registration import align_reference

TINY_X1 = DSDiTConfig(**{**json.loads(TINY_MATCH.to_json()), "predict": "x1"})


def constant_x1_model(value: float) -> DSDiT:
    """An x1 model whose clean estimate is `value` everywhere (output layer: zero weight, bias)."""
    model = DSDiT(TINY_X1).eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.fill_(value)
    return model


def test_constant_x1_estimate_gives_the_straight_line_sampler():
    """With x1_hat = c, dx/dt = (c - x) / (1 - t) is the straight line x_t = x0 + t (c - x0)
    (constant velocity c - x0 on it), and the last Euler step lands on c exactly."""
    c, g = 0.37, torch.Generator().manual_seed(1)
    model = constant_x1_model(c)
    lr = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    ref, conf = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, torch.rand(1, 1, 16, 16, generator=g)
    x0 = torch.randn(1, 3, 16, 16, generator=g)
    for n in (1, 3, 7):
        out = euler_sample(model, x0, lr, ref, steps=n, ref_conf=conf)
        torch.testing.assert_close(out, torch.full_like(x0, c), atol=1e-5, rtol=0)
    t = torch.tensor([0.25])
    v = model(x0 + 0.25 * (c - x0), t, lr, ref, ref_conf=conf)
    torch.testing.assert_close(v, c - x0, atol=1e-5, rtol=0)   # the line's constant velocity


def test_one_step_sample_is_the_t0_clean_estimate():
    model = randomised(TINY_X1, seed=3)
    g = torch.Generator().manual_seed(0)
    lr, ref = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    conf = torch.rand(1, 1, 16, 16, generator=g)
    x0 = torch.randn(1, 3, 16, 16, generator=g)
    one = euler_sample(model, x0, lr, ref, steps=1, ref_conf=conf)
    raw, _ = model.network(x0, torch.zeros(1), lr, ref, ref_conf=conf)
    torch.testing.assert_close(one, raw, atol=1e-5, rtol=0)


def test_denoise_of_a_velocity_model_is_xt_plus_remaining_time_times_v():
    model = randomised(TINY_MATCH, seed=4)
    g = torch.Generator().manual_seed(0)
    x, lr, ref = (torch.rand(2, 3, 16, 16, generator=g) for _ in range(3))
    conf, t = torch.rand(2, 1, 16, 16, generator=g), torch.tensor([0.2, 0.7])
    v = model(x, t, lr, ref, ref_conf=conf)
    expect = x + torch.tensor([0.8, 0.3])[:, None, None, None] * v
    torch.testing.assert_close(model.denoise(x, t, lr, ref, ref_conf=conf), expect)


def test_x1_loss_is_the_regression_error_of_the_clean_estimate():
    """At t = 0 for every sample (t0_prob = 1) the loss of a constant-estimate model is
    mean((c - x1)^2) whatever the noise; the v-loss of the same numbers would not be."""
    c = -0.2
    model = constant_x1_model(c)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(3, 3, 16, 16, generator=g)
    lr, ref = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    conf = torch.rand(3, 1, 16, 16, generator=g)
    for seed in (0, 1):
        loss = flow_loss(model, x1, lr, ref, None, torch.Generator().manual_seed(seed),
                         ref_conf=conf, t0_prob=1.0)
        assert float(loss.detach()) == pytest.approx(float(((c - x1) ** 2).mean()), rel=1e-5)


def test_t0_share():
    t = sample_tau(20000, torch.Generator().manual_seed(0), t0_prob=0.3)
    assert float((t == 0).float().mean()) == pytest.approx(0.3, abs=0.015)
    plain = sample_tau(1000, torch.Generator().manual_seed(0))
    assert float(plain.min()) > 0 and torch.equal(plain, sample_tau(1000, torch.Generator().manual_seed(0), 0.0))


def test_config_predict_field():
    assert DSDiTConfig().predict == "v"                  # old checkpoints: velocity models
    assert PRESETS["medium-match"].predict == "x1"
    with pytest.raises(ValueError, match="predict"):
        DSDiTConfig.from_dict({"predict": "eps"})


def test_checkpoint_steps_default_reaches_super_resolve(tmp_path):
    model = randomised(TINY_X1, seed=2)
    path = tmp_path / "x1.safetensors"
    save_checkpoint(path, model, extra={"sampling_defaults": {"temperature": 1.0, "steps": 1}})
    loaded = load_dsdit(path)
    assert default_steps(loaded) == 1
    calls = []
    rng = np.random.default_rng(0)
    lr, ref = rng.random((8, 8, 3), dtype=np.float32), rng.random((32, 32, 3), dtype=np.float32)
    a = super_resolve(loaded, lr, ref, progress=lambda d, t: calls.append((d, t)), ref_transfer=0)
    assert calls == [(1, 1)]                             # one tile, one step
    b = super_resolve(loaded, lr, ref, steps=1, ref_transfer=0)
    np.testing.assert_array_equal(a, b)
    save_checkpoint(path, model)                          # no defaults: 20 steps as before
    assert default_steps(load_dsdit(path)) == 20


def test_rrssrd_degrade_is_bicubic_antialias_then_jpeg(tmp_path):
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    hr = torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * x * y])[None]   # smooth: JPEG-friendly
    lr = rrssrd_degrade(hr, 4)
    assert lr.shape == (1, 3, 16, 16)
    plain = torch.nn.functional.interpolate(hr, size=(16, 16), mode="bicubic", antialias=True,
                                            align_corners=False).clamp(0, 1)
    err = (lr - plain).abs()
    assert 1e-4 < float(err.mean()) < 0.01 and float(err.max()) < 0.05   # JPEG changed it, a little
    no_jpeg = rrssrd_degrade(hr, 4, jpeg_quality=0)
    torch.testing.assert_close(no_jpeg, (plain * 255).round() / 255)


@pytest.mark.skipif(not (RRSSRD / "val_1st").is_dir(),
                    reason=f"RRSSRD test data not found at {RRSSRD} (shared/ beside the clone)")
def test_rrssrd_degrade_matches_the_real_lr():
    folder = TripletFolder(RRSSRD / "val_1st")
    for i in range(3):
        hr, lr, _ = folder.load(i)
        mine = rrssrd_degrade(hr, 4)
        psnr = 10 * np.log10(1.0 / float(((mine - lr) ** 2).mean()))
        no_jpeg = rrssrd_degrade(hr, 4, jpeg_quality=0)
        psnr_plain = 10 * np.log10(1.0 / float(((no_jpeg - lr) ** 2).mean()))
        assert psnr > 42 and psnr > psnr_plain + 3, (psnr, psnr_plain)


def test_ref_as_target_doubles_the_pairs_and_swaps_roles(tmp_path):
    root = write_triplets(tmp_path / "d", n=2, size=64)
    plain = RefSRDataset(root, crop=32, synthetic_ref_prob=0.0, align="global")
    both = RefSRDataset(root, crop=32, synthetic_ref_prob=0.0, align="global", ref_as_target=True)
    assert len(plain.hr) == 2 and len(both.hr) == 4
    folder = TripletFolder(root)
    hr, lr, ref = folder.load(0)
    torch.testing.assert_close(both.hr[0], hr)
    torch.testing.assert_close(both.hr[1], ref)                        # the Ref as target
    up_ref = torch.nn.functional.interpolate(rrssrd_degrade(ref), size=(64, 64), mode="bicubic",
                                             align_corners=False).clamp(0, 1)
    torch.testing.assert_close(both.up[1], up_ref)                     # its own LR
    # its Ref is the HR of the same place, registered to that LR like any Ref
    torch.testing.assert_close(both.ref[1], align_reference(hr, up_ref, 4, "global")[0])
    torch.testing.assert_close(both.ref[0], align_reference(ref, both.up[0], 4, "global")[0])
    assert load_image(root / "Ref" / folder.names[0]).shape == both.hr[1].shape


def test_checkpoints_from_before_the_predict_field_load_as_velocity_models(tmp_path):
    """A checkpoint written by the previous code has no "predict" key in its config JSON."""
    from safetensors.torch import save_file

    from sharp.refsr.config import FORMAT, FORMAT_VERSION

    old = DSDiTConfig(cond_highpass=True)
    model = DSDiT(old)
    data = json.loads(old.to_json())
    del data["predict"]
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                        "dsdit_config": json.dumps(data)})
    loaded = load_dsdit(path)
    assert loaded.cfg == old and loaded.cfg.predict == "v" and default_steps(loaded) == 20
