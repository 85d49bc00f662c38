import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from refsr.refsr_helpers import TINY, TINY_MATCH, randomised
from sharp.refsr.config import DSDiTConfig
from sharp.refsr.plw import PatchLevelWeighting, confidence_gate, fuse, patch_confidence
from sharp.refsr.transfer import CONF_POWER


def test_plw_weights_in_unit_interval_and_shape():
    torch.manual_seed(0)
    plw = PatchLevelWeighting(dim=8, hidden=4)
    with torch.no_grad():
        for p in plw.parameters():
            p.normal_(0, 3.0)                                   # drive the logits hard
    x, a, b = (100 * torch.randn(2, 5, 7, 8) for _ in range(3))
    with torch.no_grad():
        w = plw(x, a, b)
    assert w.shape == (2, 5, 7, 1)
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    assert float(w.std()) > 0                                   # it does vary per patch


def test_plw_starts_balanced():
    w = PatchLevelWeighting(dim=8, hidden=4)(*(torch.randn(1, 3, 3, 8) for _ in range(3)))
    assert torch.allclose(w, torch.full_like(w, 0.5))


def test_fuse_endpoints():
    h_lr, h_ref = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    assert torch.equal(fuse(torch.ones(2, 3, 3, 1), h_lr, h_ref), h_lr)
    assert torch.equal(fuse(torch.zeros(2, 3, 3, 1), h_lr, h_ref), h_ref)


def test_w_equal_one_reduces_model_to_lr_branch():
    """Dropping the Ref (w forced to 1) equals the model run without any Ref, exactly."""
    model = randomised(TINY)
    x, lr, ref = (torch.randn(3, 3, 16, 16) for _ in range(3))
    t = torch.tensor([0.1, 0.5, 0.9])
    off = model(x, t, lr, ref, ref_on=torch.tensor([False, False, False]))
    none = model(x, t, lr, None)
    assert torch.equal(off, none)
    on = model(x, t, lr, ref)
    assert not torch.allclose(on, none)                         # the Ref does matter otherwise
    mixed = model(x, t, lr, ref, ref_on=torch.tensor([True, False, True]))
    assert torch.equal(mixed[1], none[1]) and torch.allclose(mixed[0], on[0], atol=1e-6)


# --- the confidence-gated PLW (cfg.plw_gate "confidence") ---

GATED = replace(TINY_MATCH, plw_gate="confidence")


def test_patch_confidence_is_the_patch_mean_of_conf_to_the_power():
    """Re-derived by loops over the patches: gate[b, i, j] = mean over the unit x unit patch of
    clip(conf, 0, 1) ** CONF_POWER."""
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(2, 1, 8, 12, generator=g) * 1.2 - 0.1          # some values outside [0, 1]
    gate = patch_confidence(conf, 4)
    assert gate.shape == (2, 2, 3, 1)
    c = np.clip(conf.numpy().astype(np.float64), 0, 1) ** CONF_POWER
    for b in range(2):
        for i in range(2):
            for j in range(3):
                want = c[b, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean()
                assert abs(float(gate[b, i, j, 0]) - want) < 1e-6


def test_confidence_gate_formula_and_endpoints():
    w = torch.rand(2, 3, 3, 1)
    gate = torch.rand(2, 3, 3, 1)
    assert torch.allclose(confidence_gate(w, gate), 1 - gate * (1 - w))
    assert torch.equal(confidence_gate(w, torch.zeros_like(w)), torch.ones_like(w))   # no match: LR only
    assert torch.equal(confidence_gate(w, torch.ones_like(w)), w)                     # full match: PLW decides


def test_gated_model_ignores_a_ref_without_matching_confidence():
    """Zero confidence switches the Ref branch off in every block: any Ref then gives exactly
    the weak (no-Ref) prediction, and the PLW maps are all 1; with confidence the Ref counts."""
    model = randomised(GATED).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, lr, ref = (torch.randn(2, 3, 16, 16, generator=g) for _ in range(3))
    t = torch.tensor([0.2, 0.7])
    weak = model(x, t, lr)
    zero = torch.zeros(2, 1, 16, 16)
    out, ws = model(x, t, lr, ref, ref_conf=zero, return_weights=True)
    assert torch.equal(out, weak)
    assert all(torch.equal(w, torch.ones_like(w)) for w in ws)
    full, ws_full = model(x, t, lr, ref, ref_conf=torch.ones_like(zero), return_weights=True)
    assert not torch.allclose(full, weak, atol=1e-4)
    assert all(float(w.min()) < 1 for w in ws_full)
    # the same weights without the gate: where conf = 1 the gated and free PLW agree
    free = randomised(TINY_MATCH).requires_grad_(False)
    free.load_state_dict(model.state_dict())
    assert torch.allclose(free(x, t, lr, ref, ref_conf=torch.ones_like(zero)), full, atol=1e-6)


def test_gated_model_needs_the_confidence():
    model = randomised(replace(GATED, ref_confidence=False))     # the gate alone needs it too
    x, lr, ref = (torch.randn(1, 3, 16, 16) for _ in range(3))
    with pytest.raises(ValueError, match="matching confidence"):
        model(x, torch.tensor([0.5]), lr, ref)


def test_plw_gate_is_validated_and_old_configs_read_as_free():
    with pytest.raises(ValueError, match="plw_gate"):
        DSDiTConfig(plw_gate="yes").validate()
    old = {k: v for k, v in json.loads(TINY_MATCH.to_json()).items() if k != "plw_gate"}
    assert DSDiTConfig.from_dict(old).plw_gate == "free"
