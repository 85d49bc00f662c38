"""Decoupled neighbourhood attention of DS-DiT.

In every block the noisy-target tokens attend twice, in two separate softmaxes:
    h_LR  = Attn([noisy, LR])     h_Ref = Attn([noisy, Ref])
so the LR and Ref streams never compete inside one softmax and never attend to each other.

Deviation from the paper (global attention): each query sees the (2r+1)^2 neighbourhood of its
own grid position in every key source, with a learned relative-position bias per head and offset.
This keeps cost linear in the number of tokens (needed on CPU and for tiling), makes the network
translation-equivariant (tiles blend without seams), and makes Ref matching local, like the
2-8 px misalignment of real references.

Layout: token grids are channels-last, [B, H, W, D].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def neighbourhood(x: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, H, W, D] -> [B, H, W, K, D]: the K = (2r+1)^2 zero-padded neighbours of every token."""
    _, h, w, _ = x.shape
    k = 2 * radius + 1
    xp = F.pad(x, (0, 0, radius, radius, radius, radius))
    return torch.stack([xp[:, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], dim=3)


def neighbourhood_valid(h: int, w: int, radius: int, device=None) -> torch.Tensor:
    """[H, W, K] bool: which neighbours lie inside the grid (padding is masked out)."""
    ones = torch.ones(1, h, w, 1, device=device)
    return neighbourhood(ones, radius)[0, :, :, :, 0] > 0.5


class NeighbourhoodAttention(nn.Module):
    """One branch: queries from the noisy tokens, keys/values from [noisy, condition]."""

    def __init__(self, dim: int, heads: int, radius: int):
        super().__init__()
        self.heads, self.radius = heads, radius
        k = (2 * radius + 1) ** 2
        self.q = nn.Linear(dim, dim)
        self.kv_self = nn.Linear(dim, 2 * dim)   # keys/values of the noisy tokens
        self.kv_cond = nn.Linear(dim, 2 * dim)   # keys/values of the condition tokens
        self.bias_self = nn.Parameter(torch.zeros(heads, k))  # relative-position bias
        self.bias_cond = nn.Parameter(torch.zeros(heads, k))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x, cond: [B, H, W, D] -> [B, H, W, D]."""
        b, h, w, d = x.shape
        nh, r = self.heads, self.radius
        dh = d // nh
        q = self.q(x).unflatten(-1, (nh, dh)) / math.sqrt(dh)                   # [B,H,W,nh,dh]
        k_s, v_s = self.kv_self(x).chunk(2, dim=-1)
        k_c, v_c = self.kv_cond(cond).chunk(2, dim=-1)
        pad = (0, 0, r, r, r, r)
        keys = [F.pad(t, pad).unflatten(-1, (nh, dh)) for t in (k_s, k_c)]      # [B,H+2r,W+2r,nh,dh]
        vals = [F.pad(t, pad).unflatten(-1, (nh, dh)) for t in (v_s, v_c)]
        bias = torch.cat([self.bias_self, self.bias_cond], dim=1)               # [nh, 2K]
        valid = neighbourhood_valid(h, w, r, x.device)                           # [H,W,K]
        valid = torch.cat([valid, valid], dim=-1)[:, :, None]                    # [H,W,1,2K]
        rows = strip_rows(b, w, d, x.element_size())
        # Inference reuses one strip-sized product buffer (the same operations in the same
        # order as the autograd path, so the same bits); autograd takes no out= buffers.
        buf = x.new_empty(b, min(rows, h), w, nh, dh) if not torch.is_grad_enabled() else None
        out = x.new_empty(b, h, w, nh, dh)
        for y0 in range(0, h, rows):
            y1 = min(y0 + rows, h)
            attend_strip(q[:, y0:y1], keys, vals, bias, valid[y0:y1], y0, r, out[:, y0:y1],
                         None if buf is None else buf[:, :y1 - y0])
        return self.out(out.flatten(-2))                                         # [B,H,W,D]


STRIP_BYTES = 512 * 1024
"""Size of one [B, rows, W, D] product in the strip loop: small enough to stay in a core's L2
cache across the (2r+1)^2 offsets, so the loop is not bound by memory bandwidth (two workers on
one machine then scale; measured 36 -> 25 ms per 120^2 x 64 attention, one thread)."""


def strip_rows(b: int, w: int, d: int, itemsize: int) -> int:
    """Query rows per strip: a [b, rows, w, d] product of about STRIP_BYTES."""
    return max(1, STRIP_BYTES // (b * w * d * itemsize))


def attend_strip(q, keys, vals, bias, valid, y0: int, r: int, out, buf=None) -> None:
    """Neighbourhood attention of the query rows y0 .. y0 + S of the grid.

    q: [B, S, W, nh, dh] (scaled); keys / vals: per source (noisy, condition) the zero-padded
    [B, H+2r, W+2r, nh, dh]; bias [nh, 2K]; valid [S, W, 1, 2K]. One logit per (source, offset),
    without materialising the neighbourhoods. The result goes into out [B, S, W, nh, dh]; buf
    (the same shape) is scratch for inference only (no autograd through out= ops)."""
    b, s, w = q.shape[:3]
    k = 2 * r + 1
    shifted = [(src, dy, dx) for src in range(len(keys)) for dy in range(k) for dx in range(k)]

    def product(a, t, into=None):               # a * t; into the buffers when given
        if buf is None:
            return a * t
        return torch.mul(a, t, out=buf if into is None else into)

    def window(t, dy, dx):                      # the neighbours at offset (dy, dx): [B,S,W,nh,dh]
        return t[:, y0 + dy:y0 + dy + s, dx:dx + w]

    logits = q.new_empty(b, s, w, q.shape[3], len(shifted))                      # [B,S,W,nh,2K]
    for j, (src, dy, dx) in enumerate(shifted):
        logits[..., j] = product(q, window(keys[src], dy, dx)).sum(-1)
    attn = (logits + bias).masked_fill(~valid, float("-inf")).softmax(dim=-1)
    src, dy, dx = shifted[0]
    acc = product(attn[..., :1], window(vals[src], dy, dx), into=out)           # sum_j attn_j v_j
    for j, (src, dy, dx) in enumerate(shifted[1:], start=1):
        term = product(attn[..., j:j + 1], window(vals[src], dy, dx))
        acc = acc + term if buf is None else acc.add_(term)
    if buf is None:
        out.copy_(acc)                           # autograd: copied into the output's rows


class DecoupledAttention(nn.Module):
    """Two separate attentions, noisy->[noisy, LR] and noisy->[noisy, Ref]."""

    def __init__(self, dim: int, heads: int, radius: int):
        super().__init__()
        self.attn_lr = NeighbourhoodAttention(dim, heads, radius)
        self.attn_ref = NeighbourhoodAttention(dim, heads, radius)

    def forward(self, x, c_lr, c_ref=None):
        """x, c_lr, c_ref: [B, H, W, D] -> (h_LR, h_Ref or None), each [B, H, W, D]."""
        h_lr = self.attn_lr(x, c_lr)
        h_ref = None if c_ref is None else self.attn_ref(x, c_ref)
        return h_lr, h_ref
