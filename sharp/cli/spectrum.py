"""`python -m sharp spectrum`: high-frequency energy of images, and their spectra plotted together."""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from sharp.cli.images import load_rgb_array
from sharp.spectrum_report import spectrum_table


def register(sub) -> None:
    p = sub.add_parser("spectrum", help="HF energy ratio per image and their radial power spectra",
                       description="Print the share of spectral energy above a cutoff (fraction of Nyquist) "
                                   "for each image, and optionally plot the radially averaged power spectra "
                                   "together.")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (PNG, JPEG, TIFF, ...)")
    p.add_argument("--cutoff", type=float, default=0.5, help="HF cutoff as a fraction of Nyquist (default: 0.5)")
    p.add_argument("--plot", metavar="OUT.png", help="write the spectra figure here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    images = [load_rgb_array(p) for p in tqdm(args.images, desc="loading", disable=len(args.images) < 4)]
    names = [Path(p).name for p in args.images]
    if len(set(names)) < len(names):  # same file name in several folders: show the paths
        names = list(args.images)
    print(spectrum_table(images, names, args.cutoff))
    if args.plot:
        from sharp.plots import plot_spectra, save_figure

        save_figure(plot_spectra(images, names, args.cutoff), args.plot)
        print(f"wrote {args.plot}")
    return 0
