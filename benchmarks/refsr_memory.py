"""Peak memory of DS-DiT's whole-image stages per output pixel (the constants of sharp/refsr/limits.py).

    python benchmarks/refsr_memory.py [--sides 128 256] [--scale 4]

Each configuration runs in a fresh child process (so max RSS is its own): the shipped small model
(global registration) and a local-alignment variant of it, with and without the Ref and the detail
transfer, one Euler step, 256-px tiles. Printed: the output size, the peak RSS above the child's
baseline (model and inputs loaded), that divided by the output pixels, and the estimate of
sharp.refsr.limits.estimate_bytes side by side with their ratio (>= 1: the estimate is conservative).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, dataclasses
import numpy as np, torch
torch.set_num_threads(1)
from sharp.refsr import load_dsdit, super_resolve, DEFAULT_CHECKPOINT
from sharp.refsr import limits
side, scale, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = load_dsdit(DEFAULT_CHECKPOINT)
if mode.startswith("local"):
    model.cfg = dataclasses.replace(model.cfg, ref_align="local")
rng = np.random.default_rng(0)
lr = rng.random((side, side, 3), dtype=np.float32)
ref = rng.random((scale * side, scale * side, 3), dtype=np.float32) if mode != "noref" else None
gain = 0.5 if mode.endswith("transfer") else 0.0
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
super_resolve(model, lr, ref, scale=scale, steps=1, tile=256, overlap=32, ref_transfer=gain if ref is not None else None,
              memory_limit=1 << 62)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
h = w = scale * side
est = limits.estimate_bytes(model.cfg, 1, h, w, 256, ref is not None, True, bool(gain))
print(json.dumps({"mode": mode, "out": h, "peak": peak - base, "estimate": est}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--scale", type=int, default=4)
    args = ap.parse_args()
    print(f"{'mode':<15} {'output':>9} {'peak MiB':>9} {'B/px':>6} {'estimate MiB':>12} {'est/peak':>8}")
    for mode in ("noref", "global", "global+transfer", "local", "local+transfer"):
        for side in args.sides:
            out = subprocess.run([sys.executable, "-c", CHILD, str(side), str(args.scale), mode],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            px = r["out"] ** 2
            print(f"{mode:<15} {r['out']:>7}^2 {r['peak'] / 2**20:>9.0f} {r['peak'] / px:>6.0f} "
                  f"{r['estimate'] / 2**20:>12.0f} {r['estimate'] / max(r['peak'], 1):>8.2f}")


if __name__ == "__main__":
    main()
