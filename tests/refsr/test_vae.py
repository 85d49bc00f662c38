"""VAE files for latent-space training (diffusers folder, diffusers single file,
ComfyUI/original LDM single file), with a tiny random AutoencoderKL."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from refsr.refsr_helpers import write_triplets

diffusers = pytest.importorskip("diffusers", reason="the [latent] extra (diffusers) is not installed")

from sharp.cli import main  # noqa: E402
from sharp.refsr import load_dsdit, super_resolve  # noqa: E402
from sharp.refsr.config import DSDiTConfig  # noqa: E402
from sharp.refsr.vae import infer_config, load_vae  # noqa: E402


def tiny_vae(latent: int = 4):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32),
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                  latent_channels=latent, norm_num_groups=32,
                                  scaling_factor=0.5, shift_factor=0.1)
    with torch.no_grad():          # non-trivial everywhere
        for p in vae.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return vae.eval()


def to_ldm(sd: dict, n_up: int) -> dict:
    """diffusers AutoencoderKL names -> the original LDM names (as in ComfyUI VAE files),
    written from the LDM module layout (encoder.down.i.block.j, mid.block_1, mid.attn_1.q, ...)."""
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        n = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.", n)
        n = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.", n)
        n = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", n)
        n = n.replace(".mid_block.attentions.0.group_norm.", ".mid.attn_1.norm.")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            n = n.replace(f".mid_block.attentions.0.{a}.", f".mid.attn_1.{b}.")
        n = n.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        if ".attn_1." in n and n.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]                              # 1x1 convs in LDM
        out["first_stage_model." + n] = v.contiguous()
    return out


def _img(seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, size // 4, size // 4, generator=g),
                                           size=(size, size), mode="bilinear", align_corners=False)


def test_three_layouts_load_to_the_same_codec(tmp_path):
    vae = tiny_vae()
    folder = tmp_path / "diffusers"
    vae.save_pretrained(folder, safe_serialization=True)
    single = tmp_path / "single.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(single))
    ldm = tmp_path / "comfy_vae.safetensors"
    save_file(to_ldm(vae.state_dict(), 2), str(ldm))
    img = _img(0)
    with torch.no_grad():         # the codec's formulas, from the AutoencoderKL directly
        z_ref = (vae.encode(img * 2 - 1).latent_dist.mode() - 0.1) * 0.5
        dec_ref = ((vae.decode(z_ref / 0.5 + 0.1).sample + 1) / 2).clamp(0, 1)
    a = load_vae(folder)
    assert (a.channels, a.downscale) == (4, 2) and (a.scaling, a.shift) == (0.5, 0.1)
    torch.testing.assert_close(a.encode(img), z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.decode(z_ref), dec_ref, atol=1e-5, rtol=1e-5)
    for path in (single, ldm):    # files carry no config: factors given (4 channels: SD's default)
        b = load_vae(path, scaling=0.5, shift=0.1)
        torch.testing.assert_close(b.encode(img), z_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.decode(z_ref), dec_ref, atol=1e-5, rtol=1e-5)
    assert load_vae(ldm).scaling == pytest.approx(0.18215)
    cfg = infer_config(to_ldm(vae.state_dict(), 2))
    assert (cfg["block_out_channels"], cfg["layers_per_block"], cfg["latent_channels"],
            cfg["norm_num_groups"]) == ([32, 32], 1, 4, 32)


def test_bad_vae_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE not found"):
        load_vae(tmp_path / "none.safetensors")
    (tmp_path / "v.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only as .safetensors"):
        load_vae(tmp_path / "v.bin")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        load_vae(tmp_path / "other.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "empty")


def test_latent_training_with_a_vae_file(tmp_path, capsys):
    """train-refsr with a latent config and a ComfyUI-layout VAE file, then inference."""
    vae = tiny_vae()
    ldm = tmp_path / "vae.safetensors"
    save_file(to_ldm(vae.state_dict(), 2), str(ldm))
    cfg = DSDiTConfig(space="latent", latent_channels=4, latent_downscale=2, patch=2, dim=16,
                      depth=1, heads=2, plw_hidden=4, res_scale=1.0, predict="x1")
    cfg_file = tmp_path / "latent.json"
    cfg_file.write_text(cfg.to_json())
    data = write_triplets(tmp_path / "data", n=2, size=64)
    out = tmp_path / "m.safetensors"
    args = ["train-refsr", "--data", str(data), "--val", str(data), "--out", str(out),
            "--config", str(cfg_file), "--batch", "2", "--crop", "32", "--steps", "50",
            "--val-every", "50", "--no-fit-transfer"]
    assert main(args + ["--vae", str(ldm)]) == 0
    assert "val PSNR" in capsys.readouterr().out
    model = load_dsdit(out)
    assert model.cfg == cfg and "steps" in json.loads(model.metadata["sampling_defaults"])
    codec = load_vae(ldm)
    rng = np.random.default_rng(0)
    sr = super_resolve(model, rng.random((8, 8, 3), dtype=np.float32),
                       rng.random((32, 32, 3), dtype=np.float32), vae=codec)
    assert sr.shape == (32, 32, 3) and np.isfinite(sr).all()
    assert main(args + ["--vae", str(tmp_path / "missing.safetensors")]) == 2
    assert "VAE not found" in capsys.readouterr().err
    assert main(args[:-1] + ["--crop", "30", "--vae", str(ldm)]) == 2     # not whole tokens
