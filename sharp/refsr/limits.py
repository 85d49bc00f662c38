"""What a super-resolution request may ask for, checked before anything is allocated.

`check_request` is called at the entry of `super_resolve` (and by anything else that runs the
whole-image stages): input sizes, the tile plan and the memory the whole-image stages need.
Every refusal is a ValueError that names the value, the limit and what to do instead.

Memory model (bytes, float32): the whole-image stages (upsampling, registration, the local
block-matching volume, the blending buffers, the detail transfer) hold a fixed number of
image-sized arrays, so their peak grows linearly with the output pixels B x H x W:

    peak ~ BYTES_PER_PX[stage] * B * H * W + the model's tile working set

The per-pixel constants are peak-RSS measurements of `super_resolve` at 512^2..1536^2 outputs
(benchmarks/refsr_memory.py prints them side by side with this estimate), rounded up.
"""
from __future__ import annotations

import math
from typing import Optional

from .config import DSDiTConfig

MIN_LR_SIDE = 2
"""Smallest LR side in pixels: registration's colour matching needs a standard deviation over at
least two LR pixels (a 1x1 LR gave NaN, an all-black image)."""

MAX_TILES = 4096
"""Most tiles one request may plan (a 16k x 16k output at the default 512 / 64 needs 1225)."""
MAX_REDUNDANCY = 8.0
"""Most times each output pixel may be computed on average (tile area x tiles / image area):
overlap <= tile / 2 stays below 4."""

# measured peak bytes per output pixel (B x H x W) of the whole-image stages, see module docstring
# (measured, 1024^2 / 2048^2 outputs: 90 / 64 no Ref, 146 / 138 global, 150 / 141 local, 160-172 / 141
# with the transfer; this estimate is 1.2-1.6x those peaks)
BYTES_PER_PX = {"base": 90, "global": 80, "local": 90, "transfer": 40}


def check_lr_size(h: int, w: int) -> None:
    if min(h, w) < MIN_LR_SIDE:
        raise ValueError(f"LR is {w}x{h} px: DS-DiT needs an LR of at least {MIN_LR_SIDE}x{MIN_LR_SIDE} px "
                         "(registration measures the LR's contrast); upscale tiny images with a plain "
                         "resize instead")


def tile_geometry(tile: int, overlap: int, unit: int) -> tuple[int, int]:
    """(tile, overlap) in output pixels rounded to whole tokens of `unit` pixels: tile down
    (at least one token), overlap up (at most tile - unit)."""
    tile = max(unit, int(tile) // unit * unit)
    return tile, min(max(0, -(-int(overlap) // unit) * unit), tile - unit)


def plan_tiles(height: int, width: int, tile: int, overlap: int, unit: int) -> tuple[int, int, int]:
    """(tile, overlap, number of tiles) in output pixels, rounded to whole tokens of `unit` px.

    Refuses overlap >= tile and plans that compute each pixel more than MAX_REDUNDANCY times or need
    more than MAX_TILES tiles (a tiny stride), naming the count."""
    tile, overlap = int(tile), int(overlap)
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be >= 1 and overlap >= 0 output pixels, got tile {tile}, overlap {overlap}")
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap} px) must be smaller than the tile ({tile} px); "
                         f"use e.g. overlap {tile // 8} (at most tile / 2 is sensible)")
    tile, overlap = tile_geometry(tile, overlap, unit)

    def count(length):
        return 1 if length <= tile else math.ceil((length - tile) / (tile - overlap)) + 1

    n = count(height) * count(width)
    redundancy = n * min(tile, height) * min(tile, width) / (height * width)
    if n > MAX_TILES or redundancy > MAX_REDUNDANCY:
        raise ValueError(f"tile {tile} px with overlap {overlap} px (stride {tile - overlap} px, rounded to "
                         f"{unit}-px tokens) needs {n} tiles for a {width}x{height} output, computing every "
                         f"pixel {redundancy:.1f} times (limits: {MAX_TILES} tiles, {MAX_REDUNDANCY:g} times); "
                         "use a larger tile or an overlap of at most tile / 2")
    return tile, overlap, n


def tile_bytes(cfg: DSDiTConfig, batch: int, tile: int) -> int:
    """Rough working set of the network on one tile: activations per token x tokens."""
    tokens = (tile // cfg.unit) ** 2
    keys = (2 * cfg.radius + 1) ** 2
    per_token = 4 * (cfg.dim * (24 + 2 * cfg.mlp_ratio) + 4 * cfg.heads * keys)
    return int(batch * tokens * per_token)


def estimate_bytes(cfg: DSDiTConfig, batch: int, height: int, width: int, tile: int, has_ref: bool,
                   register: bool, transfer: bool) -> int:
    """Peak bytes of a super_resolve call with a [batch, 3, height, width] output (model weights excluded)."""
    per_px = BYTES_PER_PX["base"]
    if has_ref:
        local = cfg.ref_align == "local" and register
        per_px += BYTES_PER_PX["local" if local or transfer else "global"]
        if transfer:
            per_px += BYTES_PER_PX["transfer"]
    return int(per_px * batch * height * width) + tile_bytes(cfg, batch, min(tile, max(height, width)))


def available_bytes() -> Optional[int]:
    """Memory this process may still allocate: MemAvailable, lowered to the cgroup's limit (a server
    run under a memory cap); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as a, open(usage_file) as b:
                limit, usage = a.read().strip(), int(b.read().strip())
            if limit != "max" and int(limit) < 1 << 60:
                found.append(max(0, int(limit) - usage))
            break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def check_memory(need: int, available: Optional[int], lr_h: int, lr_w: int, scale: int, batch: int,
                 per_px: float, fixed: int = 0, unit: int = 1) -> None:
    """Refuse when `need` bytes (= per_px x output pixels + fixed) exceed `available`, naming the largest
    square LR that would fit (its output rounded up to whole `unit`-px tokens, as super_resolve pads)."""
    if available is None or need <= available:
        return
    gib = 1024 ** 3
    out_side = math.sqrt(max(0.0, (available - fixed) / max(per_px, 1.0) / max(batch, 1)))
    side = max(0, int(out_side) // unit * unit - unit) // scale
    raise ValueError(
        f"DS-DiT x{scale} of {batch} x {lr_w}x{lr_h} LR (output {scale * lr_w}x{scale * lr_h}) needs about "
        f"{need / gib:.1f} GiB for its whole-image stages (registration, blending), but only "
        f"{available / gib:.1f} GiB are available. An LR of at most about {side}x{side} px fits: split the scene "
        "into pieces that size (or use the tiled GeoTIFF scene path where available), lower the scale, "
        "or turn off register_ref / ref_transfer (cheaper stages)")


def check_request(cfg: DSDiTConfig, batch: int, lr_h: int, lr_w: int, scale: int, tile: int, overlap: int,
                  has_ref: bool, register: bool, transfer: bool,
                  memory_limit: Optional[int] = None) -> tuple[int, int]:
    """All checks of one request, before any allocation; returns the (tile, overlap) to use.

    memory_limit: bytes the call may use (None: what the system reports as available)."""
    check_lr_size(lr_h, lr_w)
    height, width = scale * lr_h, scale * lr_w
    hp, wp = height + -height % cfg.unit, width + -width % cfg.unit
    tile, overlap, _ = plan_tiles(hp, wp, tile, overlap, cfg.unit)
    need = estimate_bytes(cfg, batch, hp, wp, tile, has_ref, register, transfer)
    fixed = tile_bytes(cfg, batch, min(tile, max(hp, wp)))
    available = available_bytes() if memory_limit is None else int(memory_limit)
    check_memory(need, available, lr_h, lr_w, scale, batch, (need - fixed) / max(1, batch * hp * wp), fixed,
                 cfg.unit)
    return tile, overlap

