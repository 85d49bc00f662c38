"""SHARP: spectrum-aware per-step RoPE resolution promotion for Flux-family DiTs, spectrum tools,
and DS-DiT reference-based remote-sensing super-resolution. No ComfyUI import anywhere here."""
from sharp.embedder import RoPEEmbedder
from sharp.rope import METHODS, RoPEParams, axis_frequencies

__version__ = "0.1.0"
__all__ = ["RoPEEmbedder", "METHODS", "RoPEParams", "axis_frequencies", "__version__"]
