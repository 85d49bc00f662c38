"""Independent re-derivations used as test oracles (and as the benchmark's stock baseline).

Written from the SHARP paper's formulas (the method table in README.md) and from ComfyUI's documented
EmbedND layout, in numpy / plain torch, without importing anything from `sharp`.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def stock_embed_nd(ids: torch.Tensor, axes_dim, theta: float) -> torch.Tensor:
    """ComfyUI Flux EmbedND, computed as it does: trig per token and axis, float64 angles.

    ids [B, L, n_axes] -> [B, 1, L, sum(axes_dim)/2, 2, 2] float32, blocks [[cos, -sin], [sin, cos]].
    """
    per_axis = []
    for i, dim in enumerate(axes_dim):
        scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=ids.device)
        omega = 1.0 / (theta ** scale)
        out = torch.einsum("...n,d->...nd", ids[..., i].to(dtype=torch.float32), omega)
        out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
        out = out.reshape(*out.shape[:-1], 2, 2)
        per_axis.append(out.to(dtype=torch.float32))
    return torch.cat(per_axis, dim=-3).unsqueeze(1)


# ---- the method's formulas, in numpy ---------------------------------------------------------

def np_base(D, theta):
    j = np.arange(D // 2, dtype=np.float64)
    return theta ** (-2.0 * j / D)


def np_blend_keep(r, D, theta, L0):
    """keep_j for a (r_lo, r_hi) pair, straight from the formula text."""
    def c(rr):
        if rr == 0:
            return float("inf")
        return D * math.log(L0 / (2 * math.pi * rr)) / (2 * math.log(theta))

    c_lo, c_hi = c(r[0]), c(r[1])
    lo = min(max(np.floor(c_lo), 0), D / 2)
    hi = min(np.ceil(c_hi), D - 1, D / 2)
    if lo == hi:
        hi += 0.001
    j = np.arange(D // 2, dtype=np.float64)
    ramp = np.clip((j - lo) / (hi - lo), 0, 1)
    return 1 - ramp


def np_yarn(D, theta, s, L0, pair1, pair2):
    base = np_base(D, theta)
    pi = base / s
    ntk = (theta * s ** (D / (D - 2))) ** (-2.0 * np.arange(D // 2) / D)
    k1 = np_blend_keep(pair1, D, theta, L0)
    f = pi * (1 - k1) + ntk * k1
    k2 = np_blend_keep(pair2, D, theta, L0)
    return f * (1 - k2) + base * k2


def np_frequencies(D, theta, s, t, method, L0=64, alpha_s=4.0, pair1=(1.25, 0.75), pair2=(16.0, 2.0)):
    t = min(max(t, 0.0), 1.0)
    base = np_base(D, theta)
    if s <= 1 or method == "base":
        return base
    if method == "pi":
        return base / s
    if method == "ntk":
        return (theta * s ** (D / (D - 2))) ** (-2.0 * np.arange(D // 2) / D)
    if method == "dy-ntk":
        th = theta * max(1.0, (s ** (D / (D - 2))) ** (2 * t ** 2))
        return th ** (-2.0 * np.arange(D // 2) / D)
    if method == "yarn":
        return np_yarn(D, theta, s, L0, pair1, pair2)
    if method == "dype":
        k = t ** 2
        return np_yarn(D, theta, s, L0, (pair1[0] * k, pair1[1] * k), (pair2[0] * k, pair2[1] * k))
    if method == "sharp":
        a = max(alpha_s, 1.0)
        k = t / (a - (a - 1) * t)
        return np_yarn(D, theta, s, L0, (pair1[0] ** k, pair1[1] ** k), (pair2[0] * k, pair2[1] * k))
    raise AssertionError(method)


def np_mscale(s, method):
    if s <= 1 or method not in ("yarn", "dype", "sharp"):
        return 1.0
    return 1 + 0.1 * math.log(s)


def reference_embed(ids: torch.Tensor, axes_dim, theta, t, method, L0=64, tokens=None, **kw) -> np.ndarray:
    """Per-token, per-axis evaluation of the promoted RoPE: [B, 1, L', sum/2, 2, 2] float64 numpy.

    Extent per spatial axis (every axis but 0) = max position + 1 over tokens with image index 0
    (of all the ids); the blocks are evaluated for the token indices `tokens` (default: all).
    """
    ids_np = ids.to(torch.float32).double().numpy()
    own = ids_np[..., 0] == 0
    at = ids_np if tokens is None else ids_np[:, tokens]
    cols = []
    for i, D in enumerate(axes_dim):
        if i == 0:
            s = 1.0
        else:
            s = (ids_np[..., i][own].max() + 1) / L0
        f = np_frequencies(D, theta, s, t, method, L0, **kw)
        m = np_mscale(s, method)
        ang = at[..., i][..., None] * f  # [B, L', D/2]
        c, sn = np.cos(ang) * m, np.sin(ang) * m
        cols.append(np.stack([np.stack([c, -sn], -1), np.stack([sn, c], -1)], -2))
    return np.concatenate(cols, axis=-3)[:, None]


def flux_ids(h_tokens: int, w_tokens: int, txt: int = 8, batch: int = 1, index: int = 0,
             h_offset: float = 0, w_offset: float = 0) -> torch.Tensor:
    """Flux-style ids: text tokens all zero, then image tokens (index, row, col). [B, txt + h*w, 3]."""
    rows = torch.arange(h_tokens, dtype=torch.float32)[:, None].expand(h_tokens, w_tokens)
    cols = torch.arange(w_tokens, dtype=torch.float32)[None, :].expand(h_tokens, w_tokens)
    img = torch.stack([torch.full_like(rows, float(index)), rows + h_offset, cols + w_offset], -1)
    img = img.reshape(1, h_tokens * w_tokens, 3).expand(batch, -1, -1)
    return torch.cat([torch.zeros(batch, txt, 3), img], dim=1).contiguous()
