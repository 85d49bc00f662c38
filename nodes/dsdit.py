"""Nodes "Load DS-DiT" (-> DSDIT) and "DS-DiT Reference SR" (LR + Ref IMAGE -> SR IMAGE).

Thin wrappers: loading, validation, tiling and sampling are `sharp.refsr` (docs/dsdit.md). Here only
what is ComfyUI's: the `models/dsdit` folder (folder_paths, so extra_model_paths.yaml works; the `path`
input reads only inside those folders unless SHARP_ALLOW_ANY_PATH=1), the network in a ModelPatcher so
ComfyUI's model management moves it, frees memory for it and knows what it holds, the progress bar,
interruption, and wrapping a ComfyUI VAE as the library's LatentCodec.
"""
from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy_api.latest import io

from sharp.refsr import DEFAULT_CHECKPOINT, CallableVAE, limits, load_dsdit, super_resolve

from ._compat import advanced, free_memory, schema_extras

log = logging.getLogger(__name__)

FOLDER_KEY = "dsdit"
EXTENSIONS = {".safetensors"}
SHIPPED = "shipped: DS-DiT x4"
"""The ckpt_name of the model in the pack: short, so a new node shows it whole at its default width."""
LEGACY_SHIPPED = f"{DEFAULT_CHECKPOINT.name} (shipped with SHARP)"
"""Its name before 2026-12: workflows saved with it keep loading the shipped model."""
SCALES = [2, 4, 8]
DSDIT = io.Custom("DSDIT")
ALLOW_ANY_PATH = "SHARP_ALLOW_ANY_PATH"
"""Environment variable: set to 1 to let the `path` input load a .safetensors file from anywhere."""


def register_model_folder() -> None:
    """models/dsdit as a ComfyUI model folder, safetensors only. Paths that an extra_model_paths.yaml
    (read before custom nodes load) already added under "dsdit" are kept, in their order (its
    is_default puts one first); models/dsdit comes after them."""
    default = os.path.join(folder_paths.models_dir, FOLDER_KEY)
    known = folder_paths.folder_names_and_paths.get(FOLDER_KEY)
    paths = list(known[0]) if known else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER_KEY] = (paths, set(EXTENSIONS))


register_model_folder()

EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "refsr")
EXAMPLE_INPUTS = {"sharp_refsr_lr.jpg": "lr.jpg", "sharp_refsr_ref.jpg": "ref.jpg"}
"""Input-folder name -> file of examples/refsr: the images the example workflow dsdit_refsr_x4 loads."""


def install_example_inputs() -> list[str]:
    """Copy the example LR / Ref images into ComfyUI's input folder under the names the example workflow
    uses, so it runs out of the box. A file already there (e.g. the user's own) is never overwritten;
    any failure is logged, never raised (loading the pack must not fail over an example image)."""
    copied = []
    try:
        import shutil

        target = folder_paths.get_input_directory()
        for name, src in EXAMPLE_INPUTS.items():
            dst = os.path.join(target, name)
            if not os.path.exists(dst) and os.path.isfile(os.path.join(EXAMPLE_DIR, src)):
                os.makedirs(target, exist_ok=True)
                shutil.copyfile(os.path.join(EXAMPLE_DIR, src), dst)
                copied.append(dst)
    except Exception as err:  # noqa: BLE001 - a read-only or missing input folder only costs the example
        log.warning("SHARP: could not copy the DS-DiT example images into ComfyUI's input folder: %s", err)
    return copied


install_example_inputs()


def checkpoint_choices() -> list[str]:
    return [SHIPPED] + [n for n in folder_paths.get_filename_list(FOLDER_KEY) if n != SHIPPED]


def any_path_allowed() -> bool:
    return os.environ.get(ALLOW_ANY_PATH, "").strip().lower() in ("1", "true", "yes")


def in_model_folder(path: str) -> bool:
    """Is `path` (absolute) inside one of the dsdit model folders? Decided on the names alone
    (normalised, `..` resolved, symlinks not): a symlink placed inside a model folder is followed,
    as ComfyUI's own loaders follow it (docs/bad_inputs.md, "Symlinks")."""
    path = os.path.normpath(path)
    for root in folder_paths.get_folder_paths(FOLDER_KEY):
        root = os.path.normpath(os.path.abspath(root))
        if os.path.commonpath([path, root]) == root:
            return True
    return False


def resolve_checkpoint(ckpt_name: str, path: str = "") -> str:
    """The file to load: `path` when given (absolute .safetensors inside a dsdit model folder, or
    anywhere with SHARP_ALLOW_ANY_PATH=1), else `ckpt_name` from models/dsdit. Whether a path is
    allowed is decided before the file system is asked anything about it (no existence oracle)."""
    path = (path or "").strip()
    if path:
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            raise ValueError(f"path must be an absolute path to a .safetensors file, got {path!r} "
                             f"(or leave it empty and pick ckpt_name from models/{FOLDER_KEY})")
        if not path.lower().endswith(".safetensors"):
            raise ValueError(f"{path}: DS-DiT loads only .safetensors checkpoints")
        if not any_path_allowed() and not in_model_folder(path):
            raise ValueError(f"path {path!r} is outside ComfyUI's {FOLDER_KEY} model folders; put the checkpoint in "
                             f"models/{FOLDER_KEY} and pick it in ckpt_name, or start ComfyUI with the environment "
                             f"variable {ALLOW_ANY_PATH}=1 to load checkpoints from anywhere")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"DS-DiT checkpoint not found: {path}")
        return path
    if ckpt_name in (SHIPPED, LEGACY_SHIPPED):
        return str(DEFAULT_CHECKPOINT)
    full = folder_paths.get_full_path(FOLDER_KEY, ckpt_name)
    if full is None:
        roots = ", ".join(folder_paths.get_folder_paths(FOLDER_KEY)) or "no folders"
        raise FileNotFoundError(f"no DS-DiT checkpoint {ckpt_name!r} in models/{FOLDER_KEY} ({roots}); "
                                "put the .safetensors file there and refresh")
    return full


def dsdit_patcher(model) -> "comfy.model_patcher.ModelPatcher":
    """The DS-DiT network (an nn.Module) in a ModelPatcher, as ComfyUI's upscale-model loader wraps its
    networks: load_models_gpu then moves it to the load device, unloads other models to make room and
    offloads it when something else needs the memory. A ModelPatcher is returned as it is."""
    if isinstance(model, comfy.model_patcher.ModelPatcher):
        return model
    mm = comfy.model_management
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


class LoadDSDiT(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPLoadDSDiT",
            display_name="Load DS-DiT",
            category="SHARP/DS-DiT",
            description=(
                "Loads a DS-DiT reference-based super-resolution checkpoint (safetensors only; its config is "
                "read from the file's metadata and validated) from models/dsdit, from an absolute path, or "
                "the small CPU-trained demonstration model shipped with SHARP."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name", options=checkpoint_choices(), default=SHIPPED,
                    tooltip=f"A .safetensors file in models/{FOLDER_KEY} (or an extra_model_paths.yaml "
                            f"'{FOLDER_KEY}' path), or '{SHIPPED}': the small demonstration model in the pack.",
                ),
                io.String.Input(
                    "path", default="", multiline=False,
                    tooltip="Optional absolute path to a DS-DiT .safetensors checkpoint inside a models/dsdit "
                            f"folder (anywhere if ComfyUI runs with {ALLOW_ANY_PATH}=1); when set it is loaded "
                            "instead of ckpt_name.",
                ),
            ],
            outputs=[DSDIT.Output(display_name="DSDIT",
                                  tooltip="The DS-DiT network (in ComfyUI's model management), for "
                                          "'DS-DiT Reference SR'.")],
            **schema_extras(search_aliases=["super resolution", "upscale", "reference sr", "refsr"]),
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, path="") -> bool | str:
        """ComfyUI's own check that ckpt_name is one of the choices, plus the shipped model's old name
        (declaring ckpt_name here replaces the core check for it)."""
        choices = checkpoint_choices()
        if ckpt_name in choices or ckpt_name == LEGACY_SHIPPED or (path or "").strip():
            return True
        return (f"ckpt_name {ckpt_name!r} is not in models/{FOLDER_KEY}; pick one of {choices[:8]}"
                f"{' ...' if len(choices) > 8 else ''} (put the .safetensors file there and refresh)")

    @classmethod
    def execute(cls, ckpt_name, path="") -> io.NodeOutput:
        file = resolve_checkpoint(ckpt_name, path)
        model = load_dsdit(file, device="cpu")
        log.info("DS-DiT %s: %s space, x%d, %d parameters", os.path.basename(file), model.cfg.space,
                 model.cfg.scale, sum(p.numel() for p in model.parameters()))
        return io.NodeOutput(dsdit_patcher(model))


def comfy_vae_codec(vae, device) -> CallableVAE:
    """A ComfyUI VAE (images [B, H, W, 3] <-> latents) as the library's LatentCodec."""
    channels = getattr(vae, "latent_channels", None)
    ratio = getattr(vae, "downscale_ratio", None)
    if not isinstance(channels, int) or not isinstance(ratio, int):
        raise ValueError(f"the VAE must be an image VAE with an integer downscale (got latent_channels="
                         f"{channels!r}, downscale_ratio={ratio!r}); video/audio VAEs are not supported")
    return CallableVAE.channels_last(lambda im: vae.encode(im).float().to(device),
                                     lambda z: vae.decode(z).float().to(device), channels, ratio)


def _show_on_node(text: str, node_id) -> None:
    """Best effort: the text under the node in the UI (ComfyUI >= 0.3.4x); it is logged anyway."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # no server (in-process use) or an older ComfyUI
        pass


class _Notes(logging.Handler):
    """Collects the warnings the library logs during one execute, to show them under the node."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class DSDiTReferenceSR(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SHARPDSDiTReferenceSR",
            display_name="DS-DiT Reference SR",
            category="SHARP/DS-DiT",
            description=(
                "Reference-based super-resolution of a remote-sensing image: the LR image is upscaled by "
                "scale with texture taken from an HR reference of the same place (another date), by DS-DiT "
                "(decoupled Siamese diffusion transformer), in overlapping tiles so large scenes fit in memory."
            ),
            inputs=[
                DSDIT.Input("model", tooltip="The DS-DiT network from 'Load DS-DiT'."),
                io.Image.Input("lr", tooltip="Low-resolution RGB image(s) to super-resolve."),
                io.Image.Input(
                    "ref",
                    tooltip="High-resolution RGB reference of the same place (scale x the LR size; other sizes "
                            "are resized with a warning). One per LR image.",
                ),
                io.Combo.Input("scale", options=list(SCALES), default=4,
                               tooltip="Upscaling factor: the output is scale x the LR size."),
                io.Int.Input("steps", default=0, min=0, max=200,
                             tooltip="Euler steps of the flow sampler per tile; 0 = the checkpoint's "
                                     "default (1 for one-step checkpoints, else 20)."),
                io.Float.Input(
                    "guidance", default=1.0, min=0.0, max=10.0, step=0.05,
                    tooltip="Autoguidance g: v = v_noRef + g (v_Ref - v_noRef). 1 disables it (one pass per "
                            "step); > 1 leans harder on the Ref (two passes per step); 0 ignores the Ref.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="Noise seed. Barely matters for the shipped model's one-step default (about 0.2 of "
                            "255 levels); no effect at temperature 0; it picks the texture of 20-step samples.",
                ),
                io.Int.Input("tile_size", default=512, min=32, max=8192, step=16,
                             tooltip="Tile size in output pixels; peak memory depends on this, not on the "
                                     "image size. Rounded to the model's token size."),
                io.Int.Input("overlap", default=64, min=0, max=1024, step=8,
                             tooltip="Overlap of neighbouring tiles in output pixels, blended smoothly."),
                io.Float.Input(
                    "temperature", default=-1.0, min=-1.0, max=2.0, step=0.05,
                    tooltip="Initial-noise scale; -1 = the checkpoint's default (1 for the shipped model, whose "
                            "one-step default is PSNR-oriented). 1 with 20 steps gives textured samples.",
                    **advanced(),
                ),
                io.Boolean.Input(
                    "register_ref", default=True,
                    tooltip="Align the Ref to the LR before sampling: a global shift + colour matching, "
                            "plus a local block-matching warp for checkpoints trained with one.",
                    **advanced(),
                ),
                io.Float.Input(
                    "ref_transfer", default=-1.0, min=-1.0, max=1.0, step=0.01,
                    tooltip="Reference detail transfer: how much of the Ref's aligned detail, gated by how "
                            "well it matches, is added after sampling. -1 = the checkpoint's fitted value; "
                            "0 = off.",
                    **advanced(),
                ),
                io.Vae.Input(
                    "vae", optional=True,
                    tooltip="Only for latent-space DS-DiT checkpoints: the VAE they were trained with. "
                            "Pixel-space checkpoints (like the shipped one) ignore it.",
                ),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The super-resolved image(s).")],
            **schema_extras(search_aliases=["super resolution", "upscale", "reference sr", "refsr", "remote sensing", "hires"]),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, lr, ref, scale=4, steps=0, guidance=1.0, seed=0, tile_size=512, overlap=64,
                temperature=-1.0, register_ref=True, ref_transfer=-1.0, vae=None) -> io.NodeOutput:
        if int(scale) not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        patcher = dsdit_patcher(model)        # a bare DSDiT module (e.g. from another node) is wrapped
        model, device = patcher.model, patcher.load_device
        codec = None
        if model.cfg.space == "latent":
            if vae is None:
                raise ValueError("this DS-DiT checkpoint works in a VAE latent space: connect the VAE it was "
                                 "trained with to the vae input")
            codec = comfy_vae_codec(vae, device)
        elif vae is not None:
            log.warning("DS-DiT: pixel-space checkpoint, the connected VAE is not used")
        interrupted = comfy.model_management.throw_exception_if_processing_interrupted
        interrupted()
        bar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            interrupted()
            bar.update_absolute(done, total)

        # as ComfyUI's upscale-model node: model management makes room for the weights and one tile's
        # working set on the device (and the whole-image stages in RAM) and loads the network there
        tile = 0
        if getattr(lr, "ndim", 0) == 4:  # other shapes: the library's error
            b, h, w = lr.shape[0], int(scale) * lr.shape[1], int(scale) * lr.shape[2]
            ram = limits.estimate_bytes(model.cfg, b, h, w, int(tile_size), True, bool(register_ref), True)
            tile = limits.tile_bytes(model.cfg, b, int(tile_size))
            free_memory(comfy.model_management, device, tile, ram)
        comfy.model_management.load_models_gpu([patcher], memory_required=tile, force_full_load=True)
        notes = _Notes()
        library_log = logging.getLogger("sharp")
        library_log.addHandler(notes)
        try:
            out = super_resolve(model, lr, ref, scale=int(scale), steps=int(steps) or None, guidance=guidance,
                                seed=int(seed), tile=int(tile_size), overlap=int(overlap), vae=codec,
                                progress=progress, register=bool(register_ref),
                                temperature=None if temperature < 0 else temperature,   # NaN: refused there
                                ref_transfer=None if ref_transfer < 0 else ref_transfer,
                                cancel=interrupted)
        finally:
            library_log.removeHandler(notes)
        for text in notes.messages:  # already in the server log: the library logged them
            _show_on_node(f"warning: {text}", node_id)
        return io.NodeOutput(out.float().cpu())
