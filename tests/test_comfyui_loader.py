"""The RS-FLUX loader and sharp.diffusers_flux against ComfyUI's own diffusers Flux conversion.

Opt-in: set SHARP_COMFYUI_DIR to a ComfyUI checkout (see tests/comfyui_harness.py); skipped otherwise.
A tiny diffusers Flux folder with 2 shards is synthesized in a temporary folder.
"""
from __future__ import annotations

import os

import pytest

from comfyui_harness import skip_without_comfyui

pytestmark = [pytest.mark.comfyui, skip_without_comfyui]


@pytest.fixture(scope="module")
def tiny_folder(H, tmp_path_factory):
    import folder_paths

    from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

    root = tmp_path_factory.mktemp("diffusion_models")
    sd = tiny_diffusers_flux(seed=3, context=H.TINY_FLUX["context_in_dim"], pooled=H.TINY_FLUX["vec_in_dim"])
    folder = write_diffusers_folder(str(root / "tiny-rs-flux"), sd, shards=2)
    folder_paths.add_model_folder_path("diffusion_models", str(root))
    return folder, sd


def _copy(sd):
    """ComfyUI's diffusers conversion writes into its input tensors (the final-norm swap is in place)."""
    return {k: v.clone() for k, v in sd.items()}


def _norm_keys(sd):
    """ComfyUI >= 0.9 names the RMSNorm weights `.weight`, BFL files `.scale`: compare modulo that."""
    return {(k[: -len(".scale")] + ".weight" if k.endswith("_norm.scale") else k): v for k, v in sd.items()}


def test_conversion_equals_comfyui_diffusers_conversion(H, tiny_folder):
    import comfy.model_detection
    import torch

    from sharp import diffusers_flux

    folder, diffusers_sd = tiny_folder
    shards = os.listdir(os.path.join(folder, "transformer"))
    assert sum(name.endswith(".safetensors") for name in shards) == 2
    ours = _norm_keys(diffusers_flux.convert_transformer(folder))
    theirs = _norm_keys(comfy.model_detection.convert_diffusers_mmdit(_copy(diffusers_sd), ""))
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_loader_node_lists_folder_and_errors_name_file(H, tiny_folder, tmp_path):
    import folder_paths

    from flux_fixtures import tiny_diffusers_flux, write_diffusers_folder

    loader = H.pack_module("nodes.loader").LoadRSFlux
    options = next(i for i in loader.define_schema().inputs if i.id == "folder").options
    assert "tiny-rs-flux" in options
    broken_root = tmp_path / "broken_models"
    folder = write_diffusers_folder(str(broken_root / "broken"), tiny_diffusers_flux(), shards=2)
    victim = os.path.join(folder, "transformer", "diffusion_pytorch_model-00001-of-00002.safetensors")
    os.remove(victim)
    folder_paths.add_model_folder_path("diffusion_models", str(broken_root))
    with pytest.raises(ValueError, match="00001-of-00002.safetensors"):
        loader.execute(folder="broken", weight_dtype="default")
    with pytest.raises(ValueError, match="no diffusers Flux folder"):
        loader.execute(folder="../../etc", weight_dtype="default")


def test_loader_model_equals_comfyui_loaded_diffusers(H, tiny_folder):
    import comfy.sd
    import torch

    if H.version_tuple() < (0, 9, 0):
        pytest.skip(f"ComfyUI {H.comfy_version()} detects only full-size Flux shapes from a state dict; "
                    "the tiny stand-in cannot be loaded there (the conversion itself is compared above)")
    folder, diffusers_sd = tiny_folder
    loader = H.pack_module("nodes.loader").LoadRSFlux
    model, clip, vae = loader.execute(folder="tiny-rs-flux", weight_dtype="default").result
    assert clip is None and vae is None  # the tiny folder has only a transformer
    reference = comfy.sd.load_diffusion_model_state_dict(_copy(diffusers_sd))
    ours = model.model.diffusion_model.state_dict()
    theirs = reference.model.diffusion_model.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    a = H.sample(model, latent_hw=(32, 32), steps=2, seed=1)
    b = H.sample(reference, latent_hw=(32, 32), steps=2, seed=1)
    assert torch.equal(a, b)
