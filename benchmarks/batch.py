"""`python -m sharp batch` benchmark, one run, figures side by side:

  1. the runner's own overhead per prompt, against the ComfyUI protocol stand-in
     (tests/comfy_protocol_standin.py: a real HTTP server that speaks ComfyUI's protocol and runs a
     trivial graph in ~1 ms; NOT ComfyUI): wall time per row minus the stand-in's own execution
     time, with 1 and 2 prompts in flight (goal < 50 ms);
  2. with --comfyui DIR: images per minute of the DS-DiT workflow (workflows/api/dsdit_refsr_x4.json,
     the shipped checkpoint) with 1 and 2 ComfyUI servers launched by the Ray actors, each pinned to
     one CPU core, and the ratio (goal >= 1.8x on a 2-core machine).

    python benchmarks/batch.py [--rows 200]
    python benchmarks/batch.py --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfy-venv/bin/python \
        [--ds-rows 8] [--steps 4]

The DS-DiT throughput is measured from the first dispatch to the last image written (servers
already up); each server's first prompt includes loading the checkpoint. A loaded machine gives
noisy figures: run it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def overhead(rows: int, inflight: int, tmp: str) -> dict:
    from batch_fixtures import write_manifest, write_workflow
    from comfy_protocol_standin import StandIn

    from sharp.batch.runner import BatchConfig, run_batch

    folder = os.path.join(tmp, f"standin_{inflight}")
    os.makedirs(folder)
    server = StandIn(os.path.join(folder, "server")).start()
    try:
        cfg = BatchConfig(workflow=write_workflow(folder), manifest=write_manifest(folder, rows), out=os.path.join(folder, "out"),
                          servers=[server.url], inflight=inflight, progress=False)
        s = run_batch(cfg)
    finally:
        server.stop()
    assert s["rows_ok"] == rows, s
    exec_s = 0.0
    for name in os.listdir(os.path.join(cfg.out, "sidecars")):
        exec_s += json.load(open(os.path.join(cfg.out, "sidecars", name)))["timings"].get("server_execution_s", 0.0)
    return {"rows": rows, "inflight": inflight, "wall_s": s["wall_s"], "per_row_ms": 1000 * s["wall_s"] / rows,
            "server_exec_ms": 1000 * exec_s / rows, "overhead_ms": 1000 * (s["wall_s"] - exec_s) / rows}


def dsdit(workers: int, args, tmp: str) -> dict:
    import csv

    from sharp.batch.runner import BatchConfig, run_batch

    folder = os.path.join(tmp, f"dsdit_{workers}")
    base = os.path.join(folder, "base")
    os.makedirs(os.path.join(base, "custom_nodes"))
    os.symlink(REPO, os.path.join(base, "custom_nodes", "comfyui-sharp"))
    os.makedirs(os.path.join(base, "input"))
    for name, src in {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}.items():
        shutil.copy(REPO / "examples" / "refsr" / src, os.path.join(base, "input", name))
    manifest = os.path.join(folder, "jobs.csv")
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "DS-DiT Reference SR (x4).seed"])
        for i in range(args.ds_rows):
            w.writerow([f"r{i:03d}", i])
    cfg = BatchConfig(workflow=str(REPO / "workflows" / "api" / "dsdit_refsr_x4.json"), manifest=manifest,
                      out=os.path.join(folder, "out"), sets={"DS-DiT Reference SR (x4).steps": str(args.steps)},
                      launch=workers, comfyui=args.comfyui, comfyui_python=args.comfyui_python, comfyui_base=base,
                      cores_per_worker=1, progress=False)
    s = run_batch(cfg)
    assert s["rows_ok"] == args.ds_rows, s
    return {"workers": workers, "rows": args.ds_rows, "images": s["images"], "wall_s": s["wall_s"],
            "images_per_min": s["images_per_min"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200, help="rows for the overhead measurement")
    p.add_argument("--comfyui", help="ComfyUI checkout: also measure DS-DiT images/min with 1 and 2 servers")
    p.add_argument("--comfyui-python", help="Python of ComfyUI's environment")
    p.add_argument("--ds-rows", type=int, default=8, help="DS-DiT rows per configuration")
    p.add_argument("--steps", type=int, default=4, help="DS-DiT Euler steps")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
    tmp = tempfile.mkdtemp(prefix="sharp_batch_bench_")
    figures = {}
    try:
        figures["overhead"] = [overhead(args.rows, k, tmp) for k in (1, 2)]
        print("runner overhead per prompt (protocol stand-in, not ComfyUI; one server):")
        print(f"  {'in flight':>9} {'rows':>5} {'wall s':>7} {'ms/row':>7} {'server ms':>9} {'overhead ms':>11}")
        for o in figures["overhead"]:
            print(f"  {o['inflight']:>9} {o['rows']:>5} {o['wall_s']:>7.2f} {o['per_row_ms']:>7.1f} "
                  f"{o['server_exec_ms']:>9.1f} {o['overhead_ms']:>11.1f}")
        if args.comfyui:
            one, two = dsdit(1, args, tmp), dsdit(2, args, tmp)
            figures["dsdit"] = [one, two]
            print(f"\nDS-DiT workflow ({args.ds_rows} rows, {args.steps} steps, 2 images per row), "
                  "ComfyUI servers launched by Ray, one core each:")
            print(f"  1 worker : {one['images_per_min']:6.1f} images/min ({one['wall_s']:.1f} s)")
            print(f"  2 workers: {two['images_per_min']:6.1f} images/min ({two['wall_s']:.1f} s)")
            print(f"  ratio 2/1: {two['images_per_min'] / one['images_per_min']:.2f}x")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
