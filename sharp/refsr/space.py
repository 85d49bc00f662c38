"""Working spaces: where the flow runs, and how images map to and from it.

* pixel: the grid is the RGB image mapped to [-1, 1] (the model pixel-unshuffles it into patches).
* latent: the grid is the latent of a caller-supplied VAE (in ComfyUI, the VAE input).

The flow target x1 is, by default, the residual over the upsampled LR in the working space,
    x1 = res_scale * (E(HR) - E(up(LR))),
because the upsampled LR already carries the low frequencies: the network only has to model the
missing detail, a zero-mean signal of small amplitude that res_scale brings to about unit
variance. For a tiny CPU model this is far easier than generating the whole image, and a
network that outputs ~0 degrades gracefully to bicubic. ("direct": x1 = res_scale * E(HR).)
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from .config import DSDiTConfig


class LatentCodec(Protocol):
    """What a VAE must offer: images [B, 3, H, W] in [0, 1] <-> latents [B, C, H/d, W/d]."""

    channels: int
    downscale: int

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class CallableVAE:
    """Wrap two callables (e.g. around ComfyUI's VAE) as a LatentCodec."""

    def __init__(self, encode: Callable, decode: Callable, channels: int, downscale: int):
        self._encode, self._decode = encode, decode
        self.channels, self.downscale = channels, downscale

    @classmethod
    def channels_last(cls, encode: Callable, decode: Callable, channels: int,
                      downscale: int) -> "CallableVAE":
        """For VAEs that take/return images as [B, H, W, 3] (ComfyUI's VAE.encode/decode):
        CallableVAE.channels_last(vae.encode, vae.decode, vae.latent_channels, vae.downscale_ratio)"""
        return cls(lambda im: encode(im.permute(0, 2, 3, 1)),
                   lambda z: decode(z).permute(0, 3, 1, 2), channels, downscale)

    def encode(self, images):
        return self._encode(images)

    def decode(self, latents):
        return self._decode(latents)


class WorkingSpace:
    def __init__(self, cfg: DSDiTConfig, vae: LatentCodec | None = None):
        self.cfg = cfg
        if cfg.space == "latent":
            if vae is None:
                raise ValueError("this DS-DiT checkpoint works in a VAE latent space: pass vae=... "
                                 "(in ComfyUI connect the VAE input)")
            if int(vae.channels) != cfg.latent_channels or int(vae.downscale) != cfg.latent_downscale:
                raise ValueError(
                    f"VAE has {vae.channels} channels / downscale {vae.downscale}, the checkpoint "
                    f"needs {cfg.latent_channels} / {cfg.latent_downscale}: use the VAE it was "
                    "trained with")
        self.vae = vae if cfg.space == "latent" else None

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [0, 1] -> grid [B, C, H/d, W/d]."""
        if self.vae is None:
            return img * 2.0 - 1.0
        return self.vae.encode(img)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Grid -> image [B, 3, H, W] in [0, 1]."""
        if self.vae is None:
            return ((z + 1.0) * 0.5).clamp(0.0, 1.0)
        return self.vae.decode(z).clamp(0.0, 1.0)

    def target(self, hr_z: torch.Tensor, up_z: torch.Tensor) -> torch.Tensor:
        """Flow target x1 from encoded HR and encoded up(LR)."""
        if self.cfg.target == "residual":
            return self.cfg.res_scale * (hr_z - up_z)
        return self.cfg.res_scale * hr_z

    def untarget(self, x1: torch.Tensor, up_z: torch.Tensor) -> torch.Tensor:
        """Inverse of `target`: grid of the SR image."""
        if self.cfg.target == "residual":
            return up_z + x1 / self.cfg.res_scale
        return x1 / self.cfg.res_scale
