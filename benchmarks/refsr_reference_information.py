"""How much of the missing detail does an RRSSRD Ref hold? (model-free)

    python benchmarks/refsr_reference_information.py [--data DIR] [--fit DIR ...] [--limit N]
                                                     [--ckpt CKPT | --no-network] [--json out.json]

The detail a x4 SR model must add is r = HR - bicubic(LR). The Ref's comparable detail is
d = Ref - bicubic(down(Ref)) after aligning the Ref to bicubic(LR) with
`sharp.refsr.align_reference` ("none": as given, "global": shift + colour, "local": + dense
block-matching warp; "hr": the local alignment against the HR itself at full resolution, an
oracle alignment that shows how much better registration could make the Ref). Per image, for the true Ref and another scene's Ref (the next image's):
  corr         correlation of r and d (0 = the Ref's detail tells nothing about the HR's)
  oracle       PSNR gain of bicubic + a d over bicubic, a fitted on the HR (upper bound of any
               global linear copy)
  oracle-gate  the same with a in [0, 1] fitted per 16x16 block (upper bound of a PLW-like gate
               that copies Ref detail where it matches)
  transfer     what sees no HR of this set: bicubic + lambda conf^p d (sharp.refsr.transfer,
               conf the matching confidence of align_reference), lambda fitted by least squares
               on the --fit folders (training data: val_1st + val_2nd), bicubic as the base
The gap true - wrong is what the Ref's content is worth to each rule.
With a DS-DiT checkpoint (--ckpt; default the shipped one, --no-network skips it) one more row,
"network" alignment "local": the same oracle-gate on top of the network's no-Ref output
(r = HR - SR_weak): what copying the Ref's aligned detail could still add to a model that has
already taken what the LR tells, i.e. a ceiling for any Ref effect of this kind; and "network-hr"
the same with the oracle alignment.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RRSSRD = REPO / ".." / "shared" / "data" / "rrssrd"
DEFAULT_DATA = RRSSRD / "val_3rd"
DEFAULT_FIT = [RRSSRD / "val_1st", RRSSRD / "val_2nd"]


def psnr(a, b) -> float:
    """PSNR in dB of float images in [0, 1], unquantised (the oracles' gains are fractions of
    a dB: 8-bit rounding, as sharp.refsr.metrics.psnr does, would blur them)."""
    import torch
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def block_gate(r, d, block: int = 16):
    """The oracle gate: per block x block block, the least-squares a in [0, 1] of d against r
    (a fitted on the HR through r: an upper bound, not a method); r, d [B, 3, H, W] ->
    a [B, 1, H, W]."""
    import torch.nn.functional as F
    num = F.avg_pool2d((r * d).sum(1, keepdim=True), block, ceil_mode=True)
    den = F.avg_pool2d((d * d).sum(1, keepdim=True), block, ceil_mode=True)
    a = (num / den.clamp_min(1e-10)).clamp(0, 1)
    return F.interpolate(a, scale_factor=block, mode="nearest")[..., :r.shape[-2], :r.shape[-1]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="evaluation folder (val_3rd)")
    p.add_argument("--fit", nargs="+", default=[str(d) for d in DEFAULT_FIT],
                   help="folders the transfer gain is fitted on (training data)")
    p.add_argument("--limit", type=int, default=0, help="number of images (0 = all)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--block", type=int, default=16, help="block side of oracle-gate")
    p.add_argument("--ckpt", help="DS-DiT checkpoint for the network row (default: the shipped one)")
    p.add_argument("--no-network", action="store_true", help="skip the network row")
    p.add_argument("--json")
    args = p.parse_args(argv)

    import torch

    from sharp.refsr import align_reference
    from sharp.refsr.data import TripletFolder, upsample
    from sharp.refsr.transfer import CONF_POWER, detail_layer, fit_transfer_gain, gated_detail

    torch.set_num_threads(1)
    s = args.scale

    def detail(img):
        return detail_layer(img, s)

    errors, gated = [], []                 # the transfer gain, fitted on training folders
    for root in args.fit:
        fit_folder = TripletFolder(root)
        for i in range(len(fit_folder)):
            hr, lr, ref = fit_folder.load(i)
            up = upsample(lr, hr.shape[-2:])
            errors.append(hr - up)
            gated.append(gated_detail(*align_reference(ref, up, s, "local"), s))
    gain = fit_transfer_gain(errors, gated)
    del errors, gated
    print(f"transfer gain lambda = {gain:.4f} (p = {CONF_POWER:g}), fitted on {len(args.fit)} folder(s)",
          flush=True)

    model = None
    if not args.no_network:
        from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve
        model = load_dsdit(args.ckpt or DEFAULT_CHECKPOINT)

    folder = TripletFolder(args.data)
    n = len(folder) if args.limit <= 0 else min(args.limit, len(folder))
    modes = ("none", "global", "local", "hr")
    rules = ("corr", "oracle", "oracle-gate", "transfer")
    rows = {(m, which, rule): [] for m in modes for which in ("true", "wrong") for rule in rules}
    if model is not None:
        rows.update({(m, which, "oracle-gate"): [] for m in ("network", "network-hr")
                     for which in ("true", "wrong")})
    for i in range(n):
        hr, lr, ref = folder.load(i)
        wrong = folder.load((i + 1) % len(folder))[2]
        up = upsample(lr, hr.shape[-2:])
        r = hr - up
        base = psnr(up, hr)
        if model is not None:   # the network's no-Ref output [1, 3, H, W]
            weak = super_resolve(model, lr[0].permute(1, 2, 0), None, scale=s).permute(2, 0, 1)[None]
        for which, cand in (("true", ref), ("wrong", wrong)):
            for m in modes:
                if m == "hr":    # oracle alignment: block matching against the HR, unblurred
                    aligned, conf = align_reference(cand, hr, 1, "local")
                else:
                    aligned, conf = align_reference(cand, up, s, "global" if m == "none" else m,
                                                    register=m != "none")
                d = detail(aligned)
                a = float((r * d).sum() / (d * d).sum())
                rows[(m, which, "corr")].append(float((r * d).sum() / (r.norm() * d.norm())))
                rows[(m, which, "oracle")].append(psnr(up + a * d, hr) - base)
                rows[(m, which, "oracle-gate")].append(psnr(up + block_gate(r, d, args.block) * d, hr) - base)
                rows[(m, which, "transfer")].append(psnr(up + gain * conf ** CONF_POWER * d, hr) - base)
                if model is not None and m in ("local", "hr"):
                    rn = hr - weak
                    rows[("network" if m == "local" else "network-hr", which, "oracle-gate")].append(
                        psnr(weak + block_gate(rn, d, args.block) * d, hr) - psnr(weak, hr))
        print(f"[{i + 1}/{n}] {folder.names[i]}: local true/wrong oracle-gate "
              f"{rows[('local', 'true', 'oracle-gate')][-1]:+.3f}/{rows[('local', 'wrong', 'oracle-gate')][-1]:+.3f} dB",
              flush=True)
    mean = {k: float(np.mean(v)) for k, v in rows.items()}
    print(f"\n{n} images of {args.data}; PSNR gains over bicubic in dB (corr: correlation; the network row: over the network's no-Ref output)\n")
    print("| alignment | rule | true Ref | wrong Ref | true - wrong |\n|---|---|---|---|---|")
    for m, rule in [(m, rule) for m in modes for rule in rules] + (
            [("network", "oracle-gate"), ("network-hr", "oracle-gate")] if model is not None else []):
        t, w = mean[(m, "true", rule)], mean[(m, "wrong", rule)]
        print(f"| {m} | {rule} | {t:+.3f} | {w:+.3f} | {t - w:+.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"images": n, "data": str(args.data), "fit": args.fit, "transfer_gain": gain,
             "conf_power": CONF_POWER, "network_ckpt": None if model is None else str(args.ckpt or "shipped"),
             "mean": {"/".join(k): v for k, v in mean.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
