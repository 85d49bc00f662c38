"""One ComfyUI server, one prompt at a time per call: upload the row's files, queue the prompt, wait
for its history entry, fetch its images. Run as a Ray actor (several calls in flight: `runner`);
every outcome is returned as a dict (Ray never has to pickle a server's exception)."""
from __future__ import annotations

import copy
import os
import threading
import time

from sharp.batch import naming
from sharp.batch.client import ComfyClient, PromptRejected, ServerUnreachable

POLL = (0.01, 0.02, 0.05, 0.1, 0.2)  # seconds between /history polls, then the last one repeated
LOST_CHECK_S = 2.0                    # how often a poll also asks /queue whether the prompt still exists


def failure(kind: str, message: str, **extra) -> dict:
    """kind: rejected (the server's validation: not retried), execution (a node raised), server
    (unreachable or restarted), timeout, interrupted (Ctrl-C)."""
    return {"ok": False, "kind": kind, "message": message, **extra}


def execution_message(status: dict) -> str:
    """The server's own words for a failed prompt: node, exception type and message."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}")
        if kind == "execution_interrupted":
            return f"interrupted on the server at node {data.get('node_id')} ({data.get('node_type')})"
    return f"status {status.get('status_str')!r} without an error message"


class Worker:
    def __init__(self, url: str, name: str, prompt_timeout: float = 3600.0, request_timeout: float = 60.0,
                 include_temp: bool = False):
        self.url, self.name = url.rstrip("/"), name
        self.client = ComfyClient(self.url, request_timeout)
        self.prompt_timeout = prompt_timeout
        self.include_temp = include_temp
        self._uploaded: dict[str, str] = {}   # file sha256 -> name on the server
        self._active: dict[str, str] = {}     # job key -> prompt id
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._info: dict | None = None

    # --- health ---------------------------------------------------------------------------------------
    def hello(self) -> dict:
        """{url, name, comfyui_version} once the server answers; raises ServerUnreachable otherwise."""
        stats = self.client.system_stats()
        self._info = {"url": self.url, "name": self.name,
                      "comfyui_version": stats.get("system", {}).get("comfyui_version", "unknown")}
        return self._info

    def ready(self) -> bool:
        try:
            self.hello()
            return True
        except ServerUnreachable:
            return False

    def object_info(self) -> dict:
        return self.client.object_info()

    # --- one job --------------------------------------------------------------------------------------
    def run(self, job: dict) -> dict:
        key, started = job["key"], time.time()
        base = {"key": key, "worker": self.name, "server": self.url}
        try:
            info = self._info or self.hello()
            prompt = self._prepare(job)
            t_queue = time.time()
            pid = self.client.queue_prompt(prompt)
            with self._lock:
                self._active[key] = pid
            entry = self._wait(pid)
            if entry is None:
                return failure("interrupted", "interrupted before it ran", **base)
            status = entry.get("status", {})
            if status.get("status_str") != "success":
                kind = "interrupted" if key in self._cancelled else "execution"
                return failure(kind, execution_message(status), prompt_id=pid, **base)
            t_done = time.time()
            images = self._fetch(entry, prompt)
            t_fetched = time.time()
            return {"ok": True, **base, "prompt_id": pid, "comfyui_version": info["comfyui_version"],
                    "images": images, "timings": {**_server_times(status), "prepare_s": t_queue - started,
                                                  "queued_to_done_s": t_done - t_queue,
                                                  "fetch_s": t_fetched - t_done, "total_s": t_fetched - started,
                                                  "started_at": started, "finished_at": t_fetched}}
        except PromptRejected as err:
            return failure("rejected", str(err), **base)
        except ServerUnreachable as err:
            self._uploaded.clear()  # a restarted server may not have them
            return failure("server", str(err), **base)
        except TimeoutError as err:
            self.cancel([key])
            return failure("timeout", str(err), **base)
        finally:
            with self._lock:
                self._active.pop(key, None)
                self._cancelled.discard(key)

    def _prepare(self, job: dict) -> dict:
        prompt = copy.deepcopy(job["prompt"])
        for nid, name, path in job.get("uploads", []):
            sha = naming.file_sha256(path)
            if sha not in self._uploaded:
                server_name = f"sharp_batch_{sha[:12]}_{naming.slug(os.path.basename(path), 60)}"
                self._uploaded[sha] = self.client.upload_image(path, server_name)
            prompt[nid]["inputs"][name] = self._uploaded[sha]
        for node in prompt.values():  # a unique server-side name per row: servers sharing an output
            inputs = node.get("inputs", {})  # folder never overwrite each other's files
            if isinstance(inputs.get("filename_prefix"), str):
                inputs["filename_prefix"] = f"sharp_batch/{job['key']}_{naming.slug(inputs['filename_prefix'], 40)}"
        return prompt

    def _wait(self, pid: str) -> dict | None:
        end = time.time() + self.prompt_timeout
        last_check, i = time.time(), 0
        while time.time() < end:
            entry = self.client.history(pid)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            if time.time() - last_check > LOST_CHECK_S or pid in self._cancelled_pids():
                last_check = time.time()
                q = self.client.queue()
                ids = {item[1] for item in q.get("queue_running", []) + q.get("queue_pending", [])}
                if pid not in ids and self.client.history(pid) is None:
                    if any(pid == p for p in self._cancelled_pids()):
                        return None
                    raise ServerUnreachable(f"{self.url}: prompt {pid} is neither queued nor in the "
                                            "history (the server restarted?)")
            time.sleep(POLL[min(i, len(POLL) - 1)])
            i += 1
        raise TimeoutError(f"prompt {pid} not finished after {self.prompt_timeout:.0f} s on {self.url}")

    def _cancelled_pids(self) -> list[str]:
        with self._lock:
            return [self._active[k] for k in self._cancelled if k in self._active]

    def _fetch(self, entry: dict, prompt: dict) -> list[dict]:
        out = []
        for nid in sorted(entry.get("outputs", {}), key=lambda n: (len(n), n)):
            images = [im for im in entry["outputs"][nid].get("images", [])
                      if im.get("type", "output") == "output" or self.include_temp]
            title = prompt.get(nid, {}).get("_meta", {}).get("title") or prompt.get(nid, {}).get("class_type", nid)
            for i, im in enumerate(images):
                data = self.client.view(im["filename"], im.get("subfolder", ""), im.get("type", "output"))
                out.append({"node": nid, "title": title, "index": i, "server_file": im, "data": data})
        return out

    # --- Ctrl-C ---------------------------------------------------------------------------------------
    def cancel(self, keys: list[str] | None = None) -> list[str]:
        """Delete these jobs' prompts from the server's queue and interrupt the one running, if it is
        one of them. Returns the keys cancelled."""
        with self._lock:
            keys = list(self._active) if keys is None else [k for k in keys if k in self._active]
            self._cancelled.update(keys)
            pids = {self._active[k] for k in keys}
        if not pids:
            return []
        try:
            self.client.delete(sorted(pids))
            running = {item[1] for item in self.client.queue().get("queue_running", [])}
            for pid in pids & running:
                self.client.interrupt(pid)
        except ServerUnreachable:
            pass  # a dead server runs nothing
        return keys

    def active(self) -> dict:
        with self._lock:
            return dict(self._active)


def _server_times(status: dict) -> dict:
    """Execution start/end as the server stamped them (ms since the epoch), when it does."""
    stamps = {kind: data.get("timestamp") for kind, data in status.get("messages", []) if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    return {"server_execution_s": (end - start) / 1000.0} if start and end else {}
