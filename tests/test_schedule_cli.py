"""Flux schedule helpers and the `python -m sharp` commands."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharp import schedule
from sharp.cli import main
from reference_rope import np_frequencies

ROOT = Path(__file__).resolve().parents[1]


def test_flux_sigmas_follow_the_shift_formula():
    sig = schedule.flux_sigmas(28, mu=1.15)
    assert sig.shape == (29,) and sig[0] == 1.0 and sig[-1] == 0.0
    assert np.all(np.diff(sig) < 0)
    t = np.linspace(1, 0, 29)[1:-1]
    np.testing.assert_allclose(sig[1:-1], math.exp(1.15) / (math.exp(1.15) + 1 / t - 1), rtol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        schedule.flux_sigmas(0)


def test_resolution_shift_matches_comfyui_endpoints():
    assert schedule.flux_resolution_mu(1024, 1024) == pytest.approx(1.15)
    assert schedule.flux_resolution_mu(256, 256) == pytest.approx(0.5)
    assert schedule.flux_resolution_mu(2048, 2048) == pytest.approx(0.5 + (16384 - 256) * 0.65 / 3840)


def test_tokens_for_pixels():
    assert [schedule.tokens_for_pixels(p) for p in (1024, 2048, 2560, 3756, 4096, 1000)] == [64, 128, 160, 235, 256, 63]


@pytest.mark.parametrize("method", ("sharp", "dype", "yarn", "base"))
def test_rope_schedule_per_step_matches_formulas(method):
    sched = schedule.rope_schedule(3756, 2560, method, steps=12)
    assert [a.tokens for a in sched.axes] == [160, 235]
    for axis in sched.axes:
        s = axis.tokens / 64
        assert axis.scale == pytest.approx(s)
        base = np_frequencies(56, 1e4, s, 1.0, "base")
        for i, t in enumerate(sched.t):
            np.testing.assert_allclose(axis.ratio[i], np_frequencies(56, 1e4, s, t, method) / base, rtol=1e-6)
    if method == "sharp":
        np.testing.assert_allclose(sched.kappa, [t / (4 - 3 * t) for t in sched.t], rtol=1e-12)
    if method in ("yarn", "base"):
        assert sched.kappa == [None] * 12


def test_cli_schedule_prints_axes_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "sched.png"
    assert main(["schedule", "--width", "3756", "--height", "2560", "--steps", "8", "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "L =  160 tokens, s = 2.5000" in text and "L =  235 tokens, s = 3.6719" in text
    assert len([ln for ln in text.splitlines() if ln[:4].strip().isdigit()]) == 8
    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 300


def test_cli_schedule_small_image_is_stock(capsys):
    assert main(["schedule", "--width", "512", "--height", "1024", "--steps", "4"]) == 0
    assert capsys.readouterr().out.count("stock RoPE (s <= 1)") == 2


def test_cli_spectrum_ranks_sharp_over_blurred(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sharp_img = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    blurred = Image.fromarray(sharp_img).resize((24, 24), Image.BICUBIC).resize((96, 96), Image.BICUBIC)
    Image.fromarray(sharp_img).save(tmp_path / "detail.png")
    blurred.save(tmp_path / "blur.png")
    plot = tmp_path / "spec.png"
    assert main(["spectrum", str(tmp_path / "detail.png"), str(tmp_path / "blur.png"), "--plot", str(plot)]) == 0
    rows = {ln.split()[0]: float(ln.split()[-1]) for ln in capsys.readouterr().out.splitlines()
            if ln.endswith(tuple("0123456789")) and "x" in ln}
    assert rows["detail.png"] > 3 * rows["blur.png"]
    assert plot.stat().st_size > 1000


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["spectrum", str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["spectrum", str(tmp_path / "bad.png")]) == 2
    assert "not an image file" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 40, 3), np.uint8)).save(tmp_path / "tiny.png")
    assert main(["spectrum", str(tmp_path / "tiny.png")]) == 2
    assert "at least 8x8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["schedule", "--width", "1024", "--height", "1024", "--method", "bogus"])


def test_every_command_has_help():
    from sharp.cli import COMMANDS

    names = [c.replace("_", "-") for c in COMMANDS]
    for name in names:
        r = subprocess.run([sys.executable, "-m", "sharp", name, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "usage: python -m sharp " + name in r.stdout, r.stderr


def test_cli_refsr_rejects_unreadable_inputs_clearly(tmp_path, capsys):
    (tmp_path / "bad.png").write_text("not an image")
    ref = str(ROOT / "examples" / "refsr" / "ref.jpg")
    assert main(["refsr", "--lr", str(tmp_path / "bad.png"), "--ref", ref, "--out", str(tmp_path / "o.png")]) == 2
    assert "not an image file" in capsys.readouterr().err
    assert main(["refsr", "--lr", str(tmp_path / "none.png"), "--ref", ref, "--out", str(tmp_path / "o.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
