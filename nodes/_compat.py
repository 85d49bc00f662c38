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


def free_memory(model_management, device, memory_required: int, ram_required: int = 0) -> None:
    """comfy.model_management.free_memory (unload other models until `memory_required` bytes are free on
    `device`), with its RAM target where this ComfyUI has one (ram_required: 0.14+), then soft_empty_cache."""
    fn = getattr(model_management, "free_memory", None)
    if fn is None:
        return
    try:
        has_ram = "ram_required" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        has_ram = False
    if has_ram:
        fn(memory_required, device, ram_required=ram_required)
    else:
        fn(memory_required, device)
    empty = getattr(model_management, "soft_empty_cache", None)
    if empty is not None:
        empty()


def schema_extras(search_aliases: list[str]) -> dict:
    """Keyword arguments for io.Schema that only some ComfyUI versions know.

    `search_aliases` (extra words the node search matches) is a Schema field from ComfyUI 0.14 on;
    older versions (0.3.64) would reject the keyword, so it is left out there.
    """
    import dataclasses

    try:
        fields = {f.name for f in dataclasses.fields(io.Schema)}
    except TypeError:  # not a dataclass: read the constructor
        fields = set(inspect.signature(io.Schema.__init__).parameters)
    return {"search_aliases": list(search_aliases)} if "search_aliases" in fields else {}
