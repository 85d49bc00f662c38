"""`python -m sharp schedule`: what a RoPE method does at each step of a Flux schedule."""
from __future__ import annotations

import argparse

from sharp import families, rope
from sharp.schedule import FLUX_SHIFT_MU, FLUX_STEPS, rope_schedule

FLUX = families.family("Flux.1")
ALPHA_S = rope.RoPEParams().alpha_s


def register(sub) -> None:
    p = sub.add_parser("schedule", help="per-axis scale and per-step kappa of a method for one image size",
                       description="Print, per spatial axis, the scale s = L / L0 and, per step of an N-step "
                                   "Flux schedule, sigma, t and kappa(t); optionally plot the heatmap of "
                                   "f_j / base_j over the steps.")
    p.add_argument("--width", type=int, required=True, help="image width in pixels")
    p.add_argument("--height", type=int, required=True, help="image height in pixels")
    p.add_argument("--method", default=rope.METHODS[0], choices=rope.METHODS,
                   help=f"RoPE method (default: {rope.METHODS[0]})")
    p.add_argument("--steps", type=int, default=FLUX_STEPS, help=f"sampling steps (default: {FLUX_STEPS})")
    p.add_argument("--mu", type=float, default=FLUX_SHIFT_MU, help=f"Flux noise shift (default: {FLUX_SHIFT_MU})")
    p.add_argument("--base-resolution", type=int, default=FLUX.base_resolution,
                   help=f"training resolution in pixels; L0 = base / {FLUX.px_per_token} "
                        f"(default: {FLUX.base_resolution})")
    p.add_argument("--alpha-s", type=float, default=ALPHA_S,
                   help=f"SHARP decay strength alpha_s (default: {ALPHA_S:g})")
    p.add_argument("--plot", metavar="OUT.png", help="write the heatmap figure here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.width < 16 or args.height < 16:
        raise ValueError(f"width and height must be at least 16 px, got {args.width}x{args.height}")
    sched = rope_schedule(args.width, args.height, args.method, args.steps, args.mu,
                          base_len=rope.base_len_from_resolution(args.base_resolution, FLUX.px_per_token),
                          alpha_s=args.alpha_s)
    print(f"{args.method} at {args.width}x{args.height} px, base {args.base_resolution} px, "
          f"{args.steps} steps, mu {args.mu}")
    for axis in sched.axes:
        state = "promoted" if axis.scale > 1 else "stock RoPE (s <= 1)"
        print(f"  {axis.name:6s}: L = {axis.tokens:4d} tokens, s = {axis.scale:.4f}, "
              f"mscale = {axis.mscale:.4f}  [{state}]")
    print(f"{'step':>4}  {'sigma':>8}  {'t':>8}  {'kappa':>8}  " +
          "  ".join(f"{'mean f/base ' + a.name:>18}" for a in sched.axes))
    for i, t in enumerate(sched.t):
        kappa = "-" if sched.kappa[i] is None else f"{sched.kappa[i]:.4f}"
        ratios = "  ".join(f"{a.ratio[i].mean():18.4f}" for a in sched.axes)
        print(f"{i:4d}  {sched.sigmas[i]:8.4f}  {t:8.4f}  {kappa:>8}  {ratios}")
    if args.plot:
        from sharp.plots import plot_schedule, save_figure

        save_figure(plot_schedule(sched), args.plot)
        print(f"wrote {args.plot}")
    return 0
