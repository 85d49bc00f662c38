"""`python -m sharp calibrate-refsr`: fit a DS-DiT checkpoint's reference-detail-transfer gain."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-refsr", help="fit the reference-detail-transfer gain of a DS-DiT checkpoint",
        description="Run the checkpoint on RRSSRD-style training folders (HR/, LR/, Ref/) and fit "
                    "the gain with which the Ref's aligned, confidence-gated detail is added after "
                    "sampling (least squares; see docs/dsdit.md). Writes it into the checkpoint's "
                    "metadata; the weights are not changed. Use training data, never the test set.")
    p.add_argument("--ckpt", required=True, help="DS-DiT .safetensors checkpoint")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    p.add_argument("--out", help="write here instead of updating --ckpt in place")
    p.add_argument("--steps", type=int, default=None,
                   help="Euler steps (as at inference; default: the checkpoint's)")
    p.add_argument("--limit", type=int, default=0, help="images per folder (0 = all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sharp.refsr.calibrate import calibrate_checkpoint

    if args.out and not args.out.endswith(".safetensors"):
        raise ValueError("--out must end in .safetensors")
    if args.threads:
        torch.set_num_threads(args.threads)
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="calibrate-refsr", unit="image")
        bar.update(done - bar.n)

    fit = calibrate_checkpoint(args.ckpt, args.data, out=args.out, steps=args.steps,
                               limit=args.limit, progress=progress)
    if bar is not None:
        bar.close()
    print(f"ref_transfer = {fit['ref_transfer']:.4f} fitted on {fit['images']} images "
          f"({fit['psnr_gain_db']:+.3f} dB on them); wrote {args.out or args.ckpt}")
    return 0
