"""Fixtures shared by the test modules (each is built once per module that asks for it)."""
import asyncio

import pytest


@pytest.fixture(scope="module")
def H():
    """The real-ComfyUI harness with the pack imported (tests marked `comfyui` only)."""
    import comfyui_harness

    comfyui_harness.import_pack()
    return comfyui_harness


@pytest.fixture(scope="module")
def pack():
    """The pack imported against the project's fake ComfyUI modules (removed again afterwards)."""
    import comfy_api_fake

    with comfy_api_fake.installed() as p:
        yield p


@pytest.fixture(scope="module")
def nodes(pack):
    """node_id -> V3 node class, as the pack's ComfyExtension lists them."""
    ext = asyncio.run(pack.comfy_entrypoint())
    return {n.define_schema().node_id: n for n in asyncio.run(ext.get_node_list())}
