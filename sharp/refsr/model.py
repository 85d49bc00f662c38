"""DS-DiT: Decoupled Siamese Diffusion Transformer for reference-based RS super-resolution.

    x_tau (noisy target, working-space grid) -> patchify -> tokens x         [B, H/p, W/p, D]
    LR   (upsampled to the target grid)      -> Siamese encoder + e_LR  c_LR [B, H/p, W/p, D]
    Ref  (registered HR reference)           -> Siamese encoder + e_Ref c_Ref
    per block: adaLN(tau); h_LR, h_Ref = decoupled attention; w = PLW(x, c_LR, c_Ref);
               x += gate * (w * h_LR + (1 - w) * h_Ref); x += gate * MLP(x)
    final adaLN + linear -> unpatchify -> velocity v                         [B, C, H, W]

"Weak" (Ref suppressed) prediction: ref=None. With cfg.weak_ref "off" that is exactly w = 1 in
every block (the LR branch alone); with "null" the Ref branch sees the upsampled LR as a null Ref
with zero matching confidence (same capacity, no reference content). Training drops the Ref per
sample (ref_on False) the same way, so one network gives both predictions.
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


def timestep_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Flow time tau: [B] in [0, 1] (0 = noise, sharp.refsr.flow) -> sinusoidal features [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=tau.device) / half)
    args = 1000.0 * tau[:, None].float() * freqs[None]
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
        # adaLN-zero: shift, scale and gate of the attention and of the MLP sub-layer, from tau
        (shift_attn, scale_attn, gate_attn,
         shift_mlp, scale_mlp, gate_mlp) = self.ada(F.silu(temb)).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_attn, scale_attn)
        h_lr, h_ref = self.attn(h, c_lr, c_ref)
        if c_ref is None:
            w, mix = None, h_lr
        else:
            w = self.plw(h, c_lr, c_ref)
            if ref_on is not None:
                w = torch.where(ref_on[:, None, None, None], w, torch.ones_like(w))
            mix = fuse(w, h_lr, h_ref)
        x = x + gate_attn[:, None, None] * mix
        x = x + gate_mlp[:, None, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
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
        if cfg.ref_confidence:   # matching confidence -> Ref token offset; starts unused
            self.conf_embed = nn.Linear(1, d)
            nn.init.zeros_(self.conf_embed.weight)
            nn.init.zeros_(self.conf_embed.bias)
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

    def null_reference(self, lr, ref=None, ref_conf=None, ref_on=None):
        """cfg.weak_ref "null": the Ref of dropped samples (ref_on False, or all when ref is None)
        becomes the upsampled LR with zero confidence. Returns (ref, ref_conf)."""
        if ref is None:
            ppc = self.pixels_per_cell
            return lr, lr.new_zeros(lr.shape[0], 1, lr.shape[-2] * ppc, lr.shape[-1] * ppc)
        if ref_on is None:
            return ref, ref_conf
        keep = ref_on[:, None, None, None]
        ref = torch.where(keep, ref, lr)
        if ref_conf is not None:
            ref_conf = torch.where(keep, ref_conf, torch.zeros_like(ref_conf))
        return ref, ref_conf

    @property
    def pixels_per_cell(self) -> int:
        """Image pixels per working-grid cell (1 in pixel space, the VAE downscale in latent)."""
        return self.cfg.unit // self.cfg.patch

    def encode_conditions(self, lr, ref=None, ref_conf=None, ref_on=None):
        """Siamese encoding of the condition grids -> (c_LR, c_Ref or None), [B, h, w, D].

        ref_conf: [B, 1, H, W] matching confidence in [0, 1] at image resolution (needed when
        cfg.ref_confidence; from `align_reference`). ref_on: [B] bool, training's Ref dropout.
        They do not depend on x_tau or tau: samplers compute them once and pass `conds`."""
        if self.cfg.weak_ref == "null":
            ref, ref_conf = self.null_reference(lr, ref, ref_conf, ref_on)
        c_lr = self.encoder(self.condition_input(lr), SiameseEncoder.LR)
        if ref is None:
            return c_lr, None
        c_ref = self.encoder(self.condition_input(ref), SiameseEncoder.REF)
        if self.cfg.ref_confidence:
            if ref_conf is None:
                raise ValueError("this DS-DiT checkpoint needs the Ref's matching confidence: "
                                 "align the Ref with sharp.refsr.align_reference (super_resolve "
                                 "does this)")
            conf = F.avg_pool2d(ref_conf.to(c_ref.dtype), self.cfg.unit)      # [B, 1, h, w]
            c_ref = c_ref + self.conf_embed(rearrange(conf, "b one h w -> b h w one"))
        return c_lr, c_ref

    def forward(self, x_tau, tau, lr, ref=None, ref_on=None, return_weights=False, conds=None,
                ref_conf=None, clean=False):
        """The velocity [B, C, H, W] at flow time tau [B] (0 = noise; see `network`); for cfg.predict
        "x1" it is derived from the clean estimate, v = (x1_hat - x_tau) / (1 - tau). clean=True
        returns the clean estimate x1_hat = x_tau + (1 - tau) v instead (exact for predict "x1");
        through forward so that DistributedDataParallel sees it."""
        out, weights = self.network(x_tau, tau, lr, ref, ref_on, conds, ref_conf)
        rest = (1.0 - tau)[:, None, None, None]
        if clean and self.cfg.predict == "v":
            out = x_tau + rest * out
        elif not clean and self.cfg.predict == "x1":
            out = (out - x_tau) / rest.clamp_min(1e-4)
        return (out, weights) if return_weights else out

    def denoise(self, x_tau, tau, lr, ref=None, ref_on=None, conds=None, ref_conf=None):
        """The clean estimate x1_hat [B, C, H, W] (forward with clean=True)."""
        return self(x_tau, tau, lr, ref, ref_on, conds=conds, ref_conf=ref_conf, clean=True)

    def network(self, x_tau, tau, lr, ref=None, ref_on=None, conds=None, ref_conf=None):
        """x_tau, lr, ref: [B, C, H, W] working-space grids (H, W multiples of patch); tau: [B] flow time.
        ref_conf: [B, 1, H', W'] matching confidence at image resolution (see encode_conditions).
        conds: optional precomputed encode_conditions(...) (then lr/ref are not re-encoded).

        Returns (the raw output [B, C, H, W]: velocity or x1 by cfg.predict, per-block PLW maps)."""
        p = self.cfg.patch
        if x_tau.shape[-2] % p or x_tau.shape[-1] % p:
            raise ValueError(f"grid size {tuple(x_tau.shape[-2:])} is not a multiple of patch {p}")
        x = self.x_embed(patchify(x_tau, p))                               # [B, h, w, D]
        temb = self.t_embed(timestep_embedding(tau, self.cfg.dim))         # [B, D]
        c_lr, c_ref = conds if conds is not None else self.encode_conditions(lr, ref, ref_conf, ref_on)
        branch_on = ref_on if self.cfg.weak_ref == "off" else None      # "null": done in encoding
        weights = []
        for block in self.blocks:
            x, w = block(x, temb, c_lr, c_ref, branch_on)
            weights.append(w)
        shift, scale = self.ada_out(F.silu(temb)).chunk(2, dim=-1)
        return unpatchify(self.out(modulate(self.norm_out(x), shift, scale)), p), weights
