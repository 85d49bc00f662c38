"""`super_resolve_scene`: a GeoTIFF LR scene + a reference scene -> a georeferenced SR scene.

    summary = super_resolve_scene("LR.tif", "REF.tif", "SR.tif", scale=4, workers=2)

The run is four named stages, each a function below:
  plan_scene     everything checked and decided before any pixel is computed (sharp.scene.grid /
                 bands / plan): bands, value scaling, the output grid, tiles and cells, the
                 sampling settings, the resume fingerprint; raises SceneError, writes nothing
  open_output    OUT.partial and its journal (sharp.scene.output / journal), new or resumed
  run_tiles      tiles read by window (sharp.scene.windows), run on a pool (sharp.scene.pool: this
                 process or Ray workers), blended into cells in a fixed order (sharp.scene.blend)
                 and written by window, the journal committed as they go
  finish_output  overviews / COG and the rename to OUT (sharp.scene.output)
Peak memory: the tiles in flight, whatever the scene size (waiting overlap pieces are on disk:
sharp.scene.seams). sharp.scene.batch runs many scenes through the same stages and one pool.
"""
from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import output
from .bands import (BandScale, alpha_band, mask_kind, parse_range, scene_scale, select_bands,
                    to_native)
from .blend import CellBlender
from .errors import SceneError
from .grid import Grid, check_pair, open_raster, output_grid
from .journal import Journal, file_id, journal_path, partial_path
from .nodata import FILL_RADIUS, output_valid
from .plan import Cell, Tile, lr_window, make_cells, make_tiles
from .heap import release_memory
from .pool import Pools, check_vae
from .seams import DiskSeams
from .tile import TileJob, TileSettings, tensor
from .windows import (aligned_offset, read_lr, read_ref, read_window, ref_resampling,
                      write_window)

log = logging.getLogger(__name__)

LR_HALO = 2 + FILL_RADIUS          # bicubic taps + hole filling, LR pixels
COMMIT_SECONDS = 10.0              # flush + journal at most this often (and at the end)
GDAL_CACHE_MB = 16                 # GDAL's block cache: a few tiles' blocks, not the scene's
GDAL_OPTIONS = dict(GDAL_CACHEMAX=GDAL_CACHE_MB)   # the run's GDAL settings


class Stopped(Exception):
    """Raised by should_stop between tiles (a ComfyUI cancel)."""


def _model_hash(model) -> str:
    from sharp.refsr.checkpoint import cpu_state
    h = hashlib.sha256(model.cfg.to_json().encode())
    for k, v in sorted(cpu_state(model.state_dict()).items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:32]


def check_options(scale, steps, workers, threads, tile, overlap, min_overlap, extra="bicubic"):
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
    if extra not in ("bicubic", "drop"):
        raise SceneError(f"extra must be 'bicubic' or 'drop', got {extra!r}")


def output_paths(out, resume, overwrite) -> tuple[Path, Path, Path]:
    """(OUT, OUT.partial, OUT.refsr-journal), checked against resume / overwrite."""
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


def load_model(model=None, checkpoint=None, device: str = "cpu"):
    """The DS-DiT to run: `model`, else the checkpoint, else the shipped one."""
    if model is not None:
        return model
    from sharp.refsr.api import DEFAULT_CHECKPOINT
    from sharp.refsr.checkpoint import load_dsdit
    return load_dsdit(checkpoint or DEFAULT_CHECKPOINT, device=device)


@dataclass
class Scene:
    """One scene's plan: the open inputs and everything decided before any pixel."""
    lr_path: str
    ref_path: Optional[str]
    out: Path
    part: Path
    jpath: Path
    resume: bool
    lr: object                      # open rasterio datasets
    ref: object
    model_bands: list[int]          # the model's R, G, B (may repeat)
    out_bands: list[int]            # each once, first-use order
    extras: list[int]               # other LR bands, bicubic
    mask: Optional[str]             # how the LR marks holes beside nodata: "alpha" (its alpha
    #                                 band, written last), "mask" (per-dataset), None
    file_bands: list[int]           # the LR bands the output has: out_bands, extras, alpha
    lr_scale: BandScale
    r_bands: Optional[list[int]]
    ref_scale: Optional[BandScale]
    figures: dict                   # footprint figures of the pair (coverage, pixel sizes)
    grid: Grid
    tiles: list[Tile]
    cells: list[Cell]
    settings: TileSettings
    options: dict                   # the run's settings (output tag, fingerprint)
    fingerprint: dict

    @property
    def gain(self) -> float:
        return self.settings.gain

    def close(self) -> None:
        """Close the inputs (again: a no-op)."""
        for ds in (self.lr, self.ref):
            if ds is not None and not ds.closed:
                ds.close()


def plan_scene(lr_path, ref_path, out_path, model, *, scale: int = 4, bands: Optional[str] = None,
               ref_bands: Optional[str] = None, extra: str = "bicubic",
               value_range: Optional[str] = None, ref_range: Optional[str] = None,
               steps: Optional[int] = None, guidance: float = 1.0, seed: int = 0,
               temperature: Optional[float] = None, ref_transfer: Optional[float] = None,
               register: bool = True, tile: int = 512, overlap: int = 64,
               min_overlap: float = 0.25, cog: bool = True, resume: bool = False,
               overwrite: bool = False) -> Scene:
    """Open, check and plan one scene; nothing is written. The caller closes the Scene."""
    from sharp.refsr.api import sampling_settings
    from sharp.refsr.limits import tile_geometry
    check_options(scale, steps, 0, 1, tile, overlap, min_overlap, extra)
    out, part, jpath = output_paths(out_path, resume, overwrite)
    lr = open_raster(lr_path, "LR")
    try:
        ref = open_raster(ref_path, "Ref") if ref_path else None
    except Exception:
        lr.close()
        raise
    try:
        model_bands = select_bands(lr, bands, "LR --bands")
        out_bands = list(dict.fromkeys(model_bands))          # unique, first-appearance order
        alpha = alpha_band(lr)
        extras = [b for b in range(1, lr.count + 1) if b not in out_bands and b != alpha] \
            if extra == "bicubic" else []
        mask = mask_kind(lr, model_bands[0])
        dtypes = {lr.dtypes[b - 1] for b in out_bands + extras + ([alpha] if alpha else [])}
        if len(dtypes) > 1:
            raise SceneError(f"LR bands have different data types {sorted(dtypes)}: select bands "
                             "of one type")
        lr_scale = scene_scale(lr, model_bands, parse_range(value_range, model_bands))
        figures, r_bands, ref_scale = {}, None, None
        if ref is not None:
            r_bands = select_bands(ref, ref_bands, "Ref --ref-bands")
            figures = check_pair(lr, ref, lr_path, ref_path, min_overlap)
            ref_scale = scene_scale(ref, r_bands, parse_range(ref_range, r_bands))
        steps, guidance, temp, gain = sampling_settings(model, steps, guidance, temperature,
                                                        ref_transfer)
        if ref is None:
            gain = 0.0
        grid = output_grid(lr, scale)
        unit = model.cfg.unit
        tile, overlap = tile_geometry(tile, overlap, unit)
        tiles = make_tiles(grid.height, grid.width, unit, tile, overlap)
        cells = make_cells(tiles, grid.height, grid.width)
        down = unit // model.cfg.patch
        hp, wp = grid.height + -grid.height % unit, grid.width + -grid.width % unit
        settings = TileSettings(scale, steps, guidance, int(seed), temp, gain, bool(register),
                                (hp // down, wp // down) if len(tiles) == 1 else None)
        options = dict(scale=scale, bands=model_bands, ref_bands=r_bands, extras=extras,
                       lr_scale=[lr_scale.lo, lr_scale.hi],
                       ref_scale=[ref_scale.lo, ref_scale.hi] if ref else None, steps=steps,
                       guidance=guidance, seed=int(seed), temperature=temp, ref_transfer=gain,
                       register=bool(register), tile=tile, overlap=overlap, plan="even",
                       cog=bool(cog))
        fingerprint = dict(lr=file_id(lr_path), ref=file_id(ref_path) if ref else None,
                           model=_model_hash(model), **options,
                           grid=[grid.width, grid.height, list(grid.transform)[:6], grid.crs.to_wkt()],
                           tiles=len(tiles), cells=len(cells))
        fingerprint = json.loads(json.dumps(fingerprint))       # as the journal stores it
        scene = Scene(str(lr_path), str(ref_path) if ref_path else None, out, part, jpath,
                      bool(resume), lr, ref, model_bands, out_bands, extras, mask,
                      out_bands + extras + ([alpha] if alpha else []), lr_scale, r_bands,
                      ref_scale, figures, grid, tiles, cells, settings, options, fingerprint)
        check_disk(scene)
        return scene
    except Exception:
        lr.close()
        if ref is not None:
            ref.close()
        raise


def check_disk(scene: Scene) -> None:
    """Refuse an output that cannot fit; warn when the COG copy may not."""
    grid, lr = scene.grid, scene.lr
    need = grid.width * grid.height * len(scene.file_bands) * \
        np.dtype(lr.dtypes[0]).itemsize
    free = shutil.disk_usage(scene.out.parent).free
    if free < need // 4:
        raise SceneError(f"not enough disk space in {scene.out.parent}: {free / 2**30:.2f} GiB "
                         f"free, the output is {need / 2**30:.2f} GiB uncompressed (need at least "
                         "a quarter of that, more for the COG copy)")
    if free < 2 * need:
        log.warning("%.2f GiB free for an output of %.2f GiB uncompressed (+ COG copy): the "
                    "run may fill the disk; it then stops and --resume continues",
                    free / 2**30, need / 2**30)


def open_output(scene: Scene):
    """(the partial file open for update, its journal, cells already done): a new partial
    file, or the interrupted run's after its journal's fingerprint was checked."""
    journal = Journal(scene.jpath)
    if scene.resume:
        done = journal.load(scene.fingerprint)
        return output.open_update(scene.part), journal, done
    for p in (scene.part, scene.jpath):
        p.unlink(missing_ok=True)
    tags = output.run_tags({k: v for k, v in scene.options.items()
                            if k not in ("lr_scale", "ref_scale")})
    ds = output.create(scene.part, scene.lr, scene.grid, scene.file_bands, tags,
                       mask=scene.mask == "mask")
    journal.start(scene.fingerprint)
    return ds, journal, set()


def tile_jobs(scene: Scene, todo: list[int], skipped: list[int]):
    """TileJobs of the tiles `todo`, read by window; all-nodata tiles counted in skipped[0]."""
    grid, lr, st = scene.grid, scene.lr, scene.settings
    resampling = offset = None
    if scene.ref is not None:
        resampling = ref_resampling(scene.figures["ref_pixel"], scene.figures["lr_pixel"] / st.scale)
        offset = aligned_offset(scene.ref, grid)
    extras = scene.extras
    for i in todo:
        t = scene.tiles[i]
        box = t.box(grid.height, grid.width)
        lbox = lr_window(t, grid.height, grid.width, st.scale, LR_HALO)
        raw, valid = read_lr(lr, scene.model_bands, lbox)
        if not valid.any():
            skipped[0] += 1
            yield TileJob(i, box, (t.h, t.w), lbox[:2], None, None, None,
                          np.zeros((len(extras), 1, 1), np.float32) if extras else None, st)
            continue
        ex = read_window(lr, extras, lbox).astype(np.float32) if extras else None
        rwin = read_ref(scene.ref, scene.r_bands, scene.ref_scale, grid, box, resampling,
                        offset) if scene.ref is not None else None
        yield TileJob(i, box, (t.h, t.w), lbox[:2], scene.lr_scale.to_unit(raw),
                      None if valid.all() else valid, rwin, ex, st)


def _cell_lr(scene: Scene, c: Cell, planes: np.ndarray) -> np.ndarray:
    """LR-resolution planes [C, rows, cols] read for cell c (_cell_box) -> each output pixel
    the value of the LR pixel it lies in, [C, ch, cw]."""
    s = scene.settings.scale
    r0, c0 = c.y0 // s, c.x0 // s
    v = output_valid(torch.from_numpy(planes), s).numpy()
    oy, ox = c.y0 - r0 * s, c.x0 - c0 * s
    return v[:, oy:oy + c.y1 - c.y0, ox:ox + c.x1 - c.x0]


def _cell_box(scene: Scene, c: Cell) -> tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of the LR pixels under cell c."""
    s = scene.settings.scale
    r0, c0 = c.y0 // s, c.x0 // s
    return r0, c0, -(-c.y1 // s) - r0, -(-c.x1 // s) - c0


def _cell_valid(scene: Scene, c: Cell) -> Optional[np.ndarray]:
    """Output validity of a cell (None: the LR has no nodata value, alpha band or mask)."""
    if scene.lr.nodata is None and scene.mask is None:
        return None
    _, v = read_lr(scene.lr, scene.model_bands, _cell_box(scene, c))
    return _cell_lr(scene, c, v[None])[0]


def write_cell(scene: Scene, ds, c: Cell, arrays: dict) -> None:
    """A blended cell: clamp, add the reference detail, back to native values, write."""
    from sharp.refsr.transfer import apply_transfer
    sr = arrays["sr"].clamp(0.0, 1.0)
    if scene.gain:
        sr = apply_transfer(sr[None], arrays["gated"][None], scene.gain)[0]
    valid = _cell_valid(scene, c)
    native = scene.lr_scale.from_unit(sr.numpy(), valid)
    block = np.stack([native[scene.model_bands.index(b)] for b in scene.out_bands])
    if scene.extras:
        ex = to_native(arrays["extra"].numpy().astype(np.float64), scene.lr.dtypes[0],
                       scene.lr.nodata, valid)
        block = np.concatenate([block, ex])
    if scene.mask == "alpha":      # the LR's alpha, nearest: the same holes, its own values
        alpha = read_window(scene.lr, scene.file_bands[-1:], _cell_box(scene, c))
        block = np.concatenate([block, _cell_lr(scene, c, alpha).astype(block.dtype)])
    write_window(ds, block, c.y0, c.x0, mask=valid if scene.mask == "mask" else None)


class _Output:
    """The partial file and its journal; commit() flushes the file, then records the cells."""

    def __init__(self, ds, journal: Journal):
        self.ds, self.journal, self.pending = ds, journal, []

    def commit(self) -> None:
        self.ds = output.flush(self.ds)
        self.journal.commit(self.pending)
        self.pending.clear()
        release_memory()

    def close_safely(self, drop_pending: bool = False) -> None:
        """Commit what is surely on disk and close, never raising (the run is failing)."""
        try:
            if drop_pending:
                self.pending.clear()    # written since the last flush but maybe not on disk
            self.commit()
            self.ds.close()
        except Exception:
            pass


def run_tiles(scene: Scene, pools: Pools, ds, journal: Journal, done_cells: set,
              progress: Optional[Callable] = None, should_stop: Optional[Callable] = None,
              commit_seconds: float = COMMIT_SECONDS) -> dict:
    """Every tile that still feeds an unwritten cell, through the pool, blended and written;
    the partial file committed every commit_seconds and at the end. Failures become a
    SceneError (or KeyboardInterrupt) saying how to resume; the partial file is then closed
    with what is on disk recorded."""
    grid, cells = scene.grid, scene.cells
    blender = CellBlender(scene.tiles, cells, grid.height, grid.width, scene.options["overlap"],
                          done_cells, seams=DiskSeams(scene.out.parent))
    todo = blender.needed()
    skipped = [0]
    out = _Output(ds, journal)
    written = sum(cells[c].pixels for c in done_cells)
    new_px = n_done = 0
    retried = pools.retried
    try:
        try:
            pool = pools.get(tile_bytes(scene)) if todo else None
            last_commit = t_run = time.perf_counter()     # throughput without Ray's start-up
            results = pool.run(tile_jobs(scene, todo, skipped)) if todo else ()
            for index, result in results:
                for c, blended in blender.add(index, {k: tensor(v) for k, v in result.items()}):
                    write_cell(scene, out.ds, c, blended)
                    blender.mark_done(c.index)
                    out.pending.append(c.index)
                    written += c.pixels
                    new_px += c.pixels
                n_done += 1
                if progress is not None:
                    progress(n_done, len(todo), written, time.perf_counter() - t_run)
                if time.perf_counter() - last_commit >= commit_seconds:
                    out.commit()
                    last_commit = time.perf_counter()
                if should_stop is not None and should_stop():
                    raise Stopped()
        finally:
            blender.close()
        if len(blender.done) != len(cells):
            raise SceneError(f"internal error: {len(cells) - len(blender.done)} cells not written")
        out.commit()
        out.ds.close()
    except (KeyboardInterrupt, Stopped) as stop:
        out.close_safely()
        msg = (f"interrupted after {len(blender.done)} of {len(cells)} windows; "
               f"{scene.part.name} and {scene.jpath.name} are kept: rerun the same command "
               "with --resume to continue")
        if isinstance(stop, KeyboardInterrupt):
            raise KeyboardInterrupt(msg) from None
        raise SceneError(msg) from None
    except SceneError:
        out.close_safely()
        raise
    except Exception as err:      # GDAL write errors: disk full, file removed, ...
        out.close_safely(drop_pending=True)
        why = output.reasons(err)
        full = any(k in why.lower() for k in ("no space", "too large", "disk full", "quota"))
        raise SceneError(f"writing {scene.part} failed ({why}){': the disk is full' if full else ''}; "
                         "the run stopped cleanly and the completed windows are in the journal: "
                         "free space and rerun with --resume") from err
    run_s = time.perf_counter() - t_run
    return {"tiles_run": n_done, "tiles_skipped_nodata": skipped[0],
            "tiles_retried": pools.retried - retried,
            "cells_resumed": len(done_cells), "cells_written": len(blender.done) - len(done_cells),
            "mpx_per_s": new_px / 1e6 / max(run_s, 1e-9), "run_seconds": run_s}


def finish_output(scene: Scene, journal: Journal, cog: bool) -> list:
    """The complete partial file -> OUT (COG or tiled GeoTIFF, overviews); the journal goes."""
    try:
        warnings = output.finish(scene.part, scene.out, cog)
    except Exception as err:
        Path(str(scene.out) + ".cog-partial").unlink(missing_ok=True)
        raise SceneError(f"all {len(scene.cells)} windows are computed, but writing the final "
                         f"{scene.out} failed ({output.reasons(err)}); {scene.part.name} and "
                         f"{scene.jpath.name} are kept: free disk space and rerun with --resume "
                         "(no tile is recomputed)") from None
    journal.remove()
    return warnings or []


def run_scene(scene: Scene, pools: Pools, *, cog: bool = True, progress=None, should_stop=None,
              commit_seconds: float = COMMIT_SECONDS) -> dict:
    """The planned scene through open_output, run_tiles and finish_output; closes the Scene.
    Returns the summary."""
    t_start = time.perf_counter()
    try:
        ds, journal, done_cells = open_output(scene)
        stats = run_tiles(scene, pools, ds, journal, done_cells, progress, should_stop,
                          commit_seconds)
    finally:
        scene.close()
    warnings = finish_output(scene, journal, cog)
    grid = scene.grid
    return {"output": str(scene.out), "width": grid.width, "height": grid.height,
            "bands": len(scene.file_bands), "tiles": len(scene.tiles),
            **{k: v for k, v in stats.items() if k != "run_seconds"},
            "cells": len(scene.cells),
            "seconds": time.perf_counter() - t_start, "cog": cog, "cog_warnings": warnings,
            "coverage": scene.figures.get("coverage"),
            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def tile_bytes(scene: Scene) -> int:
    """Bytes of one tile's job + result planes (Ref, SR, detail, extras), float32."""
    tile = scene.options["tile"]
    return tile * tile * 4 * (6 + 3 * (scene.gain > 0) + 2 * len(scene.extras))


def super_resolve_scene(lr_path, ref_path, out_path, model=None, checkpoint=None, *,
                        workers: int = 0, threads: int = 1, address: Optional[str] = None,
                        device: str = "cpu", cog: bool = True,
                        progress: Optional[Callable[[int, int, int, float], None]] = None,
                        should_stop: Optional[Callable[[], bool]] = None, vae=None,
                        pool_hook: Optional[Callable] = None,
                        commit_seconds: float = COMMIT_SECONDS, **options) -> dict:
    """Super-resolve the GeoTIFF scene lr_path with the reference scene ref_path (None: LR-only)
    into out_path. model: a loaded DS-DiT (else checkpoint, else the shipped one). options:
    those of plan_scene (scale, bands / ref_bands: see sharp.scene.bands; extra: "bicubic"
    (other LR bands upsampled bicubically, after the model's) or "drop"; value_range,
    ref_range, steps, guidance, seed, temperature, ref_transfer, register, tile, overlap,
    min_overlap, resume, overwrite). workers 0: in this process; N: N Ray workers (address: a
    Ray cluster). progress(tiles_done, tiles_total, pixels_written, seconds); should_stop() is
    asked between tiles; commit_seconds: how often the partial file is flushed and the journal
    appended; pool_hook(pool) is called once the pool is up. vae: a latent-space checkpoint's
    VAE (a LatentCodec; for Ray workers one from sharp.refsr.vae.load_vae, which they rebuild).
    Returns a summary. GDAL's block
    cache is capped at GDAL_CACHE_MB for the run (its default, 5% of RAM, would grow with the
    scene)."""
    import rasterio
    check_options(options.get("scale", 4), options.get("steps"), workers, threads,
                  options.get("tile", 512), options.get("overlap", 64),
                  options.get("min_overlap", 0.25), options.get("extra", "bicubic"))
    with rasterio.Env(**GDAL_OPTIONS):
        output_paths(out_path, options.get("resume", False), options.get("overwrite", False))
        model = load_model(model, checkpoint, device)
        check_vae(model, vae, workers)
        scene = plan_scene(lr_path, ref_path, out_path, model, cog=cog, **options)
        pools = Pools(model, workers, threads, address, device, vae, pool_hook)
        try:
            summary = run_scene(scene, pools, cog=cog, progress=progress,
                                should_stop=should_stop, commit_seconds=commit_seconds)
        finally:
            scene.close()          # idempotent: run_scene closed it unless it failed first
            pools.close()
    summary["workers"] = workers
    return summary
