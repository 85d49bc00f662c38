"""DS-DiT benchmark on RRSSRD val_3rd (issues 4 and 6).

    python benchmarks/refsr.py [--limit N] [--steps 20] [--guidance 2] [--json out.json]
    python benchmarks/refsr.py --ckpt s0.safetensors s1.safetensors s2.safetensors --jobs 2 ...
    python benchmarks/refsr.py --combine s0.json s1.json s2.json     # table of earlier runs

With several checkpoints (e.g. three training seeds) each is measured in its own process (--jobs
at a time) and a table across them gives the spread: the Ref variant beats the no-Ref variant
convincingly when the mean margin exceeds the spread of the per-checkpoint margins.

Per image (480x480 HR, x4): PSNR and SSIM (RGB, 8-bit) and log-spectral distance to the HR
(sharp.spectrum.log_spectral_distance) for
  bicubic          torch bicubic upsampling of the LR (the model's own starting point)
  weak             DS-DiT without Ref: the LR branch alone (weak_ref "off") or the upsampled
                   LR as a null Ref with zero confidence (weak_ref "null", same capacity)
  ref              DS-DiT with the aligned Ref, plus the checkpoint's reference detail transfer
                   (sharp.refsr.transfer; off for checkpoints without a fitted gain)
  ref+AG           with Ref and autoguidance v = v_weak + g (v_ref - v_weak)
  wrong-ref        with another scene's Ref (the next image's): Ref effect = ref - wrong-ref
  ref-network      the network alone with the Ref (transfer off)
  wrong-network    the network alone with another scene's Ref: its own Ref effect
  ref-unregistered with the Ref as given (no shift / colour registration)
  null-ref         with the upsampled LR itself as the Ref (no information beyond the LR): shows
                   how much of "ref - weak" is the second attention branch rather than the Ref
plus PLW weight statistics (mean w, 1 = LR) with the true and a wrong Ref, time per image, and
peak memory (max RSS of a child process) at 512^2 and 2048^2 output, tiled.
Runtime: about 1-2 minutes per image on one CPU core; --limit keeps it modest.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "rrssrd" / "val_3rd"


def _vm(key: str) -> float:
    """A /proc/self/status field in MiB (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(size: int, tile: int, overlap: int, ckpt: str) -> None:
    import torch

    from sharp.refsr import load_dsdit, super_resolve

    torch.set_num_threads(1)
    model = load_dsdit(ckpt)
    g = np.random.default_rng(0)
    super_resolve(model, g.random((16, 16, 3), dtype=np.float32),
                  g.random((64, 64, 3), dtype=np.float32), steps=1)        # warm-up
    lr = g.random((size // 4, size // 4, 3), dtype=np.float32)
    ref = g.random((size, size, 3), dtype=np.float32)
    before = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")                          # reset the peak
    super_resolve(model, lr, ref, steps=1, tile=tile, overlap=overlap)
    print(json.dumps({"size": size, "rss_before_mib": before, "peak_mib": _vm("VmHWM"),
                      "inputs_mib": (lr.nbytes + ref.nbytes) / 2 ** 20}))


def peak_memory(size: int, tile: int, overlap: int, ckpt: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--_memory-child", str(size), "--tile", str(tile),
                        "--overlap", str(overlap), "--ckpt", ckpt],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def save_figure(path, name, up, ref, hr, sr, w_true, w_wrong) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("bicubic x4", up), ("Ref (as given)", ref), ("HR", hr), ("DS-DiT with Ref", sr),
              ("PLW w, true Ref", w_true), ("PLW w, wrong Ref", w_wrong)]
    fig, axes = plt.subplots(1, 6, figsize=(18, 3.4))
    for ax, (title, img) in zip(axes, panels):
        if img.ndim == 2:
            im = ax.imshow(img, vmin=0, vmax=1, cmap="viridis")
        else:
            ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.colorbar(im, ax=axes[-2:], shrink=0.8, label="w (1 = LR branch, 0 = Ref branch)")
    fig.suptitle(f"RRSSRD val_3rd {name}", fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _child_argv(argv: list[str], ckpt: str, out_json: str, first: bool) -> list[str]:
    """The same command line for one checkpoint: --ckpt/--jobs/--json replaced; the memory runs
    and the figure only for the first checkpoint."""
    out, skip = [], False
    for a in argv:
        if a in ("--ckpt", "--jobs", "--json") or (a == "--figure" and not first):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    out += ["--ckpt", ckpt, "--json", out_json]
    if not first and "--no-memory" not in out:
        out.append("--no-memory")
    return out


def seed_spread(results: list[dict]) -> dict:
    """Across checkpoints: per-checkpoint mean PSNRs and margins, their mean and spread."""
    def col(fn):
        vals = [fn(r) for r in results]
        return {"per_checkpoint": vals, "mean": float(np.mean(vals)),
                "spread_max_minus_min": float(np.max(vals) - np.min(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    shared = [n for n in results[0]["metrics"] if all(n in r["metrics"] for r in results)]
    table = {name: col(lambda r, n=name: r["metrics"][n]["psnr"]) for name in shared}
    table["ref_minus_weak"] = col(lambda r: r["ref_minus_weak_db"]["mean"])
    for key in ("ref_effect", "network_ref_effect"):
        if all(r.get(key + "_db") is not None for r in results):
            table[key] = col(lambda r, k=key: r[k + "_db"])
    table["ref_transfer_gain"] = col(lambda r: r.get("ref_transfer", 0.0))
    table["plw_true"] = col(lambda r: r["plw_mean_w"]["true"])
    table["plw_wrong"] = col(lambda r: r["plw_mean_w"]["wrong"])
    return table


def compare_checkpoints(ckpts: list[str], argv: list[str], args) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jobs, outs = [], []
        for i, ckpt in enumerate(ckpts):
            out = str(Path(tmp) / f"{i}.json")
            outs.append(out)
            jobs.append([sys.executable, __file__] + _child_argv(argv, ckpt, out, i == 0))
        running = []
        for cmd in jobs:
            running.append(subprocess.Popen(cmd))
            if len(running) >= max(1, args.jobs):
                if running.pop(0).wait():
                    raise SystemExit("a checkpoint's benchmark failed (see above)")
        if any(proc.wait() for proc in running):
            raise SystemExit("a checkpoint's benchmark failed (see above)")
        results = [json.loads(Path(o).read_text()) for o in outs]
    return summarise_checkpoints(results, args.json)


def summarise_checkpoints(results: list[dict], json_out: str | None = None) -> int:
    """Print (and save) the across-checkpoint table of per-checkpoint results."""
    table = seed_spread(results)
    names = [Path(r["checkpoint"]).stem for r in results]
    print(f"\n### Across {len(results)} checkpoints ({results[0]['images']} images each)\n")
    print("| quantity (dB; PLW: mean w) | " + " | ".join(names) + " | mean | spread (max - min) |")
    print("|---|" + "---|" * (len(results) + 2))
    for name, v in table.items():
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v["per_checkpoint"])
              + f" | {v['mean']:.3f} | {v['spread_max_minus_min']:.3f} |")
    margin = table["ref_minus_weak"]
    verdict = margin["mean"] > margin["spread_max_minus_min"] and min(margin["per_checkpoint"]) > 0
    print(f"\nRef beats no-Ref by {margin['mean']:+.3f} dB on average; spread of that margin over "
          f"the checkpoints {margin['spread_max_minus_min']:.3f} dB; spread of the Ref PSNR "
          f"{table['ref']['spread_max_minus_min']:.3f} dB -> "
          f"{'margin larger than the spread' if verdict else 'NOT larger than the spread'}")
    if "ref_effect" in table:
        eff = table["ref_effect"]
        print(f"Ref effect (true - wrong Ref) {eff['mean']:+.3f} dB on average, spread "
              f"{eff['spread_max_minus_min']:.3f} dB, smallest {min(eff['per_checkpoint']):+.3f} dB")
    if json_out:
        Path(json_out).write_text(json.dumps({"checkpoints": results, "across_checkpoints": table,
                                              "margin_exceeds_spread": verdict}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="RRSSRD-style folder (val_3rd)")
    p.add_argument("--ckpt", nargs="+", default=None,
                   help="checkpoint(s) (default: the shipped small one); several: compared")
    p.add_argument("--jobs", type=int, default=1, help="checkpoints measured in parallel")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="only print the across-checkpoint table of earlier --json results")
    p.add_argument("--limit", type=int, default=6, help="number of images (0 = all)")
    p.add_argument("--steps", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--guidance", type=float, default=2.0, help="g for the ref+AG variant")
    p.add_argument("--temperature", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--seeds", type=int, default=1, help="seeds for weak/ref (spread reported)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--json", help="write all figures to this JSON file")
    p.add_argument("--variants", default="weak,ref,ref+AG,wrong-ref,ref-network,wrong-network,ref-unregistered",
                   help="comma-separated subset of the DS-DiT variants (bicubic is always run)")
    p.add_argument("--figure", help="save a PNG of the first image: inputs, output, PLW maps")
    p.add_argument("--_memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from sharp.refsr import DEFAULT_CHECKPOINT

    if args.combine:
        return summarise_checkpoints([json.loads(Path(f).read_text()) for f in args.combine], args.json)
    ckpts = args.ckpt or [str(DEFAULT_CHECKPOINT)]
    if len(ckpts) > 1:
        return compare_checkpoints(ckpts, argv if argv is not None else sys.argv[1:], args)
    ckpt = ckpts[0]
    if args._memory_child is not None:
        _memory_child(args._memory_child, args.tile, args.overlap, ckpt)
        return 0

    import torch

    from sharp.refsr import load_dsdit, reference_weight_map, super_resolve
    from sharp.refsr.api import default_ref_transfer, default_steps, default_temperature
    from sharp.refsr.data import TripletFolder, upsample
    from sharp.refsr.metrics import psnr, ssim
    from sharp.spectrum import log_spectral_distance

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"data folder not found: {data} (RRSSRD val_3rd; see shared/data/rrssrd)")
    folder = TripletFolder(data)
    n = len(folder) if args.limit <= 0 else min(args.limit, len(folder))
    model = load_dsdit(ckpt)
    temperature = default_temperature(model) if args.temperature is None else args.temperature
    args.steps = default_steps(model) if args.steps is None else args.steps
    print(f"{ckpt}: {n} images of {data}, {args.steps} steps, temperature {temperature}, "
          f"AG g={args.guidance}", flush=True)

    def to_hwc(t):
        return t[0].permute(1, 2, 0).numpy()

    triplets = [tuple(to_hwc(t) for t in folder.load(i)) for i in range(n)]
    all_names = ["bicubic", "weak", "ref", "ref+AG", "wrong-ref", "ref-network", "wrong-network",
                 "ref-unregistered", "null-ref"]
    chosen = {v.strip() for v in args.variants.split(",") if v.strip()}
    unknown = chosen - set(all_names)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {all_names[1:]}")
    chosen |= {"weak", "ref"}                     # the Ref gain needs both
    names = [k for k in all_names if k == "bicubic" or k in chosen]
    rows = {k: {"psnr": [], "ssim": [], "lsd": []} for k in names}
    seed_psnr = {"weak": [[] for _ in range(args.seeds)], "ref": [[] for _ in range(args.seeds)]}
    plw = {"true": [], "wrong": []}
    times = {"weak": [], "ref": [], "ref+AG": []}
    kw = dict(scale=4, steps=args.steps, tile=args.tile, overlap=args.overlap,
              temperature=temperature)
    for i, (hr, lr, ref) in enumerate(triplets):
        wrong = triplets[(i + 1) % n][2] if n > 1 else np.flip(ref, 0).copy()
        up = to_hwc(upsample(torch.from_numpy(lr).permute(2, 0, 1)[None], hr.shape[:2]))
        outs = {"bicubic": up}
        for s in range(args.seeds):
            for name, r in (("weak", None), ("ref", ref)):
                t0 = time.perf_counter()
                out = super_resolve(model, lr, r, seed=s, **kw)
                if s == 0:
                    times[name].append(time.perf_counter() - t0)
                    outs[name] = out
                seed_psnr[name][s].append(psnr(out, hr))
        if "ref+AG" in names:
            t0 = time.perf_counter()
            outs["ref+AG"] = super_resolve(model, lr, ref, guidance=args.guidance, **kw)
            times["ref+AG"].append(time.perf_counter() - t0)
        if "wrong-ref" in names:
            outs["wrong-ref"] = super_resolve(model, lr, wrong, **kw)
        if "ref-network" in names:
            outs["ref-network"] = super_resolve(model, lr, ref, ref_transfer=0.0, **kw)
        if "wrong-network" in names:
            outs["wrong-network"] = super_resolve(model, lr, wrong, ref_transfer=0.0, **kw)
        if "null-ref" in names:
            outs["null-ref"] = super_resolve(model, lr, up, register=False, **kw)
        if "ref-unregistered" in names:
            outs["ref-unregistered"] = super_resolve(model, lr, ref, register=False, **kw)
        for name, out in outs.items():
            rows[name]["psnr"].append(psnr(out, hr))
            rows[name]["ssim"].append(ssim(out, hr))
            rows[name]["lsd"].append(log_spectral_distance(out, hr))
        w_true = reference_weight_map(model, lr, ref)[0]
        w_wrong = reference_weight_map(model, lr, wrong)[0]
        plw["true"].append(float(w_true.mean()))
        plw["wrong"].append(float(w_wrong.mean()))
        if args.figure and i == 0:
            save_figure(args.figure, folder.names[i], up, ref, hr, outs["ref"], w_true, w_wrong)
        print(f"[{i + 1}/{n}] {folder.names[i]}: " + ", ".join(
            f"{k} {rows[k]['psnr'][-1]:.2f}" for k in names), flush=True)

    rows = {k: v for k, v in rows.items() if k in names}
    summary = {k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in rows.items()}
    def mean_diff(a, b):
        return (float(np.mean(np.array(rows[a]["psnr"]) - np.array(rows[b]["psnr"])))
                if a in names and b in names else None)

    ref_effect = mean_diff("ref", "wrong-ref")
    network_ref_effect = mean_diff("ref-network", "wrong-network")
    gain = np.array(rows["ref"]["psnr"]) - np.array(rows["weak"]["psnr"])
    seeds = {k: [float(np.mean(v)) for v in lists] for k, lists in seed_psnr.items()}
    result = {
        "checkpoint": str(ckpt), "images": n, "steps": args.steps, "temperature": temperature,
        "guidance": args.guidance, "metrics": summary,
        "ref_effect_db": ref_effect,
        "network_ref_effect_db": network_ref_effect,
        "ref_transfer": default_ref_transfer(model),
        "ref_minus_weak_db": {"mean": float(gain.mean()), "std_over_images": float(gain.std()),
                              "standard_error": float(gain.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
                              "images_improved": int((gain > 0).sum())},
        "seed_means_psnr": seeds,
        "plw_mean_w": {k: float(np.mean(v)) for k, v in plw.items()},
        "seconds_per_480_image": {k: float(np.mean(v)) for k, v in times.items() if v},
        "threads": args.threads,
    }
    if not args.no_memory:
        mem = {}
        for size in (512, 2048):
            m = peak_memory(size, args.tile, args.overlap, ckpt)
            mem[f"{size}x{size}"] = {"peak_rss": m["peak_mib"],
                                     "increase_during_call": m["peak_mib"] - m["rss_before_mib"],
                                     "one_rgb_float_buffer": size * size * 3 * 4 / 2 ** 20}
        result["peak_memory_mib"] = mem

    print("\n| variant | PSNR (dB) | SSIM | LSD (dB) |\n|---|---|---|---|")
    for k in names:
        s = summary[k]
        print(f"| {k} | {s['psnr']:.3f} | {s['ssim']:.4f} | {s['lsd']:.3f} |")
    if ref_effect is not None:
        print(f"\nRef effect (ref - wrong-ref PSNR): {ref_effect:+.3f} dB "
              f"(reference detail transfer gain {result['ref_transfer']:.3f})")
    if network_ref_effect is not None:
        print(f"Ref effect of the network alone (ref-network - wrong-network): {network_ref_effect:+.3f} dB")
    se = result["ref_minus_weak_db"]["standard_error"]
    print(f"ref - weak: {gain.mean():+.3f} dB (std over images {gain.std():.3f}, standard error "
          f"{se if se is None else round(se, 3)}, "
          f"{int((gain > 0).sum())}/{n} improved); per-seed means {seeds}")
    print(f"PLW mean w (1 = LR): true Ref {result['plw_mean_w']['true']:.3f}, "
          f"wrong Ref {result['plw_mean_w']['wrong']:.3f}")
    print("seconds per 480x480 image: " + ", ".join(
        f"{k} {v:.1f}" for k, v in result["seconds_per_480_image"].items()))
    if "peak_memory_mib" in result:
        for k, v in result["peak_memory_mib"].items():
            print(f"{k} (tile {args.tile}): peak RSS {v['peak_rss']:.0f} MiB, +{v['increase_during_call']:.0f}"
                  f" MiB during the call (one RGB float32 image buffer = {v['one_rgb_float_buffer']:.0f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
