"""Time per 480x480 image and peak memory of two DS-DiT checkpoints, side by side in one run.

    python benchmarks/refsr_speed.py --ckpt NEW.safetensors [--baseline OLD.safetensors] [--repeats 3]

Each checkpoint runs with its own defaults (steps, temperature, transfer) on the first val_3rd
triplet, with the Ref, alternating A, B, A, B, ... so load changes on a shared machine hit both;
prints the median seconds and the ratio, and the peak RSS increase of a child process at 512^2
and 2048^2 output (benchmarks/refsr.py's measurement).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from refsr import DEFAULT_DATA, peak_memory

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--baseline", default=None, help="default: the shipped checkpoint")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch

    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve
    from sharp.refsr.api import default_steps
    from sharp.refsr.data import TripletFolder

    torch.set_num_threads(args.threads)
    ckpts = {"baseline": args.baseline or str(DEFAULT_CHECKPOINT), "new": args.ckpt}
    models = {k: load_dsdit(v) for k, v in ckpts.items()}
    hr, lr, ref = (t[0].permute(1, 2, 0).numpy() for t in TripletFolder(args.data).load(0))
    times = {k: [] for k in models}
    for k, m in models.items():   # warm-up
        super_resolve(m, lr[:16, :16], ref[:64, :64], steps=1)
    for _ in range(args.repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            super_resolve(m, lr, ref)
            times[k].append(time.perf_counter() - t0)
    result = {"checkpoints": ckpts, "steps": {k: default_steps(m) for k, m in models.items()},
              "seconds_per_480_image_with_ref": {k: statistics.median(v) for k, v in times.items()},
              "all_seconds": times}
    result["ratio_new_over_baseline"] = (result["seconds_per_480_image_with_ref"]["new"]
                                         / result["seconds_per_480_image_with_ref"]["baseline"])
    print(f"seconds per 480x480 image with Ref (median of {args.repeats}, {args.threads} thread): "
          + ", ".join(f"{k} {v:.2f} s ({result['steps'][k]} steps)"
                      for k, v in result["seconds_per_480_image_with_ref"].items())
          + f"; ratio new / baseline {result['ratio_new_over_baseline']:.2f}")
    if not args.no_memory:
        mem = {}
        for k, path in ckpts.items():
            for size in (512, 2048):
                m = peak_memory(size, 512, 64, path)
                mem[f"{k} {size}x{size}"] = m["peak_mib"] - m["rss_before_mib"]
        result["peak_increase_mib"] = mem
        print("peak RSS increase during the call (MiB): "
              + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
