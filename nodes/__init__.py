"""The SHARP node pack (ComfyUI V3 schema). Loaded by the repository root's `__init__.py`.

Only this package touches ComfyUI (comfy*, comfy_api, folder_paths); the logic is in `sharp/`.
No NODE_CLASS_MAPPINGS on purpose: ComfyUI would then take the legacy path and ignore the entrypoint.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .dsdit import DSDiTReferenceSR, LoadDSDiT
from .loader import LoadRSFlux
from .resolution import ResolutionPromotion
from .scene import DSDiTSceneSR
from .schedule_preview import SchedulePreview
from .sigmas import FluxSigmas
from .spectrum import SpectrumAnalysis

NODES: list[type[io.ComfyNode]] = [ResolutionPromotion, LoadRSFlux, SpectrumAnalysis, SchedulePreview, LoadDSDiT,
                                   DSDiTReferenceSR, FluxSigmas, DSDiTSceneSR]


class SharpExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> SharpExtension:
    return SharpExtension()
