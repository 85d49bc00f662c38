"""`python -m sharp convert FOLDER OUT.safetensors`: a diffusers Flux folder (e.g. RS-FLUX) -> one
Flux (BFL layout) safetensors file that ComfyUI's stock "Load Diffusion Model" (UNETLoader) loads."""
from __future__ import annotations

import argparse
import os
import sys

DTYPES = ("keep", "bf16", "fp16", "fp32")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a diffusers Flux transformer (RS-FLUX) to one ComfyUI-loadable safetensors file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="diffusers FluxPipeline folder (with transformer/) or a transformer folder")
    p.add_argument("out", help="output .safetensors file (put it in ComfyUI/models/diffusion_models)")
    p.add_argument("--dtype", choices=DTYPES, default="keep",
                   help="cast floating weights (default: keep the stored dtype)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from sharp import diffusers_flux as df

    if not args.out.endswith(".safetensors"):
        raise ValueError(f"output {args.out!r} must end with .safetensors (only safetensors is written)")
    if os.path.exists(args.out) and not args.force:
        raise ValueError(f"{args.out} exists; pass --force to overwrite it")
    dtype = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    tdir = df.find_transformer_dir(args.folder)
    shards = df.shard_files(tdir, df.TRANSFORMER_STEM)
    bar = tqdm(total=len(shards), unit="shard", desc="reading", file=sys.stderr)
    last = []

    def progress(path):
        if last:
            bar.update(1)
        last.append(path)
        bar.set_postfix_str(os.path.basename(path))

    sd = df.convert_transformer(args.folder, dtype=dtype, progress=progress)
    bar.update(1)
    bar.close()
    df.save_flux(sd, args.out, metadata={"converted_by": "sharp convert", "source": os.path.basename(
        os.path.abspath(args.folder))})
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {args.out}: {len(sd)} tensors, {n / 1e6:.1f} M parameters")
    return 0
