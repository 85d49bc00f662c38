import torch

from refsr.refsr_helpers import TINY, randomised
from sharp.refsr.plw import PatchLevelWeighting, fuse


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
