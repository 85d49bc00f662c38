"""DS-DiT: decoupled Siamese diffusion transformer for reference-based RS super-resolution.

Public API (needs torch):
    load_dsdit(path) -> DSDiT           safetensors only; validates the config in its metadata
    super_resolve(model, lr, ref, ...)  tiled Euler sampling with optional autoguidance
    DEFAULT_CHECKPOINT                  the small CPU-trained pixel-space checkpoint shipped here
    align_reference(ref, up, scale)     global / local alignment of the Ref + matching confidence
See docs/dsdit.md.
"""
from .api import DEFAULT_CHECKPOINT, prepare_inputs, reference_weight_map, super_resolve
from .checkpoint import load_dsdit, save_checkpoint
from .config import PRESETS, DSDiTConfig
from .model import DSDiT
from .registration import align_reference, register_reference
from .space import CallableVAE, LatentCodec

__all__ = ["DEFAULT_CHECKPOINT", "PRESETS", "CallableVAE", "DSDiT", "DSDiTConfig", "LatentCodec",
           "load_dsdit", "prepare_inputs", "reference_weight_map", "register_reference", "align_reference",
           "save_checkpoint", "super_resolve"]
