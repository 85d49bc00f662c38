"""Fit the reference-detail-transfer gain of a DS-DiT checkpoint on training triplets.

`fit_ref_transfer` runs the checkpoint (transfer off) on RRSSRD-style folders and fits lambda of
sharp.refsr.transfer by least squares; `calibrate_checkpoint` writes it into a checkpoint's
"sampling_defaults" metadata (weights untouched). train() calls fit_ref_transfer at the end of
training, on its own training data; `python -m sharp calibrate-refsr` does it for an existing
checkpoint. Fit on training data only: fitting on the test set would inflate its figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from .api import default_steps, default_temperature, super_resolve
from .checkpoint import load_dsdit, read_checkpoint, save_checkpoint
from .data import TripletFolder, upsample
from .model import DSDiT
from .stages import transfer_input
from .transfer import fit_transfer_gain


@torch.no_grad()
def fit_ref_transfer(model: DSDiT, roots, scale: int = 4, steps: Optional[int] = None, limit: int = 0,
                     temperature: Optional[float] = None,
                     progress: Optional[Callable[[int, int], None]] = None, vae=None) -> dict:
    """lambda fitted on the triplets of `roots` (all, or the first `limit` of each folder);
    vae: the LatentCodec of a latent-space checkpoint.

    Returns {"ref_transfer": lambda, "images": n, "psnr_gain_db": mean PSNR change on them,
    "data": the folders}."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    folders = [TripletFolder(r) for r in roots]
    jobs = [(f, i) for f in folders for i in range(len(f) if limit <= 0 else min(limit, len(f)))]
    if temperature is None:
        temperature = default_temperature(model)
    if steps is None:
        steps = default_steps(model)
    errors, gated = [], []
    for k, (folder, i) in enumerate(jobs):
        hr, lr, ref = folder.load(i)
        sr = super_resolve(model, lr[0].permute(1, 2, 0), ref[0].permute(1, 2, 0), scale=scale,
                           steps=steps, temperature=temperature, ref_transfer=0.0, vae=vae)
        sr = sr.permute(2, 0, 1)[None]
        errors.append(hr - sr)
        gated.append(transfer_input(ref, upsample(lr, hr.shape[-2:]), scale, model.cfg))
        if progress is not None:
            progress(k + 1, len(jobs))
    gain = fit_transfer_gain(errors, gated)
    before = [float((e ** 2).mean()) for e in errors]
    after = [float(((e - gain * g) ** 2).mean()) for e, g in zip(errors, gated)]
    delta = sum(10 * torch.log10(torch.tensor(b / a)).item() for b, a in zip(before, after))
    return {"ref_transfer": gain, "images": len(jobs), "psnr_gain_db": delta / max(1, len(jobs)),
            "data": [str(r) for r in roots]}


def transfer_defaults(fit: dict) -> dict:
    """The sampling_defaults entries of a fit: the gain, and how it was fitted."""
    return {"ref_transfer": fit["ref_transfer"],
            "ref_transfer_fit": {k: fit[k] for k in ("data", "images", "psnr_gain_db")}}


def calibrate_checkpoint(path, roots, out=None, **kwargs) -> dict:
    """Fit lambda for the checkpoint at `path` and write it (with the fit's summary) into the
    sampling_defaults metadata of `out` (default: `path` itself, replaced atomically)."""
    cfg, state, meta = read_checkpoint(path)
    model = load_dsdit(path)
    fit = fit_ref_transfer(model, roots, scale=cfg.scale, **kwargs)
    defaults = dict(json.loads(meta.get("sampling_defaults") or "{}"), **transfer_defaults(fit))
    extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "dsdit_config")}
    extra["sampling_defaults"] = defaults
    save_checkpoint(out or path, model, extra=extra, state_dict=state)
    return fit
