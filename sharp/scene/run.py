"""`super_resolve_scene`: a GeoTIFF LR scene + a reference scene -> a georeferenced SR scene.

    summary = super_resolve_scene("LR.tif", "REF.tif", "SR.tif", scale=4, workers=2)

Everything is checked before any pixel is computed (sharp.scene.grid / bands); then tiles are
read by window (sharp.scene.windows), run on a pool (sharp.scene.pool: this process or Ray
workers), blended into cells in a fixed order (sharp.scene.blend) and written by window to
OUT.partial, with the resume journal beside it (sharp.scene.journal); at the end overviews /
COG and the rename to OUT (sharp.scene.output). Peak memory: a few tiles plus the overlap
strips waiting for their neighbours, whatever the scene size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import output
from .bands import parse_range, scene_scale, select_bands, to_native
from .blend import CellBlender
from .errors import SceneError
from .grid import check_pair, open_raster, output_grid
from .journal import Journal, file_id, journal_path, partial_path
from .nodata import FILL_RADIUS, output_valid
from .plan import lr_window, make_cells, make_tiles
from .pool import LocalPool, RayPool
from .tile import TileJob, TileSettings, tensor
from .windows import read_lr, read_ref, ref_resampling, write_window

log = logging.getLogger(__name__)

LR_HALO = 2 + FILL_RADIUS          # bicubic taps + hole filling, LR pixels
COMMIT_SECONDS = 10.0              # flush + journal at most this often (and at the end)
GDAL_CACHE_MB = 64


class Stopped(Exception):
    """Raised by should_stop between tiles (a ComfyUI cancel)."""


def _model_hash(model) -> str:
    h = hashlib.sha256(model.cfg.to_json().encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _check_options(scale, steps, workers, threads, tile, overlap, min_overlap):
    if scale not in (2, 4, 8):
        raise SceneError(f"scale must be 2, 4 or 8, got {scale}")
    if steps is not None and steps < 1:
        raise SceneError(f"steps must be >= 1 (or None: the checkpoint's), got {steps}")
    if workers < 0 or threads < 1:
        raise SceneError(f"workers must be >= 0 (0: in this process) and threads >= 1, got "
                         f"{workers} / {threads}")
    if tile < 16 or overlap < 0 or overlap >= tile:
        raise SceneError(f"need tile >= 16 and 0 <= overlap < tile, got {tile} / {overlap}")
    if not 0 <= min_overlap <= 1:
        raise SceneError(f"min_overlap is a fraction in [0, 1], got {min_overlap}")


def _paths(out, resume, overwrite):
    out = Path(out)
    part, jpath = partial_path(out), journal_path(out)
    if not out.parent.is_dir():
        raise SceneError(f"output folder {out.parent} does not exist")
    if resume:
        if out.exists() and not part.exists():
            raise SceneError(f"--resume: {out} is already complete (no partial file beside it)")
        if not part.exists() or not jpath.exists():
            raise SceneError(f"--resume: nothing to resume for {out} (need {part.name} and "
                             f"{jpath.name}); run without --resume")
    elif not overwrite:
        if out.exists():
            raise SceneError(f"{out} exists: pass --overwrite to replace it")
        if part.exists() or jpath.exists():
            raise SceneError(f"an interrupted run's files are beside {out} ({part.name}, "
                             f"{jpath.name}): --resume to continue it, or --overwrite to start over")
    return out, part, jpath


def super_resolve_scene(*args, **kwargs) -> dict:
    """Super-resolve the GeoTIFF scene lr_path with the reference scene ref_path (None: LR-only)
    into out_path; see `_super_resolve_scene` for the options. GDAL's block cache is capped at
    GDAL_CACHE_MB for the run (its default, 5% of RAM, would grow with the scene)."""
    import rasterio
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _super_resolve_scene(*args, **kwargs)


def _super_resolve_scene(lr_path, ref_path, out_path, model=None, checkpoint=None, *, scale: int = 4,
                        bands: Optional[str] = None, ref_bands: Optional[str] = None,
                        extra: str = "bicubic", value_range: Optional[str] = None,
                        ref_range: Optional[str] = None, steps: Optional[int] = None, guidance: float = 1.0,
                        seed: int = 0, temperature: Optional[float] = None,
                        ref_transfer: Optional[float] = None, register: bool = True,
                        tile: int = 512, overlap: int = 64, workers: int = 0, threads: int = 1,
                        address: Optional[str] = None, device: str = "cpu", resume: bool = False,
                        overwrite: bool = False, cog: bool = True, min_overlap: float = 0.25,
                        progress: Optional[Callable[[int, int, int, float], None]] = None,
                        should_stop: Optional[Callable[[], bool]] = None, vae=None,
                        pool_hook: Optional[Callable] = None,
                        commit_seconds: float = COMMIT_SECONDS) -> dict:
    """Super-resolve the GeoTIFF scene lr_path with the reference scene ref_path (None: LR-only)
    into out_path. model: a loaded DS-DiT (else checkpoint, else the shipped one). bands /
    ref_bands: see sharp.scene.bands; extra: "bicubic" (other LR bands upsampled bicubically,
    after the model's) or "drop". workers 0: in this process; N: N Ray workers (address: a Ray
    cluster). progress(tiles_done, tiles_total, pixels_written, seconds); should_stop() is asked
    between tiles; commit_seconds: how often the partial file is flushed and the journal
    appended. Returns a summary."""
    from sharp.refsr.api import DEFAULT_CHECKPOINT, default_ref_transfer, default_steps, default_temperature
    from sharp.refsr.checkpoint import load_dsdit
    from sharp.refsr.config import SAMPLING_BOUNDS, check_number
    from sharp.refsr.stages import tile_geometry
    from sharp.refsr.transfer import apply_transfer

    _check_options(scale, steps, workers, threads, tile, overlap, min_overlap)
    if extra not in ("bicubic", "drop"):
        raise SceneError(f"extra must be 'bicubic' or 'drop', got {extra!r}")
    out, part, jpath = _paths(out_path, resume, overwrite)
    lr = open_raster(lr_path, "LR")
    ref = open_raster(ref_path, "Ref") if ref_path else None
    t_start = time.perf_counter()
    try:
        model_bands = select_bands(lr, bands, "LR --bands")
        out_bands = list(dict.fromkeys(model_bands))          # unique, first-appearance order
        extras = [b for b in range(1, lr.count + 1) if b not in out_bands] if extra == "bicubic" else []
        dtypes = {lr.dtypes[b - 1] for b in out_bands + extras}
        if len(dtypes) > 1:
            raise SceneError(f"LR bands have different data types {sorted(dtypes)}: select bands "
                             "of one type")
        lr_scale = scene_scale(lr, model_bands, parse_range(value_range))
        figures = {}
        if ref is not None:
            r_bands = select_bands(ref, ref_bands, "Ref --ref-bands")
            figures = check_pair(lr, ref, lr_path, ref_path, min_overlap)
            ref_scale = scene_scale(ref, r_bands, parse_range(ref_range))
        if model is None:
            model = load_dsdit(checkpoint or DEFAULT_CHECKPOINT, device=device)
        if steps is None:   # the checkpoint's recommended steps, as super_resolve
            steps = default_steps(model)
        # the bounds super_resolve checks (sharp.refsr.config.SAMPLING_BOUNDS): one rule for both paths
        temp = default_temperature(model) if temperature is None else \
            check_number("temperature", temperature, *SAMPLING_BOUNDS["temperature"])
        gain = default_ref_transfer(model) if ref_transfer is None else \
            check_number("ref_transfer", ref_transfer, *SAMPLING_BOUNDS["ref_transfer"])
        guidance = check_number("guidance", guidance, *SAMPLING_BOUNDS["guidance"])
        if ref is None:
            gain = 0.0
        grid = output_grid(lr, scale)
        unit = model.cfg.unit
        tile, overlap = tile_geometry(tile, overlap, unit)
        tiles = make_tiles(grid.height, grid.width, unit, tile, overlap)
        cells = make_cells(tiles, grid.height, grid.width)
        down = unit // model.cfg.patch
        hp, wp = grid.height + -grid.height % unit, grid.width + -grid.width % unit
        settings = TileSettings(scale, steps, float(guidance), int(seed), temp, gain, bool(register),
                                (hp // down, wp // down) if len(tiles) == 1 else None)
        options = dict(scale=scale, bands=model_bands, ref_bands=r_bands if ref else None,
                       extras=extras, lr_scale=[lr_scale.lo, lr_scale.hi],
                       ref_scale=[ref_scale.lo, ref_scale.hi] if ref else None, steps=steps,
                       guidance=float(guidance), seed=int(seed), temperature=temp, ref_transfer=gain,
                       register=bool(register), tile=tile, overlap=overlap, cog=bool(cog))
        fingerprint = dict(lr=file_id(lr_path), ref=file_id(ref_path) if ref else None,
                           model=_model_hash(model), **options,
                           grid=[grid.width, grid.height, list(grid.transform)[:6], grid.crs.to_wkt()],
                           tiles=len(tiles), cells=len(cells))
        fingerprint = json.loads(json.dumps(fingerprint))       # as the journal stores it
        need = grid.width * grid.height * len(out_bands + extras) * np.dtype(lr.dtypes[0]).itemsize
        free = shutil.disk_usage(out.parent).free
        if free < need // 4:
            raise SceneError(f"not enough disk space in {out.parent}: {free / 2**30:.2f} GiB free, "
                             f"the output is {need / 2**30:.2f} GiB uncompressed (need at least "
                             "a quarter of that, more for the COG copy)")
        if free < 2 * need:
            log.warning("%.2f GiB free for an output of %.2f GiB uncompressed (+ COG copy): the "
                        "run may fill the disk; it then stops and --resume continues",
                        free / 2**30, need / 2**30)
        journal = Journal(jpath)
        if resume:
            done_cells = journal.load(fingerprint)
            ds = output.open_update(part)
        else:
            for p in (part, jpath):
                p.unlink(missing_ok=True)
            done_cells = set()
            tags = output.run_tags({k: v for k, v in options.items()
                                    if k not in ("lr_scale", "ref_scale")})
            ds = output.create(part, lr, grid, out_bands + extras, tags)
            journal.start(fingerprint)
    except Exception:
        lr.close()
        if ref is not None:
            ref.close()
        raise

    blender = CellBlender(tiles, cells, grid.height, grid.width, overlap, done_cells)
    todo = blender.needed()
    resampling = ref_resampling(figures["ref_pixel"], figures["lr_pixel"] / scale) if ref else None
    first = {b: model_bands.index(b) for b in out_bands}
    skipped = [0]

    def jobs():
        for i in todo:
            t = tiles[i]
            box = t.box(grid.height, grid.width)
            lbox = lr_window(t, grid.height, grid.width, scale, LR_HALO)
            raw, valid = read_lr(lr, model_bands, lbox)
            if not valid.any():
                skipped[0] += 1
                yield TileJob(i, box, (t.h, t.w), lbox[:2], None, None, None,
                              np.zeros((len(extras), 1, 1), np.float32) if extras else None)
                continue
            ex = None
            if extras:
                ex = read_lr(lr, extras, lbox)[0].astype(np.float32)
            rwin = read_ref(ref, r_bands, ref_scale, grid, box, resampling) if ref else None
            yield TileJob(i, box, (t.h, t.w), lbox[:2], lr_scale.to_unit(raw),
                          None if valid.all() else valid, rwin, ex)

    def cell_valid(c):
        if lr.nodata is None:
            return None
        r0, c0 = c.y0 // scale, c.x0 // scale
        r1, c1 = -(-c.y1 // scale), -(-c.x1 // scale)
        _, v = read_lr(lr, model_bands, (r0, c0, r1 - r0, c1 - c0))
        v = output_valid(torch.from_numpy(v), scale).numpy()
        oy, ox = c.y0 - r0 * scale, c.x0 - c0 * scale
        return v[oy:oy + c.y1 - c.y0, ox:ox + c.x1 - c.x0]

    def write_cell(c, arrays):
        sr = arrays["sr"].clamp(0.0, 1.0)
        if gain:
            sr = apply_transfer(sr[None], arrays["gated"][None], gain)[0]
        valid = cell_valid(c)
        sr = sr.numpy()
        native = lr_scale.from_unit(sr, valid)
        block = np.stack([native[first[b]] for b in out_bands])
        if extras:
            ex = to_native(arrays["extra"].numpy().astype(np.float64), lr.dtypes[0], lr.nodata, valid)
            block = np.concatenate([block, ex])
        write_window(ds, block, c.y0, c.x0)

    written = sum(cells[c].pixels for c in done_cells)
    pending: list[int] = []
    last_commit = time.perf_counter()
    t_run = time.perf_counter()
    n_done = 0
    new_px = 0

    def commit():
        nonlocal ds, last_commit
        ds = output.flush(ds)
        journal.commit(pending)
        pending.clear()
        last_commit = time.perf_counter()

    pool = None
    try:
        try:
            if workers == 0 or not todo:
                pool = LocalPool(model, settings, vae)
            else:
                pool = RayPool(model, settings, workers, threads, address, device)
            if pool_hook is not None:
                pool_hook(pool)
            t_run = time.perf_counter()             # throughput without Ray's start-up
            for index, result in pool.run(jobs()):
                arrays = {k: tensor(v) for k, v in result.items()}
                for c, blended in blender.add(index, arrays):
                    write_cell(c, blended)
                    blender.mark_done(c.index)
                    pending.append(c.index)
                    written += c.pixels
                    new_px += c.pixels
                n_done += 1
                if progress is not None:
                    progress(n_done, len(todo), written, time.perf_counter() - t_run)
                if time.perf_counter() - last_commit >= commit_seconds:
                    commit()
                if should_stop is not None and should_stop():
                    raise Stopped()
        finally:
            if pool is not None:
                pool.close()
        if len(blender.done) != len(cells):
            raise SceneError(f"internal error: {len(cells) - len(blender.done)} cells not written")
        commit()
        ds.close()
    except (KeyboardInterrupt, Stopped) as stop:
        _safe_commit(commit, ds)
        lr.close()
        if ref is not None:
            ref.close()
        msg = (f"interrupted after {len(blender.done)} of {len(cells)} windows; {part.name} and "
               f"{jpath.name} are kept: rerun the same command with --resume to continue")
        if isinstance(stop, KeyboardInterrupt):
            raise KeyboardInterrupt(msg) from None
        raise SceneError(msg) from None
    except SceneError:
        _safe_commit(commit, ds)
        lr.close()
        if ref is not None:
            ref.close()
        raise
    except Exception as err:      # GDAL write errors: disk full, file removed, ...
        _safe_commit(commit, ds, drop=pending)
        lr.close()
        if ref is not None:
            ref.close()
        why = output.reasons(err)
        full = any(k in why.lower() for k in ("no space", "too large", "disk full", "quota"))
        raise SceneError(f"writing {part} failed ({why}){': the disk is full' if full else ''}; "
                         "the run stopped cleanly and the completed windows are in the journal: "
                         "free space and rerun with --resume") from err
    lr.close()
    if ref is not None:
        ref.close()
    try:
        warnings = output.finish(part, out, cog)
    except Exception as err:
        Path(str(out) + ".cog-partial").unlink(missing_ok=True)
        raise SceneError(f"all {len(cells)} windows are computed, but writing the final {out} "
                         f"failed ({output.reasons(err)}); {part.name} and {jpath.name} are "
                         "kept: free disk space and rerun with --resume (no tile is recomputed)"
                         ) from None
    journal.remove()
    seconds = time.perf_counter() - t_start
    run_s = time.perf_counter() - t_run
    return {"output": str(out), "width": grid.width, "height": grid.height,
            "bands": len(out_bands) + len(extras), "tiles": len(tiles), "tiles_run": n_done,
            "tiles_skipped_nodata": skipped[0], "tiles_retried": pool.retried,
            "cells": len(cells), "cells_resumed": len(done_cells),
            "cells_written": len(blender.done) - len(done_cells), "seconds": seconds,
            "mpx_per_s": new_px / 1e6 / max(run_s, 1e-9), "workers": workers, "cog": cog,
            "cog_warnings": warnings or [], "coverage": figures.get("coverage"),
            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _safe_commit(commit, ds, drop=None):
    try:
        if drop is not None:
            drop.clear()          # written since the last flush but maybe not on disk
        commit()
        ds.close()
    except Exception:
        pass
