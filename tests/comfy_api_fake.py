"""Project-owned stand-ins for the ComfyUI modules our nodes import, so the always-run tests can import
the pack, read its V3 schemas (as /object_info would show them) and call `execute` without ComfyUI.

`installed()` puts fake `comfy_api`, `comfy_api.latest`, `comfy`, `comfy.model_sampling`,
`comfy.patcher_extension`, `comfy.sd` and `folder_paths` into sys.modules, imports the repository as
a package under a private name, and restores sys.modules afterwards (a real ComfyUI imported later in
the same session is not affected).

Also: CORE_OBJECT_INFO, a hand-written subset of ComfyUI's core node definitions in /object_info
format (the nodes our workflows use), checked against a real server by the opt-in server tests.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = "comfyui_sharp_fake_env"
FAKED = ("comfy_api", "comfy_api.latest", "comfy", "comfy.model_sampling", "comfy.patcher_extension", "comfy.sd",
         "comfy.utils", "comfy.model_management", "comfy.model_patcher", "folder_paths")


# --- comfy_api.latest.io ---------------------------------------------------------------------------

class _Input:
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, options=None, multiline=None, advanced=None, extra_dict=None, **kw):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.default, self.min, self.max, self.step, self.options = default, min, max, step, options
        self.advanced = advanced
        self.extra = kw


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, **kw):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip


def _io_type(name, widget=False):
    class Input(_Input):
        io_type = name
        is_widget = widget

    class Output(_Output):
        io_type = name

    return type(name, (), {"Input": Input, "Output": Output, "io_type": name})


class Schema:
    def __init__(self, node_id, display_name=None, category="sd", inputs=None, outputs=None, description="",
                 hidden=None, search_aliases=None, **kw):
        self.node_id, self.display_name, self.category = node_id, display_name, category
        self.search_aliases = list(search_aliases or [])
        self.inputs, self.outputs, self.description = inputs or [], outputs or [], description
        self.hidden = hidden or []


class Hidden:
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"


class NodeOutput:
    def __init__(self, *args, ui=None, **kw):
        self.result = args
        self.ui = ui


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError


def _make_io():
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema, io.NodeOutput, io.ComfyNode, io.Hidden = Schema, NodeOutput, ComfyNode, Hidden
    io.Custom = lambda name: _io_type(name)
    for name in ("Model", "Clip", "Vae", "Image", "Latent", "Conditioning", "Sigmas"):
        setattr(io, name, _io_type(name.upper()))
    for name in ("Int", "Float", "String", "Boolean", "Combo"):
        setattr(io, name, _io_type(name.upper(), widget=True))
    return io


class ComfyExtension:
    async def on_load(self):
        return None


# --- comfy ------------------------------------------------------------------------------------------

class ModelSamplingFlux:
    def __init__(self, model_config=None):
        self.model_config = model_config
        self.set_parameters()

    def set_parameters(self, shift=1.15, timesteps=10000):
        self.shift = shift


class CONST:
    pass


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"


class FakeSD:
    """Records what the loader hands to ComfyUI."""

    calls: list = []

    class CLIPType:
        STABLE_DIFFUSION = "stable_diffusion"
        FLUX = "flux"

    @classmethod
    def load_diffusion_model_state_dict(cls, sd, model_options={}):
        cls.calls.append(("model", dict(sd), dict(model_options)))
        return ("MODEL", len(sd))

    @classmethod
    def load_text_encoder_state_dicts(cls, state_dicts=(), embedding_directory=None, clip_type=None, model_options={}):
        cls.calls.append(("clip", [dict(s) for s in state_dicts], clip_type))
        return ("CLIP", clip_type)

    class VAE:
        def __init__(self, sd=None, **kw):
            FakeSD.calls.append(("vae", dict(sd)))


class FolderPaths:
    """folder_paths.folder_names_and_paths is `roots` plus extensions (as ComfyUI's: {key: (paths, exts)})."""

    roots: dict[str, list[str]] = {"diffusion_models": [], "embeddings": []}
    extensions: dict[str, set] = {}
    models_dir = os.path.join(os.sep, "nonexistent", "comfyui", "models")
    input_dir = None  # no input folder unless a test points it at a tmp_path (the copy then only logs)

    @classmethod
    def get_input_directory(cls):
        return cls.input_dir

    input_dir = os.path.join(os.sep, "nonexistent", "comfyui", "input")
    output_dir = os.path.join(os.sep, "nonexistent", "comfyui", "output")

    @classmethod
    def get_folder_paths(cls, key):
        return list(cls.roots.get(key, []))

    @classmethod
    def get_input_directory(cls):
        return cls.input_dir

    @classmethod
    def get_output_directory(cls):
        return cls.output_dir

    @classmethod
    def get_filename_list(cls, key):
        exts = cls.extensions.get(key) or set()
        out = set()
        for root in cls.roots.get(key, []):
            for dirpath, _, files in os.walk(root):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
        return sorted(out)

    @classmethod
    def get_full_path(cls, key, filename):
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for root in cls.roots.get(key, []):
            if os.path.isfile(os.path.join(root, filename)):
                return os.path.join(root, filename)
        return None


class _NamesAndPaths(dict):
    """A live view of FolderPaths.roots/extensions shaped like folder_paths.folder_names_and_paths."""

    def __contains__(self, key):
        return key in FolderPaths.roots

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __getitem__(self, key):
        return FolderPaths.roots[key], FolderPaths.extensions.get(key, set())

    def __setitem__(self, key, value):
        FolderPaths.roots[key], FolderPaths.extensions[key] = list(value[0]), set(value[1])


class ProgressBar:
    """comfy.utils.ProgressBar; every instance's updates are recorded in `ProgressBar.updates`."""

    updates: list = []

    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        ProgressBar.updates.append((self.current, self.total))


class InterruptProcessingException(Exception):
    pass


class ModelManagement:
    interrupt_after: int | None = None  # raise at the n-th interruption check (None: never)
    checks = 0

    @classmethod
    def throw_exception_if_processing_interrupted(cls):
        cls.checks += 1
        if cls.interrupt_after is not None and cls.checks >= cls.interrupt_after:
            raise InterruptProcessingException()

    freed: list = []  # (memory_required, device, ram_required) of each free_memory call

    @classmethod
    def free_memory(cls, memory_required, device, keep_loaded=(), for_dynamic=False, ram_required=0):
        cls.freed.append((memory_required, device, ram_required))
        return []

    @classmethod
    def soft_empty_cache(cls, force=False):
        pass

    loads: list = []  # (patchers, memory_required, force_full_load) of each load_models_gpu call
    loading = False   # True while load_models_gpu moves weights (tests tell its moves from others)

    @classmethod
    def load_models_gpu(cls, models, memory_required=0, force_patch_weights=False,
                        minimum_memory_required=None, force_full_load=False):
        """Records the call and moves each patcher's model to its load_device, as a full load does."""
        cls.loads.append((list(models), memory_required, force_full_load))
        cls.loading = True
        try:
            for patcher in models:
                patcher.model.to(patcher.load_device)
        finally:
            cls.loading = False


class ModelPatcher:
    """comfy.model_patcher.ModelPatcher, the part the DS-DiT nodes use (model, load_device, offload_device)."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device


def _modules() -> dict[str, types.ModuleType]:
    api = types.ModuleType("comfy_api")
    latest = types.ModuleType("comfy_api.latest")
    latest.io = _make_io()
    latest.ComfyExtension = ComfyExtension
    api.latest = latest
    comfy = types.ModuleType("comfy")
    ms = types.ModuleType("comfy.model_sampling")
    ms.ModelSamplingFlux, ms.CONST = ModelSamplingFlux, CONST
    pe = types.ModuleType("comfy.patcher_extension")
    pe.WrappersMP = WrappersMP
    sd = types.ModuleType("comfy.sd")
    for name in ("CLIPType", "load_diffusion_model_state_dict", "load_text_encoder_state_dicts", "VAE"):
        setattr(sd, name, getattr(FakeSD, name))
    comfy.model_sampling, comfy.patcher_extension, comfy.sd = ms, pe, sd
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.throw_exception_if_processing_interrupted = ModelManagement.throw_exception_if_processing_interrupted
    mm.get_torch_device = lambda: "cpu"
    mm.free_memory, mm.soft_empty_cache = ModelManagement.free_memory, ModelManagement.soft_empty_cache
    mm.load_models_gpu, mm.unet_offload_device = ModelManagement.load_models_gpu, lambda: "cpu"
    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = ModelPatcher
    comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, mp
    fp = types.ModuleType("folder_paths")
    fp.get_folder_paths = FolderPaths.get_folder_paths
    fp.get_filename_list, fp.get_full_path = FolderPaths.get_filename_list, FolderPaths.get_full_path
    fp.get_input_directory = FolderPaths.get_input_directory
    fp.models_dir, fp.folder_names_and_paths = FolderPaths.models_dir, _NamesAndPaths()
    fp.get_input_directory, fp.get_output_directory = (FolderPaths.get_input_directory,
                                                       FolderPaths.get_output_directory)
    # mark every fake as a package-less module with a spec so importlib.util.find_spec works
    mods = {"comfy_api": api, "comfy_api.latest": latest, "comfy": comfy, "comfy.model_sampling": ms,
            "comfy.patcher_extension": pe, "comfy.sd": sd, "comfy.utils": utils, "comfy.model_management": mm,
            "comfy.model_patcher": mp, "folder_paths": fp}
    for name, mod in mods.items():
        mod.__spec__ = importlib.util.spec_from_loader(name, loader=None, is_package=name in ("comfy_api", "comfy"))
    return mods


def import_root_as(name: str):
    """Import the repository root `__init__.py` as package `name`, as ComfyUI imports a custom node."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def installed():
    """Yield the pack imported against the fakes; sys.modules is restored afterwards."""
    saved = {name: sys.modules.get(name) for name in FAKED}
    pack_saved = {k: v for k, v in sys.modules.items() if k == PACK or k.startswith(PACK + ".")}
    for k in pack_saved:
        del sys.modules[k]
    sys.modules.update(_modules())
    try:
        yield import_root_as(PACK)
    finally:
        for k in [k for k in sys.modules if k == PACK or k.startswith(PACK + ".")]:
            del sys.modules[k]
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


# --- schemas as /object_info ------------------------------------------------------------------------

def object_info(node_cls) -> dict:
    schema = node_cls.define_schema()
    info = {"input": {"required": {}, "optional": {}}, "input_order": {"required": [], "optional": []},
            "output": [o.io_type for o in schema.outputs],
            "output_name": [o.display_name or o.io_type for o in schema.outputs],
            "category": schema.category, "display_name": schema.display_name, "description": schema.description,
            "search_aliases": schema.search_aliases}
    for inp in schema.inputs:
        sec = "optional" if inp.optional else "required"
        opts = {k: v for k, v in (("default", inp.default), ("min", inp.min), ("max", inp.max),
                                  ("tooltip", inp.tooltip)) if v is not None}
        if inp.extra.get("control_after_generate"):
            opts["control_after_generate"] = True
        typ = list(inp.options) if inp.io_type == "COMBO" else inp.io_type
        info["input"][sec][inp.id] = [typ, opts]
        info["input_order"][sec].append(inp.id)
    return info


def _core(inputs, outputs, optional=()):
    info = {"input": {"required": {}, "optional": {}}, "input_order": {"required": [], "optional": []},
            "output": list(outputs)}
    for sec, items in (("required", inputs), ("optional", optional)):
        for name, typ, *opts in items:
            info["input"][sec][name] = [typ, opts[0] if opts else {}]
            info["input_order"][sec].append(name)
    return info


# Hand-written from ComfyUI's core nodes (v0.3.64 .. v0.14.1); COMBO options left open.
CORE_OBJECT_INFO = {
    "CLIPTextEncode": _core([("text", "STRING"), ("clip", "CLIP")], ["CONDITIONING"]),
    "FluxGuidance": _core([("conditioning", "CONDITIONING"), ("guidance", "FLOAT", {"min": 0.0, "max": 100.0})],
                          ["CONDITIONING"]),
    "ConditioningZeroOut": _core([("conditioning", "CONDITIONING")], ["CONDITIONING"]),
    "EmptySD3LatentImage": _core([("width", "INT", {"min": 16}), ("height", "INT", {"min": 16}),
                                  ("batch_size", "INT", {"min": 1})], ["LATENT"]),
    "KSampler": _core([("model", "MODEL"), ("seed", "INT", {"control_after_generate": True}), ("steps", "INT"),
                       ("cfg", "FLOAT"), ("sampler_name", "COMBO"), ("scheduler", "COMBO"),
                       ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
                       ("denoise", "FLOAT")], ["LATENT"]),
    "VAEDecode": _core([("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"]),
    # SaveImage / PreviewImage / PreviewAny: outputs as before 0.33, which adds one each (workflow_check.LATER_OUTPUTS)
    "SaveImage": _core([("images", "IMAGE"), ("filename_prefix", "STRING")], []),
    "PreviewImage": _core([("images", "IMAGE")], []),
    "ImageBatch": _core([("image1", "IMAGE"), ("image2", "IMAGE")], ["IMAGE"]),
    "ImageStitch": _core([("image1", "IMAGE"), ("direction", "COMBO"), ("match_image_size", "BOOLEAN"),
                          ("spacing_width", "INT"), ("spacing_color", "COMBO")], ["IMAGE"],
                         optional=[("image2", "IMAGE")]),
    "PreviewAny": _core([("source", "*")], []),
    # image: the files of ComfyUI's input folder (left open); the upload button adds a widget value
    "LoadImage": _core([("image", "COMBO", {"image_upload": True})], ["IMAGE", "MASK"]),
    "ImageScaleBy": _core([("image", "IMAGE"), ("upscale_method", "COMBO"), ("scale_by", "FLOAT")], ["IMAGE"]),
    # custom sampling: the RS-FLUX workflows run SHARP Flux Sigmas through SamplerCustomAdvanced
    "RandomNoise": _core([("noise_seed", "INT", {"control_after_generate": True})], ["NOISE"]),
    "KSamplerSelect": _core([("sampler_name", "COMBO")], ["SAMPLER"]),
    "BasicGuider": _core([("model", "MODEL"), ("conditioning", "CONDITIONING")], ["GUIDER"]),
    "SamplerCustomAdvanced": _core([("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"),
                                    ("sigmas", "SIGMAS"), ("latent_image", "LATENT")], ["LATENT", "LATENT"]),
    # two-pass hires fix (example_workflows/hires_fix_two_pass.json)
    "LatentUpscaleBy": _core([("samples", "LATENT"), ("upscale_method", "COMBO"),
                              ("scale_by", "FLOAT", {"min": 0.01, "max": 8.0})], ["LATENT"]),
    "SplitSigmasDenoise": _core([("sigmas", "SIGMAS"), ("denoise", "FLOAT", {"min": 0.0, "max": 1.0})],
                                ["SIGMAS", "SIGMAS"]),
}

# Core nodes of the per-family workflows (workflows/family_*.json). Kept apart from CORE_OBJECT_INFO because
# some exist only in newer ComfyUI (EmptyFlux2LatentImage: 0.14.1 here); tests/test_comfyui_families.py checks
# each against a real server where it exists.
_LATENT_SIZE = [("width", "INT", {"min": 16}), ("height", "INT", {"min": 16}), ("batch_size", "INT", {"min": 1})]
FAMILY_CORE_OBJECT_INFO = {
    "UNETLoader": _core([("unet_name", "COMBO"), ("weight_dtype", "COMBO")], ["MODEL"]),
    "CLIPLoader": _core([("clip_name", "COMBO"), ("type", "COMBO")], ["CLIP"], optional=[("device", "COMBO")]),
    "DualCLIPLoader": _core([("clip_name1", "COMBO"), ("clip_name2", "COMBO"), ("type", "COMBO")], ["CLIP"],
                            optional=[("device", "COMBO")]),
    "VAELoader": _core([("vae_name", "COMBO")], ["VAE"]),
    "ModelSamplingAuraFlow": _core([("model", "MODEL"), ("shift", "FLOAT", {"min": 0.0, "max": 100.0})], ["MODEL"]),
    "ModelSamplingSD3": _core([("model", "MODEL"), ("shift", "FLOAT", {"min": 0.0, "max": 100.0})], ["MODEL"]),
    "QuadrupleCLIPLoader": _core([("clip_name1", "COMBO"), ("clip_name2", "COMBO"), ("clip_name3", "COMBO"),
                                  ("clip_name4", "COMBO")], ["CLIP"]),
    "EmptyFlux2LatentImage": _core(_LATENT_SIZE, ["LATENT"]),
    "EmptyHunyuanImageLatent": _core([("width", "INT", {"min": 64}), ("height", "INT", {"min": 64}),
                                      ("batch_size", "INT", {"min": 1})], ["LATENT"]),
    "EmptyChromaRadianceLatentImage": _core(_LATENT_SIZE, ["LATENT"]),
}
