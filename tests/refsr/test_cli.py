import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refsr.refsr_helpers import write_triplets
from sharp.cli import main
from sharp.refsr import DEFAULT_CHECKPOINT, load_dsdit

REPO = Path(__file__).resolve().parents[2]


def test_train_then_resume_then_infer(tmp_path, capsys):
    data = write_triplets(tmp_path / "data", n=2, size=64)
    ckpt = tmp_path / "run" / "m.safetensors"
    args = ["train-refsr", "--data", str(data), "--val", str(data), "--out", str(ckpt),
            "--batch", "2", "--crop", "32", "--save-every", "2", "--val-every", "50"]
    assert main(args + ["--steps", "2"]) == 0
    state = json.loads(Path(str(ckpt) + ".state.json").read_text())
    assert state["step"] == 2
    assert main(args + ["--steps", "4"]) == 0                   # resumes, does not restart
    state = json.loads(Path(str(ckpt) + ".state.json").read_text())
    assert state["step"] == 4
    assert "resumed from step 2" in capsys.readouterr().out
    out = tmp_path / "sr.png"
    assert main(["refsr", "--lr", str(data / "LR" / "t0.png"), "--ref", str(data / "Ref" / "t0.png"),
                 "--out", str(out), "--ckpt", str(ckpt), "--steps", "2"]) == 0
    assert Image.open(out).size == (64, 64)


def test_cli_errors(tmp_path, capsys):
    assert main(["refsr", "--lr", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.png")]) == 2
    assert "no such image" in capsys.readouterr().err
    assert main(["train-refsr", "--data", str(tmp_path), "--out", str(tmp_path / "x.pt")]) == 2


def test_shipped_checkpoint_is_small_and_loads():
    assert DEFAULT_CHECKPOINT.is_file(), "the small DS-DiT checkpoint must ship with sharp"
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2 ** 20
    model = load_dsdit(DEFAULT_CHECKPOINT)
    assert model.cfg.space == "pixel" and model.cfg.scale == 4


def test_fresh_machine_main_command(tmp_path):
    """The README's main command, as a subprocess, with the shipped checkpoint and example."""
    ex = REPO / "examples" / "refsr"
    if not (ex / "lr.jpg").is_file():
        pytest.skip("example triplet not present")
    out = tmp_path / "sr.png"
    r = subprocess.run([sys.executable, "-m", "sharp", "refsr", "--lr", str(ex / "lr.jpg"),
                        "--ref", str(ex / "ref.jpg"), "--out", str(out), "--steps", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lr = Image.open(ex / "lr.jpg")
    assert Image.open(out).size == (4 * lr.size[0], 4 * lr.size[1])
    assert np.asarray(Image.open(out)).std() > 1


def test_calibrate_command(tmp_path, capsys):
    from sharp.refsr.checkpoint import save_checkpoint
    from sharp.refsr.model import DSDiT
    from refsr.refsr_helpers import TINY

    data = write_triplets(tmp_path / "data", n=2, size=64)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, DSDiT(TINY))
    out = tmp_path / "cal.safetensors"
    assert main(["calibrate-refsr", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out),
                 "--steps", "1"]) == 0
    assert "fitted on 2 images" in capsys.readouterr().out
    defaults = json.loads(load_dsdit(out).metadata["sampling_defaults"])
    assert 0.0 <= defaults["ref_transfer"] <= 1.0 and defaults["ref_transfer_fit"]["images"] == 2
    assert main(["calibrate-refsr", "--ckpt", str(ckpt), "--data", str(data), "--out", "x.pt"]) == 2
    assert main(["calibrate-refsr", "--ckpt", str(tmp_path / "none.safetensors"), "--data", str(data)]) == 2
    assert "not found" in capsys.readouterr().err
