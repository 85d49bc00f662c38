"""Many scenes in one run: a folder of LR scenes (Refs by the same names in another folder) or
a manifest of scene pairs, each through the single-scene stages (sharp.scene.run), their tiles
on one pool started once (Ray workers or this process).

    pairs = folder_pairs("lr/", "ref/", "sr/")         # or manifest_pairs("pairs.csv")
    summary = super_resolve_scenes(pairs, workers=2, resume=True)

Every scene is planned (all of sharp.scene's checks) before any pixel of any scene is computed,
so a bad pair stops the run before work, naming the scene. Each output is resumable as a single
scene is: with `resume`, finished outputs are skipped, interrupted ones continue from their
journal, and scenes not started yet are started.

Manifest: a CSV file with a header naming the columns `lr` (required), `ref` (empty: LR-only)
and `out` (empty or absent: OUT_DIR/<the LR's file name>); relative paths are relative to the
manifest's folder.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import SceneError
from .journal import journal_path, partial_path
from .pool import Pools, check_vae
from .run import COMMIT_SECONDS, GDAL_OPTIONS, check_options, load_model, plan_scene, run_scene

SUFFIXES = (".tif", ".tiff")
MANIFEST_COLUMNS = ("lr", "ref", "out")


@dataclass(frozen=True)
class Pair:
    lr: Path
    ref: Optional[Path]
    out: Path


def folder_pairs(lr_dir, ref_dir, out_dir) -> list[Pair]:
    """Every .tif/.tiff in lr_dir, its Ref the file of the same name in ref_dir (None: LR-only
    scenes), its output the same name in out_dir."""
    lr_dir, out_dir = Path(lr_dir), Path(out_dir)
    if not lr_dir.is_dir():
        raise SceneError(f"LR folder {lr_dir} does not exist")
    names = sorted(p.name for p in lr_dir.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not names:
        raise SceneError(f"no .tif/.tiff scenes in {lr_dir}")
    refs: list[Optional[Path]] = [None] * len(names)
    if ref_dir is not None:
        ref_dir = Path(ref_dir)
        if not ref_dir.is_dir():
            raise SceneError(f"Ref folder {ref_dir} does not exist")
        missing = [n for n in names if not (ref_dir / n).is_file()]
        if missing:
            raise SceneError(f"{len(missing)} LR scene(s) have no Ref of the same name in "
                             f"{ref_dir}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                             "; add them, or run those scenes from a manifest")
        refs = [ref_dir / n for n in names]
    return check_pairs([Pair(lr_dir / n, r, out_dir / n) for n, r in zip(names, refs)])


def manifest_pairs(manifest, out_dir=None) -> list[Pair]:
    """The pairs of a CSV manifest (see the module docstring)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise SceneError(f"manifest {manifest} does not exist")
    base = manifest.parent
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows and list(rows[0].keys())
    if not rows:
        raise SceneError(f"manifest {manifest} has no rows (want a header lr,ref,out and a row "
                         "per scene)")
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    if "lr" not in header or unknown:
        raise SceneError(f"manifest {manifest}: columns are {header}, want 'lr' and optionally "
                         f"'ref' and 'out' (header line lr,ref,out)")

    def path(text: Optional[str]) -> Optional[Path]:
        text = (text or "").strip()
        return None if not text else (Path(text) if Path(text).is_absolute() else base / text)

    pairs = []
    for n, row in enumerate(rows, start=2):
        lr = path(row.get("lr"))
        if lr is None:
            raise SceneError(f"manifest {manifest} line {n}: the 'lr' column is empty")
        out = path(row.get("out"))
        if out is None:
            if out_dir is None:
                raise SceneError(f"manifest {manifest} line {n}: no 'out' and no output folder "
                                 f"(--out-dir) to put {lr.name} in")
            out = Path(out_dir) / lr.name
        pairs.append(Pair(lr, path(row.get("ref")), out))
    return check_pairs(pairs)


def check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """No two scenes write one output, and no output is one of the inputs."""
    seen: dict[Path, Path] = {}
    inputs = {p.resolve() for pair in pairs for p in (pair.lr, pair.ref) if p is not None}
    for pair in pairs:
        out = pair.out.resolve()
        if out in seen:
            raise SceneError(f"scenes {seen[out]} and {pair.lr} would both write {pair.out}")
        if out in inputs:
            raise SceneError(f"the output {pair.out} of {pair.lr} is one of the inputs: choose "
                             "another output folder")
        seen[out] = pair.lr
    return list(pairs)


def scene_state(out: Path) -> str:
    """"done" (OUT and nothing beside it), "partial" (an interrupted run's files) or "new"."""
    out = Path(out)
    if partial_path(out).exists() or journal_path(out).exists():
        return "partial"
    return "done" if out.exists() else "new"


def super_resolve_scenes(pairs: Sequence[Pair], model=None, checkpoint=None, *, workers: int = 0,
                         threads: int = 1, address: Optional[str] = None, device: str = "cpu",
                         cog: bool = True, resume: bool = False, overwrite: bool = False,
                         on_scene: Optional[Callable[[int, int, Pair], None]] = None,
                         progress: Optional[Callable[[int, int, int, float], None]] = None,
                         should_stop: Optional[Callable[[], bool]] = None, vae=None,
                         pool_hook: Optional[Callable] = None,
                         commit_seconds: float = COMMIT_SECONDS, **options) -> dict:
    """Super-resolve every pair (Pair(lr, ref, out)) with the options of super_resolve_scene,
    one after another on one pool. on_scene(i, n, pair) is called as scene i (0-based) of the
    n to run starts; progress and should_stop are per scene as in super_resolve_scene.
    Returns {"scenes": [summary per scene run], "skipped_done": [outputs already complete],
    "seconds": ...}."""
    import rasterio
    check_options(options.get("scale", 4), options.get("steps"), workers, threads,
                  options.get("tile", 512), options.get("overlap", 64),
                  options.get("min_overlap", 0.25), options.get("extra", "bicubic"))
    pairs = check_pairs(pairs)
    if not pairs:
        raise SceneError("no scenes to run")
    t0 = time.perf_counter()
    with rasterio.Env(**GDAL_OPTIONS):
        model = load_model(model, checkpoint, device)
        check_vae(model, vae, workers)
        todo, done = [], []
        for i, pair in enumerate(pairs):         # every check before any work
            state = scene_state(pair.out)
            if resume and state == "done":
                done.append(str(pair.out))
                continue
            kw = dict(options, cog=cog, resume=resume and state == "partial", overwrite=overwrite)
            try:
                plan_scene(pair.lr, pair.ref, pair.out, model, **kw).close()
            except SceneError as err:
                raise SceneError(f"scene {i + 1} of {len(pairs)} ({pair.lr}): {err}; nothing "
                                 "was computed") from None
            todo.append((pair, kw))
        pools = Pools(model, workers, threads, address, device, vae, pool_hook)
        summaries = []
        try:
            for k, (pair, kw) in enumerate(todo):
                if on_scene is not None:
                    on_scene(k, len(todo), pair)
                scene = plan_scene(pair.lr, pair.ref, pair.out, model, **kw)
                try:
                    s = run_scene(scene, pools, cog=cog, progress=progress,
                                  should_stop=should_stop, commit_seconds=commit_seconds)
                finally:
                    scene.close()
                summaries.append(dict(s, workers=workers, lr=str(pair.lr),
                                      ref=str(pair.ref) if pair.ref else None))
        finally:
            pools.close()
    return {"scenes": summaries, "skipped_done": done, "seconds": time.perf_counter() - t0}
