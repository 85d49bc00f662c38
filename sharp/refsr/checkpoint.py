"""DS-DiT checkpoints: safetensors only, with the config as JSON in the file's metadata.

Metadata keys: "format" = "dsdit", "format_version" = "1", "dsdit_config" = config JSON, plus
free-form extras (e.g. "training" summary). Loading validates all of it and the tensor names and
shapes against the network the config describes; every failure is a ValueError that says what
is wrong with which file. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import FORMAT, FORMAT_VERSION, DSDiTConfig
from .model import DSDiT


def save_checkpoint(path: str | Path, model: DSDiT, extra: dict | None = None,
                    state_dict: dict | None = None) -> None:
    """Write model (or a given state_dict of it, e.g. EMA weights) + config to safetensors."""
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "dsdit_config": model.cfg.to_json()}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> tuple[DSDiTConfig, dict, dict]:
    """(config, state_dict, metadata) of a DS-DiT safetensors file, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DS-DiT checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: DS-DiT loads only .safetensors checkpoints (never pickles)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a DS-DiT checkpoint (metadata 'format' is "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path}: DS-DiT checkpoint format version {meta.get('format_version')!r}"
                         f" is not supported (this code reads version {FORMAT_VERSION})")
    if "dsdit_config" not in meta:
        raise ValueError(f"{path}: DS-DiT checkpoint has no 'dsdit_config' metadata")
    try:
        cfg = DSDiTConfig.from_json(meta["dsdit_config"])
    except ValueError as err:
        raise ValueError(f"{path}: invalid DS-DiT config: {err}") from None
    return cfg, state, meta


def check_state(cfg: DSDiTConfig, state: dict, model: DSDiT, where: str = "checkpoint") -> None:
    """Raise ValueError if tensor names/shapes differ from the network `cfg` describes."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(want[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("wrong shape " + ", ".join(
                f"{k} {tuple(state[k].shape)} != {tuple(want[k].shape)}" for k in wrong[:5]))
        raise ValueError(f"{where}: tensors do not match its DS-DiT config: " + "; ".join(parts))


def load_dsdit(path: str | Path, device: str | torch.device = "cpu") -> DSDiT:
    """Build the network described by the checkpoint's config and load its weights (eval mode)."""
    cfg, state, meta = read_checkpoint(path)
    model = DSDiT(cfg)
    check_state(cfg, state, model, str(path))
    model.load_state_dict(state)
    model.metadata = meta
    return model.to(device).eval()
