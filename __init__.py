"""ComfyUI entry point of the SHARP node pack (see nodes/). Imports cleanly outside ComfyUI.

Inside ComfyUI (where `comfy_api` is importable) this exposes `comfy_entrypoint` (V3 nodes) and
`WEB_DIRECTORY` (node help pages in web/docs/<NodeId>.md). Elsewhere (pytest, the `sharp` command
line, plain `import`) it defines nothing ComfyUI-specific and imports nothing heavy.
"""
from __future__ import annotations

import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"
PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def comfyui_available() -> bool:
    try:
        return importlib.util.find_spec("comfy_api") is not None and importlib.util.find_spec(
            "comfy_api.latest") is not None
    except (ImportError, ValueError):
        return False


if __package__ and comfyui_available():
    # The nodes import the `sharp` library by its top-level name: make this folder importable.
    if PACK_DIR not in sys.path:
        sys.path.append(PACK_DIR)
    from .nodes import comfy_entrypoint  # noqa: E402,F401

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
