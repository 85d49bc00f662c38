"""`python -m sharp train-refsr`: train a DS-DiT checkpoint on RRSSRD-style folders."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-refsr", help="train DS-DiT (reference-based SR) on HR/ LR/ Ref/ folders",
        description="Train DS-DiT with rectified flow on RRSSRD-style folders (HR/, LR/, Ref/ with "
                    "matching names). Writes OUT (EMA weights, safetensors) and OUT.state.* "
                    "(resumable: run the same command again to continue).")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training folders")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.add_argument("--config", default="medium-match",
                   help="model preset (default medium-match): medium-match (the shipped model: "
                        "655k parameters, predicting x1 for a one-step estimate, locally aligned Ref "
                        "with matching-confidence tokens, "
                        "null-Ref weak path), small (the previous shipped model's shape), base (a larger "
                        "pixel-space model for GPUs), large (a latent model: needs --vae); "
                        "or a JSON file of DSDiTConfig fields")
    p.add_argument("--val", metavar="DIR", help="validation folder (PSNR logged every --val-every)")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64, help="HR crop side in pixels")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ref-drop", type=float, default=0.2, help="probability of dropping the Ref")
    p.add_argument("--synthetic-ref", type=float, default=0.5,
                   help="probability of a synthetic Ref made from the HR")
    p.add_argument("--ref-as-target", action="store_true",
                   help="also train on each Ref as a target (LR: its bicubic x4 + JPEG q95 "
                        "degradation, Ref: the HR of the same place)")
    p.add_argument("--t0-prob", type=float, default=0.0,
                   help="share of training samples at t = 0 (trains the one-step estimate)")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:1, mps ... (under torchrun: cuda = one GPU per process)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: autocast the network (weights and optimizer stay float32)")
    p.add_argument("--vae", metavar="PATH",
                   help="VAE for latent-space configs (e.g. --config large): a diffusers "
                        "AutoencoderKL folder or a single .safetensors file (diffusers or "
                        "ComfyUI/original layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore existing OUT.state.* files")
    p.add_argument("--no-fit-transfer", action="store_true",
                   help="skip fitting the reference-detail-transfer gain at the end "
                        "(a few seconds per training image; see calibrate-refsr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sharp.refsr.config import PRESETS, DSDiTConfig
    from sharp.refsr.train import train

    if not args.out.endswith(".safetensors"):
        raise ValueError("--out must end in .safetensors")
    if args.config in PRESETS:
        config = args.config
    elif args.config.endswith(".json"):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        config = DSDiTConfig.from_json(path.read_text())
    else:
        raise ValueError(f"--config must be one of {sorted(PRESETS)} or a .json file, got {args.config!r}")
    cfg = PRESETS[config] if isinstance(config, str) else config
    vae = None
    if cfg.space == "latent":
        if not args.vae:
            raise ValueError(f"--config {args.config} works in a VAE latent space: pass --vae "
                             "(a diffusers AutoencoderKL folder or .safetensors file)")
        from sharp.refsr.vae import load_vae

        vae = load_vae(args.vae, device=args.device)
    torch.set_num_threads(max(1, args.threads))
    info = train(args.data, args.out, config=config, val=args.val, steps=args.steps,
                 batch=args.batch, crop=args.crop, lr=args.lr, ref_drop=args.ref_drop,
                 synthetic_ref_prob=args.synthetic_ref, val_every=args.val_every,
                 save_every=args.save_every, max_minutes=args.max_minutes, seed=args.seed,
                 resume=not args.no_resume, device=args.device,
                 fit_transfer=not args.no_fit_transfer, ref_as_target=args.ref_as_target,
                 t0_prob=args.t0_prob, precision=args.precision, vae=vae)
    print(f"wrote {args.out} at step {info['step']}")
    return 0
