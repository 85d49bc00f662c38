"""The Ref-matching model options: the null-Ref weak path (cfg.weak_ref = "null") and the matching
confidence on the Ref tokens (cfg.ref_confidence); plus their route through the API, the data
and a checkpoint."""
import json

import numpy as np
import pytest
import torch

from refsr.refsr_helpers import TINY, TINY_MATCH as MATCH, randomised, smooth_image, write_triplets
from sharp.refsr.api import super_resolve
from sharp.refsr.checkpoint import load_dsdit, save_checkpoint
from sharp.refsr.config import PRESETS, DSDiTConfig
from sharp.refsr.data import RefSRDataset
from sharp.refsr.flow import euler_sample


def _inputs(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, lr, ref = (torch.randn(b, 3, size, size, generator=g) for _ in range(3))
    conf = torch.rand(b, 1, size, size, generator=g)
    return x, torch.rand(b, generator=g), lr, ref, conf


def test_null_weak_path_is_the_upsampled_lr_with_zero_confidence():
    model = randomised(MATCH).requires_grad_(False)
    x, t, lr, ref, conf = _inputs()
    weak = model(x, t, lr)                                           # ref=None
    assert torch.equal(weak, model(x, t, lr, lr.clone(), ref_conf=torch.zeros_like(conf)))
    # the weak prediction still runs the Ref branch and PLW (same capacity as with a Ref)
    _, ws = model(x, t, lr, return_weights=True)
    assert all(w is not None and 0 < float(w.mean()) < 1 for w in ws)
    # training's Ref dropout: a dropped sample is exactly the weak prediction, a kept one is not
    ref_on = torch.tensor([False, True])
    mixed = model(x, t, lr, ref, ref_on=ref_on, ref_conf=conf)
    assert torch.equal(mixed[0], weak[0])
    assert torch.allclose(mixed[1], model(x, t, lr, ref, ref_conf=conf)[1], atol=1e-6)
    assert not torch.allclose(mixed[1], weak[1], atol=1e-4)


def test_branch_off_weak_path_is_unchanged_for_old_configs():
    model = randomised(TINY)
    x, t, lr, ref, _ = _inputs()
    _, ws = model(x, t, lr, return_weights=True)
    assert all(w is None for w in ws)
    mixed = model(x, t, lr, ref, ref_on=torch.tensor([False, True]))
    assert torch.allclose(mixed[0], model(x, t, lr)[0], atol=1e-6)


def test_confidence_reaches_the_output_and_is_required():
    model = randomised(MATCH)
    x, t, lr, ref, conf = _inputs()
    a = model(x, t, lr, ref, ref_conf=conf)
    b = model(x, t, lr, ref, ref_conf=1 - conf)
    assert not torch.allclose(a, b, atol=1e-4)
    # confidence is averaged per token: changing it inside a token by a zero-mean pattern is a no-op
    wiggle = torch.zeros_like(conf)
    wiggle[..., 0::2, :] = 0.1
    wiggle[..., 1::2, :] = -0.1
    assert torch.allclose(model(x, t, lr, ref, ref_conf=conf + wiggle), a, atol=1e-5)
    with pytest.raises(ValueError, match="matching confidence"):
        model(x, t, lr, ref)


def test_euler_sampler_weak_and_strong_use_the_right_conditions():
    model = randomised(MATCH)
    _, _, lr, ref, conf = _inputs(b=1)
    x0 = torch.randn_like(lr)
    weak = euler_sample(model, x0, lr, None, steps=3)
    null = euler_sample(model, x0, lr, lr.clone(), steps=3, ref_conf=torch.zeros_like(conf))
    assert torch.equal(weak, null)
    # one Euler step from the same x0: x = x0 + v, so autoguidance composes exactly
    weak1 = euler_sample(model, x0, lr, None, steps=1)
    strong1 = euler_sample(model, x0, lr, ref, steps=1, ref_conf=conf)
    g2 = euler_sample(model, x0, lr, ref, steps=1, ref_conf=conf, guidance=2.0)
    assert torch.allclose(g2, 2 * strong1 - weak1, atol=1e-5)
    assert not torch.allclose(strong1, weak1, atol=1e-4)


def test_old_config_json_loads_with_the_old_behaviour(tmp_path):
    """Checkpoints written before these options existed (like the previous shipped one) have no such keys."""
    old = json.loads(TINY.to_json())
    for key in ("ref_align", "ref_confidence", "weak_ref"):
        old.pop(key)
    cfg = DSDiTConfig.from_dict(old)
    assert (cfg.ref_align, cfg.ref_confidence, cfg.weak_ref) == ("global", False, "off")
    for bad, match in (({"ref_align": "optical"}, "ref_align"), ({"weak_ref": "zero"}, "weak_ref"),
                       ({"ref_confidence": "yes"}, "true/false")):
        with pytest.raises(ValueError, match=match):
            DSDiTConfig.from_dict(dict(old, **bad))
    shipped = PRESETS["medium-match"]     # the shipped preset uses all three options
    assert (shipped.ref_align, shipped.ref_confidence, shipped.weak_ref) == ("local", True, "null")


def test_matching_checkpoint_round_trip_and_api(tmp_path):
    model = randomised(MATCH, seed=2)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    loaded = load_dsdit(path)
    assert loaded.cfg == MATCH
    lr, ref = smooth_image(16, 16, 0), smooth_image(64, 64, 1)
    out = super_resolve(loaded, lr, ref, steps=2)
    assert out.shape == (64, 64, 3)
    assert np.allclose(out, super_resolve(model, lr, ref, steps=2), atol=1e-6)
    weak = super_resolve(loaded, lr, None, steps=2)
    assert not np.allclose(weak, out, atol=1e-4)
    # one tile or several: the confidence is cut into the same tiles as the Ref
    tiled = super_resolve(loaded, lr, ref, steps=2, tile=32, overlap=8)
    assert tiled.shape == out.shape and float(np.abs(tiled - out).mean()) < 0.05


def test_dataset_gives_confidence_aligned_with_the_crops(tmp_path):
    data = write_triplets(tmp_path / "d", n=2, size=64)
    ds = RefSRDataset([data], crop=32, align="local", synthetic_ref_prob=0.5)
    b = ds.batch(6, torch.Generator().manual_seed(0))
    assert b["conf"].shape == (6, 1, 32, 32)
    assert float(b["conf"].min()) >= 0 and float(b["conf"].max()) <= 1
    assert b["synthetic"].any() and (~b["synthetic"]).any()
