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

from .config import (FORMAT, FORMAT_VERSION, MAX_CONFIG_CHARS, SAMPLING_BOUNDS, DSDiTConfig, short_repr,
                     check_number, parse_json_object)
from .model import DSDiT


def cpu_state(state_dict: dict, dtype: torch.dtype | None = None) -> dict:
    """{name: tensor} detached, on the CPU, contiguous (and cast to dtype if given): what
    safetensors can write, from any module's state_dict."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}


def save_checkpoint(path: str | Path, model: DSDiT, extra: dict | None = None,
                    state_dict: dict | None = None) -> None:
    """Write model (or a given state_dict of it, e.g. EMA weights) + config to safetensors."""
    sd = state_dict if state_dict is not None else model.state_dict()
    tensors = cpu_state(sd, torch.float32)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "dsdit_config": model.cfg.to_json()}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_header(path: Path) -> tuple[dict, dict]:
    """(metadata, {tensor name: shape}) from the safetensors header alone: no tensor is read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return meta, shapes


def read_checkpoint(path: str | Path) -> tuple[DSDiTConfig, dict, dict]:
    """(config, state_dict, metadata) of a DS-DiT safetensors file, validated.

    Order: the header (metadata + tensor shapes) is checked completely, the shapes against the
    network the config describes (built on the meta device: nothing allocated), before any tensor
    is read; so the memory a checkpoint can make us allocate is bounded by its file size. Errors
    about a file that is not a DS-DiT checkpoint do not repeat its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DS-DiT checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: DS-DiT loads only .safetensors checkpoints (never pickles)")
    meta, shapes = read_header(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a DS-DiT checkpoint (its metadata has no 'format': "
                         f"{FORMAT!r}; DS-DiT checkpoints are written by `python -m sharp train-refsr`)")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path}: DS-DiT checkpoint format version {short_repr(meta.get('format_version'))}"
                         f" is not supported (this code reads version {FORMAT_VERSION})")
    if "dsdit_config" not in meta:
        raise ValueError(f"{path}: DS-DiT checkpoint has no 'dsdit_config' metadata")
    try:
        cfg = DSDiTConfig.from_json(meta["dsdit_config"])
        sampling_defaults(meta)
    except ValueError as err:
        raise ValueError(f"{path}: invalid DS-DiT config: {err}") from None
    check_state(cfg, shapes, str(path))
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for k in shapes:
            t = f.get_tensor(k)
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{path}: tensor {k!r} holds NaN or infinite values; the checkpoint "
                                 "is damaged (re-export it from a healthy training run)")
            state[k] = t
    return cfg, state, meta


def sampling_defaults(meta: dict) -> dict:
    """The checkpoint's "sampling_defaults" metadata (values chosen at training time), checked:
    a JSON object whose known keys are finite numbers in SAMPLING_BOUNDS; ValueError otherwise."""
    raw = meta.get("sampling_defaults")
    if not raw:
        return {}
    if len(raw) > MAX_CONFIG_CHARS:
        raise ValueError(f"'sampling_defaults' metadata is longer than {MAX_CONFIG_CHARS} characters")
    data = parse_json_object(raw, "'sampling_defaults' metadata")
    out = {}
    for key in ("temperature", "ref_transfer", "steps"):
        if key in data:
            out[key] = check_number(f"sampling_defaults.{key}", data[key], *SAMPLING_BOUNDS[key])
    return out


def expected_shapes(cfg: DSDiTConfig) -> dict[str, tuple]:
    """{tensor name: shape} of the network `cfg` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = DSDiT(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(cfg: DSDiTConfig, state: dict, where: str = "checkpoint") -> None:
    """Raise ValueError if tensor names/shapes differ from the network `cfg` describes.

    state: {name: tensor or shape tuple} (shapes from the header: nothing needs to be read)."""
    want = expected_shapes(cfg)
    have = {k: tuple(v.shape) if torch.is_tensor(v) else tuple(v) for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {[short_repr(k) for k in unexpected[:5]]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("wrong shape " + ", ".join(
                f"{k} {have[k]} != {want[k]}" for k in wrong[:5]))
        raise ValueError(f"{where}: tensors do not match its DS-DiT config: " + "; ".join(parts))


def load_dsdit(path: str | Path, device: str | torch.device = "cpu") -> DSDiT:
    """Build the network described by the checkpoint's config and load its weights (eval mode).

    read_checkpoint has matched every shape against the header first, so the network built here
    is no larger than the file. (Copied into fresh parameters rather than assigned: the file's
    buffers are not aligned like torch's own, which changes float summation order in the last bit.)"""
    cfg, state, meta = read_checkpoint(path)
    model = DSDiT(cfg)
    model.load_state_dict(state)
    model.metadata = meta
    return model.to(device).eval()
