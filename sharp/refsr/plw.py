"""Patch-Level Weighting (PLW): a per-patch balance between the LR and Ref branches.

A small convolutional module over the token grid predicts w in [0, 1] for every patch from the
noisy, LR and Ref features; the branches are fused as h = w * h_LR + (1 - w) * h_Ref. The 3x3
convolutions add the local modelling that attention alone lacks, and let the network fall back
to the LR branch (w -> 1) where the Ref is wrong (changed buildings, occlusions).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def fuse(w: torch.Tensor, h_lr: torch.Tensor, h_ref: torch.Tensor) -> torch.Tensor:
    """h = w * h_LR + (1 - w) * h_Ref; w: [B, H, W, 1], h_*: [B, H, W, D]."""
    return w * h_lr + (1.0 - w) * h_ref


class PatchLevelWeighting(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * dim, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        nn.init.zeros_(self.net[2].weight)   # start balanced: w = 0.5 everywhere
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x, c_lr, c_ref) -> torch.Tensor:
        """x, c_lr, c_ref: [B, H, W, D] -> w: [B, H, W, 1] in [0, 1]."""
        feats = rearrange(torch.cat([x, c_lr, c_ref], dim=-1), "b h w d -> b d h w")
        return rearrange(torch.sigmoid(self.net(feats)), "b one h w -> b h w one")
