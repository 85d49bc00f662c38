"""Node "Load RS-FLUX (diffusers folder)": MODEL, CLIP, VAE from a diffusers Flux pipeline folder.

The diffusers -> Flux key mapping and the shard reading are `sharp.diffusers_flux`; ComfyUI builds
the model (as UNETLoader does), the text encoders and the VAE from those state dicts.
"""
from __future__ import annotations

import logging
import os

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from sharp import diffusers_flux

from ._compat import schema_extras

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
FOLDER_KEY = "diffusion_models"
log = logging.getLogger(__name__)


def _roots() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER_KEY))


def folder_choices() -> list[str]:
    """The dropdown: Flux folders under the roots. Never raises (a bad folder is skipped and logged by
    the library); anything unforeseen is logged here and the list is empty rather than the pack broken."""
    try:
        return diffusers_flux.find_flux_folders(_roots())
    except Exception:  # noqa: BLE001 - the node list must survive any model folder
        log.exception("SHARP: could not list the diffusers Flux folders under %s", FOLDER_KEY)
        return []


def _model_options(weight_dtype: str) -> dict:
    """As ComfyUI's UNETLoader maps its weight_dtype widget."""
    if weight_dtype == "fp8_e4m3fn":
        return {"dtype": torch.float8_e4m3fn}
    if weight_dtype == "fp8_e4m3fn_fast":
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}
    if weight_dtype == "fp8_e5m2":
        return {"dtype": torch.float8_e5m2}
    return {}


def _resolve(folder: str) -> str:
    """The folder a prompt names, inside a diffusion_models root. Containment is decided on the names
    (normalised, `..` refused), not on where symlinks point: a symlink placed in a model folder is
    followed, for folders as for shard files, as ComfyUI's own model lists follow it (docs/bad_inputs.md)."""
    for root in _roots():
        root = os.path.normpath(os.path.abspath(root))
        path = os.path.normpath(os.path.join(root, folder))
        inside = path != root and os.path.commonpath([path, root]) == root
        if inside and diffusers_flux.is_flux_folder(path):
            return path
    raise ValueError(
        f"no diffusers Flux folder {folder!r} under {FOLDER_KEY} ({', '.join(_roots()) or 'no folders'}); "
        "put the RS-FLUX folder (with transformer/, vae/, text_encoder/, text_encoder_2/) there and refresh"
    )


class LoadRSFlux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPLoadRSFlux",
            display_name="Load RS-FLUX (diffusers folder)",
            category="SHARP/loaders",
            description=(
                "Loads a diffusers Flux pipeline folder such as RS-FLUX (Hugging Face BxuanZ/FLUX-RS) from "
                "models/diffusion_models: the transformer (sharded safetensors), and when present the "
                "CLIP-L + T5 text encoders and the VAE. Only safetensors files are read."
            ),
            inputs=[
                io.Combo.Input(
                    "folder", options=folder_choices(),
                    tooltip="A folder under models/diffusion_models (or an extra model path) holding a diffusers "
                            "Flux pipeline (transformer/ + index JSON) or a transformer alone.",
                ),
                io.Combo.Input(
                    "weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                    tooltip="Weight storage dtype, as in 'Load Diffusion Model'. fp8 halves memory at some quality cost.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The Flux transformer."),
                io.Clip.Output(tooltip="CLIP-L + T5 text encoders (None if the folder has no text_encoder/ and "
                                       "text_encoder_2/)."),
                io.Vae.Output(tooltip="The VAE (None if the folder has no vae/)."),
            ],
            **schema_extras(search_aliases=["flux", "diffusers", "rs-flux", "remote sensing", "satellite"]),
        )

    @classmethod
    def execute(cls, folder, weight_dtype="default") -> io.NodeOutput:
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}")
        path = _resolve(folder)
        parts = diffusers_flux.pipeline_components(path)
        sd = diffusers_flux.convert_transformer(path)
        model = comfy.sd.load_diffusion_model_state_dict(sd, model_options=_model_options(weight_dtype))
        del sd
        if model is None:
            raise ValueError(f"{parts['transformer']}: ComfyUI did not recognise the converted weights as a Flux model")

        clip = None
        encoders = [parts[k] for k in ("text_encoder", "text_encoder_2") if parts[k]]
        if encoders:
            state_dicts = [diffusers_flux.load_component(d, diffusers_flux.TEXT_ENCODER_STEM) for d in encoders]
            clip_type = comfy.sd.CLIPType.FLUX if len(state_dicts) == 2 else comfy.sd.CLIPType.STABLE_DIFFUSION
            clip = comfy.sd.load_text_encoder_state_dicts(
                state_dicts=state_dicts, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                clip_type=clip_type,
            )
            del state_dicts

        vae = None
        if parts["vae"]:
            vae = comfy.sd.VAE(sd=diffusers_flux.load_component(parts["vae"], diffusers_flux.TRANSFORMER_STEM))
            if hasattr(vae, "throw_exception_if_invalid"):
                vae.throw_exception_if_invalid()
        return io.NodeOutput(model, clip, vae)
