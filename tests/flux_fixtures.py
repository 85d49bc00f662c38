"""Tiny synthetic diffusers Flux transformers (random weights, real key names and shapes).

The layout follows diffusers' FluxTransformer2DModel (x_embedder, context_embedder,
time_text_embed.*, transformer_blocks.N.*, single_transformer_blocks.N.*, norm_out, proj_out), sized
like the tiny ComfyUI Flux used in the tests: hidden 128, 1 head of 128 = 16 + 56 + 56 rope dims.
"""
from __future__ import annotations

import json
import os

import torch

TINY = dict(hidden=128, heads=1, depth=1, depth_single=1, in_channels=64, context=64, pooled=32, mlp_ratio=4,
            guidance=True)


def tiny_diffusers_flux(seed: int = 0, dtype=torch.float32, **cfg) -> dict[str, torch.Tensor]:
    c = {**TINY, **cfg}
    H, hd = c["hidden"], c["hidden"] // c["heads"]
    M = H * c["mlp_ratio"]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def lin(name, out_f, in_f, bias=True):
        sd[f"{name}.weight"] = (torch.randn(out_f, in_f, generator=g) * in_f ** -0.5).to(dtype)
        if bias:
            sd[f"{name}.bias"] = (torch.randn(out_f, generator=g) * 0.02).to(dtype)

    def norm(name):
        sd[f"{name}.weight"] = (1 + 0.1 * torch.randn(hd, generator=g)).to(dtype)

    lin("x_embedder", H, c["in_channels"])
    lin("context_embedder", H, c["context"])
    lin("time_text_embed.timestep_embedder.linear_1", H, 256)
    lin("time_text_embed.timestep_embedder.linear_2", H, H)
    if c["guidance"]:
        lin("time_text_embed.guidance_embedder.linear_1", H, 256)
        lin("time_text_embed.guidance_embedder.linear_2", H, H)
    lin("time_text_embed.text_embedder.linear_1", H, c["pooled"])
    lin("time_text_embed.text_embedder.linear_2", H, H)
    for i in range(c["depth"]):
        p = f"transformer_blocks.{i}"
        lin(f"{p}.norm1.linear", 6 * H, H)
        lin(f"{p}.norm1_context.linear", 6 * H, H)
        for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            lin(f"{p}.attn.{n}", H, H)
        for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            norm(f"{p}.attn.{n}")
        lin(f"{p}.attn.to_out.0", H, H)
        lin(f"{p}.attn.to_add_out", H, H)
        lin(f"{p}.ff.net.0.proj", M, H)
        lin(f"{p}.ff.net.2", H, M)
        lin(f"{p}.ff_context.net.0.proj", M, H)
        lin(f"{p}.ff_context.net.2", H, M)
    for i in range(c["depth_single"]):
        p = f"single_transformer_blocks.{i}"
        lin(f"{p}.norm.linear", 3 * H, H)
        for n in ("to_q", "to_k", "to_v"):
            lin(f"{p}.attn.{n}", H, H)
        norm(f"{p}.attn.norm_q")
        norm(f"{p}.attn.norm_k")
        lin(f"{p}.proj_mlp", M, H)
        lin(f"{p}.proj_out", H, H + M)
    lin("norm_out.linear", 2 * H, H)
    lin("proj_out", c["in_channels"], H)
    return sd


def diffusers_config(**cfg) -> dict:
    c = {**TINY, **cfg}
    return {"_class_name": "FluxTransformer2DModel", "attention_head_dim": c["hidden"] // c["heads"],
            "num_attention_heads": c["heads"], "num_layers": c["depth"], "num_single_layers": c["depth_single"],
            "in_channels": c["in_channels"], "joint_attention_dim": c["context"],
            "pooled_projection_dim": c["pooled"], "guidance_embeds": c["guidance"], "patch_size": 1,
            "axes_dims_rope": [16, 56, 56]}


def write_diffusers_folder(root: str, sd: dict[str, torch.Tensor], shards: int = 2, pipeline: bool = True,
                           config: dict | None = None) -> str:
    """Write sd as a diffusers transformer with `shards` files + index (interleaved so q/k/v of one
    block land in different shards). Returns the pipeline folder (or the transformer folder)."""
    from safetensors.torch import save_file

    tdir = os.path.join(root, "transformer") if pipeline else root
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "config.json"), "w") as fh:
        json.dump(config or diffusers_config(), fh)
    if pipeline:
        with open(os.path.join(root, "model_index.json"), "w") as fh:
            json.dump({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}, fh)
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, os.path.join(tdir, "diffusion_pytorch_model.safetensors"))
        return root
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    # q matrices go to the first shard, everything else alternates: q/k/v groups span shards
    weight_map = {k: names[0 if (".to_q." in k or ".add_q_proj." in k) else 1 + i % (shards - 1)]
                  for i, k in enumerate(keys)}
    for name in names:
        save_file({k: sd[k] for k in keys if weight_map[k] == name}, os.path.join(tdir, name))
    with open(os.path.join(tdir, "diffusion_pytorch_model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)
    return root
