"""`sharp batch` under Ray on this machine, against ComfyUI protocol stand-ins (real HTTP servers on
127.0.0.1 speaking ComfyUI's protocol for a trivial graph; not ComfyUI): two servers, one crashing
mid-run and one failing once; a worker actor killed mid-run; retries then failure with the server's
message; Ctrl-C and --resume. One Ray instance for the module (it costs seconds to start)."""
from __future__ import annotations

import collections
import json
import os

import pytest

from batch_fixtures import image_size, write_manifest, write_workflow
from comfy_protocol_standin import StandIn

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="Ray is the optional extra comfyui-sharp[scale] (requirements-dev.txt)")

from sharp.batch.runner import BatchConfig, run_batch  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    yield
    ray.shutdown()


@pytest.fixture()
def servers(tmp_path):
    made = []

    def make(**kw):
        s = StandIn(str(tmp_path / f"server{len(made)}"), **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        if not s.dead:
            s.stop()


def _cfg(tmp_path, manifest, urls, **kw):
    return BatchConfig(workflow=write_workflow(str(tmp_path)), manifest=manifest, out=str(tmp_path / "out"),
                       servers=urls, progress=False, **kw)


def _results(out):
    with open(os.path.join(out, "results.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def _check_complete(out, keys):
    """Each key: one sidecar whose images exist with the row's size, and one ok record per run."""
    for key in keys:
        side = json.load(open(os.path.join(out, "sidecars", f"{key}.json")))
        assert side["status"] == "ok" and len(side["outputs"]) == 2
        w = int(side["row"]["Canvas.width"])
        assert image_size(os.path.join(out, side["outputs"][0]["file"])) == (w, w)
    images = sorted(os.listdir(os.path.join(out, "images")))
    assert images == sorted(f"{k}_Save-{n}_00.png" for k in keys for n in ("canvas", "inverted"))


def test_two_servers_one_crashes_one_fails_once(tmp_path, servers):
    crashing = servers(die_after=3, delay_s=0.05)
    flaky = servers(fail_next=1, delay_s=0.05)
    manifest = write_manifest(str(tmp_path), 12, bad_size_rows=(5,))
    summary = run_batch(_cfg(tmp_path, manifest, [crashing.url, flaky.url], retries=2, inflight=2))
    out = str(tmp_path / "out")
    good = [f"job{i:02d}" for i in range(12) if i != 5]
    recs = _results(out)
    _check_complete(out, good)
    ok = collections.Counter(r["key"] for r in recs if r["status"] == "ok")
    assert ok == {k: 1 for k in good}, recs  # every row exactly once
    (failed,) = [r for r in recs if r["status"] == "failed"]
    assert failed["key"] == "job05" and failed["kind"] == "execution" and failed["attempts"] == 3, recs
    assert "MemoryError: stand-in: not enough memory for a 2000x2000 image" in failed["message"]
    assert not os.path.exists(os.path.join(out, "sidecars", "job05.json"))
    assert crashing.dead and len(crashing.executed) == 3
    assert summary["rows_ok"] == 11 and summary["rows_failed"] == 1 and summary["images"] == 22
    assert set(summary["workers"]) == {"s0", "s1"}
    assert sum(w["rows"] for w in summary["workers"].values()) == 11
    assert "not enough memory" in summary["table"] and "img/min" in summary["table"]
    side = json.load(open(os.path.join(out, "sidecars", "job07.json")))
    assert side["row"] == {"id": "job07", "Canvas.width": "15", "Canvas.height": "15", "Canvas.color": "7000",
                           "Photo.image": "photo_1.png", "note": "row 7"}
    assert side["seeds"] == {} and side["sharp_params"] == {} and side["comfyui_version"] == "protocol-stand-in"
    assert side["server"] in (crashing.url, flaky.url) and side["timings"]["total_s"] > 0

    # --resume: only the failed row is queued again, on a fresh server; the rest is skipped
    fresh = servers()
    summary = run_batch(_cfg(tmp_path, manifest, [fresh.url], resume=True, retries=0))
    assert summary["rows_skipped"] == 11 and summary["rows_failed"] == 1 and summary["rows_ok"] == 0
    assert len(fresh.received) == 1
    # a damaged image makes its row incomplete: that row (and only it) runs again
    with open(os.path.join(out, "images", "job03_Save-inverted_00.png"), "r+b") as fh:
        fh.truncate(20)
    summary = run_batch(_cfg(tmp_path, manifest, [fresh.url], resume=True, retries=0))
    assert summary["rows_ok"] == 1 and summary["rows_skipped"] == 10 and len(fresh.received) == 3
    _check_complete(out, good)


def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path, servers):
    a, b = servers(delay_s=0.15), servers(delay_s=0.15)
    manifest = write_manifest(str(tmp_path), 10)
    killed = []

    def on_record(runner, record):
        if record["status"] == "ok" and not killed:
            killed.append(runner.slots[0].name)
            ray.kill(runner.slots[0].actor, no_restart=False)  # the actor process dies; Ray restarts it

    summary = run_batch(_cfg(tmp_path, manifest, [a.url, b.url], retries=3), hooks={"on_record": on_record})
    out = str(tmp_path / "out")
    keys = [f"job{i:02d}" for i in range(10)]
    _check_complete(out, keys)
    ok = collections.Counter(r["key"] for r in _results(out) if r["status"] == "ok")
    assert killed and ok == {k: 1 for k in keys} and summary["rows_failed"] == 0


def test_ctrl_c_interrupts_in_flight_prompts_then_resume(tmp_path, servers):
    slow = servers(delay_s=0.4)
    manifest = write_manifest(str(tmp_path), 8)

    def on_record(runner, record):
        if record["status"] == "ok" and sum(1 for r in _results(runner.cfg.out) if r["status"] == "ok") == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the driver's wait loop

    summary = run_batch(_cfg(tmp_path, manifest, [slow.url], inflight=2), hooks={"on_record": on_record})
    out = str(tmp_path / "out")
    assert summary["interrupted"] and summary["rows_ok"] >= 2
    assert summary["rows_ok"] + summary["rows_interrupted"] + summary["not_run"] == 8
    assert slow.pending == [] and slow.running is None  # nothing of ours left on the server
    done = {r["key"] for r in _results(out) if r["status"] == "ok"}
    assert set(os.listdir(os.path.join(out, "sidecars"))) == {f"{k}.json" for k in done}
    _check_complete(out, sorted(done))
    before = len(slow.received)
    summary = run_batch(_cfg(tmp_path, manifest, [slow.url], resume=True))
    assert summary["rows_skipped"] == len(done) and summary["rows_ok"] == 8 - len(done)
    assert len(slow.received) - before == 8 - len(done)  # nothing complete was redone
    _check_complete(out, [f"job{i:02d}" for i in range(8)])


def test_all_servers_gone_stops_with_rows_left_for_resume(tmp_path, servers):
    dying = servers(die_after=2, delay_s=0.05)
    manifest = write_manifest(str(tmp_path), 6)
    summary = run_batch(_cfg(tmp_path, manifest, [dying.url], retries=5, inflight=1, server_wait=2.0))
    # the 2nd prompt ran, but its images may not be fetched before the server went: 1 or 2 rows done
    assert summary["gave_up"] == "no worker answered for 2 s" and summary["rows_ok"] in (1, 2)
    assert summary["rows_failed"] == 0 and summary["rows_ok"] + summary["not_run"] == 6
    _check_complete(str(tmp_path / "out"), sorted(r["key"] for r in _results(str(tmp_path / "out")) if r["status"] == "ok"))


# --- --launch, with the protocol stand-in as ComfyUI's main.py ----------------------------------------

def _fake_comfyui(folder, main_py: str) -> str:
    os.makedirs(os.path.join(folder, "comfy"))
    open(os.path.join(folder, "comfy", "cli_args.py"), "w").write('"--disable-api-nodes"\n')
    open(os.path.join(folder, "main.py"), "w").write(main_py)
    return folder


def _pids_with(needle: str):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if needle.encode() in open(f"/proc/{p}/cmdline", "rb").read():
                    out.append(int(p))
            except OSError:
                pass
    return out


def test_launched_servers_pinned_restarted_and_stopped(tmp_path):
    import signal
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    comfy = _fake_comfyui(str(tmp_path / "fakecomfy"), f"import sys\nsys.path.insert(0, {tests!r})\n"
                          "import comfy_protocol_standin\ncomfy_protocol_standin.main()\n")
    manifest = write_manifest(str(tmp_path), 12)
    out = str(tmp_path / "out")
    killed = []

    def on_record(runner, record):
        if record["status"] == "ok" and not killed:
            (pid,) = _pids_with(os.path.join(out, "servers", "w0", "output"))
            if len(os.sched_getaffinity(0)) >= 2:
                assert os.sched_getaffinity(pid) == {0}
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cfg = BatchConfig(workflow=write_workflow(str(tmp_path)), manifest=manifest, out=out, launch=2, comfyui=comfy,
                      comfyui_python=sys.executable, comfyui_args=["--standin-delay", "0.4"], progress=False,
                      retries=3)
    summary = run_batch(cfg, hooks={"on_record": on_record})
    keys = [f"job{i:02d}" for i in range(12)]
    _check_complete(out, keys)
    assert collections.Counter(r["key"] for r in _results(out) if r["status"] == "ok") == {k: 1 for k in keys}
    assert killed and summary["rows_failed"] == 0
    log = open(os.path.join(out, "servers", "w0", "server.log")).read()
    assert log.count("=== start") == 2 and "--cpu" in log  # restarted by its actor, on the CPU
    assert "affinity [1]" in open(os.path.join(out, "servers", "w1", "server.log")).read() or len(os.sched_getaffinity(0)) < 2
    assert os.listdir(os.path.join(out, "servers", "w1", "output", "sharp_batch")) == []  # fetched copies removed
    assert not _pids_with(os.path.join(out, "servers"))  # every server stopped


def test_a_server_that_cannot_start_is_reported(tmp_path):
    import sys

    comfy = _fake_comfyui(str(tmp_path / "broken"), "import sys\nprint('no torch here')\nsys.exit(3)\n")
    cfg = BatchConfig(workflow=write_workflow(str(tmp_path)), manifest=write_manifest(str(tmp_path), 2),
                      out=str(tmp_path / "out"), launch=1, comfyui=comfy, comfyui_python=sys.executable,
                      progress=False, object_info=os.path.join(os.path.dirname(__file__), "data",
                                                               "object_info_comfyui_0.33.0.json"))
    with pytest.raises(RuntimeError, match="(?s)w0 could not start its ComfyUI server.*exited with 3.*no torch here"):
        run_batch(cfg)
