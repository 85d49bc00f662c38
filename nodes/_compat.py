"""Small differences between the ComfyUI versions the pack supports (>= 0.3.64)."""
from __future__ import annotations

import inspect

from comfy_api.latest import io


def advanced() -> dict:
    """Keyword arguments that mark a widget "advanced" (collapsed by default) where ComfyUI supports it.

    ComfyUI 0.3.64's V3 inputs have no `advanced` parameter; there the widget is simply shown.
    """
    try:
        params = inspect.signature(io.Float.Input.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {"advanced": True} if "advanced" in params else {}
