"""The GPU training paths, tested on the CPU (no GPU here): bf16 autocast, torchrun data-parallel
(gloo, 2 processes == 1 process with the same global batch) and config files."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from refsr.refsr_helpers import TINY_MATCH, write_triplets
from sharp.cli import main
from sharp.refsr.config import DSDiTConfig
from sharp.refsr.train import train

REPO = Path(__file__).resolve().parents[2]
TINY_X1 = DSDiTConfig(**{**json.loads(TINY_MATCH.to_json()), "predict": "x1"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(data, cfg_file, out, steps):
    return ["-m", "sharp", "train-refsr", "--data", str(data), "--out", str(out),
            "--config", str(cfg_file), "--batch", "4", "--crop", "32", "--steps", str(steps),
            "--save-every", "1000", "--no-fit-transfer", "--no-resume", "--lr", "3e-3",
            "--ref-as-target", "--t0-prob", "0.3"]


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_torchrun_two_processes_match_one_process(tmp_path):
    """Same seed and global batch 4: 1 process vs torchrun --nproc_per_node 2 (gloo, 2 x 2
    samples). The logged losses (global-batch means) and the final weights agree to float
    round-off; a different seed does not, so the comparison can fail."""
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    data = write_triplets(tmp_path / "data", n=2, size=64)
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(TINY_X1.to_json())
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    _run([sys.executable] + _train_cmd(data, cfg_file, one, 100), tmp_path)
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
             + _train_cmd(data, cfg_file, two, 100), tmp_path)
    assert "2 process(es)" in r.stdout
    h1 = json.loads(Path(str(one) + ".state.json").read_text())["history"]
    h2 = json.loads(Path(str(two) + ".state.json").read_text())["history"]
    assert [h["step"] for h in h1] == [h["step"] for h in h2] == [50, 100]
    for a, b in zip(h1, h2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    w1, w2 = load_file(str(one)), load_file(str(two))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=2e-5, rtol=1e-4)
    assert float(w1["out.weight"].abs().max()) > 0     # it trained (the output layer starts at 0)
    # a control: another seed gives a different curve
    other = tmp_path / "other.safetensors"
    _run([sys.executable] + _train_cmd(data, cfg_file, other, 50) + ["--seed", "1"], tmp_path)
    h3 = json.loads(Path(str(other) + ".state.json").read_text())["history"]
    assert h3[0]["loss"] != pytest.approx(h1[0]["loss"], rel=1e-4)


def test_bf16_autocast_training_runs_in_bf16(tmp_path):
    data = write_triplets(tmp_path / "data", n=2, size=64)
    seen = set()
    real_linear = torch.nn.functional.linear

    def spy(x, w, b=None):
        out = real_linear(x, w, b)
        seen.add(out.dtype)
        return out

    torch.nn.functional.linear = spy
    try:
        info = train([str(data)], tmp_path / "bf16.safetensors", config=TINY_X1, steps=50, batch=2,
                     crop=32, save_every=1000, progress=False, fit_transfer=False,
                     precision="bf16", log=lambda m: None)
    finally:
        torch.nn.functional.linear = real_linear
    assert torch.bfloat16 in seen                          # autocast was on
    loss = info["history"][-1]["loss"]
    assert loss == loss and loss < 10                      # finite
    sd = load_file(str(tmp_path / "bf16.safetensors"))
    assert all(v.dtype == torch.float32 for v in sd.values())   # weights stay float32
    with pytest.raises(ValueError, match="precision"):
        train([str(data)], tmp_path / "x.safetensors", config=TINY_X1, steps=1, precision="fp16")


def test_config_file_and_bad_config(tmp_path, capsys):
    data = write_triplets(tmp_path / "data", n=2, size=64)
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(TINY_X1.to_json())
    out = tmp_path / "m.safetensors"
    assert main(["train-refsr", "--data", str(data), "--out", str(out), "--config", str(cfg_file),
                 "--batch", "2", "--crop", "32", "--steps", "2", "--no-fit-transfer"]) == 0
    from sharp.refsr import load_dsdit
    assert load_dsdit(out).cfg == TINY_X1
    assert main(["train-refsr", "--data", str(data), "--out", str(out), "--config", "huge"]) == 2
    assert "--config must be one of" in capsys.readouterr().err
    assert main(["train-refsr", "--data", str(data), "--out", str(out), "--config", "large"]) == 2
    assert "--vae" in capsys.readouterr().err
