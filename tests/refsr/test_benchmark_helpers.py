"""The across-checkpoint bookkeeping of benchmarks/refsr.py (the Ref-effect and seed-spread verdicts rest on it)."""
import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_refsr", Path(__file__).resolve().parents[2] / "benchmarks" / "refsr.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_child_argv_replaces_checkpoints_and_outputs():
    argv = ["--limit", "40", "--ckpt", "a.safetensors", "b.safetensors", "--jobs", "2",
            "--json", "all.json", "--figure", "f.png", "--steps", "20"]
    first = bench._child_argv(argv, "a.safetensors", "0.json", True)
    assert first == ["--limit", "40", "--figure", "f.png", "--steps", "20",
                     "--ckpt", "a.safetensors", "--json", "0.json"]
    second = bench._child_argv(argv, "b.safetensors", "1.json", False)
    assert second == ["--limit", "40", "--steps", "20", "--ckpt", "b.safetensors", "--json", "1.json",
                      "--no-memory"]


def _result(weak, ref, wrong, gain=0.1):
    return {"checkpoint": "x.safetensors", "images": 2,
            "metrics": {"weak": {"psnr": weak}, "ref": {"psnr": ref}, "wrong-ref": {"psnr": wrong}},
            "ref_minus_weak_db": {"mean": ref - weak}, "ref_effect_db": ref - wrong,
            "network_ref_effect_db": None, "ref_transfer": gain,
            "plw_mean_w": {"true": 0.5, "wrong": 0.6}}


def test_seed_spread_and_verdict(tmp_path, capsys):
    results = [_result(28.0, 28.3, 28.1), _result(28.1, 28.3, 28.2), _result(28.0, 28.2, 28.1)]
    table = bench.seed_spread(results)
    assert table["ref_minus_weak"]["per_checkpoint"] == pytest.approx([0.3, 0.2, 0.2])
    assert table["ref_minus_weak"]["mean"] == pytest.approx(0.7 / 3)
    assert table["ref_minus_weak"]["spread_max_minus_min"] == pytest.approx(0.1)
    assert table["ref_effect"]["per_checkpoint"] == pytest.approx([0.2, 0.1, 0.1])
    assert "network_ref_effect" not in table                   # not measured: not tabulated
    # a variant only some checkpoints ran is left out of the table
    results[0]["metrics"]["ref+AG"] = {"psnr": 28.0}
    assert "ref+AG" not in bench.seed_spread(results)
    assert bench.summarise_checkpoints(results, str(tmp_path / "t.json")) == 0
    assert "margin larger than the spread" in capsys.readouterr().out
    # a margin inside the spread is reported as such
    noisy = [_result(28.0, 28.5, 28.1), _result(28.0, 28.0, 28.0), _result(28.0, 28.1, 28.0)]
    bench.summarise_checkpoints(noisy)
    assert "NOT larger than the spread" in capsys.readouterr().out
