"""The DS-DiT nodes without ComfyUI (through tests/comfy_api_fake.py): schemas, the models/dsdit folder,
loading, super-resolution through execute, progress, interruption, the VAE input, bad inputs, the workflow."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_api_fake as fake
import workflow_check as W
from refsr.refsr_helpers import TINY, randomised, smooth_image
from sharp.refsr.checkpoint import save_checkpoint
from sharp.refsr.config import DSDiTConfig

ROOT = fake.ROOT
SHIPPED_FILE = os.path.join(ROOT, "sharp", "refsr", "weights", "dsdit_small.safetensors")
WORKFLOW = "dsdit_refsr_x4"


@pytest.fixture(scope="module")
def mod(pack):
    return pack.nodes.dsdit


@pytest.fixture()
def fresh_fakes():
    saved_roots = {k: list(v) for k, v in fake.FolderPaths.roots.items()}
    saved_ext = {k: set(v) for k, v in fake.FolderPaths.extensions.items()}
    fake.ProgressBar.updates = []
    fake.ModelManagement.checks, fake.ModelManagement.interrupt_after = 0, None
    yield
    fake.FolderPaths.roots.clear()
    fake.FolderPaths.roots.update(saved_roots)
    fake.FolderPaths.extensions.clear()
    fake.FolderPaths.extensions.update(saved_ext)
    fake.ModelManagement.interrupt_after = None


def _inputs(node):
    return {i.id: i for i in node.define_schema().inputs}


def _img(h, w, seed, c=3):
    """IMAGE batch [1, h, w, c] float in [0, 1]."""
    rgb = torch.from_numpy(smooth_image(h, w, seed)).float()[None]
    return rgb if c == 3 else torch.cat([rgb, torch.ones(1, h, w, c - 3)], -1) if c > 3 else rgb[..., :c]


# --- schemas -----------------------------------------------------------------------------------------

def test_schemas(nodes):
    loader, sr = nodes["SHARPLoadDSDiT"].define_schema(), nodes["SHARPDSDiTReferenceSR"].define_schema()
    assert loader.category == sr.category == "SHARP/DS-DiT"
    assert loader.display_name == "Load DS-DiT" and sr.display_name == "DS-DiT Reference SR"
    assert [o.io_type for o in loader.outputs] == ["DSDIT"] and [o.io_type for o in sr.outputs] == ["IMAGE"]
    ins = {i.id: i for i in sr.inputs}
    assert [i.id for i in sr.inputs] == ["model", "lr", "ref", "scale", "steps", "guidance", "seed", "tile_size",
                                         "overlap", "temperature", "register_ref", "ref_transfer", "vae"]
    assert ins["model"].io_type == "DSDIT" and ins["lr"].io_type == ins["ref"].io_type == "IMAGE"
    assert ins["scale"].options == [2, 4, 8] and ins["scale"].default == 4
    assert ins["steps"].default == 0 and ins["steps"].min == 0 and ins["guidance"].default == 1.0
    assert ins["seed"].extra.get("control_after_generate") is True
    assert ins["vae"].io_type == "VAE" and ins["vae"].optional
    assert not any(ins[k].optional for k in ("model", "lr", "ref"))
    for inp in list(ins.values()) + loader.inputs:
        assert inp.tooltip and len(inp.tooltip) > 10, inp.id


def test_object_info_widget_count(nodes):
    """The UI saves 10 widget values for the SR node: 9 widgets, the seed also its control mode."""
    info = fake.object_info(nodes["SHARPDSDiTReferenceSR"])
    widgets = [(n, o) for n, t, w, o, r in W.ordered_inputs(info) if w]
    assert [n for n, _ in widgets] == ["scale", "steps", "guidance", "seed", "tile_size", "overlap",
                                       "temperature", "register_ref", "ref_transfer"]
    assert sum(1 + W.extra_widget_values(o) for _, o in widgets) == 9 + 1


# --- the models/dsdit folder and the loader ----------------------------------------------------------

def _write_ckpt(path, cfg=TINY, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, randomised(cfg, seed))
    return path


def test_model_folder_keeps_extra_paths(mod, fresh_fakes, tmp_path):
    extra = tmp_path / "extra"
    _write_ckpt(str(extra / "sub" / "mine.safetensors"))
    (extra / "old.ckpt").write_bytes(b"not read")
    models = tmp_path / "models"
    _write_ckpt(str(models / "dsdit" / "a.safetensors"))
    fake.FolderPaths.roots["dsdit"] = [str(extra)]  # as extra_model_paths.yaml leaves it: no extensions
    fake.FolderPaths.extensions["dsdit"] = set()
    saved = mod.folder_paths.models_dir
    mod.folder_paths.models_dir = str(models)
    try:
        mod.register_model_folder()
        mod.register_model_folder()  # idempotent
    finally:
        mod.folder_paths.models_dir = saved
    assert fake.FolderPaths.roots["dsdit"] == [str(extra), str(models / "dsdit")]
    assert fake.FolderPaths.extensions["dsdit"] == {".safetensors"}
    choices = mod.checkpoint_choices()
    assert choices[0] == mod.SHIPPED and "shipped" in choices[0] and len(choices[0]) <= 24  # shown whole
    assert choices[1:] == ["a.safetensors", "sub/mine.safetensors"]


def test_loader_execute(nodes, mod, fresh_fakes, tmp_path, monkeypatch):
    monkeypatch.delenv("SHARP_ALLOW_ANY_PATH", raising=False)
    node = nodes["SHARPLoadDSDiT"]
    shipped_label = _inputs(node)["ckpt_name"].default
    assert shipped_label in _inputs(node)["ckpt_name"].options
    patcher = node.execute(ckpt_name=shipped_label, path="").result[0]
    assert isinstance(patcher, fake.ModelPatcher)      # ComfyUI's model management holds the network
    assert (patcher.load_device, patcher.offload_device) == ("cpu", "cpu")
    shipped = patcher.model
    legacy = node.execute(ckpt_name="dsdit_small.safetensors (shipped with SHARP)", path="").result[0].model
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), legacy.state_dict().values()))
    assert node.validate_inputs(ckpt_name="dsdit_small.safetensors (shipped with SHARP)") is True
    assert node.validate_inputs(ckpt_name=shipped_label) is True
    err = node.validate_inputs(ckpt_name="nope.safetensors")
    assert isinstance(err, str) and "nope.safetensors" in err and "models/dsdit" in err
    assert node.validate_inputs(ckpt_name="nope.safetensors", path="/abs/x.safetensors") is True  # path decides
    assert os.path.isfile(SHIPPED_FILE)
    from safetensors import safe_open

    with safe_open(SHIPPED_FILE, "pt") as f:
        stored_cfg = json.loads(f.metadata()["dsdit_config"])
        first = next(iter(f.keys()))
        assert torch.equal(shipped.state_dict()[first], f.get_tensor(first))
    assert shipped.cfg.dim == stored_cfg["dim"] and shipped.cfg.space == "pixel"

    folder = tmp_path / "dsdit"
    other = DSDiTConfig(dim=8, depth=1, heads=1, radius=1, encoder_depth=1, plw_hidden=2)
    _write_ckpt(str(folder / "tiny.safetensors"), other)
    fake.FolderPaths.roots["dsdit"] = [str(tmp_path / "missing"), str(folder)]
    assert "tiny.safetensors" in _inputs(node)["ckpt_name"].options  # listed at schema time
    by_name = node.execute(ckpt_name="tiny.safetensors", path="").result[0].model
    assert by_name.cfg.dim == 8 and by_name.cfg.depth == 1
    by_path = node.execute(ckpt_name=shipped_label, path=f"  {folder / 'tiny.safetensors'} ").result[0].model
    assert by_path.cfg.dim == 8  # path wins over ckpt_name

    with pytest.raises(FileNotFoundError, match="no DS-DiT checkpoint 'gone.safetensors'"):
        node.execute(ckpt_name="gone.safetensors", path="")
    with pytest.raises(ValueError, match="absolute path"):
        node.execute(ckpt_name=shipped_label, path="dsdit/tiny.safetensors")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="only .safetensors"):
        node.execute(ckpt_name=shipped_label, path=str(pickle))
    with pytest.raises(FileNotFoundError, match="not found"):
        node.execute(ckpt_name=shipped_label, path=str(folder / "nope.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "notdsdit.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a DS-DiT checkpoint"):
        node.execute(ckpt_name="notdsdit.safetensors", path="")


def test_path_outside_model_folders_needs_opt_in(nodes, fresh_fakes, tmp_path, monkeypatch):
    """`path` reads only inside the dsdit model folders unless SHARP_ALLOW_ANY_PATH=1; the refusal is
    the same whether the file exists, is a DS-DiT checkpoint or not (no existence oracle, no metadata echoed)."""
    from safetensors.torch import save_file

    node = nodes["SHARPLoadDSDiT"]
    shipped = _inputs(node)["ckpt_name"].default
    folder, outside = tmp_path / "models" / "dsdit", tmp_path / "input"
    folder.mkdir(parents=True)
    _write_ckpt(str(outside / "real.safetensors"))
    save_file({"w": torch.zeros(2)}, str(outside / "foreign.safetensors"), metadata={"secret": "s3cr3t", "format": "x"})
    fake.FolderPaths.roots["dsdit"] = [str(folder)]
    monkeypatch.delenv("SHARP_ALLOW_ANY_PATH", raising=False)
    messages = set()
    for name in ("real.safetensors", "foreign.safetensors", "absent.safetensors", "../input/real.safetensors"):
        target = str(outside / name) if not name.startswith("..") else str(folder) + "/" + name
        with pytest.raises(ValueError, match="outside ComfyUI's dsdit model folders") as err:
            node.execute(ckpt_name=shipped, path=target)
        messages.add(str(err.value).replace(target, "PATH"))
        assert "s3cr3t" not in str(err.value)
    assert len(messages) == 1  # one answer for every file: nothing learnt about what exists there
    monkeypatch.setenv("SHARP_ALLOW_ANY_PATH", "1")
    assert node.execute(ckpt_name=shipped, path=str(outside / "real.safetensors")).result[0].model.cfg == TINY
    with pytest.raises(ValueError, match="not a DS-DiT checkpoint") as err:
        node.execute(ckpt_name=shipped, path=str(outside / "foreign.safetensors"))
    assert "s3cr3t" not in str(err.value) and "'x'" not in str(err.value)


# --- super-resolution ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    return randomised(TINY, seed=3)


def _sr(node, model, lr, ref, **kw):
    args = dict(scale=4, steps=2, guidance=1.0, seed=0, tile_size=512, overlap=16, temperature=-1.0,
                register_ref=True)
    args.update(kw)
    return node.execute(model=model, lr=lr, ref=ref, **args).result[0]


def test_sr_execute_shape_progress(nodes, tiny_model, fresh_fakes):
    node = nodes["SHARPDSDiTReferenceSR"]
    lr, ref = _img(16, 24, 1), _img(64, 96, 2)
    out = _sr(node, tiny_model, lr, ref, temperature=1.0, seed=5)
    assert out.shape == (1, 64, 96, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all() and 0 <= float(out.min()) and float(out.max()) <= 1
    assert fake.ProgressBar.updates == [(1, 2), (2, 2)]  # one tile covers the image: steps updates
    again = _sr(node, tiny_model, lr, ref, temperature=1.0, seed=5)
    other_seed = _sr(node, tiny_model, lr, ref, temperature=1.0, seed=6)
    assert torch.equal(out, again) and not torch.equal(out, other_seed)
    assert next(tiny_model.parameters()).device.type == "cpu"

    fake.ProgressBar.updates = []
    tiled = _sr(node, tiny_model, lr, ref, tile_size=32, overlap=8, steps=3)
    assert tiled.shape == (1, 64, 96, 3)
    done = [d for d, _ in fake.ProgressBar.updates]
    total = fake.ProgressBar.updates[-1][1]
    assert done == list(range(1, total + 1)) and total % 3 == 0 and total >= 3 * 6  # >= 2 x 3 tiles

    x2 = _sr(node, tiny_model, lr, _img(32, 48, 2), scale=2)
    assert x2.shape == (1, 32, 48, 3)
    batch = _sr(node, tiny_model, torch.cat([lr, lr.flip(1)]), torch.cat([ref, ref.flip(1)]))
    assert batch.shape == (2, 64, 96, 3)


def test_sr_loads_the_network_through_model_management(nodes, tiny_model, fresh_fakes, monkeypatch):
    """The node hands the network to comfy.model_management.load_models_gpu (a ModelPatcher with the
    device's room for one tile) before sampling and never moves it itself; ComfyUI offloads it later."""
    moves = []
    real_to = tiny_model.to

    def to(*args, **kw):
        moves.append(fake.ModelManagement.loading)
        return real_to(*args, **kw)

    monkeypatch.setattr(tiny_model, "to", to, raising=False)
    fake.ModelManagement.loads = []
    patcher = fake.ModelPatcher(tiny_model, "cpu", "cpu")
    lr, ref = _img(16, 16, 1), _img(64, 64, 2)
    from_patcher = _sr(nodes["SHARPDSDiTReferenceSR"], patcher, lr, ref)
    ((models, room, full),) = fake.ModelManagement.loads
    assert models == [patcher] and room > 0 and full
    bare = _sr(nodes["SHARPDSDiTReferenceSR"], tiny_model, lr, ref)   # a bare module is wrapped
    assert torch.equal(from_patcher, bare)
    (loaded,) = fake.ModelManagement.loads[1][0]
    assert isinstance(loaded, fake.ModelPatcher) and loaded.model is tiny_model
    assert moves == [True, True]          # only model management moved it, once per run


def test_sr_guidance_and_temperature_reach_the_sampler(nodes, tiny_model, fresh_fakes):
    node = nodes["SHARPDSDiTReferenceSR"]
    lr, ref = _img(16, 16, 1), _img(64, 64, 2)
    plain = _sr(node, tiny_model, lr, ref, temperature=0.0)
    guided = _sr(node, tiny_model, lr, ref, temperature=0.0, guidance=3.0)
    assert not torch.allclose(plain, guided)
    seeds = [_sr(node, tiny_model, lr, ref, temperature=0.0, seed=s) for s in (1, 2)]
    assert torch.equal(seeds[0], seeds[1])  # temperature 0: the seed has no effect


def test_sr_interrupt(nodes, tiny_model, fresh_fakes):
    """Interruption is checked inside every long stage (a cancel must not wait for the alignment), not only between sampling steps: with a
    local-alignment checkpoint the block matching checks once per displacement, before any tile."""
    from refsr.refsr_helpers import TINY_MATCH

    node = nodes["SHARPDSDiTReferenceSR"]
    match = randomised(TINY_MATCH, seed=2)
    lr, ref = _img(16, 16, 1), _img(64, 64, 2)
    _sr(node, match, lr, ref, steps=3, ref_transfer=0.5)
    total = fake.ModelManagement.checks
    assert total > 1 + 9 + 3  # before the work, the 3x3 local search (radius 8 in fact), the steps
    for k in (2, total // 2, total):
        fake.ModelManagement.checks, fake.ModelManagement.interrupt_after = 0, k
        fake.ProgressBar.updates = []
        with pytest.raises(fake.InterruptProcessingException):
            _sr(node, match, lr, ref, steps=3, ref_transfer=0.5)
        assert fake.ModelManagement.checks == k
        if k == 2:
            assert fake.ProgressBar.updates == []  # stopped inside registration, before the first tile
        assert next(match.parameters()).device.type == "cpu"


def test_sr_bad_inputs(nodes, tiny_model, fresh_fakes):
    node = nodes["SHARPDSDiTReferenceSR"]
    lr = _img(16, 16, 1)
    pass_through = _sr(node, tiny_model, lr, _img(70, 60, 2))  # resized to 64x64, logged (next test)
    assert pass_through.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="larger than the Ref"):
        _sr(node, tiny_model, _img(64, 64, 1), _img(16, 16, 2))
    with pytest.raises(ValueError, match="batch"):
        _sr(node, tiny_model, torch.cat([lr, lr]), _img(64, 64, 2))
    with pytest.raises(ValueError, match="RGB"):
        _sr(node, tiny_model, _img(16, 16, 1, c=4), _img(64, 64, 2))
    with pytest.raises(ValueError, match="RGB"):
        _sr(node, tiny_model, lr, _img(64, 64, 2, c=1))
    with pytest.raises(ValueError, match="scale"):
        _sr(node, tiny_model, lr, _img(48, 48, 2), scale=3)


def test_ref_resize_is_logged(nodes, tiny_model, fresh_fakes, caplog):
    with caplog.at_level("WARNING"):
        _sr(nodes["SHARPDSDiTReferenceSR"], tiny_model, _img(16, 16, 1), _img(70, 60, 2))
    assert any("resizing the Ref" in r.getMessage() for r in caplog.records)


def test_ref_resize_warning_shown_on_node(nodes, tiny_model, fresh_fakes, monkeypatch):
    """In ComfyUI the warning also goes to the UI as progress text under the node (hidden unique_id)."""
    import types

    sent = []
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(
        instance=types.SimpleNamespace(send_progress_text=lambda text, node_id, sid=None: sent.append((text, node_id))))
    monkeypatch.setitem(__import__("sys").modules, "server", server)
    node = type("Executing", (nodes["SHARPDSDiTReferenceSR"],), {"hidden": types.SimpleNamespace(unique_id="7")})
    _sr(node, tiny_model, _img(16, 16, 1), _img(64, 64, 2))
    assert sent == []  # Ref already scale x LR: nothing to say
    _sr(node, tiny_model, _img(16, 16, 1), _img(70, 60, 2))
    assert len(sent) == 1 and sent[0][1] == "7" and "resizing the Ref" in sent[0][0] and "60x70" in sent[0][0]


class FakeComfyVAE:
    """Shaped like ComfyUI's VAE: encode/decode take/return images [B, H, W, 3] on the CPU."""

    def __init__(self, channels=4, ratio=8):
        self.latent_channels, self.downscale_ratio = channels, ratio
        self.encoded, self.decoded = [], []

    def encode(self, pixels):
        assert pixels.ndim == 4 and pixels.shape[-1] == 3
        self.encoded.append(tuple(pixels.shape))
        z = torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), self.downscale_ratio) * 2 - 1
        return torch.cat([z, z.mean(1, keepdim=True)], 1)[:, :self.latent_channels]

    def decode(self, z):
        self.decoded.append(tuple(z.shape))
        up = torch.nn.functional.interpolate(z[:, :3], scale_factor=self.downscale_ratio, mode="nearest")
        return ((up + 1) / 2).permute(0, 2, 3, 1)


LATENT = DSDiTConfig(space="latent", latent_channels=4, latent_downscale=8, patch=1, dim=16, depth=1, heads=2,
                     radius=1, encoder_depth=1, plw_hidden=4, res_scale=1.0)


def test_sr_vae_input(nodes, tiny_model, fresh_fakes):
    node = nodes["SHARPDSDiTReferenceSR"]
    latent_model = randomised(LATENT, seed=1)
    lr, ref = _img(16, 16, 1), _img(64, 64, 2)
    with pytest.raises(ValueError, match="connect the VAE"):
        _sr(node, latent_model, lr, ref)
    vae = FakeComfyVAE()
    out = _sr(node, latent_model, lr, ref, vae=vae)
    assert out.shape == (1, 64, 64, 3)
    assert (1, 64, 64, 3) in vae.encoded and vae.decoded and vae.decoded[0][1:] == (4, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        _sr(node, latent_model, lr, ref, vae=FakeComfyVAE(channels=3))
    video = FakeComfyVAE()
    video.downscale_ratio = (4, 8, 8)
    with pytest.raises(ValueError, match="image VAE"):
        _sr(node, latent_model, lr, ref, vae=video)
    unused = FakeComfyVAE()
    _sr(node, tiny_model, lr, ref, vae=unused)  # pixel-space checkpoint: the VAE is ignored
    assert unused.encoded == [] and unused.decoded == []


# --- the workflow ----------------------------------------------------------------------------------

def _api():
    return json.load(open(W.api_twin(WORKFLOW)))


def test_workflow_contents():
    api = _api()
    by_type = {}
    for nid, n in api.items():
        by_type.setdefault(n["class_type"], []).append(n["inputs"])
    (loader,), (sr,) = by_type["SHARPLoadDSDiT"], by_type["SHARPDSDiTReferenceSR"]
    assert loader["ckpt_name"] == "shipped: DS-DiT x4" and loader["path"] == ""  # the shipped model
    assert sr["scale"] == 4 and sr["steps"] == 0 and sr["guidance"] == 1.0
    images = sorted(i["image"] for i in by_type["LoadImage"])
    assert images == ["sharp_refsr_lr.jpg", "sharp_refsr_ref.jpg"]
    assert api[sr["lr"][0]]["inputs"]["image"] == "sharp_refsr_lr.jpg"
    assert api[sr["ref"][0]]["inputs"]["image"] == "sharp_refsr_ref.jpg"
    assert "SaveImage" in by_type
    with Image.open(os.path.join(ROOT, "examples", "refsr", "lr.jpg")) as a, \
            Image.open(os.path.join(ROOT, "examples", "refsr", "ref.jpg")) as b:
        assert (b.size[0] // a.size[0], b.size[1] // a.size[1]) == (4, 4)  # Ref = scale x LR
    docs = open(os.path.join(ROOT, "docs", "dsdit_nodes.md"), encoding="utf-8").read()
    for name in images:
        assert name in docs  # the copy-into-input step is documented


def test_workflow_runs_through_execute(nodes, fresh_fakes, tmp_path):
    """The API workflow's DS-DiT part on the example triplet (2 steps), LoadImage done by hand."""
    api = _api()
    source = {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}
    results = {}
    for nid in ("1", "2", "3", "4"):
        n = api[nid]
        inputs = {k: (results[v[0]] if isinstance(v, list) else v) for k, v in n["inputs"].items()}
        if n["class_type"] == "LoadImage":
            with Image.open(os.path.join(ROOT, "examples", "refsr", source[inputs["image"]])) as im:
                results[nid] = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255)[None]
            continue
        if n["class_type"] == "SHARPDSDiTReferenceSR":
            inputs["steps"] = 2
        results[nid] = nodes[n["class_type"]].execute(**inputs).result[0]
    sr, lr = results["4"], results["2"]
    assert sr.shape == (1, 4 * lr.shape[1], 4 * lr.shape[2], 3)
    with Image.open(os.path.join(ROOT, "examples", "refsr", "hr.jpg")) as im:
        hr = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 255)[None]
    mse = float(((sr - hr) ** 2).mean())
    # the SR of this place, not noise nor a copy of the Ref (measured: 29.9 dB at 2 steps; bicubic 29.6 dB,
    # the Ref itself 14.5 dB)
    assert 10 * np.log10(1 / mse) > 25
