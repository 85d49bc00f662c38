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
    _check_complete(out, good)
    recs = _results(out)
    ok = collections.Counter(r["key"] for r in recs if r["status"] == "ok")
    assert ok == {k: 1 for k in good}  # every row exactly once
    (failed,) = [r for r in recs if r["status"] == "failed"]
    assert failed["key"] == "job05" and failed["kind"] == "execution" and failed["attempts"] == 3
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
