"""`python -m sharp batch-grid`: the SHARP grid manifest (prompts x sizes x seeds) for `batch`."""
from __future__ import annotations

import argparse

from sharp.batch.grid import DEFAULT_KEYS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch-grid", help="write a prompts x sizes x seeds manifest for `batch`",
        description="One row per prompt, size and seed, as SHARP's multi-GPU script sweeps them. The "
                    "column names are the workflow inputs they set (defaults: the shipped RS-FLUX "
                    "SHARP workflows' titles).")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (# comments)")
    p.add_argument("--sizes", required=True, help="WIDTHxHEIGHT list, e.g. 1024x1024,2048x2048,3744x2560")
    p.add_argument("--seeds", required=True, help="seeds: a range 0-3, a list 0,7,42, or both")
    p.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    p.add_argument("--prompt-key", default=DEFAULT_KEYS["prompt"], help=f"default {DEFAULT_KEYS['prompt']}")
    p.add_argument("--width-key", action="append", help=f"repeatable; default {DEFAULT_KEYS['width'][0]}")
    p.add_argument("--height-key", action="append", help=f"repeatable; default {DEFAULT_KEYS['height'][0]}")
    p.add_argument("--seed-key", default=DEFAULT_KEYS["seed"], help=f"default {DEFAULT_KEYS['seed']}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sharp.batch import grid

    if not args.out.endswith(".jsonl"):
        raise ValueError(f"--out {args.out}: the grid manifest is JSON Lines; name it .jsonl")
    keys = {"prompt": args.prompt_key, "seed": args.seed_key,
            "width": tuple(args.width_key or DEFAULT_KEYS["width"]),
            "height": tuple(args.height_key or DEFAULT_KEYS["height"])}
    rows = grid.grid_rows(grid.read_prompts(args.prompts), grid.parse_sizes(args.sizes), grid.parse_seeds(args.seeds), keys)
    grid.write_jsonl(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} rows")
    return 0
