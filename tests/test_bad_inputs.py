"""The hostile and careless inputs (tests/bad_inputs.py), each through the library, the CLI where it
has the input, and the node with the fakes; plus the table in docs/bad_inputs.md kept in step with the list."""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import bad_inputs as B
import comfy_api_fake as fake
from refsr.refsr_helpers import TINY, randomised, smooth_image
from sharp.refsr import limits
from sharp.refsr.checkpoint import load_dsdit, read_checkpoint, save_checkpoint

ROOT = fake.ROOT
DOC = os.path.join(ROOT, "docs", "bad_inputs.md")


def doc_ids() -> list[str]:
    """The ids in the first column of the tables of docs/bad_inputs.md."""
    with open(DOC, encoding="utf-8") as fh:
        return re.findall(r"^\| `([a-z0-9-]+)` \|", fh.read(), flags=re.M)


def all_ids() -> list[str]:
    import bad_inputs

    return [k for name in dir(bad_inputs) if name.isupper() and isinstance(getattr(bad_inputs, name), dict)
            for k in getattr(bad_inputs, name)]


def test_doc_table_in_step_with_the_tests():
    listed = doc_ids()
    assert len(listed) == len(set(listed)), "an id twice in docs/bad_inputs.md"
    assert sorted(listed) == sorted(all_ids())


# --- checkpoints ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_checkpoint(path, randomised(TINY))
    cfg, state, meta = read_checkpoint(path)
    return json.loads(meta["dsdit_config"]), meta, state


def write_bad(case: str, good, path) -> str:
    build, _ = B.CHECKPOINTS[case]
    meta, state = build(*good)
    save_file(state, str(path), metadata=meta)
    return str(path)


@pytest.mark.parametrize("case", sorted(B.CHECKPOINTS))
def test_bad_checkpoint_library_and_cli(case, good, tmp_path, capsys):
    path = write_bad(case, good, tmp_path / f"{case}.safetensors")
    pattern = B.CHECKPOINTS[case][1]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=pattern) as err:
        load_dsdit(path)
    assert time.perf_counter() - start < 30  # fails fast: nothing was built from the config (not a benchmark)
    assert path in str(err.value) and B.SECRET not in str(err.value) and len(str(err.value)) < 2000
    from sharp.cli import main

    lr, out = tmp_path / "lr.png", tmp_path / "out.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr)
    assert main(["refsr", "--lr", str(lr), "--out", str(out), "--ckpt", path]) == 2
    cli = capsys.readouterr().err
    assert re.search(pattern, cli) and B.SECRET not in cli and not out.exists()


@pytest.mark.parametrize("case", sorted(B.CHECKPOINTS))
def test_bad_checkpoint_node(case, good, nodes, tmp_path):
    folder = tmp_path / "dsdit"
    folder.mkdir()
    write_bad(case, good, folder / "bad.safetensors")
    saved = fake.FolderPaths.roots.get("dsdit")
    fake.FolderPaths.roots["dsdit"] = [str(folder)]
    try:
        with pytest.raises(ValueError, match=B.CHECKPOINTS[case][1]) as err:
            nodes["SHARPLoadDSDiT"].execute(ckpt_name="bad.safetensors", path="")
    finally:
        fake.FolderPaths.roots["dsdit"] = saved or []
    assert B.SECRET not in str(err.value)


# --- super-resolution arguments -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return randomised(TINY, seed=3)


def sr_call(kw: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    kw = dict(kw)
    h, w = kw.pop("lr_size", (16, 16))
    lr, ref = smooth_image(h, w, 0), smooth_image(4 * h, 4 * w, 1)
    if kw.pop("lr_nan", False):
        lr = lr.copy()
        lr[0, 0, 0] = np.nan
    return kw, lr, ref


@pytest.mark.parametrize("case", sorted(B.SR_ARGS))
def test_bad_sr_arguments_library(case, model):
    from sharp.refsr import super_resolve

    kw, lr, ref = sr_call(B.SR_ARGS[case][0])
    for key, lib in (("tile_size", "tile"),):
        if key in kw:
            kw[lib] = kw.pop(key)
    with pytest.raises(ValueError, match=B.SR_ARGS[case][1]):
        super_resolve(model, lr, ref, scale=4, steps=1, **kw)


@pytest.mark.parametrize("case", sorted(B.SR_ARGS))
def test_bad_sr_arguments_node(case, model, nodes, monkeypatch):
    kw, lr, ref = sr_call(B.SR_ARGS[case][0])
    if "memory_limit" in kw:  # the node has no such input: the machine has that little memory
        limit = kw.pop("memory_limit")
        monkeypatch.setattr(limits, "available_bytes", lambda: limit)
    args = dict(scale=4, steps=1, guidance=1.0, seed=0, tile_size=512, overlap=16, temperature=-1.0,
                register_ref=True, ref_transfer=-1.0)
    args.update(kw)
    fake.ModelManagement.freed = []
    with pytest.raises(ValueError, match=B.SR_ARGS[case][1]):
        nodes["SHARPDSDiTReferenceSR"].execute(model=model, lr=torch.from_numpy(lr)[None],
                                               ref=torch.from_numpy(ref)[None], **args)
    assert next(model.parameters()).device.type == "cpu"


def test_node_asks_model_management_for_room_first(model, nodes):
    """Before the work: comfy.model_management.free_memory for a tile on the device and, where the ComfyUI
    has the parameter, the whole-image stages' RAM (the fake has it); then load_models_gpu loads the
    network with the same room for a tile (ComfyUI adds the weights itself)."""
    fake.ModelManagement.freed, fake.ModelManagement.loads = [], []
    lr, ref = smooth_image(16, 16, 0), smooth_image(64, 64, 1)
    nodes["SHARPDSDiTReferenceSR"].execute(model=model, lr=torch.from_numpy(lr)[None], ref=torch.from_numpy(ref)[None],
                                           scale=4, steps=1, guidance=1.0, seed=0, tile_size=512, overlap=16)
    ((need, device, ram),) = fake.ModelManagement.freed
    ((patchers, room, full),) = fake.ModelManagement.loads
    assert device == "cpu" and need == room == limits.tile_bytes(model.cfg, 1, 512) > 0 and full
    assert ram >= 64 * 64 * limits.BYTES_PER_PX["base"] and patchers[0].model is model


def test_tiny_lr_at_the_minimum_works(model):
    from sharp.refsr import super_resolve

    out = super_resolve(model, smooth_image(2, 2, 0), smooth_image(8, 8, 1), scale=4, steps=1)
    assert out.shape == (8, 8, 3) and np.isfinite(out).all()


def test_overlap_at_half_the_tile_is_fine():
    from sharp.refsr.tiling import tiles

    tile, overlap, n = limits.plan_tiles(480, 480, 32, 16, 4)
    assert (tile, overlap) == (32, 16) and n == len(tiles(480, 480, 32, 16)) == 29 * 29  # starts 0, 16, ..., 448


# --- diffusers Flux folders -----------------------------------------------------------------------------------

def good_folder(path, to_k_cols=None):
    from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

    sd = tiny_diffusers_flux(seed=1)
    if to_k_cols:
        sd["transformer_blocks.0.attn.to_k.weight"] = torch.zeros(128, to_k_cols)
    write_diffusers_folder(str(path), sd, shards=2)
    return str(path)


def models_with(case, tmp_path):
    root = tmp_path / "models" / "diffusion_models"
    root.mkdir(parents=True)
    good_folder(root / "good")
    name = B.FOLDERS[case][0](str(root), good_folder)
    return str(root), name


@pytest.mark.parametrize("case", sorted(B.FOLDERS))
def test_bad_flux_folder_library(case, tmp_path, caplog):
    from sharp import diffusers_flux as D

    root, name = models_with(case, tmp_path)
    kind, pattern = B.FOLDERS[case][1]
    with caplog.at_level("WARNING", logger="sharp"):
        listed = D.find_flux_folders([root])
    assert "good" in listed  # one bad folder never hides the others
    if kind == "skipped":
        assert name not in listed
        msgs = [r.getMessage() for r in caplog.records if os.path.join(root, name) in r.getMessage()]
        assert msgs and all(re.search(pattern, m) for m in msgs), msgs
    elif name.startswith(".."):  # a prompt's name outside the roots: the node's rule (next test)
        assert not any(n.startswith("..") for n in listed)
    elif kind == "error":
        with pytest.raises(D.DiffusersFolderError, match=pattern):
            D.convert_transformer(os.path.join(root, name))
    else:  # the symlink rule: followed inside a model folder
        assert name in listed
        sd = D.convert_transformer(os.path.join(root, name))
        assert "double_blocks.0.img_attn.qkv.weight" in sd


@pytest.mark.parametrize("case", sorted(B.FOLDERS))
def test_bad_flux_folder_node(case, nodes, tmp_path, caplog):
    root, name = models_with(case, tmp_path)
    kind, pattern = B.FOLDERS[case][1]
    saved = fake.FolderPaths.roots.get("diffusion_models", [])
    fake.FolderPaths.roots["diffusion_models"] = [root]
    fake.FakeSD.calls = []
    node = nodes["SHARPLoadRSFlux"]
    try:
        with caplog.at_level("WARNING"):
            options = {i.id: i for i in node.define_schema().inputs}["folder"].options  # what /object_info lists
        assert "good" in options
        if kind == "loads":
            assert name in options
            model, _, _ = node.execute(folder=name).result
            assert model[0] == "MODEL"
        else:
            if kind == "skipped":
                assert name not in options
            expect = pattern if kind == "error" else r"no diffusers Flux folder"
            with pytest.raises(ValueError, match=expect):
                node.execute(folder=name)
        assert node.execute(folder="good").result[0][0] == "MODEL"  # the next good prompt works
    finally:
        fake.FolderPaths.roots["diffusion_models"] = saved


# --- Spectrum Analysis ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(B.SPECTRUM))
def test_bad_spectrum_inputs_library_and_node(case, nodes):
    from sharp import plots, spectrum_report

    (labels, cutoff), pattern = B.SPECTRUM[case]
    images = torch.from_numpy(np.stack([smooth_image(32, 32, 0), smooth_image(32, 32, 1)])).float()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=pattern):
        names = spectrum_report.parse_labels(labels, 2)
        spectrum_report.spectrum_table(list(images), names, cutoff)
        plots.plot_spectra(list(images), names, cutoff)
    with pytest.raises(ValueError, match=pattern):
        nodes["SHARPSpectrumAnalysis"].execute(images=images, labels=labels, cutoff=cutoff)
    assert time.perf_counter() - start < 30  # was 89 s for a 1 MB label (a bound, not a benchmark)


def test_valid_mathtext_label_still_drawn(nodes):
    images = torch.from_numpy(np.stack([smooth_image(32, 32, 0), smooth_image(32, 32, 1)])).float()
    plot, table = nodes["SHARPSpectrumAnalysis"].execute(images=images, labels=r"$\alpha$, cost $5", cutoff=0.5).result
    assert plot.shape[-1] == 3 and r"$\alpha$" in table


# --- promotion chained --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(B.PROMOTION))
def test_chained_promotion_warns_last_wins(case, caplog):
    import comfy_fake as cf
    from sharp import promotion as P

    (first, second), pattern = B.PROMOTION[case]
    make = lambda mu: cf.ModelSamplingFlux(shift=mu)  # noqa: E731
    kw = dict(apply_model_wrapper=cf.APPLY_MODEL, outer_sample_wrapper=cf.OUTER_SAMPLE, make_flux_sampling=make)
    with caplog.at_level("WARNING", logger="sharp"):
        once = P.promote(cf.flux_patcher(), **first, **kw)
        assert not caplog.records  # a single promotion says nothing
        twice = P.promote(once, **second, **kw)
    (msg,) = [r.getMessage() for r in caplog.records]
    assert re.search(pattern, msg)
    assert twice.get_model_object(P.EMBEDDER_PATH).method == second["method"]  # the last one wins
    assert len(twice.get_wrappers(cf.APPLY_MODEL, P.PATCH_KEY)) == 1
    if second.get("noise_shift") == "keep":  # the earlier node's "resolution" schedule stays whole
        assert len(twice.get_wrappers(cf.OUTER_SAMPLE, P.PATCH_KEY)) == 1
        assert twice.get_model_object(P.SAMPLING_PATH) is once.get_model_object(P.SAMPLING_PATH)


@pytest.mark.parametrize("case", sorted(B.PROMOTION))
def test_chained_promotion_node(case, nodes, caplog):
    import comfy_fake as cf

    (first, second), pattern = B.PROMOTION[case]
    node = nodes["SHARPResolutionPromotion"]
    model = cf.flux_patcher()
    model.model.model_config = None
    with caplog.at_level("WARNING"):
        once = node.execute(model=model, **first).result[0]
        twice = node.execute(model=once, **second).result[0]
    assert any(re.search(pattern, r.getMessage()) for r in caplog.records)
    assert twice.get_model_object("diffusion_model.pe_embedder").method == second["method"]


@pytest.mark.parametrize("case", sorted(B.NODE_FLOATS))
def test_node_float_inputs_refuse_nan_inf(case, nodes):
    import comfy_fake as cf

    (node_id, kw), pattern = B.NODE_FLOATS[case]
    node = nodes[node_id]
    if node_id == "SHARPResolutionPromotion":
        model = cf.flux_patcher()
        model.model.model_config = None
        kw = dict(kw, model=model)
    else:
        kw = dict(dict(width=2048, height=2048), **kw)
    with pytest.raises(ValueError, match=pattern):
        node.execute(**kw)


def test_memory_refused_before_allocating(model):
    """The case that started this: LR 2048^2 at x8 allocated 6.9 GB before failing. Under an 8 GiB budget it is refused
    up front, naming an LR that fits, and the process's peak RSS does not grow by a whole-image buffer."""
    import resource

    from sharp.refsr import super_resolve

    lr = np.zeros((2048, 2048, 3), np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(ValueError, match=r"needs about \d+\.\d GiB .* An LR of at most about (\d+)x\1 px fits") as err:
        super_resolve(model, lr, None, scale=8, steps=1, memory_limit=8 << 30)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 256 << 20  # one float32 copy of the 16384^2 output alone would be 3 GiB
    side = int(re.search(r"at most about (\d+)x", str(err.value)).group(1))
    assert 256 <= side < 2048
    need = limits.estimate_bytes(model.cfg, 1, 8 * side, 8 * side, 512, False, True, False)
    assert need <= 8 << 30  # the size it names does fit
