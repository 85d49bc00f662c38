"""`python -m sharp refsr`: reference-based super-resolution of one LR image with DS-DiT."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refsr", help="DS-DiT reference-based super-resolution (LR + HR reference -> SR)",
        description="Super-resolve LR with the help of an HR reference of the same place "
                    "(another date). Uses the small checkpoint shipped with sharp by default.")
    p.add_argument("--lr", required=True, help="low-resolution input image")
    p.add_argument("--ref", help="HR reference image (scale x LR size); omit for the LR-only "
                                 "(weak) prediction")
    p.add_argument("--out", required=True, help="output image (PNG recommended)")
    p.add_argument("--ckpt", help="DS-DiT .safetensors checkpoint (default: the shipped small one)")
    p.add_argument("--scale", type=int, default=4, choices=[2, 4, 8])
    p.add_argument("--steps", type=int, default=None,
                   help="Euler steps (default: the checkpoint's; 1 for one-step x1 checkpoints "
                        "such as the shipped one, else 20)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="autoguidance scale g (v_weak + g (v_ref - v_weak)); 1 disables")
    p.add_argument("--seed", type=int, default=0, help="noise seed (no effect at temperature 0; little for one-step estimates)")
    p.add_argument("--temperature", type=float, default=None,
                   help="initial-noise scale (default: the checkpoint's; 0 = deterministic)")
    p.add_argument("--ref-transfer", type=float, default=None, metavar="LAMBDA",
                   help="gain of the reference detail transfer (the Ref's aligned detail, gated by "
                        "matching confidence, added after sampling); default: the checkpoint's "
                        "fitted value; 0 = off")
    p.add_argument("--tile", type=int, default=512, help="tile size in output pixels")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in output pixels")
    p.add_argument("--no-register", action="store_true",
                   help="use the Ref as given: skip its alignment (global shift + colour, "
                        "and the local warp of checkpoints trained with one)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from sharp.cli.images import load_rgb_array
    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    def read(path):  # clear errors for missing or unreadable files
        return load_rgb_array(path).astype(np.float32) / 255.0

    lr = read(args.lr)
    ref = read(args.ref) if args.ref else None
    ckpt = Path(args.ckpt) if args.ckpt else DEFAULT_CHECKPOINT
    model = load_dsdit(ckpt)
    bar = None

    def progress(done, total):  # the bar is made on the first call, when the total is known
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="refsr", unit="step")
        bar.update(done - bar.n)

    sr = super_resolve(model, lr, ref, scale=args.scale, steps=args.steps,
                       guidance=args.guidance, seed=args.seed, tile=args.tile,
                       overlap=args.overlap, progress=progress, register=not args.no_register,
                       temperature=args.temperature, ref_transfer=args.ref_transfer)
    if bar is not None:
        bar.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(sr, 0, 1) * 255 + 0.5).astype(np.uint8)).save(args.out)
    print(f"wrote {args.out} ({sr.shape[1]}x{sr.shape[0]}) with {ckpt.name}")
    return 0
