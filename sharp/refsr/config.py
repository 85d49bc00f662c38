"""DS-DiT model configuration: presets, JSON (de)serialisation and validation.

The config travels inside the checkpoint's safetensors metadata (key ``dsdit_config``) so a
checkpoint file fully describes the network it holds; `DSDiTConfig.from_dict` is the one place
that validates it, and every error names the offending field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

FORMAT = "dsdit"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DSDiTConfig:
    # Working space: "pixel" (pixel-unshuffle patches of the RGB image) or "latent" (a
    # caller-supplied VAE; `latent_channels` / `latent_downscale` must then match it).
    space: str = "pixel"
    latent_channels: int = 4
    latent_downscale: int = 8
    patch: int = 4           # tokens are patch x patch cells of the working-space grid
    dim: int = 32            # token width
    depth: int = 3           # DS-DiT blocks
    heads: int = 2
    radius: int = 1          # neighbourhood attention radius in tokens ((2r+1)^2 keys per source)
    mlp_ratio: float = 2.0
    encoder_depth: int = 1   # conv layers of the shared (Siamese) condition encoder
    plw_hidden: int = 8      # hidden channels of each Patch-Level Weighting module
    # Feed the Siamese encoder [image, image - GaussianBlur(image)] (issue 6): the Ref's detail
    # layer is then directly comparable to the residual the flow generates.
    cond_highpass: bool = False
    # How the Ref is aligned to the upsampled LR before tokenising (issue 6): "global" (one
    # shift + colour matching) or "local" (then a dense block-matching warp).
    ref_align: str = "global"
    # Add the per-pixel matching confidence (block NCC of Ref and upsampled LR) to the Ref
    # tokens, so attention and PLW know where the Ref can be trusted.
    ref_confidence: bool = False
    # The weak (no-Ref) prediction: "off" switches the Ref branch off (w = 1); "null" feeds the
    # upsampled LR as a null Ref with zero confidence, so the Ref and no-Ref predictions use the
    # same network capacity and differ only in the reference content.
    weak_ref: str = "off"
    # Flow target: "residual" (HR - up(LR), scaled by res_scale) or "direct" (the HR itself).
    target: str = "residual"
    res_scale: float = 15.0   # ~1 / std of the pixel residual in [-1, 1] units on RRSSRD
    # What the network outputs (issue 14): "v" (the velocity x1 - x0) or "x1" (the clean target
    # itself; the velocity is then (x1_hat - x_t) / (1 - t)). With "x1", one Euler step from
    # temperature-1 noise returns x1_hat(x0, t=0), the conditional-mean (PSNR-optimal) estimate,
    # on the training distribution; more steps give textured samples as before.
    predict: str = "v"
    scale: int = 4           # SR factor the checkpoint was trained for (x2 and x8 also run)

    @property
    def in_channels(self) -> int:
        """Channels of the working-space grid."""
        return 3 if self.space == "pixel" else self.latent_channels

    @property
    def unit(self) -> int:
        """Pixel size of one token: image sides must be multiples of this (callers pad)."""
        return self.patch * (1 if self.space == "pixel" else self.latent_downscale)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "DSDiTConfig":
        if not isinstance(data, dict):
            raise ValueError(f"DS-DiT config must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"DS-DiT config has unknown field(s) {unknown}; "
                             f"known fields: {sorted(known)}")
        kwargs = {}
        for name, value in data.items():
            want = known[name].type
            if want == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"DS-DiT config field {name!r} must be an integer, got {value!r}")
            if want == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"DS-DiT config field {name!r} must be a number, got {value!r}")
            if want == "bool" and not isinstance(value, bool):
                raise ValueError(f"DS-DiT config field {name!r} must be true/false, got {value!r}")
            if want == "str" and not isinstance(value, str):
                raise ValueError(f"DS-DiT config field {name!r} must be a string, got {value!r}")
            kwargs[name] = float(value) if want == "float" else value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "DSDiTConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"DS-DiT config metadata is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        if self.space not in ("pixel", "latent"):
            raise ValueError(f"config.space must be 'pixel' or 'latent', got {self.space!r}")
        if self.ref_align not in ("global", "local"):
            raise ValueError(f"config.ref_align must be 'global' or 'local', got {self.ref_align!r}")
        if self.weak_ref not in ("off", "null"):
            raise ValueError(f"config.weak_ref must be 'off' or 'null', got {self.weak_ref!r}")
        if self.predict not in ("v", "x1"):
            raise ValueError(f"config.predict must be 'v' or 'x1', got {self.predict!r}")
        if self.target not in ("residual", "direct"):
            raise ValueError(f"config.target must be 'residual' or 'direct', got {self.target!r}")
        for name in ("patch", "dim", "depth", "heads", "encoder_depth", "plw_hidden",
                     "latent_channels", "latent_downscale", "scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.{name} must be >= 1, got {getattr(self, name)}")
        if self.radius < 0:
            raise ValueError(f"config.radius must be >= 0, got {self.radius}")
        if self.dim % self.heads:
            raise ValueError(f"config.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.mlp_ratio <= 0 or self.res_scale <= 0:
            raise ValueError("config.mlp_ratio and config.res_scale must be positive")


# Presets for `train-refsr --config`. small: the shipped CPU model; base/large: GPU training.
PRESETS = {
    "small": DSDiTConfig(cond_highpass=True),  # ~0.1M parameters: ~40 min on one CPU core
    # small + issue 6's matching aids: local alignment, confidence tokens, null-Ref weak path
    "small-match": DSDiTConfig(cond_highpass=True, ref_align="local", ref_confidence=True,
                               weak_ref="null"),
    # issue 14: small-match 6x wider/deeper, predicting x1 (one-step conditional-mean estimate)
    "medium-match": DSDiTConfig(cond_highpass=True, ref_align="local", ref_confidence=True,
                                weak_ref="null", predict="x1", dim=64, depth=4, heads=4,
                                encoder_depth=4, plw_hidden=16),
    "base": DSDiTConfig(cond_highpass=True, dim=192, depth=8, heads=6, radius=3, mlp_ratio=4.0, encoder_depth=3,
                        plw_hidden=64),
    "large": DSDiTConfig(space="latent", latent_channels=16, latent_downscale=8, patch=2,
                         dim=768, depth=16, heads=12, radius=6, mlp_ratio=4.0, encoder_depth=4,
                         plw_hidden=128, target="residual", res_scale=1.0),
}
