"""sharp.controlnet without ComfyUI: which ControlNets get the model's embedder, the swap is undone (also on
errors), MultiGPU device clones get their device model's embedder, mismatched RoPE is refused.
The real ControlNets are tested in tests/test_comfyui_controlnet.py."""
from __future__ import annotations

import pytest
import torch

from comfy_fake import FakeBaseModel, FakeEmbedND, Flux, ModelSamplingFlux
from reference_rope import flux_ids
from sharp import controlnet as C
from sharp import families, promotion

F = families.family("Flux.1")


class ControlModel(torch.nn.Module):
    """Stands in for ControlNetFlux: its own pe_embedder, records the pe of its call."""

    def __init__(self, theta=10000, axes_dim=(16, 56, 56)):
        super().__init__()
        self.pe_embedder = FakeEmbedND(theta, axes_dim)
        self.seen = []

    def forward(self, ids):
        self.seen.append(self.pe_embedder(ids))


class Control:
    def __init__(self, control_model=None, previous=None):
        self.control_model = control_model
        self.previous_controlnet = previous
        self.multigpu_clones = {}


def promoted_model(method="sharp"):
    base = FakeBaseModel(Flux(), ModelSamplingFlux(sigma_max=1.0))
    emb = promotion.build_embedder(F, method, base_resolution=8 * 16)
    base.diffusion_model.pe_embedder = emb  # as the object patch is applied while sampling
    return base, emb


def wrapper(emb):
    return C.ControlNetRoPE(promotion.StepTime(emb, F))


def run_controls(wrap, base, conds, x, sigma):
    """The executor ComfyUI's _calc_cond_batch would be: every control model runs on the model's ids."""
    ids = flux_ids(x.shape[-2] // 2, x.shape[-1] // 2, txt=4)

    def executor(model, conds, x_in, timestep, model_options):
        for control in C.controls_in(conds):
            for c in [control, *control.multigpu_clones.values()]:
                if c.control_model is not None:
                    c.control_model(ids)
        return model.diffusion_model.pe_embedder(ids)

    return wrap(executor, base, conds, x, torch.tensor([sigma]), {"transformer_options": {}}), ids


def test_controlnet_gets_the_models_embedder_time_and_extents_and_its_own_back():
    base, emb = promoted_model()
    cm, prev_cm = ControlModel(), ControlModel()
    own, prev_own = cm.pe_embedder, prev_cm.pe_embedder
    shared = Control(cm, previous=Control(prev_cm))
    conds = [[{"control": shared}], [{"control": shared}], None]  # cond, uncond hold one copy; an empty cond
    x = torch.zeros(1, 16, 24, 12)  # 12 x 6 tokens: the height above the 8-token base grid
    out, ids = run_controls(wrapper(emb), base, conds, x, sigma=0.6)
    assert emb.t == pytest.approx(0.6) and emb.extents == {1: 12.0, 2: 6.0}
    for m in (cm, prev_cm):
        assert len(m.seen) == 1 and torch.equal(m.seen[0], out)  # the model's promoted pe
    assert not torch.equal(out, own(ids))
    assert cm.pe_embedder is own and prev_cm.pe_embedder is prev_own  # restored
    assert C.controls_in(conds) == [shared, shared.previous_controlnet]


def test_swap_is_undone_when_the_call_fails():
    base, emb = promoted_model()
    cm = ControlModel()
    own = cm.pe_embedder

    def failing(*_a):
        assert cm.pe_embedder is emb
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        wrapper(emb)(failing, base, [[{"control": Control(cm)}]], torch.zeros(1, 16, 24, 12), torch.tensor([0.5]), {})
    assert cm.pe_embedder is own


def test_multigpu_clone_gets_its_device_models_embedder():
    base, emb = promoted_model()
    device_base, device_emb = promoted_model()

    class Patcher:
        def get_additional_models_with_key(self, key):
            assert key == "multigpu"
            return [type("P", (), {"load_device": "cuda:1", "model": device_base})()]

    base.current_patcher = Patcher()
    control = Control(ControlModel())
    control.multigpu_clones = {"cuda:1": Control(ControlModel())}
    out, ids = run_controls(wrapper(emb), base, [[{"control": control}]], torch.zeros(1, 16, 24, 12), sigma=0.3)
    assert device_emb.t == pytest.approx(0.3) and device_emb is not emb
    clone_seen = control.multigpu_clones["cuda:1"].control_model.seen
    assert len(clone_seen) == 1 and torch.equal(clone_seen[0], device_emb(ids))


def test_controls_without_rope_are_left_alone():
    base, emb = promoted_model()
    unet_like = torch.nn.Sequential(torch.nn.Linear(2, 2))  # an SD ControlNet / T2I-Adapter: no RoPE
    assert C.control_embedder(unet_like, F, emb) is None
    assert C.control_embedder(ControlModel(), F, emb)[0] == "pe_embedder"


@pytest.mark.parametrize("cm, why", [
    (ControlModel(theta=2000), r"theta 2000, axes_dim \(16, 56, 56\); the Flux.1 model's has theta 10000"),
    (ControlModel(axes_dim=(8, 60, 60)), r"axes_dim \(8, 60, 60\)"),
])
def test_mismatched_rope_is_refused_unless_base(cm, why):
    base, emb = promoted_model()
    with pytest.raises(C.UnsupportedControlNetError, match=why):
        run_controls(wrapper(emb), base, [[{"control": Control(cm)}]], torch.zeros(1, 16, 24, 12), sigma=0.5)
    _, stock = promoted_model("base")
    assert C.control_embedder(cm, F, stock) is None  # base: stock RoPE on both sides, nothing to match


def test_rope_elsewhere_in_the_control_model_is_refused():
    class Elsewhere(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rope = FakeEmbedND()

    _, emb = promoted_model()
    with pytest.raises(C.UnsupportedControlNetError, match="sits at rope, not at pe_embedder"):
        C.control_embedder(Elsewhere(), F, emb)
