import json

import pytest
import torch
from safetensors.torch import save_file

from refsr.refsr_helpers import TINY, randomised
from sharp.refsr.checkpoint import load_dsdit, read_checkpoint, save_checkpoint
from sharp.refsr.config import DSDiTConfig


def test_round_trip_preserves_config_and_outputs(tmp_path):
    model = randomised(TINY, seed=3)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, extra={"training": {"step": 7}})
    loaded = load_dsdit(path)
    assert loaded.cfg == TINY
    assert json.loads(loaded.metadata["training"]) == {"step": 7}
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([0.4])
    assert torch.equal(loaded(x, t, x, x), model(x, t, x, x))


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = randomised(TINY)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model)
    cfg, state, meta = read_checkpoint(good)

    with pytest.raises(FileNotFoundError):
        load_dsdit(tmp_path / "nope.safetensors")
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"not a pickle we would ever read")
    with pytest.raises(ValueError, match="only .safetensors"):
        load_dsdit(pt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_dsdit(junk)
    with pytest.raises(ValueError, match="not a DS-DiT checkpoint"):
        load_dsdit(_write(tmp_path / "a.safetensors", state, {"format": "flux"}))
    with pytest.raises(ValueError, match="no 'dsdit_config'"):
        load_dsdit(_write(tmp_path / "b.safetensors", state, {"format": "dsdit", "format_version": "1"}))
    with pytest.raises(ValueError, match="version"):
        load_dsdit(_write(tmp_path / "v.safetensors", state, dict(meta, format_version="99")))
    bad_cfg = json.loads(meta["dsdit_config"])
    bad_cfg["wings"] = 2
    with pytest.raises(ValueError, match="unknown field"):
        load_dsdit(_write(tmp_path / "c.safetensors", state, dict(meta, dsdit_config=json.dumps(bad_cfg))))
    bad_cfg = dict(json.loads(meta["dsdit_config"]), dim="wide")
    with pytest.raises(ValueError, match="'dim' must be an integer"):
        load_dsdit(_write(tmp_path / "d.safetensors", state, dict(meta, dsdit_config=json.dumps(bad_cfg))))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dsdit(_write(tmp_path / "e.safetensors", state, dict(meta, dsdit_config="{oops")))
    # config says dim 32 but tensors are dim 16
    other = DSDiTConfig(dim=32, depth=2, heads=2, radius=1, encoder_depth=1, plw_hidden=4)
    with pytest.raises(ValueError, match="do not match its DS-DiT config"):
        load_dsdit(_write(tmp_path / "f.safetensors", state, dict(meta, dsdit_config=other.to_json())))
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match="missing"):
        load_dsdit(_write(tmp_path / "g.safetensors", partial, meta))


def test_sampling_default_travels_in_metadata(tmp_path):
    import numpy as np

    from refsr.refsr_helpers import smooth_image
    from sharp.refsr.api import default_temperature, super_resolve

    model = randomised(TINY)
    assert default_temperature(model) == 1.0
    path = tmp_path / "t0.safetensors"
    save_checkpoint(path, model, extra={"sampling_defaults": {"temperature": 0.0}})
    loaded = load_dsdit(path)
    assert default_temperature(loaded) == 0.0
    lr, ref = smooth_image(8, 8, 0), smooth_image(32, 32, 1)
    a = super_resolve(loaded, lr, ref, steps=2, seed=1)
    b = super_resolve(loaded, lr, ref, steps=2, seed=2)            # temperature 0: seed-free
    c = super_resolve(loaded, lr, ref, steps=2, seed=2, temperature=1.0)
    assert np.array_equal(a, b) and not np.allclose(a, c)
