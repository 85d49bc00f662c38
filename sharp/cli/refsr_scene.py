"""`python -m sharp refsr-scene`: DS-DiT reference SR of a whole GeoTIFF scene (sharp.scene)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refsr-scene", help="DS-DiT reference SR of a GeoTIFF scene (georeferenced, windowed, "
                            "resumable, Ray workers); needs the [geo] extra",
        description="Super-resolve a GeoTIFF LR scene with a reference scene of the same place "
                    "(any CRS / resolution / extent: it is reprojected onto the output grid). "
                    "The output keeps the LR's CRS and footprint with the transform refined by "
                    "the scale, its dtype, nodata / alpha band / mask, tags and band metadata. Needs "
                    "pip install 'comfyui-sharp[geo]' (rasterio, rio-cogeo, ray).")
    one = p.add_argument_group("one scene")
    one.add_argument("--lr", help="LR scene (GeoTIFF or any GDAL raster with a CRS)")
    one.add_argument("--ref", help="reference scene (omit for the LR-only prediction)")
    one.add_argument("--out", help="output GeoTIFF")
    many = p.add_argument_group("many scenes (one after another, tiles on the same workers; "
                                "each output resumable on its own)")
    many.add_argument("--lr-dir", help="every .tif/.tiff in this folder is an LR scene")
    many.add_argument("--ref-dir", help="with --lr-dir: the Refs, by the LR's file names "
                                        "(omit for LR-only scenes)")
    many.add_argument("--manifest", help="CSV of scene pairs: header lr,ref,out (ref empty: "
                                         "LR-only; out empty: --out-dir/<LR name>); relative "
                                         "paths from the manifest's folder")
    many.add_argument("--out-dir", help="output folder for --lr-dir (and --manifest rows "
                                        "without out)")
    p.add_argument("--ckpt", help="DS-DiT .safetensors checkpoint (default: the shipped small one)")
    p.add_argument("--vae", metavar="PATH",
                   help="a latent-space checkpoint's VAE: a diffusers folder or a .safetensors "
                        "file (diffusers or ComfyUI layout; needs diffusers, the [latent] extra)")
    p.add_argument("--scale", type=int, default=4, choices=[2, 4, 8])
    p.add_argument("--bands", help="LR bands for the model's R,G,B: 1-based indices (3,2,1) or "
                                   "colour names (red,green,blue; nir,red,green); default: by "
                                   "colour interpretation, else the first three image bands, "
                                   "else the one band three times (an alpha band is the mask)")
    p.add_argument("--ref-bands", help="Ref bands, as --bands (a panchromatic Ref: 1,1,1)")
    p.add_argument("--extra", choices=["bicubic", "drop"], default="bicubic",
                   help="the LR's other bands (e.g. NIR): bicubic-upsampled after the model's "
                        "bands (default), or left out")
    p.add_argument("--range", dest="value_range", metavar="LO,HI[;LO,HI...]",
                   help="LR values mapped to the model's 0..1: one LO,HI for every band, or one per "
                        "selected band separated by ';' (quote it), e.g. '0,3000;0,2800;0,2600' "
                        "(default: uint8 0,255; other types the 0.1/99.9 percentiles of each "
                        "band); written back the same way")
    p.add_argument("--ref-range", metavar="LO,HI[;LO,HI...]", help="as --range, for the Ref")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's)")
    p.add_argument("--guidance", type=float, default=1.0, help="autoguidance scale; 1 disables")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=None,
                   help="initial-noise scale (default: the checkpoint's)")
    p.add_argument("--ref-transfer", type=float, default=None, metavar="LAMBDA",
                   help="reference detail transfer gain (default: the checkpoint's; 0 = off)")
    p.add_argument("--no-register", action="store_true", help="use the Ref as reprojected, "
                                                              "without per-tile alignment")
    p.add_argument("--tile", type=int, default=512,
                   help="largest tile size in output pixels (tiles are spread evenly: each only "
                        "as large as covering the scene with the overlap needs)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in output pixels")
    p.add_argument("--workers", type=int, default=1,
                   help="Ray workers, one model each (0: no Ray, tiles in this process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--address", help="join a Ray cluster (ray://host:10001 or auto) instead of "
                                     "starting a local one; sharp must be installed there")
    p.add_argument("--device", default="cpu", help="torch device of the workers (cuda: one GPU "
                                                   "per worker)")
    p.add_argument("--min-overlap", type=float, default=0.25,
                   help="least fraction of the LR footprint the Ref must cover")
    p.add_argument("--no-cog", action="store_true",
                   help="write a tiled GeoTIFF with overviews instead of a Cloud-Optimized GeoTIFF")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (the journal beside the output is checked)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--commit-every", type=float, default=10.0, metavar="SECONDS",
                   help="flush the output and record finished windows this often")
    p.set_defaults(func=run)


def scene_pairs(args: argparse.Namespace):
    """None for one scene (--lr/--out), else the pairs of --lr-dir or --manifest; an error
    for a mix of the two ways or a missing part."""
    from sharp.scene import folder_pairs, manifest_pairs
    single = args.lr is not None or args.out is not None or args.ref is not None
    modes = [m for m, on in (("--lr/--out", single), ("--lr-dir", args.lr_dir),
                             ("--manifest", args.manifest)) if on]
    if len(modes) != 1:
        raise ValueError("give one scene (--lr LR --out OUT [--ref REF]), a folder (--lr-dir DIR "
                         "--out-dir DIR [--ref-dir DIR]) or a manifest (--manifest CSV), "
                         f"got {' and '.join(modes) if modes else 'none'}")
    if single:
        if args.lr is None or args.out is None:
            raise ValueError("one scene needs both --lr and --out")
        if args.ref_dir or args.out_dir:
            raise ValueError("--ref-dir / --out-dir go with --lr-dir or --manifest, not --lr")
        return None
    if args.lr_dir:
        if not args.out_dir:
            raise ValueError("--lr-dir needs --out-dir (where the outputs go)")
        return folder_pairs(args.lr_dir, args.ref_dir, args.out_dir)
    if args.ref_dir:
        raise ValueError("--ref-dir goes with --lr-dir; a manifest names each Ref")
    return manifest_pairs(args.manifest, args.out_dir)


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        from sharp.scene import super_resolve_scene, super_resolve_scenes
    except ImportError as err:
        raise ValueError(f"refsr-scene needs the [geo] extra ({err}): "
                         "pip install 'comfyui-sharp[geo]'") from None
    from tqdm import tqdm

    bar = None

    def progress(done, total, pixels, seconds):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="refsr-scene", unit="tile")
        bar.update(done - bar.n)
        bar.set_postfix_str(f"{pixels / 1e6:.1f} Mpx, {pixels / 1e6 / max(seconds, 1e-9):.3f} Mpx/s",
                            refresh=False)

    options = dict(
        checkpoint=args.ckpt, scale=args.scale, bands=args.bands, ref_bands=args.ref_bands,
        extra=args.extra, value_range=args.value_range, ref_range=args.ref_range,
        steps=args.steps, guidance=args.guidance, seed=args.seed, temperature=args.temperature,
        ref_transfer=args.ref_transfer, register=not args.no_register, tile=args.tile,
        overlap=args.overlap, workers=args.workers, threads=args.threads, address=args.address,
        device=args.device, resume=args.resume, overwrite=args.overwrite, cog=not args.no_cog,
        min_overlap=args.min_overlap, progress=progress, commit_seconds=args.commit_every)
    if args.vae:
        from sharp.refsr.vae import load_vae
        options["vae"] = load_vae(args.vae, device=args.device)
    pairs = scene_pairs(args)

    def on_scene(i, n, pair):
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        print(f"scene {i + 1} of {n}: {pair.lr} -> {pair.out}", file=sys.stderr)

    try:
        if pairs is None:
            summaries = [super_resolve_scene(args.lr, args.ref, args.out, **options)]
            skipped = []
        else:
            r = super_resolve_scenes(pairs, on_scene=on_scene, **options)
            summaries, skipped = r["scenes"], r["skipped_done"]
    except KeyboardInterrupt as err:
        if bar is not None:
            bar.close()
        print(f"\nstopped: {err}", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    for s in summaries:
        print(f"wrote {s['output']}: {s['width']}x{s['height']} px, {s['bands']} band(s), "
              f"{'COG' if s['cog'] else 'GeoTIFF'}; {s['tiles_run']} of {s['tiles']} tiles run "
              f"({s['tiles_skipped_nodata']} all-nodata, {s['tiles_retried']} retried, "
              f"{s['cells_resumed']} windows resumed) on {s['workers'] or 'no'} Ray worker(s) in "
              f"{s['seconds']:.1f} s, {s['mpx_per_s']:.3f} Mpx/s; driver peak RSS "
              f"{s['driver_peak_rss_mib']:.0f} MiB")
    if pairs is not None:
        print(f"{len(summaries)} scene(s) written, {len(skipped)} already complete (skipped)")
    return 0
