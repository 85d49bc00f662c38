"""`sharp batch` without Ray: manifests, mapping, validation against a saved /object_info (ComfyUI
0.33.0's, tests/data), naming, the HTTP client and worker against the ComfyUI protocol stand-in (a
real HTTP server on 127.0.0.1 speaking ComfyUI's protocol; not ComfyUI), sidecars and resume checks.
The Ray runner is tested in test_batch_ray.py."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from batch_fixtures import WORKFLOW, image_size, write_manifest, write_photos
from comfy_protocol_standin import OBJECT_INFO, StandIn
from workflow_check import API_DIR

from sharp.batch import grid, naming, schema
from sharp.batch.jobs import build_jobs
from sharp.batch.manifest import Row, parse_sets, read_manifest, resolve
from sharp.batch.results import OutputDir, summarize
from sharp.batch.worker import Worker

DSDIT = json.load(open(os.path.join(API_DIR, "dsdit_refsr_x4.json")))
RSFLUX = json.load(open(os.path.join(API_DIR, "rsflux_sharp_2048.json")))


@pytest.fixture(scope="module")
def oi():
    """The saved /object_info of a server whose models/diffusion_models holds the RS-FLUX folder
    (saved from one without it: its folder combo was empty)."""
    info = json.load(open(OBJECT_INFO))
    info["SHARPLoadRSFlux"]["input"]["required"]["folder"][1]["options"] = ["FLUX-RS"]
    return info


def rows(*dicts):
    return [Row(i, d, i + 2) for i, d in enumerate(dicts)]


# --- manifests and mapping --------------------------------------------------------------------------

def test_csv_and_jsonl_manifests(tmp_path):
    (tmp_path / "a.csv").write_text("id,Prompt.text,KSampler.seed\nx,a field,3\ny,,4\n")
    got = read_manifest(str(tmp_path / "a.csv"))
    assert [r.values for r in got] == [{"id": "x", "Prompt.text": "a field", "KSampler.seed": "3"},
                                       {"id": "y", "KSampler.seed": "4"}]  # empty cell: the workflow's value
    (tmp_path / "b.jsonl").write_text('{"KSampler.seed": 5}\n\n{"KSampler.seed": 6, "Prompt.text": "x"}\n')
    got = read_manifest(str(tmp_path / "b.jsonl"))
    assert [(r.index, r.line, r.values["KSampler.seed"]) for r in got] == [(0, 1, 5), (1, 3, 6)]
    (tmp_path / "c.jsonl").write_text('{"a": 1}\n[1]\n')
    with pytest.raises(ValueError, match="c.jsonl:2: each line must be a JSON object"):
        read_manifest(str(tmp_path / "c.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="use .csv or .jsonl"):
        read_manifest(str(tmp_path / "d.txt"))
    with pytest.raises(FileNotFoundError):
        read_manifest(str(tmp_path / "nope.csv"))


def test_resolve_by_title_id_and_class_type():
    assert resolve("Prompt.text", RSFLUX).node_id == "2"                   # _meta.title
    assert resolve("4.noise_seed", RSFLUX).node_id == "4"                 # id
    assert resolve("SHARPResolutionPromotion.alpha_s", RSFLUX).node_id == "7"   # a class_type used once
    assert resolve("LR (120x120).image", DSDIT).node_id == "2"            # titles with dots/spaces
    wf = {"1": {"class_type": "KSampler", "_meta": {"title": "S"}, "inputs": {}},
          "2": {"class_type": "KSampler", "_meta": {"title": "S"}, "inputs": {}}}
    with pytest.raises(ValueError, match="used by nodes 1, 2"):
        resolve("S.seed", wf)
    with pytest.raises(ValueError, match="2 nodes are KSampler, use an id"):
        resolve("KSampler.seed", wf)
    with pytest.raises(ValueError, match="no node titled 'Promt'.*'Prompt'"):
        resolve("Promt.text", RSFLUX)


def test_parse_sets():
    assert parse_sets(["KSampler.steps=2", "Prompt.text=a=b"]) == {"KSampler.steps": "2", "Prompt.text": "a=b"}
    with pytest.raises(ValueError, match="NODE.INPUT=VALUE"):
        parse_sets(["steps"])


def test_mapping_coerces_to_the_input_types(oi):
    jobs, bad = build_jobs(RSFLUX, rows({"id": "a", "Prompt.text": "dense city", "RandomNoise.noise_seed": "7",
                                         "EmptySD3LatentImage.width": "1024", "SHARPResolutionPromotion.alpha_s": "2",
                                         "SHARPResolutionPromotion.mscale": "false",
                                         "KSamplerSelect.sampler_name": "euler"}),
                           oi, parse_sets(["SHARPFluxSigmas.steps=4"]))
    assert bad == {}
    (job,) = jobs
    p = job.prompt
    assert p["2"]["inputs"]["text"] == "dense city" and p["4"]["inputs"]["noise_seed"] == 7
    assert p["8"]["inputs"]["width"] == 1024 and p["8"]["inputs"]["height"] == 2048  # untouched
    assert p["7"]["inputs"]["alpha_s"] == 2.0 and isinstance(p["7"]["inputs"]["alpha_s"], float)
    assert p["7"]["inputs"]["mscale"] is False and p["6"]["inputs"]["steps"] == 4
    assert RSFLUX["4"]["inputs"]["noise_seed"] == 42  # the workflow itself is not modified
    assert job.seeds() == {"RandomNoise.noise_seed": 7}
    assert job.sharp_params()["SHARP Resolution Promotion"]["alpha_s"] == 2.0
    assert "model" not in job.sharp_params()["SHARP Resolution Promotion"]  # links are not parameters
    # a numeric combo from CSV text: DS-DiT's scale [2, 4, 8]
    jobs, bad = build_jobs(DSDIT, rows({"DS-DiT Reference SR (x4).scale": "2"}), oi)
    assert jobs[0].prompt["4"]["inputs"]["scale"] == 2


def test_set_wins_over_the_manifest(oi):
    jobs, _ = build_jobs(RSFLUX, rows({"SHARPFluxSigmas.steps": "9"}), oi, {"SHARPFluxSigmas.steps": "3"})
    assert jobs[0].prompt["6"]["inputs"]["steps"] == 3 and jobs[0].row["SHARPFluxSigmas.steps"] == "3"


def test_every_problem_of_every_row_is_reported(oi):
    """What ComfyUI's /prompt validation would reject, found from the saved /object_info."""
    manifest = rows(
        {"id": "ok", "RandomNoise.noise_seed": "1"},
        {"id": "combo", "KSamplerSelect.sampler_name": "eulr", "SHARPResolutionPromotion.method": "linear"},
        {"id": "range", "SHARPFluxSigmas.steps": "0", "SHARPResolutionPromotion.alpha_s": "1000",
         "FluxGuidance.guidance": "abc"},
        {"id": "names", "Promt.text": "x", "RandomNoise.sed": "3"},
        {"id": "types", "SHARPResolutionPromotion.mscale": "maybe", "RandomNoise.noise_seed": "1.5",
         "SHARPResolutionPromotion.model": "x"},
        {"id": "ok"},
    )
    jobs, bad = build_jobs(RSFLUX, manifest, oi)
    assert [j.key for j in jobs] == ["ok"]
    text = {i: "\n".join(p) for i, p in bad.items()}
    assert "'eulr' is not one of" in text[1] and "'linear' is not one of" in text[1]
    assert "0 is smaller than the minimum 1" in text[2] and "1000.0 is larger than the maximum" in text[2]
    assert "'abc' is not a number" in text[2]
    assert "no node titled 'Promt'" in text[3] and "has no input 'sed'" in text[3]
    assert "'maybe' is not a boolean" in text[4] and "'1.5' is not an integer" in text[4]
    assert "takes a link" in text[4]
    assert "also the id of row 1" in text[5]
    assert all(p.startswith(f"row {i + 1} (line {i + 2}, ") for i, ps in bad.items() for p in ps)


def test_unknown_class_type_and_upload_files(oi, tmp_path):
    wf = json.loads(json.dumps(DSDIT))
    wf["10"] = {"class_type": "NotInstalled", "inputs": {}}
    _, bad = build_jobs(wf, rows({}), oi)
    assert "class_type 'NotInstalled' is not on the server" in bad[0][0]
    names = write_photos(str(tmp_path), 1)
    jobs, bad = build_jobs(DSDIT, rows({"LR (120x120).image": names[0]}, {"LR (120x120).image": "gone.png"},
                                       {"LR (120x120).image": "sharp_refsr_lr.jpg"}), oi, base_dir=str(tmp_path))
    assert [j.index for j in jobs] == [0, 2]
    assert jobs[0].uploads == [("2", "image", str(tmp_path / names[0]))]
    assert jobs[1].uploads == []  # a file already on the server (listed in /object_info)
    assert "'gone.png': not a local file" in bad[1][0]


def test_prompt_hash_follows_the_content_of_uploads(oi, tmp_path):
    names = write_photos(str(tmp_path), 2)
    a = build_jobs(DSDIT, rows({"LR (120x120).image": names[0]}), oi, base_dir=str(tmp_path))[0][0]
    b = build_jobs(DSDIT, rows({"LR (120x120).image": names[0]}), oi, base_dir=str(tmp_path))[0][0]
    assert a.prompt_hash == b.prompt_hash
    Image.fromarray(np.zeros((6, 5, 3), np.uint8) + 1).save(tmp_path / names[0])  # same name, new pixels
    c = build_jobs(DSDIT, rows({"LR (120x120).image": names[0]}), oi, base_dir=str(tmp_path))[0][0]
    assert c.prompt_hash != a.prompt_hash


def test_the_shipped_workflows_validate(oi):
    for wf in (DSDIT, RSFLUX):
        assert schema.check_prompt(wf, oi) == []
    bare = json.load(open(OBJECT_INFO))  # the server as saved: no RS-FLUX folder installed
    assert schema.check_prompt(RSFLUX, bare) == [
        "node 1 'Load RS-FLUX (diffusers folder)' (SHARPLoadRSFlux).folder: 'FLUX-RS' is not one of []"]


# --- naming and the grid ----------------------------------------------------------------------------

def test_names_are_deterministic_and_safe():
    assert naming.row_key(7, {}) == "00007"
    assert naming.row_key(7, {"id": "a b/../c"}) == "a-b-..-c"
    assert naming.output_name("00007", "Save SR", 0, "x_00001_.png") == "00007_Save-SR_00.png"
    assert naming.output_name("k", "Bicubic | SR | Ref", 3, "y.WEBP") == "k_Bicubic-SR-Ref_03.webp"
    assert naming.canonical_hash({"a": 1, "b": [2]}) == naming.canonical_hash({"b": [2], "a": 1})


def test_grid_manifest():
    assert grid.parse_sizes("1024x1024, 3744X2560") == [(1024, 1024), (3744, 2560)]
    assert grid.parse_seeds("0-3") == [0, 1, 2, 3] and grid.parse_seeds("5,0-1") == [5, 0, 1]
    for bad in ("1024", "0x5", "axb"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            grid.parse_sizes(bad)
    with pytest.raises(ValueError, match="A <= B"):
        grid.parse_seeds("3-1")
    got = grid.grid_rows(["a", "b"], [(1024, 1024), (2048, 1024)], [0, 1],
                         {"width": ("EmptySD3LatentImage.width", "SHARPSchedulePreview.width")})
    assert len(got) == 8 and len({r["id"] for r in got}) == 8
    assert got[3] == {"id": "p000_2048x1024_s1", "Prompt.text": "a", "RandomNoise.noise_seed": 1,
                      "EmptySD3LatentImage.width": 2048, "SHARPSchedulePreview.width": 2048,
                      "EmptySD3LatentImage.height": 1024}


def test_grid_cli_feeds_batch_validation(tmp_path, oi):
    from sharp.cli import main

    (tmp_path / "p.txt").write_text("# RS prompts\nan airport\n\na harbour\n")
    out = tmp_path / "grid.jsonl"
    assert main(["batch-grid", "--prompts", str(tmp_path / "p.txt"), "--sizes", "1024x1024,2048x2048,3744x2560",
                 "--seeds", "0-1", "--out", str(out), "--width-key", "EmptySD3LatentImage.width",
                 "--width-key", "SHARPSchedulePreview.width", "--height-key", "EmptySD3LatentImage.height",
                 "--height-key", "SHARPSchedulePreview.height"]) == 0
    manifest = read_manifest(str(out))
    assert len(manifest) == 12
    jobs, bad = build_jobs(RSFLUX, manifest, oi)
    assert bad == {} and len(jobs) == 12
    last = jobs[-1].prompt
    assert (last["8"]["inputs"]["width"], last["8"]["inputs"]["height"], last["13"]["inputs"]["width"]) == (3744, 2560, 3744)
    assert last["2"]["inputs"]["text"] == "a harbour" and last["4"]["inputs"]["noise_seed"] == 1


def test_validate_only_cli_against_saved_object_info(tmp_path, capsys):
    from sharp.cli import main

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(DSDIT))
    (tmp_path / "m.csv").write_text("4.seed,DS-DiT Reference SR (x4).steps\n1,2\n2,-1\n")   # 0 = the checkpoint's
    args = ["batch", "--workflow", str(wf), "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
            "--object-info", OBJECT_INFO, "--servers", "http://127.0.0.1:9", "--validate-only"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "row 2 (line 3, 00001): node 4 'DS-DiT Reference SR (x4)' (SHARPDSDiTReferenceSR).steps: -1 is smaller" in err
    (tmp_path / "m.csv").write_text("4.seed,DS-DiT Reference SR (x4).steps\n1,2\n2,3\n")
    assert main(args) == 0 and "2 rows valid" in capsys.readouterr().out
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    assert main(args[:2] + [str(ui)] + args[3:]) == 2
    assert "Export (API)" in capsys.readouterr().err


# --- the worker against the protocol stand-in -------------------------------------------------------

@pytest.fixture()
def standin(tmp_path):
    s = StandIn(str(tmp_path / "server")).start()
    yield s
    s.stop()


def _jobs(tmp_path, server, n=3, bad=()):
    from sharp.batch.client import ComfyClient

    manifest = write_manifest(str(tmp_path), n, bad)
    jobs, problems = build_jobs(WORKFLOW, read_manifest(manifest), ComfyClient(server.url).object_info(),
                                base_dir=str(tmp_path))
    assert problems == {}
    return jobs


def test_worker_runs_uploads_and_fetches(tmp_path, standin):
    jobs = _jobs(tmp_path, standin)
    w = Worker(standin.url, "s0")
    res = [w.run(j.to_dict()) for j in jobs]
    assert all(r["ok"] for r in res), res
    for j, r in zip(jobs, res):
        assert [(im["title"], im["index"]) for im in r["images"]] == [("Save canvas", 0), ("Save inverted", 0)]
        canvas = Image.open(__import__("io").BytesIO(r["images"][0]["data"]))
        side = int(j.row["Canvas.width"])
        assert canvas.size == (side, side)
        color = int(j.row["Canvas.color"])
        assert canvas.getpixel((0, 0)) == ((color >> 16) & 255, (color >> 8) & 255, color & 255)
        inverted = np.asarray(Image.open(__import__("io").BytesIO(r["images"][1]["data"])))
        photo = np.asarray(Image.open(tmp_path / j.row["Photo.image"]).convert("RGB"))
        assert (inverted == 255 - photo).all()
        assert r["comfyui_version"] == "protocol-stand-in" and r["timings"]["total_s"] > 0
    # each distinct file uploaded once, under a content-addressed name; row-unique server file names
    uploaded = sorted(os.listdir(os.path.join(standin.base, "input")))
    assert len(uploaded) == 3 and all(n.startswith("sharp_batch_") for n in uploaded)
    assert res[0]["images"][0]["server_file"]["filename"].startswith("job00_canvas")


def test_worker_reports_the_servers_messages(tmp_path, standin):
    jobs = _jobs(tmp_path, standin, n=2, bad=(1,))
    w = Worker(standin.url, "s0")
    r = w.run(jobs[1].to_dict())
    assert not r["ok"] and r["kind"] == "execution"
    assert "MemoryError: stand-in: not enough memory for a 2000x2000 image" in r["message"]
    stale = jobs[0].to_dict()
    stale["uploads"] = []
    stale["prompt"]["3"]["inputs"]["image"] = "deleted_meanwhile.png"
    r = w.run(stale)
    assert not r["ok"] and r["kind"] == "rejected" and "deleted_meanwhile.png" in r["message"]
    standin.stop()
    r = w.run(jobs[0].to_dict())
    assert not r["ok"] and r["kind"] == "server"


def test_worker_cancel_deletes_queued_and_interrupts_running(tmp_path, standin):
    import threading

    standin.delay_s = 5.0
    jobs = _jobs(tmp_path, standin, n=2)
    w = Worker(standin.url, "s0")
    out = {}
    threads = [threading.Thread(target=lambda j=j: out.__setitem__(j.key, w.run(j.to_dict()))) for j in jobs]
    for t in threads:
        t.start()
    import time

    end = time.time() + 10
    while len(w.active()) < 2 and time.time() < end:
        time.sleep(0.02)
    assert sorted(w.cancel()) == ["job00", "job01"]
    for t in threads:
        t.join(10)
    assert {k: r["kind"] for k, r in out.items()} == {"job00": "interrupted", "job01": "interrupted"}
    assert standin.pending == [] and standin.running is None
    assert len(standin.executed) <= 1  # the running one was interrupted, the queued one never ran
    assert not os.path.exists(os.path.join(standin.base, "output", "sharp_batch"))


# --- results, sidecars, resume checks ---------------------------------------------------------------

def test_sidecar_and_completeness(tmp_path, standin):
    jobs = _jobs(tmp_path, standin, n=2)
    w = Worker(standin.url, "s0")
    store = OutputDir(str(tmp_path / "out"))
    ctx = {"run_id": "r1", "workflow": {"path": "wf.json", "sha256": naming.canonical_hash(WORKFLOW)},
           "pack_version": "0.1.0"}
    for j in jobs:
        store.write_success(j, w.run(j.to_dict()), ctx, attempts=1)
    side = store.read_sidecar("job01")
    assert side["status"] == "ok" and side["row"]["Canvas.width"] == "9" and side["row"]["note"] == "row 1"
    assert side["workflow"]["sha256"] == ctx["workflow"]["sha256"] and side["prompt_hash"] == jobs[1].prompt_hash
    assert side["pack"] == {"name": "comfyui-sharp", "version": "0.1.0"}
    assert side["comfyui_version"] == "protocol-stand-in" and side["server"] == standin.url
    assert side["prompt"]["1"]["inputs"]["width"] == 9 and "timings" in side and side["attempts"] == 1
    files = [o["file"] for o in side["outputs"]]
    assert files == ["images/job01_Save-canvas_00.png", "images/job01_Save-inverted_00.png"]
    assert image_size(os.path.join(store.root, files[0])) == (9, 9)
    assert all(store.is_complete(j, ctx["workflow"]["sha256"]) for j in jobs)
    assert not store.is_complete(jobs[0], "other workflow")
    with open(os.path.join(store.root, files[1]), "r+b") as fh:  # a damaged image: not complete
        fh.seek(30)
        fh.write(b"\x00\x01")
    assert not store.is_complete(jobs[1], ctx["workflow"]["sha256"])
    os.remove(os.path.join(store.root, "images", "job00_Save-canvas_00.png"))
    assert not store.is_complete(jobs[0], ctx["workflow"]["sha256"])
    changed = build_jobs(WORKFLOW, [Row(0, {**jobs[0].row, "Canvas.color": "5"}, 2)],
                         {**json.load(open(OBJECT_INFO)), "LoadImage": standin.object_info()["LoadImage"]},
                         base_dir=str(tmp_path))[0][0]
    assert changed.key == "job00" and changed.prompt_hash != jobs[0].prompt_hash
    recs = store.read_results("r1")
    assert [r["key"] for r in recs] == ["job00", "job01"] and all(r["status"] == "ok" for r in recs)
    s = summarize(recs, 60.0)
    assert s["rows_ok"] == 2 and s["images"] == 4 and s["workers"]["s0"]["images_per_min"] == 4.0


def test_leftover_temporary_files_are_removed(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png.tmp-123").write_bytes(b"half")
    (tmp_path / "images" / "b.png").write_bytes(b"whole")
    OutputDir(str(tmp_path))
    assert os.listdir(tmp_path / "images") == ["b.png"]
