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
    from comfy_api_fake import import_root_as  # the same import, without the fakes

    return import_root_as(PACK_NAME)


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


# --- a tiny model of every RoPE family (sharp.families rows), built with ComfyUI's own classes ----------
# Each entry: (supported_models class name, unet_config, latent channels, context dim, pooled dim or None).
# Hidden sizes are one head of sum(axes_dim) (the head dim the family's RoPE needs; Z-Image two, its
# modulation needs dim >= 256); depths are 1.

_FLUX_COMMON = dict(in_channels=16, out_channels=16, patch_size=2, vec_in_dim=32, context_in_dim=64, hidden_size=128,
                    mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
                    qkv_bias=True, guidance_embed=True)

TINY_FAMILIES = {
    "Flux.1": ("Flux", dict(_FLUX_COMMON, image_model="flux", txt_ids_dims=[]), 16, 64, 32),
    "Flux.2": ("Flux2", dict(_FLUX_COMMON, image_model="flux2", in_channels=128, out_channels=128, patch_size=1,
                             vec_in_dim=None, axes_dim=[32, 32, 32, 32], theta=2000, qkv_bias=False,
                             guidance_embed=False, global_modulation=True, mlp_silu_act=True, ops_bias=False,
                             default_ref_method="index", ref_index_scale=10.0, txt_ids_dims=[3], mlp_ratio=3.0),
               128, 64, None),
    "Ovis-Image": ("Flux", dict(_FLUX_COMMON, image_model="flux", vec_in_dim=None, guidance_embed=False,
                                yak_mlp=True, txt_norm=True, txt_ids_dims=[1, 2]), 16, 64, None),
    "Chroma": ("Chroma", dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=64,
                              hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1,
                              axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, in_dim=64,
                              out_dim=128, hidden_dim=64, n_layers=1, txt_ids_dims=[], vec_in_dim=None), 16, 64, None),
    "Chroma Radiance": ("ChromaRadiance", dict(
        image_model="chroma_radiance", in_channels=3, out_channels=3, context_in_dim=64, hidden_size=128,
        mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
        patch_size=16, qkv_bias=True, in_dim=64, out_dim=128, hidden_dim=64, n_layers=1, txt_ids_dims=[],
        vec_in_dim=None, nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1, nerf_max_freqs=4, nerf_tile_size=0,
        nerf_final_head_type="conv", nerf_embedder_dtype=None, use_x0=False, use_sequential_txt_ids=False),
        3, 64, None),
    "Qwen-Image": ("QwenImage", dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                     num_layers=1, attention_head_dim=128, num_attention_heads=1,
                                     joint_attention_dim=64, axes_dims_rope=(16, 56, 56)), 16, 64, None),
    "Z-Image": ("ZImage", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=1,
                               n_refiner_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=8.0 / 3.0,
                               qk_norm=True, cap_feat_dim=64, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
                               rope_theta=256.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32,
                               out_channels=None, text_feat_dim=64, timestep_scale=1000.0), 16, 64, None),
    "Lumina 2": ("Lumina2", dict(image_model="lumina2", patch_size=2, in_channels=16, dim=96, n_layers=1,
                                 n_refiner_layers=1, n_heads=1, n_kv_heads=1, multiple_of=16, ffn_dim_multiplier=4.0,
                                 qk_norm=True, cap_feat_dim=64, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512],
                                 rope_theta=10000.0, out_channels=None, text_feat_dim=64, timestep_scale=1000.0),
                 16, 64, None),
    "HunyuanImage 2.1": ("HunyuanImage21", dict(
        image_model="hunyuan_video", in_channels=64, out_channels=64, vec_in_dim=None, context_in_dim=64,
        hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[64, 64], theta=256,
        patch_size=[1, 1], qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False,
        use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False), 64, 64, None),
    # HiDream: one head of 64 + 32 + 32 = 128; caption_channels [T5, Llama] = [64, 64]; llama_layers picks one
    # Llama layer per block (num_layers + num_single_layers = 2); the MoE keeps 2 experts, 1 active
    "HiDream": ("HiDream", dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                num_single_layers=1, attention_head_dim=128, num_attention_heads=1,
                                caption_channels=[64, 64], text_emb_dim=32, num_routed_experts=2,
                                num_activated_experts=1, axes_dims_rope=[64, 32, 32], max_resolution=[128, 128],
                                llama_layers=[0, 1]), 16, 64, 32),
    # OmniGen2: one head of 40 + 40 + 40 = 120 (one kv head), 1 layer and 1 refiner layer of each kind
    "OmniGen2": ("Omnigen2", dict(image_model="omnigen2", patch_size=2, in_channels=16, out_channels=None,
                                  hidden_size=120, num_layers=1, num_refiner_layers=1, num_attention_heads=1,
                                  num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                                  axes_dim_rope=[40, 40, 40], axes_lens=[300, 512, 512], text_feat_dim=64,
                                  timestep_scale=1000.0), 16, 64, None),
    # --- families added after 0.14.1 (skipped where this ComfyUI lacks them) ---
    "LongCat-Image": ("LongCatImage", dict(_FLUX_COMMON, image_model="flux", vec_in_dim=None, guidance_embed=False,
                                           context_in_dim=3584, txt_ids_dims=[1, 2]), 16, 3584, None),
    # Krea 2: head dim 128 -> axes [32, 48, 48]; the text input is txtlayers x txtdim features per token
    "Krea 2": ("Krea2", dict(image_model="krea2", features=128, heads=1, kvheads=1, multiplier=2, layers=1, patch=2,
                             channels=16, txtlayers=2, txtdim=64, txtheads=1, txtkvheads=1, theta=1e3), 16, 128, None),
    "Lens": ("Lens", dict(image_model="lens", patch_size=2, in_channels=128, out_channels=32, num_layers=1,
                          attention_head_dim=64, num_attention_heads=1, enc_hidden_dim=64,
                          multi_layer_encoder_feature=False, axes_dims_rope=(8, 28, 28)), 128, 64, None),
    "MageFlow": ("MageFlow", dict(image_model="mage_flow", in_channels=128, out_channels=128, num_layers=1,
                                  attention_head_dim=128, num_attention_heads=1, joint_attention_dim=64,
                                  axes_dims_rope=(16, 56, 56)), 128, 64, None),
    "Boogu": ("Boogu", dict(image_model="boogu", patch_size=2, in_channels=16, out_channels=None, hidden_size=120,
                            num_layers=1, num_double_stream_layers=1, num_refiner_layers=1, num_attention_heads=1,
                            num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                            axes_dim_rope=[40, 40, 40], axes_lens=[300, 512, 512], instruction_feat_dim=64,
                            timestep_scale=1000.0), 16, 64, None),
    # ErnieImage: one head of 32 + 48 + 48 = 128 (its split-half pos_embed, theta 256), the Flux2 latent, patch 1
    "ErnieImage": ("ErnieImage", dict(image_model="ernie", hidden_size=128, num_attention_heads=1, num_layers=1,
                                      ffn_hidden_size=256, in_channels=128, out_channels=128, patch_size=1,
                                      text_in_dim=64), 128, 64, None),
}
HIDREAM_LLAMA_LAYERS = 2  # layers of the (fake) Llama hidden states in conditioning_llama3


def has_family(name: str) -> str | None:
    """None if this ComfyUI has the family's classes, else the reason to skip."""
    import comfy.supported_models as sm

    config_name = TINY_FAMILIES[name][0]
    if not hasattr(sm, config_name):
        return f"ComfyUI {comfy_version()} has no comfy.supported_models.{config_name} ({name})"
    if name in ("Flux.2", "Ovis-Image"):
        import dataclasses

        import comfy.ldm.flux.model

        fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
        if not {"txt_ids_dims", "yak_mlp", "global_modulation"} <= fields:
            return f"ComfyUI {comfy_version()}'s Flux class has no {name} options"
    return None


def _filter_params(name: str, unet_config: dict) -> dict:
    """Drop config keys an older ComfyUI's params dataclass does not know (e.g. txt_ids_dims before 0.9)."""
    import dataclasses

    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.hunyuan_video.model

    params = {"Flux.1": comfy.ldm.flux.model.FluxParams, "LongCat-Image": comfy.ldm.flux.model.FluxParams,
              "Chroma": comfy.ldm.chroma.model.ChromaParams,
              "HunyuanImage 2.1": comfy.ldm.hunyuan_video.model.HunyuanVideoParams}.get(name)
    if name == "Chroma Radiance":
        import comfy.ldm.chroma_radiance.model

        params = comfy.ldm.chroma_radiance.model.ChromaRadianceParams
    if params is not None:
        fields = {f.name for f in dataclasses.fields(params)} | {"image_model"}
        return {k: v for k, v in unet_config.items() if k in fields}
    import inspect

    import comfy.ldm.hidream.model
    import comfy.ldm.lumina.model
    import comfy.ldm.omnigen.omnigen2
    import comfy.ldm.qwen_image.model

    if name in ("Krea 2", "Lens", "MageFlow", "Boogu", "ErnieImage"):  # configs written from 0.33's signatures, no extra keys
        return unet_config
    cls = {"Qwen-Image": comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,
           "HiDream": comfy.ldm.hidream.model.HiDreamImageTransformer2DModel,
           "OmniGen2": comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel}.get(name, comfy.ldm.lumina.model.NextDiT)
    sig = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        return unet_config
    return {k: v for k, v in unet_config.items() if k in sig}  # e.g. 0.3.64's NextDiT: no rope_theta (fixed 10000)


def tiny_family_patcher(name: str, seed: int = 0, **config):
    """(ModelPatcher around the family's ComfyUI class with small random weights, latent channels);
    config: unet_config entries to change (e.g. a flag a newer ComfyUI added)."""
    import torch

    comfy = import_comfy()
    import comfy.supported_models as sm

    reason = has_family(name)
    if reason:
        pytest.skip(reason)
    config_name, unet_config, channels, _, _ = TINY_FAMILIES[name]
    config = getattr(sm, config_name)(_filter_params(name, dict(unet_config, **config)))
    model = config.get_model({})
    randomise(model.diffusion_model, seed)
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device), channels


def randomise(module, seed: int = 0):
    """Small random weights in place (norm scales near 1), as every tiny model here gets."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname.endswith(("scale", "norm.weight", "norm1.weight", "norm2.weight")) or "norm" in pname.split(".")[-2:][0]:
                p.copy_(torch.ones_like(p) + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


def family_conditioning(name: str, seed: int = 1, tokens: int = 8):
    import torch

    _, _, _, ctx, pooled = TINY_FAMILIES[name]
    g = torch.Generator().manual_seed(seed)
    # every Flux-class model_base reads pooled_output (unused without vector_in)
    extra = {"guidance": 3.5, "pooled_output": torch.randn(1, pooled or 32, generator=g)}
    if name in ("Lumina 2", "Z-Image", "OmniGen2", "Boogu"):  # the text encoder output carries a mask (-> num_tokens)
        mask = torch.ones(1, tokens, dtype=torch.long)  # as the tokenizer gives it
        if name not in ("OmniGen2", "Boogu"):  # OmniGen2's ids take num_tokens caption positions but all context tokens: the
            mask[:, -2:] = 0      # stock model itself fails on a padded caption, so its mask is all ones
        extra["attention_mask"] = mask
    if name == "HiDream":  # model_base.HiDream.extra_conds: conditioning_llama3 -> encoder_hidden_states_llama3
        llama_dim = TINY_FAMILIES[name][1]["caption_channels"][1]
        extra["conditioning_llama3"] = torch.randn(1, HIDREAM_LLAMA_LAYERS, tokens, llama_dim, generator=g)
    return [[torch.randn(1, tokens, ctx, generator=g), extra]]


def sample_family(name: str, patcher, channels: int, latent_hw, steps=3, seed=0, sampler="euler",
                  scheduler="simple", sigmas=None):
    import torch

    comfy = import_comfy()
    # Qwen-Image's latent (Wan 2.1 format) is [B, C, T, H, W]; ComfyUI's KSampler node adds the T axis
    latent = torch.zeros(1, channels, 1, *latent_hw) if name == "Qwen-Image" else torch.zeros(1, channels, *latent_hw)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    pos, neg = family_conditioning(name, 1), family_conditioning(name, 2)
    return comfy.sample.sample(patcher, noise, steps, 1.0, sampler, scheduler, pos, neg, latent,
                               sigmas=sigmas, disable_pbar=True, seed=seed)


def random_taesd_state_dict(channels: int = 16, seed: int = 1) -> dict:
    """Random weights in the key layout of ComfyUI's own TAESD class (whose layers skip weight init)."""
    import torch

    import_comfy()
    import comfy.taesd.taesd

    layout = comfy.taesd.taesd.TAESD(latent_channels=channels).state_dict()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in layout.items():
        if k == "vae_scale":
            sd[k] = torch.ones_like(v)
        elif k.endswith("bias") or k == "vae_shift":
            sd[k] = torch.zeros_like(v)
        else:
            fan_in = max(1, v[0].numel()) if v.ndim > 1 else 1
            sd[k] = (torch.randn(v.shape, generator=g) * fan_in ** -0.5).to(v.dtype)
    return sd
