"""A ComfyUI server process started and supervised by a Ray actor (`--launch N`): 127.0.0.1, a
free port, its own output/temp/user folders; on a CPU machine `--cpu` pinned to its cores, on a GPU
node the GPU Ray gave the actor (CUDA_VISIBLE_DEVICES). Restarted when it dies."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from sharp.batch.client import ComfyClient, ServerUnreachable
from sharp.batch.worker import Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(cores):
    def pre():
        try:  # Linux: SIGTERM the server when its actor process dies, so none is orphaned
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
    return pre


class ComfyProcess:
    def __init__(self, comfyui_dir: str, work_dir: str, python: str | None = None, base_dir: str | None = None,
                 cores: list[int] | None = None, gpu: bool = False, extra_args: list[str] | None = None,
                 ready_timeout: float = 300.0):
        if not os.path.isfile(os.path.join(comfyui_dir, "main.py")):
            raise FileNotFoundError(f"--comfyui {comfyui_dir} is not a ComfyUI checkout (no main.py)")
        self.dir, self.work = comfyui_dir, work_dir
        self.python = python or sys.executable
        self.base_dir, self.cores, self.gpu = base_dir, cores, gpu
        self.extra_args = list(extra_args or [])
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        for sub in ("output", "temp", "user"):
            os.makedirs(os.path.join(work_dir, sub), exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--output-directory", os.path.join(self.work, "output"), "--temp-directory", os.path.join(self.work, "temp"),
               "--user-directory", os.path.join(self.work, "user"), "--database-url", "sqlite:///:memory:"]
        if self.base_dir:
            cmd += ["--base-directory", self.base_dir]
        if not self.gpu:
            cmd.append("--cpu")
        known = open(os.path.join(self.dir, "comfy", "cli_args.py"), encoding="utf-8").read()
        cmd += [a for a in ("--disable-api-nodes", "--disable-assets-autoscan") if f'"{a}"' in known]
        return cmd + self.extra_args

    def start(self) -> None:
        env = dict(os.environ)
        ours = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != ours]
        env["PYTHONPATH"] = os.pathsep.join(paths)  # this checkout's `nodes` must not shadow ComfyUI's
        if self.cores and not self.gpu:
            env.update(OMP_NUM_THREADS=str(len(self.cores)), MKL_NUM_THREADS=str(len(self.cores)))
        self.log_path = os.path.join(self.work, "server.log")
        log = open(self.log_path, "a")
        log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n")
        log.flush()
        self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent(self.cores), start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return open(self.log_path, errors="replace").read()[-n:]
        except OSError:
            return ""

    def wait_ready(self) -> None:
        client, end = ComfyClient(self.url, timeout=5), time.time() + self.ready_timeout
        while time.time() < end:
            if not self.alive():
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                client.system_stats()
                return
            except ServerUnreachable:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.port = free_port()
        self.start()
        self.wait_ready()

    def stop(self) -> None:
        if self.alive():
            stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` s; waits for it either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class LaunchedWorker(Worker):
    """A Worker whose server it starts itself and restarts when it dies (checked every second)."""

    def __init__(self, index: int, comfyui_dir: str, work_root: str, python: str | None = None,
                 base_dir: str | None = None, cores_per_worker: int = 1, gpu: bool = False,
                 extra_args: list[str] | None = None, ready_timeout: float = 300.0, **worker_kw):
        cores = None
        if not gpu and hasattr(os, "sched_getaffinity"):  # worker i: cores i*k .. i*k+k-1 of this node
            mine = sorted(os.sched_getaffinity(0))
            cores = sorted({mine[(index * cores_per_worker + j) % len(mine)] for j in range(cores_per_worker)})
        self.process = ComfyProcess(comfyui_dir, os.path.join(work_root, f"w{index}"), python, base_dir, cores, gpu,
                                    extra_args, ready_timeout)
        self.process.start()
        self.process.wait_ready()
        super().__init__(self.process.url, f"w{index}", **worker_kw)
        self._ready = threading.Event()
        self._ready.set()
        self._stopping = False
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while not self._stopping:
            time.sleep(1.0)
            if not self._stopping and not self.process.alive():
                self._ready.clear()
                try:
                    self.process.restart()
                    self.url = self.process.url
                    self.client = ComfyClient(self.url, self.client.timeout)
                    self._uploaded.clear()
                    self._info = None
                    self._ready.set()
                except RuntimeError:
                    time.sleep(5.0)  # and try again

    def run(self, job: dict) -> dict:
        if not self._ready.wait(self.process.ready_timeout):
            from sharp.batch.worker import failure

            return failure("server", f"ComfyUI of {self.name} not back after {self.process.ready_timeout:.0f} s:\n"
                                     f"{self.process.log_tail(1500)}", key=job["key"], worker=self.name, server=self.url)
        return super().run(job)

    def ready(self) -> bool:
        """Waits while the supervisor restarts the server (the driver probes a worker that failed)."""
        return self._ready.wait(self.process.ready_timeout) and super().ready()

    def _fetch(self, entry: dict, prompt: dict) -> list[dict]:
        """Fetched images leave the server's own output folder (this worker owns it): no second copy."""
        images = super()._fetch(entry, prompt)
        for im in images:
            f = im["server_file"]
            path = os.path.join(self.process.work, f.get("type", "output"), f.get("subfolder", ""), f["filename"])
            if os.path.isfile(path):
                os.remove(path)
        return images

    def server_pid(self) -> int:
        return self.process.proc.pid

    def restarts(self) -> int:
        return self.process.restarts

    def describe(self) -> dict:
        return {"name": self.name, "url": self.url, "cores": self.process.cores, "gpu": self.process.gpu,
                "command": self.process.command(), "log": self.process.log_path, "restarts": self.process.restarts}

    def shutdown(self) -> None:
        self._stopping = True
        self.process.stop()
