"""Where tiles run: in this process, or on Ray workers (one model each), results to the driver.

Both pools take TileJobs and yield (job index, result) as tiles finish; the driver blends and
writes. The Ray pool keeps at most `2 x workers` tiles in flight (bounded memory), loads the
model once per worker from the checkpoint bytes put in the object store (so a cluster needs no
shared file system; a latent-space checkpoint's VAE travels the same way: its diffusers
AutoencoderKL config and weights), pins torch to `threads` per worker (a local Ray gets exactly workers x
threads CPUs at normal priority, no task events, objects freed as soon as they are out of
scope and an object store sized to the tiles in flight, `store_bytes`), keeps each worker's
heap warm between tiles (sharp.scene.heap.WarmHeap), and resubmits a tile
whose worker died to a live worker (up to `retries` times), while Ray restarts the dead one,
which gets tiles again once a probe call answers; a tile is never written twice because the
blend ignores a second result for the same tile.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

from .errors import SceneError
from .heap import WarmHeap
from .tile import TileJob, empty_result, run_tile


class LocalPool:
    """Tiles run one by one in this process, on an already loaded model."""

    workers = 1

    def __init__(self, model, vae=None, on_step: Optional[Callable[[], None]] = None):
        from sharp.refsr.space import WorkingSpace
        self.model, self.on_step = model, on_step
        self.space = WorkingSpace(model.cfg, vae)
        self.retried = 0

    def run(self, jobs: Iterable[TileJob]) -> Iterator[tuple[int, dict]]:
        for job in jobs:
            if job.lr is None:                      # all nodata: nothing to compute
                yield job.index, empty_result(job, job.settings)
            else:
                yield job.index, run_tile(self.model, self.space, job, job.settings, self.on_step)

    def close(self) -> None:
        pass


class _Worker:
    """Ray actor body: one model, tiles in, pieces out."""

    def __init__(self, payload: dict, threads: int, device: str):
        import torch
        from safetensors.torch import load

        from sharp.refsr.checkpoint import check_state
        from sharp.refsr.config import DSDiTConfig
        from sharp.refsr.model import DSDiT
        from sharp.refsr.space import WorkingSpace
        from sharp.refsr.vae import DiffusersVAE

        torch.set_num_threads(max(1, int(threads)))
        self.heap = WarmHeap()         # this process only runs tiles: keep their heap warm
        cfg = DSDiTConfig.from_json(payload["config"])
        state = load(payload["tensors"])
        model = DSDiT(cfg)
        check_state(cfg, state, "checkpoint sent to the worker")
        model.load_state_dict(state)
        self.model = model.to(device).eval()
        vae = DiffusersVAE.from_payload(payload["vae"], device) if payload["vae"] else None
        self.space = WorkingSpace(cfg, vae)

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: TileJob) -> tuple[int, dict]:
        import torch
        with torch.no_grad():
            out = job.index, run_tile(self.model, self.space, job, job.settings)
        self.heap.after_tile(job.size)
        return out

    def heap_trims(self) -> int:
        return self.heap.trims


def check_vae(model, vae, workers: int) -> None:
    """Before any work: a latent-space checkpoint needs its VAE, a pixel-space one takes none,
    and Ray workers (workers > 0) can rebuild only a VAE loaded from a file (a
    sharp.refsr.vae.DiffusersVAE), not e.g. a ComfyUI VAE."""
    from sharp.refsr.vae import DiffusersVAE
    latent = model.cfg.space != "pixel"
    if latent and vae is None:
        raise SceneError("this checkpoint works in a VAE's latent space: give its VAE (--vae "
                         "PATH: a diffusers folder or a .safetensors VAE file)")
    if vae is not None and not latent:
        raise SceneError("a VAE was given, but this checkpoint works in pixel space: drop --vae")
    if latent and workers > 0 and not isinstance(vae, DiffusersVAE):
        raise SceneError("Ray workers rebuild a latent-space checkpoint's VAE from its diffusers "
                         f"AutoencoderKL config and weights, which a {type(vae).__name__} does not "
                         "have: load the VAE from its file (sharp.refsr.vae.load_vae, --vae), or "
                         "use --workers 0 (tiles in this process)")


def model_payload(model, vae=None) -> dict:
    """The model as bytes for the workers: safetensors tensors + config JSON, and a latent
    checkpoint's VAE as DiffusersVAE.payload() (check_vae says which VAEs can go)."""
    from safetensors.torch import save

    from sharp.refsr.checkpoint import cpu_state
    check_vae(model, vae, workers=1)
    return {"tensors": save(cpu_state(model.state_dict())), "config": model.cfg.to_json(),
            "vae": vae.payload() if vae is not None else None}


def store_bytes(workers: int, tile_bytes: int) -> int:
    """Object store of a local Ray: the tiles in flight (2 per worker, job and result) with
    room to spare, at least Ray's minimum. Not more: every process maps the store, and the
    pages it has touched count in its memory, so a large store looks like growing memory."""
    return max(80 << 20, 3 * 2 * workers * tile_bytes)


def local_ray_options(workers: int, threads: int = 1, tile_bytes: int = 16 << 20) -> dict:
    """ray.init options of the local Ray a pool starts (the tests start theirs with them too).
    Ray starts workers at nice 15 (so they yield to its daemons); our workers ARE the job, and
    on a shared machine nice 15 hands their CPU to everyone else. Task events (for Ray's
    dashboard, off here) grow every process's memory with the number of tiles. Objects out of
    scope (a finished tile's job and result) are freed one at a time, not in Ray's batches
    (100 objects or every second): batched, the part of the store the run touched grew with
    the number of tiles, and every process's RSS counts each store page it has touched
    (RssShmem per process 50-63 MiB at 2k^2, 79 at 8k^2; one at a time 16-25 MiB at every
    size, benchmarks/refsr_scene.py --tiny)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return dict(num_cpus=workers * max(1, threads),
                object_store_memory=store_bytes(workers, tile_bytes),
                runtime_env={"env_vars": {"PYTHONPATH": here}},
                _system_config={"worker_niceness": 0, "task_events_report_interval_ms": 0,
                                "free_objects_batch_size": 1})


RESTART_WAIT_S = 300.0    # how long a restarting worker may take to come back


def _lost_errors() -> tuple:
    """Ray's exceptions for a task lost with its worker (names differ across Ray versions)."""
    import ray.exceptions as rex
    names = ("RayActorError", "WorkerCrashedError", "ActorUnavailableError", "ActorDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayPool:
    """Tiles on `workers` Ray actors (local Ray by default; `address` joins a cluster)."""

    def __init__(self, model, workers: int, threads: int = 1,
                 address: Optional[str] = None, device: str = "cpu", retries: int = 3,
                 tile_bytes: int = 16 << 20, vae=None):
        try:
            import ray
        except ImportError:
            raise SceneError("Ray is not installed: pip install 'comfyui-sharp[geo]' (or "
                             "pip install ray), or run with --workers 0 (in this process)") from None
        payload = model_payload(model, vae)      # checked before Ray starts
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(**local_ray_options(workers, threads, tile_bytes), **kw)
            self.started = True
        gpus = 1 if device.startswith("cuda") else 0
        actor = ray.remote(num_cpus=max(1, threads), num_gpus=gpus, max_restarts=retries,
                           max_task_retries=0)(_Worker)
        # held for the pool's life: a restarted worker is built from it again
        self.payload = ray.put(payload)
        self.actors = [actor.remote(self.payload, threads, device)
                       for _ in range(workers)]
        self.workers = workers
        self.retries = retries
        self.retried = 0
        try:                          # wait until every worker holds its model
            self.worker_pids = ray.get([w.pid.remote() for w in self.actors], timeout=600)
        except Exception as err:
            self.close()
            raise SceneError(f"the Ray workers did not start ({type(err).__name__}: {err}); on a "
                             "cluster, sharp (comfyui-sharp[geo]) must be installed on every "
                             "node") from None

    def pids(self) -> list[int]:
        return self.ray.get([a.pid.remote() for a in self.actors])

    def run(self, jobs: Iterable[TileJob]) -> Iterator[tuple[int, dict]]:
        """Yield (index, result) as tiles finish. A worker whose task failed is probed (a cheap
        call) until Ray has restarted it, and gets no tiles meanwhile; its tiles go back to the
        queue for any live worker, each at most `retries` times."""
        ray = self.ray
        lost = _lost_errors()
        it = iter(jobs)
        free = deque(a for a in range(self.workers) for _ in range(2))   # 2 in flight per worker
        running: dict = {}          # ObjectRef -> (job, worker, attempts)
        probes: dict = {}           # ObjectRef -> (worker, deadline)
        parked: dict[int, int] = {}  # worker -> slots waiting for it to come back
        queue: deque = deque()      # (job, attempts) to (re)submit
        exhausted = False
        while True:
            while free and (queue or not exhausted):
                if not queue:
                    job = next(it, None)
                    if job is None:
                        exhausted = True
                        break
                    if job.lr is None:                  # all nodata: nothing to compute
                        yield job.index, empty_result(job, job.settings)
                        continue
                    queue.append((job, 0))
                job, tries = queue.popleft()
                a = free.popleft()
                running[self.actors[a].run.remote(job)] = (job, a, tries)
            if not running and not (probes and queue):
                return
            done, _ = ray.wait(list(running) + list(probes), num_returns=1)
            ref = done[0]
            if ref in probes:
                a, deadline = probes.pop(ref)
                try:
                    ray.get(ref)
                    free.extend([a] * parked.pop(a, 0))          # back in service
                except lost:
                    if time.monotonic() > deadline:
                        raise SceneError(f"Ray worker {a} did not come back within "
                                         f"{RESTART_WAIT_S} s; the completed windows are kept: "
                                         "rerun with --resume") from None
                    time.sleep(0.5)
                    probes[self.actors[a].pid.remote()] = (a, deadline)
                continue
            job, a, tries = running.pop(ref)
            try:
                index, result = ray.get(ref)
            except lost as err:
                if tries >= self.retries:
                    raise SceneError(f"tile {job.index} failed {tries + 1} times "
                                     f"({type(err).__name__}); the completed windows are kept: "
                                     "rerun with --resume") from None
                self.retried += 1
                queue.appendleft((job, tries + 1))
                parked[a] = parked.get(a, 0) + 1
                if not any(w == a for w, _ in probes.values()):
                    probes[self.actors[a].pid.remote()] = (a, time.monotonic() + RESTART_WAIT_S)
                continue
            free.append(a)
            yield index, result

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        if self.started:
            self.ray.shutdown()


class Pools:
    """The pool tiles run on, started when a scene first has tiles to run (a resumed run with
    nothing left to compute starts no Ray) and kept for further scenes: tiles carry their
    scene's settings, so one pool serves any number of scenes. workers 0: this process."""

    def __init__(self, model, workers: int = 0, threads: int = 1, address: Optional[str] = None,
                 device: str = "cpu", vae=None, hook: Optional[Callable] = None):
        self.model, self.workers, self.threads = model, workers, threads
        self.address, self.device, self.vae, self.hook = address, device, vae, hook
        self.pool = None

    def get(self, tile_bytes: int):
        if self.pool is None:
            if self.workers == 0:
                self.pool = LocalPool(self.model, self.vae)
            else:
                self.pool = RayPool(self.model, self.workers, self.threads, self.address,
                                    self.device, tile_bytes=tile_bytes, vae=self.vae)
            if self.hook is not None:
                self.hook(self.pool)
        return self.pool

    @property
    def retried(self) -> int:
        return self.pool.retried if self.pool is not None else 0

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
