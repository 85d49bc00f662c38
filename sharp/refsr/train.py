"""Training loop for DS-DiT (rectified flow, Ref dropout, EMA, validation, resumable).

Files written for `out = ckpt.safetensors`:
  ckpt.safetensors             EMA weights + config: the deliverable, loadable by load_dsdit
  ckpt.safetensors.state.safetensors   raw weights, EMA, optimizer moments, RNG state
  ckpt.safetensors.state.json          step, arguments, loss/validation history
Re-running with the same `out` resumes from the state files (pass resume=False to restart).
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .calibrate import fit_ref_transfer, transfer_defaults
from .checkpoint import cpu_state, save_checkpoint
from .config import PRESETS, DSDiTConfig
from .data import RefSRDataset, TripletFolder, upsample
from .distributed import DataParallel
from .flow import euler_sample, flow_loss, flow_noise
from .metrics import psnr
from .model import DSDiT
from .registration import align_reference
from .space import LatentCodec, WorkingSpace


def load_validation(root, n: int, crop: int, scale: int, align: str = "global",
                    unit: int = 16) -> list[dict]:
    """Centre crops (side `crop`, whole tokens of `unit` pixels) of the first n triplets of
    one folder, Ref aligned."""
    folder = TripletFolder(root)
    items = []
    for i in range(min(n, len(folder))):
        hr, lr, ref = folder.load(i)
        up = upsample(lr, hr.shape[-2:])
        ref, conf = align_reference(ref, up, scale, align)
        h, w = hr.shape[-2:]
        step = math.lcm(16, unit)                         # whole tokens for patch sizes up to 16
        c = max(step, min(crop, h, w) // step * step)
        y, x = (h - c) // 2 // scale * scale, (w - c) // 2 // scale * scale
        items.append({k: v[:, :, y:y + c, x:x + c] for k, v in
                      (("hr", hr), ("up", up), ("ref", ref), ("conf", conf))})
    return items


@torch.no_grad()
def validate(model: DSDiT, items: list[dict], steps: int = 10, seed: int = 0,
             temperature: float = 1.0, vae: Optional[LatentCodec] = None) -> dict:
    """Mean PSNR of bicubic, weak (no Ref) and Ref samples on validation crops."""
    space = WorkingSpace(model.cfg, vae)
    device = next(model.parameters()).device
    out = {"bicubic": [], "weak": [], "ref": []}
    for it in items:
        up_z = space.encode(it["up"].to(device))
        ref_z = space.encode(it["ref"].to(device))
        g = torch.Generator().manual_seed(seed)
        x0 = temperature * torch.randn(up_z.shape, generator=g).to(device)
        out["bicubic"].append(psnr(it["up"], it["hr"]))
        for name, ref in (("weak", None), ("ref", ref_z)):
            x1 = euler_sample(model, x0, up_z, ref, steps=steps, ref_conf=it["conf"].to(device))
            out[name].append(psnr(space.decode(space.untarget(x1, up_z)).cpu(), it["hr"]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def sampling_candidates(cfg: DSDiTConfig) -> list[tuple[int, float]]:
    """(Euler steps, temperature) pairs compared on validation. For x1-predicting models the
    first is the one-step estimate from temperature-1 noise (x1_hat at t = 0, on the training
    distribution); the others are the deterministic temperature-0 path and a full sample."""
    if cfg.predict == "x1":
        return [(1, 1.0), (20, 0.0), (20, 1.0)]
    return [(10, 0.0), (10, 0.5), (10, 1.0)]


def choose_sampling(model: DSDiT, items: list[dict], vae: Optional[LatentCodec] = None) -> dict:
    """Validation PSNR (Ref variant) per (steps, temperature); the best becomes the checkpoint's
    default. A small model cannot predict the exact texture, so a temperature-1 sample has the
    right statistics but the wrong phase and loses PSNR to an estimate of the conditional mean:
    the one-step x1 estimate (predict "x1") or the temperature-0 path."""
    scores = {(n, t): validate(model, items, steps=n, temperature=t, vae=vae)["ref"]
              for n, t in sampling_candidates(model.cfg)}
    steps, temperature = max(scores, key=scores.get)
    out = {"temperature": temperature,
           "val_psnr_by_steps_temperature": {f"{n},{t}": v for (n, t), v in scores.items()}}
    if model.cfg.predict == "x1":    # old v checkpoints keep the caller's steps (default 20)
        out["steps"] = steps
    return out


def _save_state(out: Path, model, ema, opt, generator, info: dict) -> None:
    tensors = {f"model.{k}": v for k, v in cpu_state(model.state_dict()).items()}
    tensors.update({f"ema.{k}": v for k, v in cpu_state(ema.state_dict()).items()})
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(val).cpu().contiguous()
    tensors["rng"] = generator.get_state()
    save_file(tensors, str(out) + ".state.safetensors.tmp")
    Path(str(out) + ".state.safetensors.tmp").replace(str(out) + ".state.safetensors")
    info = dict(info, param_groups=osd["param_groups"])
    tmp = Path(str(out) + ".state.json.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(str(out) + ".state.json")


def _load_state(out: Path, model, ema, opt, generator) -> dict:
    tensors = load_file(str(out) + ".state.safetensors")
    info = json.loads(Path(str(out) + ".state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    generator.set_state(tensors["rng"])
    return info


def _quiet(_msg: str) -> None:
    """The log of ranks other than 0."""


def lr_at(step: int, steps: int, base: float, warmup: int = 200, time_frac: float = 0.0) -> float:
    """Linear warm-up then cosine decay to 10% of the base learning rate. With a time budget,
    time_frac (elapsed / budget) advances the decay when it is ahead of step / steps, so a run
    cut short by --max-minutes still ends annealed (but then depends on the machine's speed:
    bound reproducible runs by steps)."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = max((step - warmup) / max(1, steps - warmup), time_frac)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def ema_update(ema: DSDiT, model: DSDiT, step: int, decay: float) -> None:
    """ema <- d ema + (1 - d) model with d = min(decay, (1 + step) / (10 + step)): the warm-up
    lets the early EMA follow the fast-moving weights."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - d)


def time_budget(dist: DataParallel, t_start: float, max_minutes: float, step: int) -> tuple[float, bool]:
    """(elapsed share of the --max-minutes budget, stop now?); (0, False) without a budget. Rank
    0's clock decides, so all ranks agree."""
    elapsed = time.time() - t_start
    frac, stop = dist.agree([elapsed / (60 * max_minutes) if max_minutes else 0.0,
                             float(step > 0 and max_minutes and elapsed > 60 * max_minutes)])
    return frac, bool(stop)


def train_step(net, model: DSDiT, opt, space: WorkingSpace, dataset: RefSRDataset, generator,
               dist: DataParallel, batch: int, crop: int, ref_drop: float, t0_prob: float,
               autocast) -> float:
    """One optimizer step on one global batch: crops, Ref dropout, noise and times are drawn from
    `generator` in that order (the same on every rank), each rank trains its slice. Returns the
    loss averaged over ranks."""
    cfg, device = model.cfg, dist.device
    full = dataset.batch(batch, generator)              # the same global batch on every rank
    ref_on = torch.rand(batch, generator=generator) >= ref_drop
    cells = crop // (cfg.unit // cfg.patch)              # working-grid side of a crop
    x0, t = flow_noise((batch, cfg.in_channels, cells, cells), generator, t0_prob)
    part = dist.slice(batch)
    b = {k: v[part].to(device) for k, v in full.items()}
    with torch.no_grad():
        up_z, ref_z = space.encode(b["up"]), space.encode(b["ref"])
        x1 = space.target(space.encode(b["hr"]), up_z)
    with autocast:
        loss = flow_loss(net, x1, up_z, ref_z, ref_on[part].to(device), ref_conf=b["conf"],
                         noise=(x0[part], t[part]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return dist.mean(float(loss.detach()))


def validation_record(ema: DSDiT, items: list[dict], vae: Optional[LatentCodec]) -> tuple[dict, str]:
    """Validation PSNR of the first and last sampling candidates -> (record fields, log text)."""
    (n0, t0), (n1, t1) = sampling_candidates(ema.cfg)[0], sampling_candidates(ema.cfg)[-1]
    first = validate(ema, items, steps=n0, temperature=t0, vae=vae)
    last = validate(ema, items, steps=n1, temperature=t1, vae=vae)
    text = (f"val PSNR ({n0} steps at temperature {t0} | {n1} at {t1}) "
            + ", ".join(f"{k} {v:.2f} | {last[k]:.2f}" for k, v in first.items()))
    return {"val": first, "val_t1": last}, text


def final_sampling(ema: DSDiT, val_items: list[dict], data: list, fit_transfer: bool,
                   vae: Optional[LatentCodec], log: Callable[[str], None]) -> Optional[dict]:
    """The checkpoint's sampling defaults: (steps, temperature) chosen on the validation crops,
    and the reference-detail-transfer gain fitted on the training folders (on the CPU)."""
    sampling = None
    if val_items:
        sampling = choose_sampling(ema, val_items, vae)
        log(f"default sampling: temperature {sampling['temperature']}, steps "
            f"{sampling.get('steps', 'caller')} (val PSNR by steps,temperature "
            f"{sampling['val_psnr_by_steps_temperature']})")
    if fit_transfer:
        device = next(ema.parameters()).device
        ema.cpu()
        fit = fit_ref_transfer(ema, data, scale=ema.cfg.scale,
                               temperature=sampling["temperature"] if sampling else None,
                               steps=sampling.get("steps", 20) if sampling else 20, vae=vae)
        ema.to(device)
        sampling = dict(sampling or {}, **transfer_defaults(fit))
        log(f"reference detail transfer gain {fit['ref_transfer']:.4f} "
            f"({fit['psnr_gain_db']:+.3f} dB on {fit['images']} training images)")
    return sampling


def train(data: list, out: str | Path, config: str | DSDiTConfig = "small", val: Optional[str] = None,
          steps: int = 10000, batch: int = 8, crop: int = 64, lr: float = 2e-3,
          ref_drop: float = 0.2, synthetic_ref_prob: float = 0.5, ema_decay: float = 0.999,
          val_every: int = 1000, val_count: int = 4, val_crop: int = 192, save_every: int = 500,
          max_minutes: float = 0.0, seed: int = 0, resume: bool = True, device: str = "cpu",
          log: Callable[[str], None] = print, progress: bool = True,
          fit_transfer: bool = True, ref_as_target: bool = False, t0_prob: float = 0.0,
          precision: str = "fp32", vae: Optional[LatentCodec] = None) -> dict:
    """Train DS-DiT on RRSSRD-style folders; returns the final info dict.

    Stages: set up (model, EMA, optimizer, resume), then per step the learning rate (lr_at), one
    optimizer step (train_step), the EMA (ema_update), and every 50 steps a log record with the
    validation PSNR every val_every steps (validation_record); at the end the sampling defaults
    (final_sampling) and the files.

    steps bounds the run (the learning rate decays over them); max_minutes optionally stops it
    earlier (and then also drives the decay: such a run depends on the machine's speed).
    device: "cpu" or e.g. "cuda" (data and RNG stay on the CPU; batches are moved).
    precision: "fp32" or "bf16" (torch.autocast on the device; weights, optimizer and EMA stay
    float32). vae: the LatentCodec of a latent-space config (sharp.refsr.vae.load_vae).
    Data-parallel: launched by torchrun (WORLD_SIZE > 1), every rank draws the same global batch
    from the same generator and trains on its 1/WORLD_SIZE slice; DDP averages the gradients, so
    the run equals one process with the same global `batch` (gloo on CPU, nccl on CUDA; rank 0
    validates and writes the files).
    fit_transfer: at the end, fit the reference-detail-transfer gain on the training folders
    (sharp.refsr.calibrate; a few seconds per training image) into the sampling defaults.
    ref_as_target: also train on target = Ref, LR = its RRSSRD degradation, Ref = the HR
    (data.RefSRDataset). t0_prob: share of samples at t = 0 (flow.flow_loss)."""
    from tqdm import tqdm

    cfg = PRESETS[config] if isinstance(config, str) else config
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    space = WorkingSpace(cfg, vae)          # raises for a latent config without a matching VAE
    if crop % cfg.unit:
        raise ValueError(f"crop ({crop}) must be a multiple of the model's token size {cfg.unit} "
                         "pixels (patch x VAE downscale)")
    dist = DataParallel(device)
    device = dist.device
    if batch % dist.world:
        raise ValueError(f"batch ({batch}) must be divisible by the number of processes ({dist.world})")
    out = Path(out)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DSDiT(cfg).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    info = {"step": 0, "history": [], "args": {
        "data": [str(d) for d in data], "config": cfg.to_json(), "steps": steps, "batch": batch,
        "crop": crop, "lr": lr, "ref_drop": ref_drop, "synthetic_ref_prob": synthetic_ref_prob,
        "ema_decay": ema_decay, "seed": seed, "val": str(val) if val else None,
        "ref_as_target": ref_as_target, "t0_prob": t0_prob}}
    if resume and Path(str(out) + ".state.json").is_file():
        prev = _load_state(out, model, ema, opt, generator)
        if prev["args"]["config"] != cfg.to_json():
            raise ValueError(f"{out}.state.json was trained with a different config; "
                             "use another --out or --no-resume")
        info.update(step=prev["step"], history=prev["history"])
        log(f"resumed from step {info['step']}")
    dataset = RefSRDataset(data, crop=crop, scale=cfg.scale, synthetic_ref_prob=synthetic_ref_prob,
                           seed=seed, align=cfg.ref_align, ref_as_target=ref_as_target)
    if not dist.main:
        log = _quiet
    log(f"{len(dataset.hr)} training triplets; model {sum(p.numel() for p in model.parameters())} "
        f"params; {dist.world} process(es), device {device}, {precision}")
    val_items = (load_validation(val, val_count, val_crop, cfg.scale, cfg.ref_align, cfg.unit)
                 if val and dist.main else [])
    net = dist.wrap(model)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    t_start, losses = time.time(), []
    bar = tqdm(total=steps, initial=info["step"], disable=not progress or not dist.main,
               desc="train-refsr")

    def save(sampling: dict | None = None):
        summary = {"step": info["step"], "last_val": next((h for h in reversed(info["history"])
                                                          if "val" in h), None)}
        extra = {"training": summary}
        if sampling:
            extra["sampling_defaults"] = sampling
        if dist.main:
            save_checkpoint(out, ema, extra=extra)
            _save_state(out, model, ema, opt, generator, info)

    model.train()
    while info["step"] < steps:
        step = info["step"]
        time_frac, stop = time_budget(dist, t_start, max_minutes, step)
        if stop:
            log(f"time limit of {max_minutes} min reached at step {step}")
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, time_frac=time_frac)
        losses.append(train_step(net, model, opt, space, dataset, generator, dist, batch, crop,
                                 ref_drop, t0_prob, autocast))
        ema_update(ema, model, step, ema_decay)
        info["step"] = step + 1
        bar.update(1)
        if info["step"] % 50 == 0:
            rec = {"step": info["step"], "loss": float(np.mean(losses)),
                   "minutes": (time.time() - t_start) / 60}
            losses = []
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            if val_items and (info["step"] % val_every == 0 or info["step"] == steps):
                fields, text = validation_record(ema, val_items, vae)
                rec.update(fields)
                log(f"step {info['step']}: loss {rec['loss']:.4f}, {text}")
            info["history"].append(rec)
        if info["step"] % save_every == 0:
            save()
    bar.close()
    if not dist.main:
        dist.close()
        return info
    sampling = final_sampling(ema, val_items, data, fit_transfer, vae, log)
    if sampling:
        info["sampling_defaults"] = sampling
    save(sampling)
    dist.close()
    return info
