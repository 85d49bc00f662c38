"""ControlNets beside a promoted model: the same promoted RoPE, time and extents as the model they guide.

No ComfyUI import here. ComfyUI runs a ControlNet (`ControlBase.get_control`) inside `calc_cond_batch`,
before `apply_model`, so the promotion's APPLY_MODEL wrapper (`sharp.promotion.StepTime`) comes too late
for it. `ControlNetRoPE` is a CALC_COND_BATCH wrapper, which covers the ControlNet call: each model call it

1. sets the time (t = sigma / sigma_max) and the extents (from the latent x) of the embedder the model runs
   with, as `StepTime` does later for the model itself;
2. for every ControlNet in the conds (each cond's `control`, its `previous_controlnet` chain and its MultiGPU
   device clones) whose control model has its own RoPE embedder at the family's embedder attribute with the
   model's constants (theta, axes_dim), puts the model's embedder there for the duration of the call and
   restores the ControlNet's own afterwards (the ControlNet object is shared: ComfyUI caches it, and an
   unpromoted model may use it next);
3. refuses (`UnsupportedControlNetError`) a ControlNet whose RoPE it cannot match (another theta or
   axes_dim, or an embedder somewhere else in the control model) unless the method is `base`: that
   ControlNet would run stock RoPE beside the model's promoted one.

ComfyUI's ControlNets, read from 0.33.0 (`comfy/controlnet.py`, `comfy/ldm/*/controlnet.py`,
`comfy_extras/nodes_model_patch.py`):
- own embedder, swapped: `ControlNetFlux` (XLabs, Mistoline, InstantX / Union Flux ControlNets: a Flux
  subclass with its own `pe_embedder`), `QwenImageControlNetModel` (InstantX Qwen-Image: a
  QwenImageTransformer2DModel subclass with its own `pe_embedder`);
- the model's embedder, time set early: `QwenImageFunControlNetModel` (Qwen Fun, `QwenFunControlNet`) calls
  `base_model.pe_embedder`, i.e. ours, before apply_model: without step 1 it ran with the previous step's time;
- the model's pe, nothing to do: Z-Image Fun ControlNet (`ZImage_Control` through `ZImageControlPatch`, a
  block patch handed the model's own `pe`); Qwen DiffSynth (`QwenImageBlockWiseControlNet`: no RoPE);
- no RoPE (their models are not promoted anyway): SD1.x/SDXL ControlNets and Control-LoRA, T2I-Adapter,
  SD3 / SD3.5 ControlNets (`comfy/cldm/mmdit.py`, `dit_embedder.py`), HunyuanDiT's (its RoPE comes from
  the conds of an unpromotable model).
"""
from __future__ import annotations

import contextlib
import logging

from sharp import families
from sharp.embedder import RoPEEmbedder

log = logging.getLogger(__name__)


class UnsupportedControlNetError(ValueError):
    """A ControlNet with a RoPE embedder SHARP cannot give the model's promoted RoPE."""


def controls_in(conds) -> list:
    """Every ControlNet object in ComfyUI's conds (list of cond lists of dicts): each dict's `control`
    and its `previous_controlnet` chain, each once, in order."""
    seen, out = set(), []
    for cond in conds or ():
        for c in cond or ():
            control = c.get("control") if isinstance(c, dict) else None
            while control is not None and id(control) not in seen:
                seen.add(id(control))
                out.append(control)
                control = getattr(control, "previous_controlnet", None)
    return out


def rope_modules(module) -> list[tuple[str, object]]:
    """(path, module) of every submodule that looks like a multi-axis RoPE embedder (theta and axes_dim,
    as `sharp.families.detect_family` reads them)."""
    named = getattr(module, "named_modules", None)
    if named is None:
        return []
    return [(name, m) for name, m in named() if name and hasattr(m, "theta") and hasattr(m, "axes_dim")]


def control_embedder(control_model, family: families.Family, embedder: RoPEEmbedder) -> tuple[str, object] | None:
    """(attribute path, its RoPE embedder) of a control model to swap for `embedder`; None if it has no RoPE
    of its own. Raises UnsupportedControlNetError where its RoPE cannot be matched (not for method base,
    whose RoPE is stock anyway: None then)."""
    found = rope_modules(control_model)
    if not found:
        return None
    cls = type(control_model).__name__
    own = dict(found).get(family.embedder_attr)
    if own is not None and not isinstance(own, RoPEEmbedder):
        theta = float(getattr(own, "theta"))
        axes = tuple(int(d) for d in getattr(own, "axes_dim"))
        if theta == embedder.theta and axes == tuple(embedder.axes_dim):
            return family.embedder_attr, own
        why = (f"its {family.embedder_attr} has theta {theta:g}, axes_dim {axes}; the {family.name} model's has "
               f"theta {embedder.theta:g}, axes_dim {tuple(embedder.axes_dim)}")
    elif own is not None:
        return None  # ours already (a nested sampling call): nothing to swap
    else:
        why = f"its RoPE embedder sits at {', '.join(p for p, _ in found)}, not at {family.embedder_attr}"
    if embedder.method == "base":
        return None
    raise UnsupportedControlNetError(
        f"SHARP cannot give the ControlNet {cls} the promoted RoPE of the {family.name} model it guides: {why}. "
        f"It would run stock RoPE beside the model's promoted RoPE (a mismatched, grainy control). Remove the "
        f"ControlNet, use one made for this model, or set the promotion's method to 'base'.")


@contextlib.contextmanager
def swapped(swaps: list[tuple[object, str, object]]):
    """Set module.<path> = value for each (module, path, value) inside the block; restore afterwards."""
    done = []
    try:
        for module, path, value in swaps:
            parent_path, _, leaf = path.rpartition(".")
            parent = families.get_path(module, parent_path) if parent_path else module
            done.append((parent, leaf, getattr(parent, leaf)))
            setattr(parent, leaf, value)
        yield
    finally:
        for parent, leaf, original in reversed(done):
            setattr(parent, leaf, original)


def device_models(base_model) -> dict:
    """{load_device: base model} of the MultiGPU clones of the model being sampled (empty without)."""
    patcher = getattr(base_model, "current_patcher", None)
    getter = getattr(patcher, "get_additional_models_with_key", None)
    if getter is None:
        return {}
    return {p.load_device: p.model for p in getter("multigpu")}


class ControlNetRoPE:
    """CALC_COND_BATCH wrapper: `wrapper(executor, model, conds, x_in, timestep, model_options)`.

    step_time: the promotion's `StepTime` (its `sync` sets time and extents on the embedder a model runs
    with). The embedders are looked up on the model each call, so a MultiGPU clone's own embedder is the one
    its device's ControlNet clone gets."""

    def __init__(self, step_time):
        self.step_time = step_time

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        options = (model_options or {}).get("transformer_options")
        family = self.step_time.family
        ours = self.step_time.sync(model, x_in, timestep, options)
        swaps = []
        controls = controls_in(conds)
        if controls and family is not None:
            per_device = device_models(model)
            for control in controls:
                targets = [(control, ours)]
                for device, clone in (getattr(control, "multigpu_clones", None) or {}).items():
                    device_model = per_device.get(device)
                    if device_model is not None:
                        targets.append((clone, self.step_time.sync(device_model, x_in, timestep, options)))
                for ctrl, emb in targets:
                    control_model = getattr(ctrl, "control_model", None)
                    if control_model is None or any(m is control_model for m, _p, _e in swaps):
                        continue  # cond and uncond hold copies of one ControlNet: one control model
                    found = control_embedder(control_model, family, emb)
                    if found is not None:
                        swaps.append((control_model, found[0], emb))
        with swapped(swaps):
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
