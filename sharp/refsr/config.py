"""DS-DiT model configuration: presets, JSON (de)serialisation and validation.

The config travels inside the checkpoint's safetensors metadata (key ``dsdit_config``) so a
checkpoint file fully describes the network it holds; `DSDiTConfig.from_dict` is the one place
that validates it, and every error names the offending field.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

FORMAT = "dsdit"
FORMAT_VERSION = 1

MAX_CONFIG_CHARS = 65536
"""Longest `dsdit_config` metadata string read (a real one is ~500 characters)."""


@dataclass(frozen=True)
class DSDiTConfig:
    # Working space: "pixel" (pixel-unshuffle patches of the RGB image) or "latent" (a
    # caller-supplied VAE; `latent_channels` / `latent_downscale` must then match it).
    space: str = "pixel"
    latent_channels: int = 4      # [1, 64]
    latent_downscale: int = 8     # [1, 64]
    patch: int = 4           # [1, 32]; tokens are patch x patch cells of the working-space grid
    dim: int = 32            # [1, 4096]; token width
    depth: int = 3           # [1, 128]; DS-DiT blocks
    heads: int = 2           # [1, 128]; divides dim
    radius: int = 1          # [0, 32]; neighbourhood attention radius in tokens ((2r+1)^2 keys)
    mlp_ratio: float = 2.0   # (0, 16], finite
    encoder_depth: int = 1   # [1, 64]; conv layers of the shared (Siamese) condition encoder
    plw_hidden: int = 8      # [1, 4096]; hidden channels of each Patch-Level Weighting module
    # Feed the Siamese encoder [image, image - GaussianBlur(image)]: the Ref's detail
    # layer is then directly comparable to the residual the flow generates.
    cond_highpass: bool = False
    # How the Ref is aligned to the upsampled LR before tokenising: "global" (one
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
    res_scale: float = 15.0   # (0, 1e4], finite; ~1 / std of the pixel residual in [-1, 1] on RRSSRD
    # What the network outputs: "v" (the velocity x1 - x0) or "x1" (the clean target itself; the
    # velocity is then (x1_hat - x_t) / (1 - t)). With "x1", one Euler step from temperature-1 noise
    # returns x1_hat(x0, tau=0), the conditional-mean (PSNR-optimal) estimate, on the training
    # distribution; more steps give textured samples as before.
    predict: str = "v"
    scale: int = 4           # [1, 16]; SR factor the checkpoint was trained for (x2, x8 also run)

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
                raise ValueError(f"DS-DiT config field {name!r} must be an integer, got {short_repr(value)}")
            if want == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"DS-DiT config field {name!r} must be a number, got {short_repr(value)}")
            if want == "bool" and not isinstance(value, bool):
                raise ValueError(f"DS-DiT config field {name!r} must be true/false, got {short_repr(value)}")
            if want == "str" and not isinstance(value, str):
                raise ValueError(f"DS-DiT config field {name!r} must be a string, got {short_repr(value)}")
            kwargs[name] = float(value) if want == "float" else value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    @classmethod
    def from_json(cls, text: str) -> "DSDiTConfig":
        if not isinstance(text, str) or len(text) > MAX_CONFIG_CHARS:
            raise ValueError(f"DS-DiT config metadata must be a JSON string of at most "
                             f"{MAX_CONFIG_CHARS} characters")
        data = parse_json_object(text, "DS-DiT config metadata")
        return cls.from_dict(data)

    def validate(self) -> None:
        if self.space not in ("pixel", "latent"):
            raise ValueError(f"config.space must be 'pixel' or 'latent', got {short_repr(self.space)}")
        if self.ref_align not in ("global", "local"):
            raise ValueError(f"config.ref_align must be 'global' or 'local', got {short_repr(self.ref_align)}")
        if self.weak_ref not in ("off", "null"):
            raise ValueError(f"config.weak_ref must be 'off' or 'null', got {short_repr(self.weak_ref)}")
        if self.predict not in ("v", "x1"):
            raise ValueError(f"config.predict must be 'v' or 'x1', got {short_repr(self.predict)}")
        if self.target not in ("residual", "direct"):
            raise ValueError(f"config.target must be 'residual' or 'direct', got {short_repr(self.target)}")
        for name, (lo, hi) in INT_BOUNDS.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"config.{name} must be in [{lo}, {hi}], got {short_repr(value)}")
        for name, hi in FLOAT_BOUNDS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= hi):
                raise ValueError(f"config.{name} must be a finite number in (0, {hi:g}], got {short_repr(value)}")
        if self.dim % self.heads:
            raise ValueError(f"config.dim ({self.dim}) must be divisible by heads ({self.heads})")


# Bounds of the config fields (also in the comments beside them): far above any useful network
# (the "large" preset is dim 768, depth 16), low enough that a config alone cannot ask for
# terabytes. The tensors must match them as well (checkpoint.check_header_shapes).
INT_BOUNDS = {"latent_channels": (1, 64), "latent_downscale": (1, 64), "patch": (1, 32),
              "dim": (1, 4096), "depth": (1, 128), "heads": (1, 128), "radius": (0, 32),
              "encoder_depth": (1, 64), "plw_hidden": (1, 4096), "scale": (1, 16)}
FLOAT_BOUNDS = {"mlp_ratio": 16.0, "res_scale": 1e4}   # (0, hi], finite


# Sampling settings: the super_resolve arguments and the checkpoint's "sampling_defaults" metadata
# (chosen at training time) are checked against the same closed ranges.
SAMPLING_BOUNDS = {"guidance": (0.0, 100.0), "temperature": (0.0, 10.0), "ref_transfer": (0.0, 10.0),
                   "steps": (1, 1000)}


def check_number(name: str, value, lo: float, hi: float, where: str = "") -> float:
    """float(value) if it is a finite number in [lo, hi], else a ValueError naming `name` (and `where`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        number = float(value) if ok or hasattr(value, "__float__") else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and lo <= number <= hi):
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}{name} must be a finite number in [{lo:g}, {hi:g}], got {short_repr(value)}")
    return number


def short_repr(value, limit: int = 60) -> str:
    """repr of a value read from a file, cut to `limit` characters (errors never echo a whole file)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json_object(text: str, what: str) -> dict:
    """json.loads(text) as a dict; malformed or too deeply nested JSON is a ValueError naming `what`."""
    try:
        data = json.loads(text)
    except ValueError as err:   # JSONDecodeError, or an integer of more than 4300 digits
        raise ValueError(f"{what} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


# Presets for `train-refsr --config`. medium-match: the shipped CPU model; small: the previous
# shipped model's shape (its checkpoints carry their own config); base/large: GPU training.
PRESETS = {
    "small": DSDiTConfig(cond_highpass=True),  # ~0.1M parameters: ~40 min on one CPU core
    # 655k parameters, predicting x1 (the one-step conditional-mean estimate), with the matching aids:
    # the locally aligned Ref, its matching-confidence tokens, and the upsampled LR as a null Ref for
    # the weak (no-Ref) path
    "medium-match": DSDiTConfig(cond_highpass=True, ref_align="local", ref_confidence=True,
                                weak_ref="null", predict="x1", dim=64, depth=4, heads=4,
                                encoder_depth=4, plw_hidden=16),
    "base": DSDiTConfig(cond_highpass=True, dim=192, depth=8, heads=6, radius=3, mlp_ratio=4.0, encoder_depth=3,
                        plw_hidden=64),
    "large": DSDiTConfig(space="latent", latent_channels=16, latent_downscale=8, patch=2,
                         dim=768, depth=16, heads=12, radius=6, mlp_ratio=4.0, encoder_depth=4,
                         plw_hidden=128, target="residual", res_scale=1.0),
}
