"""Rectified flow for DS-DiT: training loss, Euler sampler and autoguidance.

Flow time tau: tau = 0 is noise x0 ~ N(0, I), tau = 1 is data x1 (the opposite way round from the RoPE
code's t = sigma / sigma_max, where 1 is pure noise: hence its own name);
    x_tau = (1 - tau) * x0 + tau * x1,   target velocity v = x1 - x0.
Sampling integrates dx/dtau = v(x_tau, tau) from tau = 0 to 1 with N Euler steps.

Autoguidance (Karras et al. 2024) with the Ref-suppressed model as the weak model:
    v = v_weak + g * (v_strong - v_weak),  g = 1 disables it (one forward per step).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .model import DSDiT


def interpolate(x0: torch.Tensor, x1: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x_tau = (1 - tau) x0 + tau x1; x*: [B, C, H, W], tau: [B]."""
    tau = tau[:, None, None, None]
    return (1.0 - tau) * x0 + tau * x1


def sample_tau(batch: int, generator: Optional[torch.Generator] = None,
               t0_prob: float = 0.0) -> torch.Tensor:
    """Logit-normal(0, 1) flow times tau [B] (SD3), concentrating training on mid-range tau; with
    t0_prob > 0 that share of them is exactly 0 (pure noise: the one-step estimate)."""
    tau = torch.sigmoid(torch.randn(batch, generator=generator))
    if t0_prob > 0:
        tau = torch.where(torch.rand(batch, generator=generator) < t0_prob, torch.zeros_like(tau), tau)
    return tau


def flow_noise(shape, generator=None, t0_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of one training batch: noise x0 [shape] and flow times tau [B] (CPU)."""
    return torch.randn(shape, generator=generator), sample_tau(shape[0], generator, t0_prob)


def flow_loss(model: DSDiT, x1, lr, ref, ref_on=None, generator=None, ref_conf=None,
              t0_prob: float = 0.0, noise=None) -> torch.Tensor:
    """Rectified-flow loss. x1, lr, ref: [B, C, H, W]; ref_on: [B] bool, False drops the Ref for
    that sample; ref_conf: [B, 1, H', W'] matching confidence (models with cfg.ref_confidence).
    noise: (x0, tau) drawn beforehand (flow_noise; data-parallel ranks slice one global draw),
    else drawn here from generator.

    cfg.predict "v": MSE between predicted and true velocity x1 - x0.
    cfg.predict "x1": MSE between the clean estimate x1_hat and x1 (the regression loss; the
    velocity then follows from x1_hat). t0_prob: the share of samples trained at tau = 0 exactly,
    where x_tau is pure noise and x1_hat is the conditional-mean estimate that one-step sampling
    returns (logit-normal tau almost never comes close to 0)."""
    x0, tau = noise if noise is not None else flow_noise(x1.shape, generator, t0_prob)
    x0, tau = x0.to(x1.device, x1.dtype), tau.to(x1.device)
    x_tau = interpolate(x0, x1, tau)
    cfg = getattr(getattr(model, "module", model), "cfg", None)      # DDP wraps the model
    if cfg is not None and cfg.predict == "x1":
        return torch.mean((model(x_tau, tau, lr, ref, ref_on, ref_conf=ref_conf, clean=True).float()
                           - x1) ** 2)
    v = model(x_tau, tau, lr, ref, ref_on, ref_conf=ref_conf)
    return torch.mean((v.float() - (x1 - x0)) ** 2)


def autoguidance(v_weak: torch.Tensor, v_strong: torch.Tensor, g: float) -> torch.Tensor:
    """v = v_weak + g (v_strong - v_weak)."""
    return v_weak + g * (v_strong - v_weak)


@torch.no_grad()
def euler_sample(model: DSDiT, x0, lr, ref=None, steps: int = 20, guidance: float = 1.0,
                 callback: Optional[Callable[[], None]] = None, ref_conf=None) -> torch.Tensor:
    """Integrate from noise x0 [B, C, H, W] to a sample; ref=None gives the weak prediction.
    ref_conf: the Ref's matching confidence [B, 1, H', W'] (models with cfg.ref_confidence)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x0
    b = x.shape[0]
    encode = getattr(model, "encode_conditions", None)      # conditions are fixed: encode once
    if encode is None:
        weak_kw, strong_kw = {}, ({"ref_conf": ref_conf} if ref_conf is not None else {})
    else:   # only the predictions this call uses
        weak_kw = {"conds": encode(lr, None)} if ref is None or guidance != 1.0 else {}
        strong_kw = {"conds": encode(lr, ref, ref_conf)} if ref is not None else {}
    for i in range(steps):
        tau = torch.full((b,), i / steps, device=x.device, dtype=x.dtype)
        if ref is None:
            v = model(x, tau, lr, **weak_kw)
        elif guidance == 1.0:
            v = model(x, tau, lr, ref, **strong_kw)
        else:
            v = autoguidance(model(x, tau, lr, **weak_kw), model(x, tau, lr, ref, **strong_kw), guidance)
        x = x + v / steps
        if callback is not None:
            callback()
    return x
