"""Two-pass hires fix with SHARP: which time the second pass's promotion runs on.

A two-pass hires fix samples at the base size, upscales the latent and resamples it at the large size with
denoise d < 1, i.e. on the last part of a sigma list, starting at sigma_start < sigma_max.

- "continue" (what the promotion does on its own, no extra node): t = sigma / sigma_max, so SHARP's
  schedule goes on at the noise level the pass starts from: kappa(t_start) is small for a small denoise and
  the second pass runs close to stock RoPE, as a single pass does over those noise levels.
- "restart": t = sigma / sigma_start, the schedule re-anchored at the pass's first sigma: kappa runs from 1
  (the strongest promotion) down to 0 within the second pass, as if it were a fresh generation.

`RestartSchedule` implements "restart" as wrappers inside the promotion's own (APPLY_MODEL and
CALC_COND_BATCH, registered after it, key "sharp-hires"): after the promotion has set t = sigma / sigma_max,
they set t = sigma / sigma_start on the embedder the model runs with. sigma_start is the first sigma of the
list being sampled (ComfyUI's `transformer_options["sample_sigmas"]`). The measured effect of either choice:
benchmarks/hires_two_pass.py and docs/hires.md. No ComfyUI import here.
"""
from __future__ import annotations

import torch

from sharp import families
from sharp.embedder import RoPEEmbedder
from sharp.rope import normalised_time

PATCH_KEY = "sharp-hires"
SCHEDULES = ("continue", "restart")


def start_sigma(transformer_options) -> float | None:
    """The first sigma of the list being sampled (the pass's sigma_start); None if ComfyUI gave none."""
    sigmas = (transformer_options or {}).get("sample_sigmas")
    if sigmas is None or len(sigmas) == 0:
        return None
    return float(torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)[0])


def restart_time(sigma, sigma_start: float) -> float:
    """t = sigma / sigma_start in [0, 1]: SHARP's schedule re-anchored at the pass's first sigma."""
    return normalised_time(sigma, sigma_start)


def embedder_of(base_model, family: families.Family) -> RoPEEmbedder | None:
    """The promoted embedder a base model runs with (None if it is not ours)."""
    live = families.get_path(getattr(base_model, "diffusion_model", None), family.embedder_attr)
    return live if isinstance(live, RoPEEmbedder) else None


class RestartSchedule:
    """Re-anchors SHARP's time at the first sigma of each sampling run (see the module doc)."""

    def __init__(self, family: families.Family):
        self.family = family

    def _restart(self, base_model, sigma, transformer_options) -> None:
        emb = embedder_of(base_model, self.family)
        start = start_sigma(transformer_options)
        if emb is not None and start is not None and start > 0:
            emb.set_time(restart_time(sigma, start))

    def apply_model(self, executor, x, t, *args, **kwargs):
        options = kwargs.get("transformer_options", args[3] if len(args) > 3 else None)
        self._restart(getattr(executor, "class_obj", None), t, options)
        return executor(x, t, *args, **kwargs)

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        self._restart(model, timestep, (model_options or {}).get("transformer_options"))
        return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)


def set_schedule(model, schedule: str, *, apply_model_wrapper: str = "apply_model",
                 calc_cond_batch_wrapper: str = "calc_cond_batch"):
    """A clone of a promoted ModelPatcher whose second pass runs on `schedule` ("continue" or "restart").
    Raises ValueError for a model that SHARP Resolution Promotion has not patched."""
    from sharp import promotion

    promotion.check_choice("schedule", schedule, SCHEDULES)
    fam = promotion.detect(model)
    try:
        emb = model.get_model_object(promotion.embedder_path(fam))
    except AttributeError:
        emb = None
    if not isinstance(emb, RoPEEmbedder):
        raise ValueError("SHARP Hires Schedule needs a model from SHARP Resolution Promotion: connect it after that "
                         "node (its time schedule is what this node re-anchors).")
    patched = model.clone()
    patched.remove_wrappers_with_key(apply_model_wrapper, PATCH_KEY)
    patched.remove_wrappers_with_key(calc_cond_batch_wrapper, PATCH_KEY)
    if schedule == "restart":
        restart = RestartSchedule(fam)
        patched.add_wrapper_with_key(apply_model_wrapper, PATCH_KEY, restart.apply_model)
        patched.add_wrapper_with_key(calc_cond_batch_wrapper, PATCH_KEY, restart.calc_cond_batch)
    return patched
