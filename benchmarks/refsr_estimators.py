"""Which PSNR-oriented DS-DiT estimate to ship, measured on training-side folders.

    python benchmarks/refsr_estimators.py --ckpt m.safetensors --data DIR [--limit 4] [--crop 192]

For an x1-predicting checkpoint, compares on centre crops (with the aligned Ref, transfer off):
  one-step          1 Euler step from temperature-1 noise: x1_hat(x0, t = 0)
  T0 N-step         the deterministic temperature-0 path (zero initial noise: off-distribution)
  T1 sample         one temperature-1 N-step sample (textured)
  mean of K T1      the mean of K temperature-1 N-step samples (seeds 0..K-1)
with PSNR against the HR and the network evaluations per image. Use folders the model was not
selected on the benchmark with (the default is none: pass a held-out training-side folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="RRSSRD-style folder (held out from training)")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--crop", type=int, default=192, help="HR centre-crop side (0 = whole image)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--k", type=int, nargs="+", default=[2, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch

    from sharp.refsr import load_dsdit, super_resolve
    from sharp.refsr.data import TripletFolder
    from sharp.refsr.metrics import psnr

    torch.set_num_threads(args.threads)
    model = load_dsdit(args.ckpt)
    folder = TripletFolder(args.data)
    n = min(args.limit, len(folder))
    rows: dict[str, list] = {}
    nfe: dict[str, int] = {}
    secs: dict[str, list] = {}

    def add(name, value, evals, dt):
        rows.setdefault(name, []).append(value)
        nfe[name] = evals
        secs.setdefault(name, []).append(dt)

    for i in range(n):
        hr, lr, ref = (t[0].permute(1, 2, 0).numpy() for t in folder.load(i))
        if args.crop:
            c = args.crop // 16 * 16
            y, x = (hr.shape[0] - c) // 8 * 4, (hr.shape[1] - c) // 8 * 4
            hr, ref = hr[y:y + c, x:x + c], ref[y:y + c, x:x + c]
            lr = lr[y // 4:(y + c) // 4, x // 4:(x + c) // 4]

        def run(steps, temperature, seed=0):
            t0 = time.perf_counter()
            out = super_resolve(model, lr, ref, steps=steps, temperature=temperature, seed=seed,
                                ref_transfer=0.0)
            return out, time.perf_counter() - t0

        out, dt = run(1, 1.0)
        add("one-step", psnr(out, hr), 1, dt)
        out, dt = run(args.steps, 0.0)
        add(f"T0 {args.steps}-step", psnr(out, hr), args.steps, dt)
        samples, total = [], 0.0
        for s in range(max(args.k)):
            out, dt = run(args.steps, 1.0, seed=s)
            samples.append(out)
            total += dt
            if s == 0:
                add(f"T1 {args.steps}-step sample", psnr(out, hr), args.steps, dt)
            if s + 1 in args.k:
                add(f"mean of {s + 1} T1 samples", psnr(np.mean(samples, 0), hr),
                    (s + 1) * args.steps, total)
        print(f"[{i + 1}/{n}] {folder.names[i]}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()),
              flush=True)
    print("\n| estimate | PSNR (dB) | network evaluations | seconds per crop |\n|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {np.mean(v):.3f} | {nfe[k]} | {np.mean(secs[k]):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.ckpt, "data": args.data, "images": n, "crop": args.crop,
            "psnr": {k: float(np.mean(v)) for k, v in rows.items()}, "nfe": nfe,
            "seconds": {k: float(np.mean(v)) for k, v in secs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
