"""The output folder: images under images/, one sidecar JSON per completed row under sidecars/,
results.jsonl (one line per row outcome, appended as they come), summary.json at the end.

Writes are atomic (a temporary file renamed into place) and ordered images -> sidecar ->
results.jsonl, so a sidecar exists only when all its images do: a row is complete when its sidecar
matches the job and every listed image is there with its recorded sha256 (what `--resume` checks).
"""
from __future__ import annotations

import hashlib
import json
import os
import time

from sharp.batch import naming

SIDECAR_VERSION = 1


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class OutputDir:
    def __init__(self, root: str):
        self.root = root
        self.images = os.path.join(root, "images")
        self.sidecars = os.path.join(root, "sidecars")
        os.makedirs(self.images, exist_ok=True)
        os.makedirs(self.sidecars, exist_ok=True)
        self.results_path = os.path.join(root, "results.jsonl")
        for name in os.listdir(self.images) + os.listdir(self.sidecars):  # leftovers of a killed run
            if ".tmp-" in name:
                folder = self.images if os.path.exists(os.path.join(self.images, name)) else self.sidecars
                os.remove(os.path.join(folder, name))

    def sidecar_path(self, key: str) -> str:
        return os.path.join(self.sidecars, f"{key}.json")

    def read_sidecar(self, key: str) -> dict | None:
        try:
            with open(self.sidecar_path(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def is_complete(self, job, workflow_hash: str) -> bool:
        """The row's sidecar is for this very prompt and workflow, and every image it lists is intact."""
        side = self.read_sidecar(job.key)
        if not side or side.get("status") != "ok" or side.get("prompt_hash") != job.prompt_hash \
                or side.get("workflow", {}).get("sha256") != workflow_hash or not side.get("outputs"):
            return False
        for out in side["outputs"]:
            path = os.path.join(self.root, out["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != out["bytes"] or naming.file_sha256(path) != out["sha256"]:
                return False
        return True

    def write_success(self, job, result: dict, context: dict, attempts: int) -> dict:
        outputs = []
        for im in result["images"]:
            name = naming.output_name(job.key, im["title"], im["index"], im["server_file"]["filename"])
            _atomic_write(os.path.join(self.images, name), im["data"])
            outputs.append({"file": f"images/{name}", "node": im["node"], "title": im["title"],
                            "index": im["index"], "bytes": len(im["data"]),
                            "sha256": hashlib.sha256(im["data"]).hexdigest(), "server_file": im["server_file"]})
        sidecar = {
            "sidecar_version": SIDECAR_VERSION, "status": "ok", "key": job.key, "row_index": job.index,
            "row": job.row, "workflow": context["workflow"], "prompt_hash": job.prompt_hash,
            "pack": {"name": "comfyui-sharp", "version": context["pack_version"]},
            "comfyui_version": result.get("comfyui_version"), "server": result["server"],
            "worker": result["worker"], "prompt_id": result["prompt_id"], "seeds": job.seeds(),
            "sharp_params": job.sharp_params(), "timings": result["timings"], "attempts": attempts,
            "outputs": outputs, "prompt": job.prompt,
        }
        _atomic_write(self.sidecar_path(job.key), json.dumps(sidecar, indent=1, ensure_ascii=False).encode())
        return self.append({"key": job.key, "row_index": job.index, "status": "ok", "attempts": attempts,
                            "worker": result["worker"], "server": result["server"],
                            "images": [o["file"] for o in outputs], "seconds": result["timings"]["total_s"]},
                           context)

    def write_failure(self, job, kind: str, message: str, attempts: int, context: dict, worker=None, server=None) -> dict:
        status = "interrupted" if kind == "interrupted" else "failed"
        return self.append({"key": job.key, "row_index": job.index, "status": status, "kind": kind,
                            "message": message, "attempts": attempts, "worker": worker, "server": server}, context)

    def write_skipped(self, job, context: dict) -> dict:
        return self.append({"key": job.key, "row_index": job.index, "status": "skipped",
                            "reason": "complete (--resume)"}, context)

    def append(self, record: dict, context: dict) -> dict:
        record = {"run": context["run_id"], "time": round(time.time(), 3), **record}
        with open(self.results_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def read_results(self, run_id: str | None = None) -> list[dict]:
        if not os.path.isfile(self.results_path):
            return []
        with open(self.results_path, encoding="utf-8") as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        return [r for r in recs if run_id is None or r.get("run") == run_id]


def summarize(records: list[dict], wall_s: float) -> dict:
    """Per worker: rows done, images, failed attempts; images per minute over the run's wall time."""
    workers: dict[str, dict] = {}
    for r in records:
        if not r.get("worker"):
            continue
        w = workers.setdefault(r["worker"], {"server": r.get("server"), "rows": 0, "images": 0, "failed": 0, "busy_s": 0.0})
        if r["status"] == "ok":
            w["rows"] += 1
            w["images"] += len(r.get("images", []))
            w["busy_s"] += r.get("seconds", 0.0)
        else:
            w["failed"] += 1
    for w in workers.values():
        w["images_per_min"] = round(60.0 * w["images"] / wall_s, 2) if wall_s > 0 else 0.0
        w["busy_s"] = round(w["busy_s"], 2)
    count = lambda s: sum(r["status"] == s for r in records)  # noqa: E731
    images = sum(len(r.get("images", [])) for r in records if r["status"] == "ok")
    return {"rows_ok": count("ok"), "rows_failed": count("failed"), "rows_interrupted": count("interrupted"),
            "rows_skipped": count("skipped"), "images": images, "wall_s": round(wall_s, 2),
            "images_per_min": round(60.0 * images / wall_s, 2) if wall_s > 0 else 0.0, "workers": workers,
            "failures": [{"key": r["key"], "kind": r.get("kind"), "message": r.get("message")}
                         for r in records if r["status"] == "failed"]}


def format_summary(s: dict) -> str:
    lines = [f"{s['rows_ok']} rows done, {s['rows_failed']} failed, {s['rows_interrupted']} interrupted, "
             f"{s['rows_skipped']} skipped (complete); {s['images']} images in {s['wall_s']:.1f} s "
             f"({s['images_per_min']:.1f} images/min)", "",
             f"{'worker':<12} {'server':<28} {'rows':>5} {'images':>7} {'failed':>7} {'busy s':>8} {'img/min':>8}"]
    for name, w in sorted(s["workers"].items()):
        lines.append(f"{name:<12} {str(w['server']):<28} {w['rows']:>5} {w['images']:>7} {w['failed']:>7} "
                     f"{w['busy_s']:>8.1f} {w['images_per_min']:>8.1f}")
    if s["failures"]:
        lines += ["", "failed rows:"] + [f"  {f['key']}: [{f['kind']}] {f['message']}" for f in s["failures"]]
    return "\n".join(lines)
