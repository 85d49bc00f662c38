"""`python -m sharp batch`: run an API-format ComfyUI workflow over a manifest on many ComfyUI
servers, on Ray (the optional extra `comfyui-sharp[scale]`). See docs/batch.md."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="run a ComfyUI API workflow over a CSV/JSONL manifest on many servers (Ray)",
        description="Each manifest row sets workflow inputs by node title (or id) and input name "
                    "(columns like Prompt.text, KSampler.seed, LR.image; a local file for an image "
                    "input is uploaded). Every row is validated against the server's /object_info "
                    "before anything is queued. Outputs: OUT/images/<row>_<node>_<n>.png, one sidecar "
                    "JSON per row in OUT/sidecars/, OUT/results.jsonl and OUT/summary.json.")
    p.add_argument("--workflow", required=True, help="workflow in ComfyUI's API format (Export (API))")
    p.add_argument("--manifest", required=True, help="jobs.csv or jobs.jsonl (see `batch-grid` for SHARP grids)")
    p.add_argument("--out", required=True, help="output folder (created; reused by --resume)")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", default=[],
                   help="set an input on every row (wins over the manifest), e.g. --set KSampler.steps=20")
    w = p.add_argument_group("workers")
    w.add_argument("--servers", nargs="+", default=[], metavar="URL",
                   help="running ComfyUI servers, e.g. http://127.0.0.1:8188 http://gpu2:8188")
    w.add_argument("--launch", type=int, default=0, metavar="N",
                   help="start N ComfyUI servers as Ray actors (one GPU each; on a CPU machine "
                        "--cores-per-worker cores each), restarted when they die")
    w.add_argument("--comfyui", metavar="DIR", help="ComfyUI checkout for --launch")
    w.add_argument("--comfyui-python", metavar="PY", help="Python of ComfyUI's environment (default: this one)")
    w.add_argument("--comfyui-base", metavar="DIR",
                   help="--base-directory of the launched servers (models/, custom_nodes/, input/)")
    w.add_argument("--comfyui-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the launched servers' main.py (repeatable)")
    w.add_argument("--cores-per-worker", type=int, default=1, help="CPU cores pinned per launched CPU server")
    w.add_argument("--address", help="Ray cluster address (ray://head:10001 or auto); default: Ray on this machine")
    w.add_argument("--inflight", type=int, default=2, help="prompts in flight per worker (default 2)")
    r = p.add_argument_group("faults and resume")
    r.add_argument("--retries", type=int, default=2, metavar="K",
                   help="retry a failed prompt up to K times on any worker (default 2); rejected "
                        "prompts (the server's validation) are not retried")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds one prompt may take (default 3600)")
    r.add_argument("--resume", action="store_true", help="skip rows whose images and sidecar are complete")
    r.add_argument("--server-wait", type=float, default=300.0,
                   help="stop (rows left for --resume) when no worker has answered for this many seconds")
    v = p.add_argument_group("validation")
    v.add_argument("--object-info", metavar="JSON", help="validate against this saved /object_info")
    v.add_argument("--validate-only", action="store_true", help="validate every row, queue nothing")
    v.add_argument("--skip-invalid", action="store_true",
                   help="run the valid rows and record the invalid ones as failed (default: stop)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from sharp.batch.manifest import parse_sets
    from sharp.batch.runner import BatchConfig

    if args.inflight < 1 or args.retries < 0 or args.launch < 0 or args.cores_per_worker < 1:
        raise ValueError("--inflight and --cores-per-worker must be >= 1, --retries and --launch >= 0")
    return BatchConfig(workflow=args.workflow, manifest=args.manifest, out=args.out, sets=parse_sets(args.set),
                       servers=args.servers, launch=args.launch, comfyui=args.comfyui,
                       comfyui_python=args.comfyui_python, comfyui_base=args.comfyui_base,
                       comfyui_args=args.comfyui_arg, cores_per_worker=args.cores_per_worker, address=args.address,
                       resume=args.resume, server_wait=args.server_wait, retries=args.retries,
                       inflight=args.inflight, prompt_timeout=args.timeout,
                       object_info=args.object_info, validate_only=args.validate_only,
                       skip_invalid=args.skip_invalid, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from sharp.batch.jobs import ManifestError
    from sharp.batch.runner import run_batch

    try:
        summary = run_batch(config_from_args(args))
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if "valid_rows" in summary:
        print(f"{summary['valid_rows']} rows valid, {summary['invalid_rows']} invalid; nothing queued (--validate-only)")
        return 0
    print(summary["table"])
    if summary["interrupted"]:
        print(f"interrupted: {summary['not_run']} rows not started; rerun with --resume", file=sys.stderr)
        return 130
    if summary["gave_up"]:
        print(f"error: {summary['gave_up']}; {summary['not_run']} rows not run: rerun with --resume", file=sys.stderr)
        return 1
    return 0 if summary["rows_failed"] == 0 else 1
