"""Diffusers Flux folders (e.g. RS-FLUX, Hugging Face `BxuanZ/FLUX-RS`) -> the Flux (BFL) layout.

ComfyUI's UNETLoader and `comfy.sd.load_diffusion_model_state_dict` take the Black Forest Labs key
layout (`double_blocks.N.img_attn.qkv.weight`, ...). A diffusers `FluxTransformer2DModel` stores
the same weights under other names, q/k/v as separate matrices, sharded over several safetensors
files with an index JSON. `convert_transformer(folder)` reads the shards one at a time, renames,
fuses q/k/v (and the single blocks' MLP input) into one matrix as soon as all parts are read, and
drops the parts, so the weights are never held twice. Only safetensors files are read, never
pickle (`.bin`) files.

Every problem with the folder (missing shards, an index naming absent files, truncated or
non-safetensors files, keys that are not a Flux transformer) raises `DiffusersFolderError`
(a ValueError) naming the file.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator

import torch

TRANSFORMER_CLASS = "FluxTransformer2DModel"
TRANSFORMER_STEM = "diffusion_pytorch_model"  # diffusers model weights
TEXT_ENCODER_STEM = "model"                    # transformers model weights
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
MAX_JSON_BYTES = 16 << 20
"""Largest config / index JSON read (a Flux index is ~100 KB, a config ~1 KB)."""

log = logging.getLogger(__name__)


class DiffusersFolderError(ValueError):
    """A diffusers folder that cannot be read as a Flux model; the message names the file."""


# --- key mapping ----------------------------------------------------------------------------------

_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}

_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_DOUBLE_FUSED = {  # part name -> (target module, index, number of parts)
    "attn.to_q": ("img_attn.qkv", 0, 3),
    "attn.to_k": ("img_attn.qkv", 1, 3),
    "attn.to_v": ("img_attn.qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn.qkv", 0, 3),
    "attn.add_k_proj": ("txt_attn.qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn.qkv", 2, 3),
}
_SINGLE = {
    "norm.linear": "modulation.lin",
    "proj_out": "linear2",
}
_SINGLE_NORMS = {
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}
_SINGLE_FUSED = {
    "attn.to_q": ("linear1", 0, 4),
    "attn.to_k": ("linear1", 1, 4),
    "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4),
}

_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_PLAIN = re.compile(r"^(.+)\.(weight|bias)$")

SWAP_HALVES = "swap_halves"
"""diffusers' AdaLayerNormContinuous emits (scale, shift); BFL's final layer (shift, scale)."""


def map_key(key: str) -> tuple[str, int, int, str | None] | None:
    """Where a diffusers Flux key goes: (flux_key, part, n_parts, transform) or None if unknown.

    n_parts > 1: the tensor is part `part` of a fusion along dim 0 (q, k, v[, mlp]) into flux_key.
    transform: None or SWAP_HALVES (the two halves along dim 0 exchange places).
    """
    m = _BLOCK.match(key)
    if m:
        kind, idx, name, end = m.groups()
        if kind == "transformer_blocks":
            prefix, plain, norms, fused = f"double_blocks.{idx}", _DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED
        else:
            prefix, plain, norms, fused = f"single_blocks.{idx}", _SINGLE, _SINGLE_NORMS, _SINGLE_FUSED
        if f"{name}.{end}" in norms:
            return f"{prefix}.{norms[f'{name}.{end}']}", 0, 1, None
        if name in plain:
            return f"{prefix}.{plain[name]}.{end}", 0, 1, None
        if name in fused:
            target, part, n = fused[name]
            return f"{prefix}.{target}.{end}", part, n, None
        return None
    m = _PLAIN.match(key)
    if m and m.group(1) in _TOP:
        name, end = m.groups()
        return f"{_TOP[name]}.{end}", 0, 1, (SWAP_HALVES if name == "norm_out.linear" else None)
    return None


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _check_fusable(source: str, flux_key: str, parts: list) -> None:
    """The parts fused into flux_key: q, k and v of one shape, and the single blocks' MLP input (4th part)
    agreeing with them on every dimension but the first (the fusion's)."""
    shapes = {key: tuple(t.shape) for key, t in parts}
    qkv = [tuple(t.shape) for _, t in parts[:3]]
    if len(set(qkv)) > 1 or len({s[1:] for s in shapes.values()}) > 1 or any(len(s) == 0 for s in shapes.values()):
        listed = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        raise DiffusersFolderError(f"{source}: cannot fuse {flux_key}: its parts have mismatched shapes ({listed}); "
                                   "the shards come from different models or are damaged")


def convert_state_dict(items: Iterable[tuple[str, torch.Tensor]], source: str = "the state dict") -> dict:
    """Convert (key, tensor) pairs of a diffusers Flux transformer to a Flux (BFL) state dict.

    Streaming: fused matrices are built as soon as all their parts arrived and the parts dropped.
    Raises DiffusersFolderError on unknown keys, duplicated or missing parts, or a non-Flux dict.
    """
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, list] = {}
    for key, tensor in items:
        target = map_key(key)
        if target is None:
            raise DiffusersFolderError(
                f"{source}: key {key!r} is not part of a diffusers Flux transformer ({TRANSFORMER_CLASS}); "
                "is this a Flux model folder?"
            )
        flux_key, part, n, transform = target
        if transform == SWAP_HALVES:
            tensor = swap_halves(tensor)
        if n == 1:
            if flux_key in out:
                raise DiffusersFolderError(f"{source}: {key!r} appears twice")
            out[flux_key] = tensor
            continue
        parts = pending.setdefault(flux_key, [None] * n)
        if parts[part] is not None:
            raise DiffusersFolderError(f"{source}: {key!r} appears twice")
        parts[part] = (key, tensor)
        if all(p is not None for p in parts):
            _check_fusable(source, flux_key, parts)
            out[flux_key] = torch.cat([t for _, t in parts], dim=0)
            del pending[flux_key]
    if pending:
        missing = sorted(pending)[:5]
        raise DiffusersFolderError(
            f"{source}: incomplete q/k/v groups for {missing}{' ...' if len(pending) > 5 else ''}; "
            "a shard is missing or truncated"
        )
    for required in ("img_in.weight", "double_blocks.0.img_attn.qkv.weight", "final_layer.linear.weight"):
        if required not in out:
            raise DiffusersFolderError(
                f"{source}: no {required!r} after conversion: not a complete diffusers Flux transformer"
            )
    return out


# --- folders and shards ---------------------------------------------------------------------------

def _read_json(path: str) -> dict:
    """A JSON object file; anything else (too large, not UTF-8, malformed, nested too deeply) is a
    DiffusersFolderError naming the file."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DiffusersFolderError(f"{path}: cannot be read ({err.strerror or err})") from None
    if size > MAX_JSON_BYTES:
        raise DiffusersFolderError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, not a model's JSON file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as err:
        raise DiffusersFolderError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                                   "JSON files of a model folder are UTF-8") from None
    except RecursionError:
        raise DiffusersFolderError(f"{path}: JSON nested too deeply to be a model's config") from None
    except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
        raise DiffusersFolderError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise DiffusersFolderError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise DiffusersFolderError(f"{path}: expected a JSON object")
    return data


def find_transformer_dir(folder: str) -> str:
    """The transformer folder of a diffusers Flux pipeline folder, or `folder` if it is one itself."""
    if not os.path.isdir(folder):
        raise DiffusersFolderError(f"{folder}: no such folder")
    for cand in (os.path.join(folder, "transformer"), folder):
        if _has_weights(cand, TRANSFORMER_STEM):
            config = os.path.join(cand, "config.json")
            if os.path.isfile(config):
                cls = _read_json(config).get("_class_name")
                if cls is not None and cls != TRANSFORMER_CLASS:
                    raise DiffusersFolderError(
                        f"{config}: _class_name is {cls!r}, expected {TRANSFORMER_CLASS!r}; "
                        "this folder is not a diffusers Flux model"
                    )
            return cand
    pickles = [f for d in (os.path.join(folder, "transformer"), folder) if os.path.isdir(d)
               for f in os.listdir(d) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        raise DiffusersFolderError(
            f"{folder}: only pickle weights ({pickles[0]}) found; SHARP reads safetensors only "
            "(pickle files can run code). Download the .safetensors files of the model."
        )
    raise DiffusersFolderError(
        f"{folder}: no diffusers Flux transformer here: expected transformer/{TRANSFORMER_STEM}.safetensors "
        f"or transformer/{TRANSFORMER_STEM}.safetensors.index.json (a FluxPipeline folder) or those files "
        "directly in the folder"
    )


def _has_weights(folder: str, stem: str) -> bool:
    return os.path.isfile(os.path.join(folder, f"{stem}.safetensors")) or os.path.isfile(
        os.path.join(folder, f"{stem}.safetensors.index.json"))


def shard_files(folder: str, stem: str) -> list[str]:
    """The safetensors files of one component: the index's shards in order, or the single file."""
    index = os.path.join(folder, f"{stem}.safetensors.index.json")
    single = os.path.join(folder, f"{stem}.safetensors")
    if os.path.isfile(index):
        weight_map = _weight_map(index)
        names = sorted(set(weight_map.values()))
        for name in names:
            if os.path.basename(name) != name or not name.endswith(".safetensors"):
                raise DiffusersFolderError(f"{index}: names {name[:200]!r}, not a .safetensors file in this folder")
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise DiffusersFolderError(f"{path}: missing shard (listed in {index}); download it again")
        return [os.path.join(folder, n) for n in names]
    if os.path.isfile(single):
        return [single]
    raise DiffusersFolderError(f"{folder}: neither {stem}.safetensors nor {stem}.safetensors.index.json")


def _weight_map(index: str) -> dict[str, str]:
    """The index's weight_map {tensor key: shard file name}, every value a string."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise DiffusersFolderError(f"{index}: no 'weight_map' naming the shards")
    for key, name in weight_map.items():
        if not isinstance(name, str):
            raise DiffusersFolderError(f"{index}: weight_map[{key[:200]!r}] is of type {type(name).__name__}, expected "
                                       "the file name of a shard (a string)")
    return weight_map


def iter_tensors(paths: Iterable[str], dtype: torch.dtype | None = None,
                 progress: Callable[[str], None] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) of safetensors files, one file open at a time; errors name the file."""
    from safetensors import safe_open

    for path in paths:
        if progress is not None:
            progress(path)
        try:
            fh = safe_open(path, framework="pt", device="cpu")
        except Exception as err:  # safetensors raises its own error type (and OSError)
            raise DiffusersFolderError(
                f"{path}: cannot read as safetensors ({err}); the file may be truncated or not a "
                "safetensors file. Download it again."
            ) from err
        with fh:
            for key in fh.keys():
                try:
                    tensor = fh.get_tensor(key)
                except Exception as err:
                    raise DiffusersFolderError(f"{path}: cannot read tensor {key!r} ({err}); truncated file?") from err
                yield key, (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)


def convert_transformer(folder: str, dtype: torch.dtype | None = None,
                        progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Flux (BFL layout) state dict of the transformer in a diffusers Flux folder.

    folder: a FluxPipeline folder (with transformer/) or a transformer folder. dtype: cast floating
    tensors while reading (None keeps the stored dtype). progress(path) is called before each shard.
    """
    tdir = find_transformer_dir(folder)
    shards = shard_files(tdir, TRANSFORMER_STEM)
    _check_index_keys(tdir, TRANSFORMER_STEM)
    return convert_state_dict(iter_tensors(shards, dtype, progress), source=tdir)


def _check_index_keys(folder: str, stem: str) -> None:
    index = os.path.join(folder, f"{stem}.safetensors.index.json")
    if not os.path.isfile(index):
        return
    from safetensors import safe_open

    by_file: dict[str, set] = {}
    for key, name in _weight_map(index).items():
        by_file.setdefault(name, set()).add(key)
    for name, keys in sorted(by_file.items()):
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt", device="cpu") as fh:
                present = set(fh.keys())
        except Exception as err:
            raise DiffusersFolderError(
                f"{path}: cannot read as safetensors ({err}); the file may be truncated. Download it again."
            ) from err
        missing = sorted(keys - present)
        if missing:
            raise DiffusersFolderError(
                f"{path}: lacks {len(missing)} tensor(s) that {os.path.basename(index)} places there "
                f"(e.g. {missing[0]!r}); the shard is incomplete or from another model"
            )


def load_component(folder: str, stem: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) component without renaming (VAE, text encoders)."""
    return dict(iter_tensors(shard_files(folder, stem), dtype))


def pipeline_components(folder: str) -> dict[str, str | None]:
    """Paths of the transformer, vae, text_encoder (CLIP-L) and text_encoder_2 (T5) folders present."""
    out: dict[str, str | None] = {"transformer": find_transformer_dir(folder)}
    for name, stem in (("vae", TRANSFORMER_STEM), ("text_encoder", TEXT_ENCODER_STEM),
                       ("text_encoder_2", TEXT_ENCODER_STEM)):
        d = os.path.join(folder, name)
        out[name] = d if os.path.isdir(d) and _has_weights(d, stem) else None
    return out


def is_flux_folder(folder: str) -> bool:
    """Cheap check for listings: does `folder` look like a diffusers Flux pipeline or transformer?

    Never raises: a folder whose config cannot be read is not listed, with a warning naming the file."""
    for cand in (os.path.join(folder, "transformer"), folder):
        config = os.path.join(cand, "config.json")
        if _has_weights(cand, TRANSFORMER_STEM) and os.path.isfile(config):
            try:
                return _read_json(config).get("_class_name") == TRANSFORMER_CLASS
            except Exception as err:  # noqa: BLE001 - nothing in a model folder may break a listing
                log.warning("SHARP: skipping %s in the model list: %s", folder, err)
                return False
    return False


def find_flux_folders(roots: Iterable[str], max_depth: int = 2) -> list[str]:
    """Diffusers Flux folders under the given roots (relative to their root, '/'-separated, sorted)."""
    found: set[str] = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            rel = os.path.relpath(dirpath, root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth and is_flux_folder(dirpath):
                found.add(rel.replace(os.sep, "/"))
                dirnames[:] = []
                continue
            if depth >= max_depth:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found)


def save_flux(state_dict: dict[str, torch.Tensor], out_path: str, metadata: dict | None = None) -> None:
    """Write a Flux (BFL layout) state dict as one safetensors file that ComfyUI's UNETLoader loads."""
    from safetensors.torch import save_file

    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise DiffusersFolderError(f"{parent}: output folder does not exist")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, out_path, metadata=metadata or {})
