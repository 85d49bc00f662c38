"""Command line: `python -m sharp COMMAND ...`.

Each command lives in its own module of this package and defines
`register(subparsers)` (adds its parser and sets `func`); add new modules to COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Module names in this package, in the order `--help` lists them.
COMMANDS = ("schedule", "spectrum", "convert", "refsr", "refsr_scene", "train_refsr", "calibrate_refsr",
            "batch", "batch_grid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sharp",
        description="SHARP resolution promotion, spectrum tools and DS-DiT reference SR.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
