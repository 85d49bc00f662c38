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
        k = 2 * r + 1
        q = self.q(x).unflatten(-1, (nh, d // nh)) / math.sqrt(d // nh)        # [B,H,W,nh,dh]
        k_s, v_s = self.kv_self(x).chunk(2, dim=-1)
        k_c, v_c = self.kv_cond(cond).chunk(2, dim=-1)
        pad = (0, 0, r, r, r, r)
        keys = [F.pad(t, pad) for t in (k_s, k_c)]                               # [B,H+2r,W+2r,D]
        vals = [F.pad(t, pad) for t in (v_s, v_c)]
        offsets = [(dy, dx) for dy in range(k) for dx in range(k)]

        def shifted(t, dy, dx):                                                  # [B,H,W,nh,dh]
            return t[:, dy:dy + h, dx:dx + w].unflatten(-1, (nh, d // nh))

        # one logit per (source, offset), without materialising the neighbourhoods
        logits = torch.stack([(q * shifted(kp, dy, dx)).sum(-1)
                              for kp in keys for dy, dx in offsets], dim=-1)     # [B,H,W,nh,2K]
        logits = logits + torch.cat([self.bias_self, self.bias_cond], dim=1)     # bias [nh, 2K]
        valid = neighbourhood_valid(h, w, r, x.device)                           # [H,W,K]
        valid = torch.cat([valid, valid], dim=-1)[:, :, None]                    # [H,W,1,2K]
        attn = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        out = None
        j = 0
        for vp in vals:
            for dy, dx in offsets:
                term = attn[..., j:j + 1] * shifted(vp, dy, dx)
                out = term if out is None else out + term
                j += 1
        return self.out(out.flatten(-2))                                         # [B,H,W,D]


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
