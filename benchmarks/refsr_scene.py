"""GeoTIFF scene path: peak memory and throughput vs scene size and worker count.

    python benchmarks/refsr_scene.py [--sizes 2048 8192 16384] [--workers 1 2] [--steps 1]
                                     [--ref-transfer 0] [--tiny] [--repeat N] [--json out.json]

For each output size S (x4, so an S/4 LR), synthetic LR and Ref GeoTIFFs are made once (a
mosaic of RRSSRD LR / Ref images, EPSG:3857, the Ref on the output grid; written by strips),
then `refsr-scene` runs in a fresh child process per (size, workers), and, at the smallest
size, today's in-memory `super_resolve` on the same pixels in another child, twice: with its
default tile plan (tiles of 512, the last flush with the edge) and with the scene path's even
plan (`tile_plan="even"`: the same tiles as the scene path, so the remaining difference is the
scene path's own cost: per-tile registration, windowed reads, writing). Measured side by side
in one run (with --repeat, in-memory and scene runs interleaved):
  * peak RSS: the child's own max RSS (ru_maxrss) plus, with Ray, the peak of the sum of the
    driver's and the workers' RSS, sampled every 0.2 s from /proc (Ray's own daemons excluded),
    the same sum of PSS every 2 s (the object store's shared pages counted once), the sum of
    each process's own peak RSS (VmHWM, counted by the kernel: no short peak missed), and per
    process the peaks of RssAnon / RssFile / RssShmem and a trace of them every 5% of the tiles;
  * throughput: output Mpx per second of the tile loop (Ray start and worker start-up are
    reported separately as setup seconds), and of super_resolve for the in-memory run.
Every run uses one torch thread per worker (and the driver one), and records the CPU seconds
per tile of the driver, of the workers and of the rest of the machine (Ray's daemons, the
kernel; and the hypervisor's steal) during the tile loop and the load average (the
machine may be shared: --repeat interleaves 1- and 2-worker runs so both see the same load).
A child also writes its figures so far to OUT.progress.json after every tile, so a run cut
short still reports memory and speed. The model is the shipped small checkpoint (--tiny: a
random-weight one of the smallest config, for memory runs); to keep the run short the defaults
are 1 Euler step and the reference detail transfer off (its local block matching costs ~3x the
network at 1 step); pass --steps / --ref-transfer to change that. --memory-size 0 skips the
in-memory run; a size of 4480 is 10 x 10 = 100 tiles of 512 (overlap 64), enough that the
run's last tiles (one worker idle) do not weigh on the 2-worker speed.
Ratios printed at the end: RSS (PSS, VmHWM sum) at the largest size / at the smallest (goal
<= 1.10), 2 workers / 1 worker throughput (goal >= 1.8 on this 2-core share), scene /
in-memory per-pixel speed at the smallest size (goal >= 1; also against the even-plan
in-memory run).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rrssrd_dir() -> Path:
    for p in (ROOT / ".." / "shared" / "data" / "rrssrd", Path("/work/shared/data/rrssrd")):
        if (p / "val_1st").is_dir():
            return p
    raise SystemExit("RRSSRD data not found (shared/data/rrssrd beside the clone)")


def make_scene(folder: Path, size: int, scale: int = 4) -> tuple[Path, Path]:
    """LR (size/scale)^2 and Ref size^2 uint8 GeoTIFFs: mosaics of RRSSRD triplets."""
    import numpy as np
    import rasterio
    from affine import Affine
    from PIL import Image
    lr_path, ref_path = folder / f"lr_{size}.tif", folder / f"ref_{size}.tif"
    if lr_path.exists() and ref_path.exists():
        return lr_path, ref_path
    root = rrssrd_dir() / "val_1st"
    names = sorted(p.name for p in (root / "LR").iterdir())
    lrs = [np.asarray(Image.open(root / "LR" / n).convert("RGB")) for n in names]
    refs = [np.asarray(Image.open(root / "Ref" / n).convert("RGB")) for n in names]
    px = 2.4
    t = Affine(px, 0, 12_958_000.0, 0, -px, 4_852_000.0)
    for path, imgs, side, tr in ((lr_path, lrs, size // scale, t),
                                 (ref_path, refs, size, t @ Affine.scale(1 / scale))):
        p = imgs[0].shape[0]
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3,
                           dtype="uint8", crs="EPSG:3857", transform=tr, tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate") as dst:
            for r, y in enumerate(range(0, side, p)):
                h = min(p, side - y)
                row = np.concatenate([imgs[(r * 7 + c) % len(imgs)] for c in range(-(-side // p))],
                                     axis=1)[:h, :side]
                dst.write(np.moveaxis(row, -1, 0), window=rasterio.windows.Window(0, y, side, h))
    return lr_path, ref_path


def _cpu_s(pid: int) -> float:
    """utime + stime of a process so far, seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_cpu_s() -> dict[str, float]:
    """The whole machine's CPU seconds so far (all cores, /proc/stat): busy (user, nice, system,
    irq, softirq) and steal (time the hypervisor gave this VM's cores to someone else)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / tick, "steal": v[7] / tick}


def _proc_fields(pid: int, file: str, fields) -> dict[str, int]:
    """The "<field>: N kB" lines of /proc/<pid>/<file> in bytes (0 for a missing field, or
    once the process is gone)."""
    out = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _pss(pid: int) -> int:
    """Proportional set size: pages shared between processes (Ray's object store, mapped by the
    driver and every worker) counted once in a sum, not once per process as RSS counts them."""
    return _proc_fields(pid, "smaps_rollup", ["Pss"])["Pss"]


# VmRSS split into private heap (RssAnon), mapped files (RssFile: libraries, GDAL) and shared
# memory (RssShmem: Ray's object store), and the process's own peak RSS so far as the kernel
# counts it (VmHWM: exact, where sampling every 0.2 s may miss a short peak); /proc/PID/status
KINDS = ("RssAnon", "RssFile", "RssShmem", "VmHWM")


def _kinds(pid: int) -> dict[str, int]:
    """The KINDS and VmRSS of one process, bytes (one read of /proc/PID/status)."""
    return _proc_fields(pid, "status", KINDS + ("VmRSS",))


def tiny_model():
    """A DS-DiT with the smallest config and seeded random weights: a tile costs little, so
    --tiny measures the driver's and the workers' memory over large scenes in minutes (the
    shipped model adds a constant per worker, not a growth)."""
    import torch
    from sharp.refsr.config import DSDiTConfig
    from sharp.refsr.model import DSDiT
    torch.manual_seed(0)
    return DSDiT(DSDiTConfig(dim=8, depth=1, heads=1, plw_hidden=2)).eval()


def child_scene(args) -> dict:
    """One refsr-scene run (in this child process); returns its figures."""
    import torch
    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit
    from sharp.scene import super_resolve_scene
    torch.set_num_threads(1)
    model = tiny_model() if args.tiny else load_dsdit(DEFAULT_CHECKPOINT)
    pids, peak, pss, stop = [os.getpid()], [0], [0], threading.Event()
    kinds: dict[int, dict[str, int]] = {}       # pid -> peak of each kind

    def sample():
        n = 0
        while not stop.is_set():
            now = {p: _kinds(p) for p in list(pids)}
            peak[0] = max(peak[0], sum(k["VmRSS"] for k in now.values()))
            for p, ks in now.items():
                k = kinds.setdefault(p, dict.fromkeys(KINDS, 0))
                for key in KINDS:
                    k[key] = max(k[key], ks[key])
            # PSS walks the workers' page tables (~0.7 CPU s per 100-tile run at 2 workers,
            # taken from the cores being measured): every 2 s in memory runs (--tiny), else
            # once at the end (progress)
            if args.tiny and n % 10 == 0:
                pss[0] = max(pss[0], sum(_pss(p) for p in pids))
            n += 1
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    setup = {}

    def hook(pool):
        setup["pool"] = pool
        if hasattr(pool, "pids"):
            pids.extend(pool.pids())          # waits for the workers to be up
        setup["s"] = time.perf_counter() - t0
        setup["cpu0"] = [_cpu_s(p) for p in pids]
        setup["machine0"] = _machine_cpu_s()
        setup["load0"] = os.getloadavg()[0]

    side = Path(str(args.out) + ".progress.json")     # figures so far, for runs cut short

    trace = []    # the kinds now, every 5% of the tiles: where memory grows during the run
    hwm = {}      # pid -> VmHWM at the last tile (read before the pool closes)

    def progress(done, total, pixels, seconds):
        setup["cpu1"] = [_cpu_s(p) for p in pids]        # before the pool closes
        setup["machine1"] = _machine_cpu_s()
        hwm.update((p, _kinds(p)["VmHWM"]) for p in pids)
        if done == total and hasattr(setup.get("pool"), "actors"):
            ray = setup["pool"].ray
            setup["heap_trims"] = ray.get([a.heap_trims.remote() for a in setup["pool"].actors])
        if done % max(1, total // 20) == 0 or done == total:
            trace.append({"tiles_done": done, **{
                ("driver" if i == 0 else f"worker{i}"):
                [round(v / 2**20, 1) for v in _kinds(p).values()] for i, p in enumerate(pids)}})
        if done == total:     # a short run may end before the sampler's first PSS of the workers
            pss[0] = max(pss[0], sum(_pss(p) for p in pids))
        side.write_text(json.dumps({"tiles_done": done, "tiles": total, "mpx": pixels / 1e6,
                                    "mpx_per_s": pixels / 1e6 / max(seconds, 1e-9),
                                    "peak_rss_mib": peak[0] / 2**20}))

    s = super_resolve_scene(args.lr, args.ref, args.out, model, steps=args.steps,
                            ref_transfer=args.ref_transfer, workers=args.w, threads=1,
                            overwrite=True, pool_hook=hook, cog=False, progress=progress)
    cpu = [b - a for a, b in zip(setup["cpu0"], setup["cpu1"])]    # during the tile loop
    stop.set()
    th.join()
    tiles_run = max(1, s["tiles_run"])
    machine = {k: setup["machine1"][k] - setup["machine0"][k] for k in setup["machine0"]}
    return {"mpx_per_s": s["mpx_per_s"], "seconds": s["seconds"], "setup_s": setup.get("s"),
            "driver_cpu_s_per_tile": cpu[0] / tiles_run,
            "worker_cpu_s_per_tile": sum(cpu[1:]) / tiles_run if len(cpu) > 1 else None,
            # the rest of the machine: Ray's daemons, the kernel, anything else running
            "other_cpu_s_per_tile": (machine["busy"] - sum(cpu)) / tiles_run,
            "steal_cpu_s_per_tile": machine["steal"] / tiles_run,
            "load_before": setup["load0"], "load_after": os.getloadavg()[0],
            "tiles": s["tiles"], "worker_heap_trims": setup.get("heap_trims"),
            "peak_rss_mib": max(peak[0], 0) / 2**20,
            "peak_pss_mib": pss[0] / 2**20,
            "sum_vmhwm_mib": sum(hwm.values()) / 2**20,
            "peak_kinds_mib": {("driver" if i == 0 else f"worker{i}"):
                               {key: kinds.get(p, {}).get(key, 0) / 2**20 for key in KINDS}
                               for i, p in enumerate(pids)},
            "kinds_trace_mib": trace,
            "self_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_memory(args) -> dict:
    """Today's path: read both images whole, super_resolve in memory (its default tile plan,
    or the scene path's even plan: the same work per tile as the scene path, for comparison)."""
    import numpy as np
    import rasterio
    import torch
    from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit, super_resolve
    torch.set_num_threads(1)
    model = tiny_model() if args.tiny else load_dsdit(DEFAULT_CHECKPOINT)
    with rasterio.open(args.lr) as a, rasterio.open(args.ref) as b:
        lr = np.moveaxis(a.read(), 0, -1).astype(np.float32) / 255
        ref = np.moveaxis(b.read(), 0, -1).astype(np.float32) / 255
    t = time.perf_counter()
    out = super_resolve(model, lr, ref, steps=args.steps, ref_transfer=args.ref_transfer,
                        tile_plan=args.plan)
    dt = time.perf_counter() - t
    return {"mpx_per_s": out.shape[0] * out.shape[1] / 1e6 / dt, "seconds": dt,
            "self_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        cmd += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"child {kind} {kw} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--ref-transfer", type=float, default=0.0)
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny random-weight model instead of the shipped one (memory runs: "
                         "the figures of interest are the driver's and workers' growth)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each (size, workers) this many times, interleaved (1, 2, 1, 2, "
                         "...), so both worker counts see the same machine load; ratios use "
                         "the median")
    ap.add_argument("--memory-size", type=int, default=None,
                    help="size of the in-memory super_resolve comparison (default: the smallest "
                         "size; 0: skip it, e.g. when measuring large sizes on their own)")
    ap.add_argument("--dir", help="where the scenes go (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--lr", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--w", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plan", default="flush", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child_scene(args) if args.child == "scene" else child_memory(args)
        print(json.dumps(res))
        return
    folder = Path(args.dir or tempfile.mkdtemp(prefix="refsr_scene_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    results = {"steps": args.steps, "ref_transfer": args.ref_transfer, "tiny": args.tiny,
               "machine": {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}, "runs": []}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    common = {"steps": args.steps, "ref-transfer": args.ref_transfer}
    if args.tiny:
        common["tiny"] = True
    mem_size = min(args.sizes) if args.memory_size is None else args.memory_size
    for size in args.sizes:
        lr, ref = make_scene(folder, size)
        for rep in range(args.repeat):
            if size == mem_size:
                for plan in ("flush", "even"):
                    r = run_child("memory", lr=lr, ref=ref, plan=plan, **common)
                    results["runs"].append({"size": size, "path": "in-memory super_resolve",
                                            "tile_plan": plan, "repeat": rep, **r})
                    print(f"{size}^2 in-memory ({plan} tile plan): {r['mpx_per_s']:.3f} Mpx/s, "
                          f"max RSS {r['self_max_rss_mib']:.0f} MiB", flush=True)
                    save()
            for w in args.workers:
                r = run_child("scene", lr=lr, ref=ref, out=folder / f"sr_{size}_{w}.tif", w=w,
                              **common)
                results["runs"].append({"size": size, "path": "scene", "workers": w,
                                        "repeat": rep, **r})
                print(f"{size}^2 scene, {w} worker(s): {r['mpx_per_s']:.3f} Mpx/s over "
                      f"{r['tiles']} tiles ({r['seconds']:.0f} s, setup {r['setup_s']:.1f} s), "
                      f"peak RSS driver+workers {r['peak_rss_mib']:.0f} MiB (PSS "
                      f"{r['peak_pss_mib']:.0f}); CPU s per tile: "
                      f"driver {r['driver_cpu_s_per_tile']:.3f}, workers "
                      f"{r['worker_cpu_s_per_tile'] or 0:.3f}, rest of the machine "
                      f"{r['other_cpu_s_per_tile']:.3f} (+ steal {r['steal_cpu_s_per_tile']:.3f}); "
                      f"load {r['load_before']:.1f} -> "
                      f"{r['load_after']:.1f}", flush=True)
                print(f"  sum of per-process peaks (VmHWM) {r['sum_vmhwm_mib']:.0f} MiB; "
                      "peak MiB " + "; ".join(
                    f"{who} " + " ".join(f"{k[3:].lower()} {v:.0f}" for k, v in ks.items()
                                         if k != "VmHWM")
                    for who, ks in r["peak_kinds_mib"].items()), flush=True)
                (folder / f"sr_{size}_{w}.tif").unlink(missing_ok=True)
                save()
    scene = [r for r in results["runs"] if r["path"] == "scene"]
    lo, hi = min(args.sizes), max(args.sizes)

    def median(size, w, key):
        v = sorted(r[key] for r in scene if r["size"] == size and r["workers"] == w)
        return statistics.median(v) if v else None

    ratios = {}
    for w in args.workers:
        for key, field in (("rss", "peak_rss_mib"), ("pss", "peak_pss_mib"),
                           ("vmhwm", "sum_vmhwm_mib")):
            a, b = median(lo, w, field), median(hi, w, field)
            if a and b:
                ratios[f"{key}_{hi}_over_{lo}_w{w}"] = b / a
    for size in args.sizes:
        one, two = median(size, 1, "mpx_per_s"), median(size, 2, "mpx_per_s")
        if one and two:
            ratios[f"speed_2w_over_1w_{size}"] = two / one
        pairs = [(x["mpx_per_s"], y["mpx_per_s"]) for x in scene for y in scene
                 if x["size"] == y["size"] == size and x.get("repeat") == y.get("repeat")
                 and x["workers"] == 1 and y["workers"] == 2]
        if len(pairs) > 1:     # each interleaved pair on its own: how much the load moved it
            ratios[f"speed_2w_over_1w_{size}_pairs"] = [b / a for a, b in pairs]
    one = median(lo, 1, "mpx_per_s")
    for plan, key in (("flush", ""), ("even", "_even_plan")):
        v = sorted(r["mpx_per_s"] for r in results["runs"]
                   if r["path"] != "scene" and r["tile_plan"] == plan)
        if v and one:
            ratios[f"speed_scene_1w_over_memory{key}_{lo}"] = one / statistics.median(v)
    results["ratios"] = ratios
    save()
    results["machine"]["load_at_end"] = os.getloadavg()
    save()
    for k, v in ratios.items():
        print(f"{k}: " + (", ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else f"{v:.2f}"))


if __name__ == "__main__":
    main()
