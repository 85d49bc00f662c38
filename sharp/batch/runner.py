"""The Ray driver of `python -m sharp batch`: validate every row, skip complete ones (`--resume`),
hand rows to worker actors (at most `inflight` each), retry failures on any worker, write results.

Rows move pending -> in flight on one worker -> done | failed. Only this driver writes the output
folder, once per row, when a worker returns that row's images: a worker or server that dies takes
nothing with it (its rows go back to pending) and cannot write twice. Ctrl-C deletes the in-flight
prompts from their servers' queues, interrupts the running ones and records those rows as
interrupted; complete rows keep their images and sidecars, so `--resume` redoes only the rest.
"""
from __future__ import annotations

import collections
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import sharp
from sharp.batch import jobs as jobs_mod
from sharp.batch.client import ComfyClient
from sharp.batch.manifest import read_manifest
from sharp.batch.naming import canonical_hash, row_key
from sharp.batch.progress import Progress
from sharp.batch.results import OutputDir, format_summary, summarize
from sharp.batch.worker import failure

NOT_RETRIED = ("rejected", "interrupted")


@dataclass
class BatchConfig:
    workflow: str
    manifest: str
    out: str
    sets: dict = field(default_factory=dict)
    servers: list = field(default_factory=list)
    launch: int = 0
    comfyui: str | None = None
    comfyui_python: str | None = None
    comfyui_base: str | None = None
    comfyui_args: list = field(default_factory=list)
    cores_per_worker: int = 1
    address: str | None = None
    resume: bool = False
    retries: int = 2
    inflight: int = 2
    prompt_timeout: float = 3600.0
    server_wait: float = 300.0   # give up when no worker has answered for this long
    object_info: str | None = None
    validate_only: bool = False
    skip_invalid: bool = False
    progress: bool = True


def load_workflow(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        wf = json.load(fh)
    if isinstance(wf, dict) and "nodes" in wf and "links" in wf:
        raise ValueError(f"{path} is a UI workflow; export it with Workflow > Export (API) and pass that file")
    return wf


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("`python -m sharp batch` runs on Ray, which is not installed: "
                           "pip install 'comfyui-sharp[scale]' (or pip install ray)") from None
    return ray


@dataclass
class _Slot:
    actor: object
    name: str
    count: int = 0
    down_until: float = 0.0
    backoff: float = 1.0
    probe: object = None


class BatchRunner:
    def __init__(self, cfg: BatchConfig, hooks: dict | None = None):
        if not cfg.servers and not cfg.launch:
            raise ValueError("no workers: give --servers URL ... or --launch N --comfyui DIR")
        if cfg.launch and not cfg.comfyui:
            raise ValueError("--launch needs --comfyui DIR (a ComfyUI checkout)")
        if cfg.launch and not cfg.address and not os.path.isfile(os.path.join(cfg.comfyui, "main.py")):
            raise FileNotFoundError(f"--comfyui {cfg.comfyui} is not a ComfyUI checkout (no main.py there)")
        self.cfg, self.hooks = cfg, hooks or {}
        self.workflow = load_workflow(cfg.workflow)
        self.rows = read_manifest(cfg.manifest)
        self.context = {"run_id": time.strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6],
                        "workflow": {"path": os.path.abspath(cfg.workflow), "sha256": canonical_hash(self.workflow)},
                        "pack_version": sharp.__version__}
        self.slots: list[_Slot] = []
        self.ray = None
        self._own_ray = False

    # --- before anything is queued ---------------------------------------------------------------------
    def validate(self, object_info: dict):
        jobs, bad = jobs_mod.build_jobs(self.workflow, self.rows, object_info, self.cfg.sets,
                                        os.path.dirname(os.path.abspath(self.cfg.manifest)))
        if bad and not self.cfg.skip_invalid:
            raise jobs_mod.ManifestError([p for i in sorted(bad) for p in bad[i]])
        return jobs, bad

    def _object_info(self) -> dict:
        if self.cfg.object_info:
            with open(self.cfg.object_info, encoding="utf-8") as fh:
                return json.load(fh)
        if self.cfg.servers:
            try:
                return ComfyClient(self.cfg.servers[0]).object_info()
            except ConnectionError as err:
                raise RuntimeError(f"cannot read /object_info from the first server to validate the manifest: "
                                   f"{err} (is it running? or pass a saved one with --object-info FILE)") from None
        return self.ray.get(self.slots[0].actor.object_info.remote())

    # --- Ray -------------------------------------------------------------------------------------------
    def _start_ray(self) -> None:
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            root = os.path.dirname(os.path.dirname(os.path.abspath(sharp.__file__)))
            if self.cfg.address:
                ray.init(address=self.cfg.address, runtime_env={"py_modules": [os.path.dirname(sharp.__file__)]},
                         log_to_driver=False)
            else:
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                cpus = max(os.cpu_count() or 1, self.cfg.launch * self.cfg.cores_per_worker)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         object_store_memory=256 * 1024 * 1024)
            self._own_ray = True

    def _start_workers(self) -> None:
        from sharp.batch.launch import LaunchedWorker
        from sharp.batch.worker import Worker

        ray, cfg = self.ray, self.cfg
        common = dict(max_concurrency=cfg.inflight + 2, max_restarts=-1, max_task_retries=0)
        kw = dict(prompt_timeout=cfg.prompt_timeout)
        for i, url in enumerate(cfg.servers):
            actor = ray.remote(Worker).options(num_cpus=0, **common).remote(url, f"s{i}", **kw)
            self.slots.append(_Slot(actor, f"s{i}"))
        if cfg.launch:
            gpu = ray.cluster_resources().get("GPU", 0) >= 1
            res = dict(num_gpus=1, num_cpus=0) if gpu else dict(num_cpus=cfg.cores_per_worker)
            work_root = os.path.join(os.path.abspath(cfg.out), "servers")
            for i in range(cfg.launch):
                actor = ray.remote(LaunchedWorker).options(**res, **common).remote(
                    i, cfg.comfyui, work_root, cfg.comfyui_python, cfg.comfyui_base, cfg.cores_per_worker, gpu,
                    cfg.comfyui_args, **kw)
                self.slots.append(_Slot(actor, f"w{i}"))
            for s in self.slots:
                if s.name.startswith("w"):
                    try:
                        ray.get(s.actor.describe.remote())
                    except ray.exceptions.RayError as err:
                        raise RuntimeError(f"worker {s.name} could not start its ComfyUI server: {_cause(err)}") from None

    def stop(self) -> None:
        if self.ray is None:
            return
        for s in self.slots:
            if s.name.startswith("w"):
                try:
                    self.ray.get(s.actor.shutdown.remote(), timeout=30)
                except Exception:  # noqa: BLE001 (a dead actor took its server with it)
                    pass
            self.ray.kill(s.actor, no_restart=True)
        self.slots = []
        if self._own_ray:
            self.ray.shutdown()
            self._own_ray = False

    # --- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        object_info = None
        if cfg.object_info or cfg.servers:  # validate before starting anything
            object_info = self._object_info()
            jobs, bad = self.validate(object_info)
            if cfg.validate_only:
                return {"valid_rows": len(jobs), "invalid_rows": len(bad)}
        self._start_ray()
        try:
            self._start_workers()
            if object_info is None:
                jobs, bad = self.validate(self._object_info())
                if cfg.validate_only:
                    return {"valid_rows": len(jobs), "invalid_rows": len(bad)}
            return self._execute(jobs, bad)
        finally:
            self.stop()

    def _execute(self, jobs, bad) -> dict:
        cfg, ray = self.cfg, self.ray
        store = OutputDir(cfg.out)
        t0 = time.time()
        for idx, problems in bad.items():  # --skip-invalid
            dummy = jobs_mod.Job(row_key(idx, self.rows[idx].values), idx, self.rows[idx].values, {})
            self._record(store.write_failure(dummy, "invalid", "; ".join(problems), 0, self.context))
        todo = []
        for job in jobs:
            if cfg.resume and store.is_complete(job, self.context["workflow"]["sha256"]):
                self._record(store.write_skipped(job, self.context))
            else:
                todo.append(job)
        pending = collections.deque(todo)
        attempts: dict[str, list[str]] = collections.defaultdict(list)
        inflight: dict = {}
        bar = Progress(len(todo), cfg.progress)
        last_alive = time.time()
        self.interrupted, self.gave_up = False, None
        try:
            while pending or inflight:
                now = time.time()
                for slot in self.slots:
                    while slot.count < cfg.inflight and pending and slot.down_until == 0.0:
                        job = pending.popleft()
                        inflight[slot.actor.run.remote(job.to_dict())] = (job, slot)
                        slot.count += 1
                    if slot.down_until and slot.down_until <= now and slot.probe is None:
                        slot.probe = slot.actor.ready.remote()
                probes = {s.probe: s for s in self.slots if s.probe is not None}
                bar.update(inflight=len(inflight))
                if not inflight and time.time() - last_alive > cfg.server_wait:
                    self.gave_up = f"no worker answered for {cfg.server_wait:.0f} s"
                    break
                waiting = list(inflight) + list(probes)
                if not waiting:
                    time.sleep(0.2)
                    continue
                ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in probes:
                        self._probe_done(probes[ref], ref)
                        if probes[ref].down_until == 0.0:
                            last_alive = time.time()
                        continue
                    job, slot = inflight.pop(ref)
                    slot.count -= 1
                    res = self._get(ref, job, slot)
                    attempts[job.key].append(f"{slot.name}: [{res['kind']}] {res['message']}" if not res["ok"] else slot.name)
                    if res["ok"]:
                        last_alive = time.time()
                        rec = store.write_success(job, res, self.context, len(attempts[job.key]))
                        bar.update(done=1, images=len(rec["images"]))
                        self._record(rec)
                        continue
                    if res["kind"] in ("server", "worker", "timeout"):
                        slot.down_until, slot.backoff = time.time() + slot.backoff, min(slot.backoff * 2, 30.0)
                    if res["kind"] not in NOT_RETRIED and len(attempts[job.key]) <= cfg.retries:
                        pending.append(job)  # to whichever worker is free first
                        continue
                    tried = attempts[job.key]
                    msg = res["message"] if len(tried) == 1 else f"{res['message']} (attempts: {' | '.join(tried)})"
                    self._record(store.write_failure(job, res["kind"], msg, len(tried), self.context,
                                                     res.get("worker"), res.get("server")))
                    bar.update(failed=1)
        except KeyboardInterrupt:
            self.interrupted = True
            self._interrupt(inflight, store, attempts, bar)
        finally:
            bar.close()
        records = store.read_results(self.context["run_id"])
        summary = summarize(records, time.time() - t0)
        summary.update(run_id=self.context["run_id"], not_run=len(pending), interrupted=self.interrupted,
                       gave_up=self.gave_up, out=os.path.abspath(cfg.out))
        with open(os.path.join(cfg.out, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
        return summary

    def _get(self, ref, job, slot) -> dict:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # the actor died (process killed, node lost)
            return failure("worker", f"worker {slot.name} died: {type(err).__name__}: {str(err).splitlines()[0]}",
                           key=job.key, worker=slot.name)

    def _probe_done(self, slot: _Slot, ref) -> None:
        slot.probe = None
        try:
            ok = self.ray.get(ref)
        except self.ray.exceptions.RayError:
            ok = False
        if ok:
            slot.down_until, slot.backoff = 0.0, 1.0
        else:
            slot.down_until, slot.backoff = time.time() + slot.backoff, min(slot.backoff * 2, 30.0)

    def _interrupt(self, inflight: dict, store: OutputDir, attempts, bar) -> None:
        """Ctrl-C: cancel what is in flight on every server, then record each row's real outcome."""
        ray = self.ray
        cancels = [s.actor.cancel.remote() for s in self.slots if s.count]
        try:
            ray.wait(cancels, num_returns=len(cancels), timeout=15)
        except Exception:  # noqa: BLE001
            pass
        refs = list(inflight)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=30) if refs else ([], [])
        for ref in refs:
            job, slot = inflight.pop(ref)
            res = self._get(ref, job, slot) if ref in done else failure("interrupted", "no answer after Ctrl-C")
            if res["ok"]:  # finished before the interrupt reached it: keep it
                self._record(store.write_success(job, res, self.context, len(attempts[job.key]) + 1))
                bar.update(done=1, images=len(res["images"]))
            else:
                self._record(store.write_failure(job, "interrupted", res["message"], len(attempts[job.key]) + 1,
                                                 self.context, slot.name))

    def _record(self, record: dict) -> None:
        hook = self.hooks.get("on_record")
        if hook:
            hook(self, record)


def _cause(err) -> str:
    """The original exception of a Ray error (its type, message and what follows), without Ray's
    traceback around it."""
    import re

    text = str(err)
    m = re.search(r"^\s*(\w+(?:Error|Exception): .*)", text, re.M | re.S)
    return (m.group(1) if m else text.strip().splitlines()[-1])[:2000]


def run_batch(cfg: BatchConfig, hooks: dict | None = None) -> dict:
    summary = BatchRunner(cfg, hooks).run()
    if "rows_ok" in summary:
        summary["table"] = format_summary(summary)
    return summary
