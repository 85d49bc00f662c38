"""VAE files for latent-space DS-DiT (`train-refsr --config large --vae PATH`).

`load_vae(path)` reads an AutoencoderKL with the optional `diffusers` package (extra
`[latent]`) from
  * a diffusers folder (config.json + diffusion_pytorch_model.safetensors),
  * a single .safetensors file in the diffusers layout (encoder.down_blocks.*), or
  * a single .safetensors file in the original LDM layout that ComfyUI's models/vae files use
    (encoder.down.*; optional "first_stage_model." / "vae." prefix: SD 1.x/2.x/XL, Flux ae).
Single files carry no config: the architecture is read off the tensor shapes. Safetensors only.
The result is a LatentCodec (sharp.refsr.space): images [B, 3, H, W] in [0, 1] <-> latents
(z - shift) * scaling, the normalisation the diffusion models of that VAE use.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

# latent channels -> (scaling_factor, shift_factor) of the usual VAEs: SD 1.x/2.x (4), Flux (16)
KNOWN_FACTORS = {4: (0.18215, 0.0), 16: (0.3611, 0.1159)}


def _diffusers():
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("loading a VAE file needs the diffusers package: pip install diffusers "
                          "(or pip install 'comfyui-sharp[latent]')") from None
    return AutoencoderKL


def _strip_prefix(sd: dict) -> dict:
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix + "encoder.") for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def infer_config(sd: dict) -> dict:
    """AutoencoderKL config from the tensors of either layout (prefixes stripped)."""
    sd = _strip_prefix(sd)
    ldm = any(k.startswith("encoder.down.") for k in sd)
    if ldm:
        pat, res = r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight", "encoder.down.{}.block.0.conv2.weight"
    else:
        pat, res = (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight",
                    "encoder.down_blocks.{}.resnets.0.conv2.weight")
    blocks: dict[int, set] = {}
    for k in sd:
        m = re.fullmatch(pat, k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks:
        raise ValueError("not an AutoencoderKL state dict: no encoder down blocks found "
                         "(expected encoder.down.* or encoder.down_blocks.* tensors)")
    n = len(blocks)
    channels = [int(sd[res.format(i)].shape[0]) for i in range(n)]
    latent = int(sd["decoder.conv_in.weight"].shape[1])
    # GroupNorm's group count is not stored in the weights: 32 (every released AutoencoderKL),
    # or the largest count up to 32 that divides every width
    norm_groups = max(g for g in range(1, 33) if all(c % g == 0 for c in channels))
    scaling, shift = KNOWN_FACTORS.get(latent, (1.0, 0.0))
    return {"in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": channels, "layers_per_block": len(blocks[0]),
            "latent_channels": latent, "norm_num_groups": norm_groups,
            "use_quant_conv": "quant_conv.weight" in sd,
            "use_post_quant_conv": "post_quant_conv.weight" in sd,
            "scaling_factor": scaling, "shift_factor": shift}


class DiffusersVAE:
    """LatentCodec around a diffusers AutoencoderKL (deterministic: the posterior mode)."""

    def __init__(self, vae, scaling: float, shift: float):
        self.vae = vae.eval().requires_grad_(False)
        self.scaling, self.shift = float(scaling), float(shift)
        self.channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def payload(self) -> dict:
        """This codec as plain data (AutoencoderKL config, safetensors bytes, normalisation),
        to rebuild it elsewhere with from_payload (e.g. in a Ray worker)."""
        from safetensors.torch import save

        from .checkpoint import cpu_state
        tensors = save(cpu_state(self.vae.state_dict()))
        return {"config": dict(self.vae.config), "tensors": tensors, "scaling": self.scaling,
                "shift": self.shift}

    @classmethod
    def from_payload(cls, payload: dict, device: str = "cpu") -> "DiffusersVAE":
        """The codec payload() describes (needs diffusers)."""
        from safetensors.torch import load
        vae = _diffusers().from_config(payload["config"])
        vae.load_state_dict(load(payload["tensors"]))
        return cls(vae.to(device), payload["scaling"], payload["shift"])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, next(self.vae.parameters()).dtype) * 2.0 - 1.0
        z = self.vae.encode(x).latent_dist.mode()
        return ((z - self.shift) * self.scaling).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, next(self.vae.parameters()).dtype) / self.scaling + self.shift
        return ((self.vae.decode(z).sample.float() + 1.0) * 0.5).clamp(0.0, 1.0)


def load_vae(path, device: str = "cpu", scaling: float | None = None,
             shift: float | None = None) -> DiffusersVAE:
    """A LatentCodec from a diffusers folder or a .safetensors VAE file (see the module doc).
    scaling/shift default to the folder's config, else to the usual values for the latent
    channel count (4: SD, 16: Flux), else 1/0. device "cuda" under torchrun: this rank's GPU."""
    AutoencoderKL = _diffusers()
    path = Path(path)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: a diffusers VAE folder needs config.json")
        if not list(path.glob("*.safetensors")):
            raise ValueError(f"{path}: no .safetensors weights (pickled .bin files are not loaded)")
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        conf_scaling, conf_shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: VAE files are loaded only as .safetensors (never pickles)")
        sd = _strip_prefix(load_file(str(path)))
        config = infer_config(sd)
        if any(k.startswith("encoder.down.") for k in sd):          # ComfyUI / original layout
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            sd = convert_ldm_vae_checkpoint(sd, config)
        vae = AutoencoderKL(**config)
        missing, unexpected = vae.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: VAE tensors do not fit an AutoencoderKL: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        conf_scaling, conf_shift = config["scaling_factor"], config["shift_factor"]
    else:
        raise FileNotFoundError(f"VAE not found: {path}")
    return DiffusersVAE(vae.to(device), conf_scaling if scaling is None else scaling,
                        conf_shift if shift is None else shift)
