"""DS-DiT: Decoupled Siamese Diffusion Transformer for reference-based RS super-resolution.

    x_t  (noisy target, working-space grid)  -> patchify -> tokens x         [B, H/p, W/p, D]
    LR   (upsampled to the target grid)      -> Siamese encoder + e_LR  c_LR [B, H/p, W/p, D]
    Ref  (registered HR reference)           -> Siamese encoder + e_Ref c_Ref
    per block: adaLN(t); h_LR, h_Ref = decoupled attention; w = PLW(x, c_LR, c_Ref);
               x += gate * (w * h_LR + (1 - w) * h_Ref); x += gate * MLP(x)
    final adaLN + linear -> unpatchify -> velocity v                         [B, C, H, W]

"Weak" (Ref suppressed) prediction: ref=None, which is exactly w = 1 in every block (the LR
branch alone); training drops the Ref per sample by forcing w = 1 so one network gives both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import DecoupledAttention
from .config import DSDiTConfig
from .plw import PatchLevelWeighting, fuse
from .registration import low_pass


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/p, W/p, C*p*p] (pixel-unshuffle)."""
    return rearrange(F.pixel_unshuffle(x, p), "b c h w -> b h w c")


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, H/p, W/p, C*p*p] -> [B, C, H, W] (pixel-shuffle)."""
    return F.pixel_shuffle(rearrange(x, "b h w c -> b c h w"), p)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t: [B] in [0, 1] -> sinusoidal features [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x, shift, scale):
    """adaLN: x [B, H, W, D], shift/scale [B, D]."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


class SiameseEncoder(nn.Module):
    """One shared-weight encoder for the LR and Ref streams, plus a learned source embedding."""

    LR, REF = 0, 1

    def __init__(self, in_ch: int, p: int, dim: int, depth: int):
        super().__init__()
        self.p = p
        self.stem = nn.Linear(in_ch * p * p, dim)
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(depth))
        self.source = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, img: torch.Tensor, source: int) -> torch.Tensor:
        """img: [B, C, H, W] working-space grid -> tokens [B, H/p, W/p, D]."""
        x = rearrange(self.stem(patchify(img, self.p)), "b h w d -> b d h w")
        for conv in self.convs:
            x = x + conv(F.gelu(x))
        x = rearrange(x, "b d h w -> b h w d")
        return self.norm(x) + self.source.weight[source]


class DSDiTBlock(nn.Module):
    def __init__(self, cfg: DSDiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = DecoupledAttention(d, cfg.heads, cfg.radius)
        self.plw = PatchLevelWeighting(d, cfg.plw_hidden)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)   # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, temb, c_lr, c_ref=None, ref_on=None):
        """x, c_*: [B, H, W, D]; temb: [B, D]; ref_on: [B] bool (False = Ref dropped, w = 1).

        Returns (x, w) with w [B, H, W, 1] or None when no Ref is given."""
        s1, g1, b1, s2, g2, b2 = self.ada(F.silu(temb)).chunk(6, dim=-1)
        h = modulate(self.norm1(x), s1, g1)
        h_lr, h_ref = self.attn(h, c_lr, c_ref)
        if c_ref is None:
            w, mix = None, h_lr
        else:
            w = self.plw(h, c_lr, c_ref)
            if ref_on is not None:
                w = torch.where(ref_on[:, None, None, None], w, torch.ones_like(w))
            mix = fuse(w, h_lr, h_ref)
        x = x + b1[:, None, None] * mix
        x = x + b2[:, None, None] * self.mlp(modulate(self.norm2(x), s2, g2))
        return x, w


class DSDiT(nn.Module):
    def __init__(self, cfg: DSDiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c, p, d = cfg.in_channels, cfg.patch, cfg.dim
        self.x_embed = nn.Linear(c * p * p, d)
        self.t_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.encoder = SiameseEncoder(c * (2 if cfg.cond_highpass else 1), p, d, cfg.encoder_depth)
        self.blocks = nn.ModuleList(DSDiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, c * p * p)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition_input(self, img: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> encoder input: the grid, plus its detail layer if cond_highpass."""
        if not self.cfg.cond_highpass:
            return img
        return torch.cat([img, img - low_pass(img, self.cfg.scale)], dim=1)

    def encode_conditions(self, lr, ref=None):
        """Siamese encoding of the condition grids -> (c_LR, c_Ref or None), [B, h, w, D].

        They do not depend on x_t or t: samplers compute them once and pass `conds`."""
        c_lr = self.encoder(self.condition_input(lr), SiameseEncoder.LR)
        c_ref = None if ref is None else self.encoder(self.condition_input(ref), SiameseEncoder.REF)
        return c_lr, c_ref

    def forward(self, x_t, t, lr, ref=None, ref_on=None, return_weights=False, conds=None):
        """x_t, lr, ref: [B, C, H, W] working-space grids (H, W multiples of patch); t: [B].
        conds: optional precomputed encode_conditions(lr, ref) (then lr/ref are not re-encoded).

        Returns the velocity [B, C, H, W] (and the per-block PLW maps if return_weights)."""
        p = self.cfg.patch
        if x_t.shape[-2] % p or x_t.shape[-1] % p:
            raise ValueError(f"grid size {tuple(x_t.shape[-2:])} is not a multiple of patch {p}")
        x = self.x_embed(patchify(x_t, p))                                 # [B, h, w, D]
        temb = self.t_embed(timestep_embedding(t, self.cfg.dim))           # [B, D]
        c_lr, c_ref = conds if conds is not None else self.encode_conditions(lr, ref)
        weights = []
        for block in self.blocks:
            x, w = block(x, temb, c_lr, c_ref, ref_on)
            weights.append(w)
        shift, scale = self.ada_out(F.silu(temb)).chunk(2, dim=-1)
        v = unpatchify(self.out(modulate(self.norm_out(x), shift, scale)), p)
        return (v, weights) if return_weights else v
