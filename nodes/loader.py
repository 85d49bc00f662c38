"""Node "Load RS-FLUX (diffusers folder)": MODEL, CLIP, VAE from a diffusers Flux pipeline folder.

The diffusers -> Flux key mapping and the shard reading are `sharp.diffusers_flux`; ComfyUI builds
the model (as UNETLoader does), the text encoders and the VAE from those state dicts.
"""
from __future__ import annotations

import os

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from sharp import diffusers_flux

from ._compat import schema_extras

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
FOLDER_KEY = "diffusion_models"


def _roots() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER_KEY))


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
    for root in _roots():
        path = os.path.realpath(os.path.join(root, folder))
        inside = os.path.commonpath([path, os.path.realpath(root)]) == os.path.realpath(root)
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
                    "folder", options=diffusers_flux.find_flux_folders(_roots()),
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
