"""Helpers for the opt-in tests against a real ComfyUI checkout (SHARP_COMFYUI_DIR).

How to run them (nothing of ComfyUI is part of this repository; fetch it yourself):

    git clone https://github.com/comfyanonymous/ComfyUI /path/to/ComfyUI   # >= v0.3.64
    python -m venv /path/to/comfy-venv
    /path/to/comfy-venv/bin/pip install torch==2.13.0 -r /path/to/ComfyUI/requirements.txt pytest matplotlib
    SHARP_COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest -m comfyui

(On a machine where PyPI's torchvision does not import beside torch, put a placeholder `torchvision`
package on PYTHONPATH; Flux never uses it.) Without SHARP_COMFYUI_DIR every test here is skipped.

Everything runs on the CPU with tiny models built with ComfyUI's own classes.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

COMFY_DIR = os.environ.get("SHARP_COMFYUI_DIR", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui_sharp_under_test"

skip_without_comfyui = pytest.mark.skipif(
    not COMFY_DIR, reason="needs a ComfyUI checkout: set SHARP_COMFYUI_DIR=/path/to/ComfyUI (see tests/comfyui_harness.py)"
)

# tiny Flux: hidden 128, 1 head of 16 + 56 + 56 rope dims, one double and one single block
TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=32,
                 context_in_dim=64, hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1,
                 axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)


def comfy_version() -> str:
    path = os.path.join(COMFY_DIR, "comfyui_version.py")
    ns: dict = {}
    with open(path) as fh:
        exec(fh.read(), ns)  # a one-line `__version__ = "x.y.z"`
    return ns["__version__"]


def version_tuple() -> tuple[int, ...]:
    return tuple(int(p) for p in comfy_version().split(".")[:3])


def import_comfy():
    """Put the checkout first on sys.path and import ComfyUI's core on the CPU."""
    if not COMFY_DIR:
        pytest.skip("SHARP_COMFYUI_DIR is not set")
    if not os.path.isfile(os.path.join(COMFY_DIR, "comfy", "model_patcher.py")):
        pytest.fail(f"SHARP_COMFYUI_DIR={COMFY_DIR} is not a ComfyUI checkout (no comfy/model_patcher.py)")
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    # our repository's `nodes` package would shadow ComfyUI's top-level `nodes` module
    mod = sys.modules.get("nodes")
    if mod is not None and not getattr(mod, "__file__", "").startswith(COMFY_DIR):
        del sys.modules["nodes"]
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.patcher_extension  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models  # noqa: F401
    import comfy

    return comfy


def import_pack():
    """Import the repository as ComfyUI does: its root `__init__.py` as a package."""
    import_comfy()
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str):
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


def tiny_flux_patcher(seed: int = 0):
    """A ModelPatcher around ComfyUI's own Flux class, with small random weights."""
    import torch

    comfy = import_comfy()
    import dataclasses

    import comfy.ldm.flux.model

    unet_config = dict(TINY_FLUX)
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    if "txt_ids_dims" in fields:  # ComfyUI >= 0.9: text ids on no axis for Flux.1
        unet_config["txt_ids_dims"] = []
    config = comfy.supported_models.Flux(unet_config)
    model = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith(("scale", "norm.weight")):
                p.copy_(torch.ones_like(p) + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(seed: int = 1, tokens: int = 8):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, TINY_FLUX["context_in_dim"], generator=g),
             {"pooled_output": torch.randn(1, TINY_FLUX["vec_in_dim"], generator=g), "guidance": 3.5}]]


def sample(patcher, latent_hw=(32, 32), steps=4, seed=0, sampler="euler", scheduler="simple", sigmas=None):
    import torch

    comfy = import_comfy()
    h, w = latent_hw
    latent = torch.zeros(1, 16, h, w)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    pos, neg = conditioning(1), conditioning(2)
    return comfy.sample.sample(patcher, noise, steps, 1.0, sampler, scheduler, pos, neg, latent,
                               sigmas=sigmas, disable_pbar=True, seed=seed)
