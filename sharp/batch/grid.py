"""The SHARP grid manifest: every prompt x size x seed, as SHARP's own multi-GPU script sweeps them
(one row per image; ids like p003_2048x2048_s1)."""
from __future__ import annotations

import json

DEFAULT_KEYS = dict(prompt="Prompt.text", width=("EmptySD3LatentImage.width",),
                    height=("EmptySD3LatentImage.height",), seed="RandomNoise.noise_seed")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'1024x1024,2048x2048,3744x2560' -> [(1024, 1024), ...] (width x height)."""
    out = []
    for part in text.split(","):
        w, sep, h = part.strip().lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ValueError(f"--sizes: {part.strip()!r} is not WIDTHxHEIGHT (e.g. 2048x2048)")
        out.append((int(w), int(h)))
    return out


def parse_seeds(text: str) -> list[int]:
    """'0-3' -> [0, 1, 2, 3]; '0,7,42' -> [0, 7, 42]; ranges and lists mix ('0-2,10')."""
    out = []
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = (int(a), int(b)) if sep else (int(a), int(a))
        except ValueError:
            raise ValueError(f"--seeds: {part.strip()!r} is not a seed or a range A-B") from None
        if hi < lo or lo < 0:
            raise ValueError(f"--seeds: {part.strip()!r} is not a non-negative range A-B with A <= B")
        out += range(lo, hi + 1)
    return out


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line; lines starting with # are comments."""
    with open(path, encoding="utf-8") as fh:
        prompts = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompt (one per line)")
    return prompts


def grid_rows(prompts: list[str], sizes: list[tuple[int, int]], seeds: list[int], keys: dict | None = None) -> list[dict]:
    """Rows in prompt-major, then size, then seed order."""
    k = {**DEFAULT_KEYS, **(keys or {})}
    rows = []
    for pi, text in enumerate(prompts):
        for w, h in sizes:
            for seed in seeds:
                row = {"id": f"p{pi:03d}_{w}x{h}_s{seed}", k["prompt"]: text, k["seed"]: seed}
                row.update({c: w for c in k["width"]})
                row.update({c: h for c in k["height"]})
                rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
